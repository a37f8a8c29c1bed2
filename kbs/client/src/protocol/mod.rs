//! The RCAR handshake as plain data, without I/O: building the request and the
//! attestation, binding the runtime data (SHA-384 of its RFC 8785 canonical
//! JSON), parsing the challenge and the token answer, and opening the JWE that
//! carries a resource. The client in `crate::client` only moves these bytes.

pub mod ecdh;
mod jwe;
mod keys;
mod token;

use kbs_types::{Attestation, Challenge, CompositeEvidence, InitData, Request, RuntimeData, Tee, TeePubKey};
use serde_json::{json, Value};
use sha2::{Digest, Sha384};

pub use jwe::{decrypt_response, parse_response, trustee_aad};
pub use keys::{TeeKeyKind, TeeKeyPair};
pub use token::Token;

/// The protocol version Trustee's KBS requires exactly.
pub const KBS_PROTOCOL_VERSION: &str = "0.4.0";
/// Name of the session cookie set by `/auth`.
pub const SESSION_COOKIE: &str = "kbs-session-id";
/// Length of the SHA-384 runtime-data digest.
pub const RUNTIME_DATA_HASH_LEN: usize = 48;
/// Longest answer body the client reads (a token or a JWE-wrapped resource).
pub const MAX_BODY: usize = 16 * 1024 * 1024;

