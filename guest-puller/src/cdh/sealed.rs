//! Sealed secrets: `sealed.<header>.<payload>.<signature>` (JWS compact shape,
//! base64url parts).
//!
//! - Unsigned form, as CoCo documents it: `sealed.fakejwsheader.<payload>.fakesignature`.
//!   Accepted unless the daemon requires signed secrets.
//! - Signed form: `<header>` is a JWS protected header `{"alg":"ES256"|"RS256","kid":"kbs:///r/t/k"}`;
//!   the public key (PEM or DER SubjectPublicKeyInfo) is the KBS resource named by `kid`,
//!   and the signature over `<header>.<payload>` must verify.
//!
//! The payload is JSON. Type `vault` with provider `kbs` names a KBS resource whose
//! bytes are the plaintext. Every other type (`envelope`, …) is refused by name.

use base64::Engine;
use serde::Deserialize;

/// Largest sealed secret accepted (kata passes env values and small files).
pub const MAX_SEALED: usize = 64 * 1024;
/// Header of the unsigned form.
pub const FAKE_HEADER: &str = "fakejwsheader";
/// Signature of the unsigned form.
pub const FAKE_SIGNATURE: &str = "fakesignature";

/// Why a sealed secret was refused.
#[derive(Debug, thiserror::Error)]
pub enum SealedError {
    #[error("sealed secret of {0} bytes is larger than the limit of {MAX_SEALED}")]
    TooLarge(usize),
    #[error("sealed secret is malformed: {0}")]
    Malformed(String),
    #[error("sealed secret is unsigned (fakejwsheader) and this daemon requires signed secrets")]
    UnsignedRefused,
    #[error("sealed secret header: {0}")]
    Header(String),
    #[error("sealed secret signature algorithm {0:?} is not supported (ES256, RS256)")]
    Algorithm(String),
    #[error("sealed secret signature does not verify with the key {kid}")]
    BadSignature { kid: String },
    #[error("verification key {kid}: {reason}")]
    BadKey { kid: String, reason: String },
    #[error("sealed secret payload: {0}")]
    Payload(String),
    #[error("sealed secret type {0:?} is not supported by cloak-cdh (only `vault` with provider `kbs`)")]
    UnsupportedType(String),
    #[error("vault secret provider {0:?} is not supported (only `kbs`)")]
    UnsupportedProvider(String),
}

/// How a sealed secret was signed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Signing {
    /// `fakejwsheader` / `fakesignature`.
    Unsigned,
    /// A JWS header naming the algorithm and the KBS resource holding the key.
    Jws { alg: String, kid: String },
}

/// A parsed sealed secret (signature not yet checked).
#[derive(Debug, Clone)]
pub struct Sealed {
    pub signing: Signing,
    /// `<header>.<payload>` as sent: the JWS signing input.
    pub signing_input: String,
    /// The decoded payload (JSON).
    pub payload: Vec<u8>,
    /// The decoded signature (empty when unsigned).
    pub signature: Vec<u8>,
}

/// What the payload asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SecretKind {
    /// The plaintext is the KBS resource at this `kbs:///…` URI.
    Vault { name: kbs_client::ResourceUri },
}

#[derive(Deserialize)]
struct Header {
    alg: Option<String>,
    kid: Option<String>,
}

#[derive(Deserialize)]
struct Payload {
    version: Option<String>,
    r#type: Option<String>,
    name: Option<String>,
    provider: Option<String>,
}

fn b64(part: &str, what: &str) -> Result<Vec<u8>, SealedError> {
    let trimmed = part.trim_end_matches('=');
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(trimmed)
        .map_err(|e| SealedError::Malformed(format!("{what} is not base64url: {e}")))
}

/// Parses `sealed.<header>.<payload>.<signature>` (surrounding whitespace ignored).
pub fn parse(input: &[u8]) -> Result<Sealed, SealedError> {
    if input.len() > MAX_SEALED {
        return Err(SealedError::TooLarge(input.len()));
    }
    let text = std::str::from_utf8(input).map_err(|_| SealedError::Malformed("not UTF-8".into()))?.trim();
    let rest = text
        .strip_prefix("sealed.")
        .ok_or_else(|| SealedError::Malformed("does not start with `sealed.`".into()))?;
    let parts: Vec<&str> = rest.split('.').collect();
    let [header, payload, signature] = parts.as_slice() else {
        return Err(SealedError::Malformed(format!(
            "expected sealed.<header>.<payload>.<signature>, found {} parts after `sealed`",
            parts.len()
        )));
    };
    if payload.is_empty() {
        return Err(SealedError::Malformed("empty payload".into()));
    }
    let signing_input = format!("{header}.{payload}");
    let payload_bytes = b64(payload, "payload")?;
    let (signing, sig) = if *header == FAKE_HEADER {
        if *signature != FAKE_SIGNATURE {
            return Err(SealedError::Malformed(
                "fakejwsheader must go with fakesignature (an unsigned secret carries no signature)".into(),
            ));
        }
        (Signing::Unsigned, Vec::new())
    } else {
        let h: Header = serde_json::from_slice(&b64(header, "header")?)
            .map_err(|e| SealedError::Header(format!("not a JWS header: {e}")))?;
        let alg = h.alg.ok_or_else(|| SealedError::Header("no `alg`".into()))?;
        let kid = h.kid.ok_or_else(|| SealedError::Header("no `kid` naming the verification key".into()))?;
        if !matches!(alg.as_str(), "ES256" | "RS256") {
            return Err(SealedError::Algorithm(alg.chars().take(32).collect()));
        }
        let sig = b64(signature, "signature")?;
        if sig.is_empty() {
            return Err(SealedError::Malformed("empty signature".into()));
        }
        (Signing::Jws { alg, kid }, sig)
    };
    Ok(Sealed { signing, signing_input, payload: payload_bytes, signature: sig })
}

/// Reads the payload JSON.
pub fn interpret(payload: &[u8]) -> Result<SecretKind, SealedError> {
    let p: Payload =
        serde_json::from_slice(payload).map_err(|e| SealedError::Payload(format!("not JSON: {e}")))?;
    if let Some(v) = &p.version {
        if !v.starts_with("0.1") {
            return Err(SealedError::Payload(format!("version {v:?} is not supported (0.1.x)")));
        }
    }
    let ty = p.r#type.ok_or_else(|| SealedError::Payload("no `type`".into()))?;
    if ty != "vault" {
        return Err(SealedError::UnsupportedType(ty.chars().take(64).collect()));
    }
    match p.provider.as_deref() {
        Some("kbs") => {}
        Some(other) => return Err(SealedError::UnsupportedProvider(other.chars().take(64).collect())),
        None => return Err(SealedError::Payload("vault secret without `provider`".into())),
    }
    let name = p.name.ok_or_else(|| SealedError::Payload("vault secret without `name`".into()))?;
    let name: kbs_client::ResourceUri =
        name.parse().map_err(|e| SealedError::Payload(format!("`name` {name:?}: {}", report::Line(&e))))?;
    Ok(SecretKind::Vault { name })
}