/// Why a KBS message could not be built or understood.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The peer's message is malformed; `what` names the message or field.
    #[error("malformed {what}: {reason}")]
    Malformed { what: &'static str, reason: String },
    /// The peer chose something this client does not support.
    #[error("unsupported {what}: {value}")]
    Unsupported { what: &'static str, value: String },
    /// Decryption of the resource failed (wrong key, tampered answer).
    #[error("cannot decrypt the resource: {0}")]
    Decrypt(String),
    /// A local cryptographic operation failed.
    #[error("crypto error: {0}")]
    Crypto(String),
    /// The blocking task that generates the TEE key died (panicked or was cancelled).
    #[error("key generation task failed: {0}")]
    KeyTask(String),
}

pub(crate) fn malformed(what: &'static str, reason: impl ToString) -> ProtocolError {
    ProtocolError::Malformed { what, reason: reason.to_string() }
}

/// The `/auth` request body. `extra` (an object, or null) is merged into
/// `extra-params` next to `supported-hash-algorithms`.
pub fn build_request(tee: Tee, extra: &Value) -> Request {
    let mut params = serde_json::Map::new();
    // Only SHA-384 is offered: it is what every TEE except IBM SE negotiates, and
    // the attesters' 64-byte report_data carries exactly that digest.
    params.insert("supported-hash-algorithms".into(), json!(["sha384"]));
    if let Value::Object(m) = extra {
        for (k, v) in m {
            if k != "supported-hash-algorithms" {
                params.insert(k.clone(), v.clone());
            }
        }
    }
    Request { version: KBS_PROTOCOL_VERSION.to_owned(), tee, extra_params: Value::Object(params) }
}

/// Parses the `/auth` answer and checks the nonce and the selected hash.
pub fn parse_challenge(body: &[u8]) -> Result<Challenge, ProtocolError> {
    let c: Challenge = serde_json::from_slice(body).map_err(|e| malformed("challenge", e))?;
    if c.nonce.is_empty() {
        return Err(malformed("challenge", "empty nonce"));
    }
    if c.nonce.len() > 1024 {
        return Err(malformed("challenge", "nonce longer than 1024 bytes"));
    }
    if let Some(sel) = c.extra_params.get("selected-hash-algorithm") {
        if sel.as_str().map(str::to_ascii_lowercase).as_deref() != Some("sha384") {
            return Err(ProtocolError::Unsupported {
                what: "hash algorithm selected by the KBS",
                value: sel.to_string(),
            });
        }
    }
    Ok(c)
}

/// The JSON object whose canonical form is hashed into report_data (protocol 0.4.0).
pub fn runtime_data_object(nonce: &str, tee_pubkey: &TeePubKey, additional_evidence: &str) -> Value {
    json!({
        "tee-pubkey": tee_pubkey,
        "nonce": nonce,
        "additional-evidence": additional_evidence,
    })
}

/// SHA-384 of the RFC 8785 canonical JSON of the runtime data.
pub fn runtime_data_digest(
    nonce: &str,
    tee_pubkey: &TeePubKey,
    additional_evidence: &str,
) -> Result<[u8; RUNTIME_DATA_HASH_LEN], ProtocolError> {
    let obj = runtime_data_object(nonce, tee_pubkey, additional_evidence);
    let canon = serde_json_canonicalizer::to_vec(&obj)
        .map_err(|e| ProtocolError::Crypto(format!("cannot canonicalize runtime data: {e}")))?;
    Ok(Sha384::digest(&canon).into())
}

/// The digest zero-padded to the 64-byte report_data field of SNP and TDX.
pub fn report_data(digest: &[u8; RUNTIME_DATA_HASH_LEN]) -> [u8; 64] {
    let mut rd = [0u8; 64];
    rd[..RUNTIME_DATA_HASH_LEN].copy_from_slice(digest);
    rd
}

/// The `/attest` request body. `init_data`, when the guest has one, is sent as
/// attestation-agent sends it: `"init-data": {"format": "toml", "body": <the document
/// as read>}`, so the broker hashes the very bytes the host measured.
pub fn build_attestation(
    nonce: &str,
    tee_pubkey: TeePubKey,
    evidence: Value,
    init_data: Option<&crate::initdata::Initdata>,
) -> Attestation {
    Attestation {
        init_data: init_data.map(|d| InitData { format: "toml".to_owned(), body: d.text().to_owned() }),
        runtime_data: RuntimeData { nonce: nonce.to_owned(), tee_pubkey },
        tee_evidence: CompositeEvidence { primary_evidence: evidence, additional_evidence: String::new() },
    }
}

/// Parses the `/attest` answer `{"token":"<JWT>"}`.
pub fn parse_attest_response(body: &[u8]) -> Result<Token, ProtocolError> {
    #[derive(serde::Deserialize)]
    struct TokenAnswer {
        token: String,
    }
    let t: TokenAnswer = serde_json::from_slice(body).map_err(|e| malformed("attestation answer", e))?;
    Token::parse(t.token)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ec_key() -> TeePubKey {
        TeePubKey::EC {
            crv: "P-256".into(),
            alg: "ECDH-ES+A256KW".into(),
            x: "AAAA".into(),
            y: "BBBB".into(),
        }
    }

    /// The canonical form written out by hand from RFC 8785 (keys sorted by UTF-16
    /// code units, no whitespace), and its SHA-384 computed independently with
    /// Python's hashlib:
    /// `hashlib.sha384(b'{"additional-evidence":"","nonce":"bm9uY2U=","tee-pubkey":{"alg":"ECDH-ES+A256KW","crv":"P-256","kty":"EC","x":"AAAA","y":"BBBB"}}').hexdigest()`
    #[test]
    fn runtime_data_hash_matches_hand_derived_vector() {
        let canon = br#"{"additional-evidence":"","nonce":"bm9uY2U=","tee-pubkey":{"alg":"ECDH-ES+A256KW","crv":"P-256","kty":"EC","x":"AAAA","y":"BBBB"}}"#;
        let obj = runtime_data_object("bm9uY2U=", &ec_key(), "");
        assert_eq!(serde_json_canonicalizer::to_vec(&obj).unwrap(), canon.to_vec());
        let d = runtime_data_digest("bm9uY2U=", &ec_key(), "").unwrap();
        assert_eq!(hex::encode(d), HAND_VECTOR_SHA384);
        let rd = report_data(&d);
        assert_eq!(&rd[..48], &d[..]);
        assert_eq!(&rd[48..], &[0u8; 16]);
    }

    const HAND_VECTOR_SHA384: &str =
        "d20490d30e5f16cba693abc1ca3c31ed977d2722d0adf01a980972d16913dc38f103c1f12abf477df0523af2b12e4b43";

    #[test]
    fn runtime_data_hash_changes_with_every_field() {
        let a = runtime_data_digest("n1", &ec_key(), "").unwrap();
        assert_ne!(a, runtime_data_digest("n2", &ec_key(), "").unwrap());
        assert_ne!(a, runtime_data_digest("n1", &ec_key(), "x").unwrap());
        let other = TeePubKey::EC {
            crv: "P-256".into(),
            alg: "ECDH-ES+A256KW".into(),
            x: "AAAB".into(),
            y: "BBBB".into(),
        };
        assert_ne!(a, runtime_data_digest("n1", &other, "").unwrap());
    }

    #[test]
    fn request_has_version_tee_and_merged_extra_params() {
        let r = build_request(Tee::Sample, &json!({"pod": "p1", "namespace": "ns"}));
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["version"], "0.4.0");
        assert_eq!(v["tee"], "sample");
        assert_eq!(v["extra-params"]["pod"], "p1");
        assert_eq!(v["extra-params"]["supported-hash-algorithms"], json!(["sha384"]));
        let r = build_request(Tee::Snp, &Value::Null);
        assert_eq!(serde_json::to_value(&r).unwrap()["tee"], "snp");
    }

    #[test]
    fn challenge_parsing() {
        let c = parse_challenge(br#"{"nonce":"abc=","extra-params":""}"#).unwrap();
        assert_eq!(c.nonce, "abc=");
        assert!(parse_challenge(br#"{"nonce":"","extra-params":""}"#).is_err());
        assert!(parse_challenge(b"not json").is_err());
        assert!(parse_challenge(br#"{"extra-params":""}"#).is_err());
        assert!(matches!(
            parse_challenge(br#"{"nonce":"a","extra-params":{"selected-hash-algorithm":"sha512"}}"#),
            Err(ProtocolError::Unsupported { .. })
        ));
        assert!(
            parse_challenge(br#"{"nonce":"a","extra-params":{"selected-hash-algorithm":"sha384"}}"#).is_ok()
        );
    }

    #[test]
    fn attestation_shape_is_protocol_0_4_0() {
        let a = build_attestation("n", ec_key(), json!({"svn": "1"}), None);
        let v = serde_json::to_value(&a).unwrap();
        assert!(v.get("init-data").is_none_or(Value::is_null), "{v}");
        assert_eq!(v["runtime-data"]["nonce"], "n");
        assert_eq!(v["runtime-data"]["tee-pubkey"]["kty"], "EC");
        assert_eq!(v["tee-evidence"]["primary_evidence"]["svn"], "1");
        assert_eq!(v["tee-evidence"]["additional_evidence"], "");
    }

    #[test]
    fn init_data_is_sent_as_toml_with_the_bytes_as_read() {
        let doc = "version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n\"cdh.toml\" = ''\n";
        let d = crate::initdata::Initdata::parse(doc.as_bytes()).unwrap();
        let v = serde_json::to_value(build_attestation("n", ec_key(), json!({}), Some(&d))).unwrap();
        assert_eq!(v["init-data"], json!({"format": "toml", "body": doc}));
    }
}