/// Verifies a JWS signature with a public key (PEM or DER SubjectPublicKeyInfo).
pub fn verify(sealed: &Sealed, alg: &str, kid: &str, key: &[u8]) -> Result<(), SealedError> {
    use openssl::hash::MessageDigest;
    use openssl::pkey::PKey;
    let bad_key = |reason: String| SealedError::BadKey { kid: kid.into(), reason };
    let pkey = PKey::public_key_from_pem(key)
        .or_else(|_| PKey::public_key_from_der(key))
        .map_err(|_| bad_key("not a PEM or DER public key".into()))?;
    let sig = match alg {
        "ES256" => {
            let ec = pkey.ec_key().map_err(|_| bad_key("ES256 needs an EC P-256 key".into()))?;
            if ec.group().curve_name() != Some(openssl::nid::Nid::X9_62_PRIME256V1) {
                return Err(bad_key("ES256 needs a P-256 key".into()));
            }
            if sealed.signature.len() != 64 {
                return Err(SealedError::BadSignature { kid: kid.into() });
            }
            let r = openssl::bn::BigNum::from_slice(&sealed.signature[..32])
                .map_err(|e| bad_key(e.to_string()))?;
            let s = openssl::bn::BigNum::from_slice(&sealed.signature[32..])
                .map_err(|e| bad_key(e.to_string()))?;
            openssl::ecdsa::EcdsaSig::from_private_components(r, s)
                .and_then(|s| s.to_der())
                .map_err(|e| bad_key(e.to_string()))?
        }
        "RS256" => {
            pkey.rsa().map_err(|_| bad_key("RS256 needs an RSA key".into()))?;
            sealed.signature.clone()
        }
        other => return Err(SealedError::Algorithm(other.into())),
    };
    let mut v =
        openssl::sign::Verifier::new(MessageDigest::sha256(), &pkey).map_err(|e| bad_key(e.to_string()))?;
    v.update(sealed.signing_input.as_bytes()).map_err(|e| bad_key(e.to_string()))?;
    match v.verify(&sig) {
        Ok(true) => Ok(()),
        _ => Err(SealedError::BadSignature { kid: kid.into() }),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn enc(b: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
    }

    const VAULT: &str = r#"{"version":"0.1.0","type":"vault","name":"kbs:///default/key/1","provider":"kbs","provider_settings":{},"annotations":{}}"#;

    #[test]
    fn unsigned_vault_secret() {
        let s = format!("sealed.fakejwsheader.{}.fakesignature\n", enc(VAULT.as_bytes()));
        let p = parse(s.as_bytes()).unwrap();
        assert_eq!(p.signing, Signing::Unsigned);
        let SecretKind::Vault { name } = interpret(&p.payload).unwrap();
        assert_eq!(name.to_string(), "kbs:///default/key/1");
    }

    #[test]
    fn malformed_and_unsupported() {
        let payload = enc(VAULT.as_bytes());
        for (s, want) in [
            ("nope".to_string(), "sealed."),
            (format!("sealed.fakejwsheader.{payload}"), "parts"),
            (format!("sealed.fakejwsheader.{payload}.sig"), "fakesignature"),
            ("sealed.fakejwsheader.!!!.fakesignature".to_string(), "base64url"),
            (
                format!("sealed.{}.{payload}.{}", enc(b"{\"alg\":\"HS256\",\"kid\":\"x\"}"), enc(b"s")),
                "HS256",
            ),
            (format!("sealed.{}.{payload}.{}", enc(b"{\"alg\":\"ES256\"}"), enc(b"s")), "kid"),
        ] {
            let e = parse(s.as_bytes()).unwrap_err().to_string();
            assert!(e.contains(want), "{s}: {e}");
        }
        let env = r#"{"version":"0.1.0","type":"envelope","provider":"aliyun"}"#;
        assert!(matches!(interpret(env.as_bytes()), Err(SealedError::UnsupportedType(t)) if t == "envelope"));
        let other = r#"{"version":"0.1.0","type":"vault","name":"x","provider":"aliyun"}"#;
        assert!(matches!(interpret(other.as_bytes()), Err(SealedError::UnsupportedProvider(_))));
        assert!(parse(&vec![b'a'; MAX_SEALED + 1]).is_err());
    }

    #[test]
    fn es256_signature_verifies_and_tampering_fails() {
        use openssl::ec::{EcGroup, EcKey};
        use openssl::pkey::PKey;
        let group = EcGroup::from_curve_name(openssl::nid::Nid::X9_62_PRIME256V1).unwrap();
        let key = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
        let pub_pem = key.public_key_to_pem().unwrap();
        let header = enc(br#"{"alg":"ES256","kid":"kbs:///default/sealing/pub"}"#);
        let payload = enc(VAULT.as_bytes());
        let input = format!("{header}.{payload}");
        let mut signer = openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &key).unwrap();
        signer.update(input.as_bytes()).unwrap();
        let der = signer.sign_to_vec().unwrap();
        let sig = openssl::ecdsa::EcdsaSig::from_der(&der).unwrap();
        let mut raw = sig.r().to_vec_padded(32).unwrap();
        raw.extend(sig.s().to_vec_padded(32).unwrap());
        let s = format!("sealed.{input}.{}", enc(&raw));
        let p = parse(s.as_bytes()).unwrap();
        let Signing::Jws { alg, kid } = p.signing.clone() else { panic!("unsigned") };
        verify(&p, &alg, &kid, &pub_pem).unwrap();
        // Another payload under the same signature fails.
        let other = enc(VAULT.replace("key/1", "key/2").as_bytes());
        let forged = format!("sealed.{header}.{other}.{}", enc(&raw));
        let p2 = parse(forged.as_bytes()).unwrap();
        assert!(matches!(verify(&p2, &alg, &kid, &pub_pem), Err(SealedError::BadSignature { .. })));
        // Another key fails.
        let k2 = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
        assert!(verify(&p, &alg, &kid, &k2.public_key_to_pem().unwrap()).is_err());
        assert!(matches!(verify(&p, &alg, &kid, b"garbage"), Err(SealedError::BadKey { .. })));
    }
}
