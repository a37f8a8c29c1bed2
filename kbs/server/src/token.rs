//! The attestation token: a compact JWS (HS256) under a 256-bit key from the storage
//! backend: made when the process starts for the local backend (tokens never outlive
//! the broker), shared by every replica (sealed in etcd) for the etcd backend. Its payload carries the TEE
//! public key (at `/tee-pubkey` and at the EAR path Trustee uses) and the verified
//! claims, which the resource endpoint re-checks against the current policy.
//!
//! Why a MAC and not a signature: the only party that ever verifies a token is the
//! broker that issued it (one process, or replicas sharing the key through etcd) (the key is never published, and guests treat the token as
//! opaque), so a public-key signature buys nothing over HMAC-SHA256, while ES256 cost
//! a P-256 signature per attestation and a verification per resource request, about a
//! third of the broker's CPU per attestation. Forging a token still needs the key.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use hmac::{Hmac, Mac};
use kbs_types::TeePubKey;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::Sha256;
use subtle::ConstantTimeEq;

use crate::claims::Claims;
use crate::initdata::InitdataClaims;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    #[error("token is not a compact JWS")]
    Format,
    #[error("token header is not this broker's (HS256)")]
    Alg,
    #[error("token signature is invalid")]
    Signature,
    #[error("token has expired")]
    Expired,
    #[error("token payload is malformed")]
    Payload(#[source] serde_json::Error),
    #[error("token key is unusable")]
    Key,
    #[error("token signing failed")]
    Crypto(#[from] openssl::error::ErrorStack),
}

/// What the broker puts in a token (and reads back).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TokenPayload {
    pub iss: String,
    pub iat: u64,
    pub exp: u64,
    #[serde(rename = "tee-pubkey")]
    pub tee_pubkey: TeePubKey,
    pub cloak_claims: Claims,
    /// The init-data checked against the report, if the guest sent one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_data: Option<InitdataClaims>,
    pub pod: String,
    pub namespace: String,
    /// EAR-shaped copy for Trustee-style consumers; not read back by the broker.
    #[serde(default, skip_deserializing)]
    pub submods: serde_json::Value,
}

pub struct TokenSigner {
    /// HMAC-SHA256 with the key already absorbed; cloned per token (cheaper than
    /// keying a MAC each time). The key itself is not kept.
    keyed: Hmac<Sha256>,
    ttl_secs: u64,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner").field("key", &"<redacted>").finish()
    }
}

/// base64url of `{"alg":"HS256","typ":"JWT"}`: the only header this broker issues,
/// so the only one it accepts.
const HEADER_B64: &str = "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9";
const MAC_LEN: usize = 32;

impl TokenSigner {
    pub fn generate(ttl_secs: u64) -> Result<Self, TokenError> {
        let mut raw = zeroize::Zeroizing::new([0u8; 32]);
        openssl::rand::rand_priv_bytes(&mut raw[..])?;
        Self::from_key(&raw, ttl_secs)
    }

    /// A signer over a given key (the shared one of the etcd backend).
    pub fn from_key(key: &[u8; 32], ttl_secs: u64) -> Result<Self, TokenError> {
        let keyed = Hmac::<Sha256>::new_from_slice(&key[..]).map_err(|_| TokenError::Key)?;
        Ok(Self { keyed, ttl_secs })
    }

    fn mac(&self, signing_input: &[u8]) -> [u8; MAC_LEN] {
        let mut m = self.keyed.clone();
        m.update(signing_input);
        m.finalize().into_bytes().into()
    }

    pub fn ttl_secs(&self) -> u64 {
        self.ttl_secs
    }

    pub fn issue(
        &self,
        tee_pubkey: TeePubKey,
        claims: Claims,
        init_data: Option<InitdataClaims>,
        pod: &str,
        namespace: &str,
    ) -> Result<(String, u64), TokenError> {
        let iat = crate::now_secs();
        let exp = iat + self.ttl_secs;
        let submods = json!({"cpu0": {
            "ear.status": "affirming",
            "ear.veraison.annotated-evidence": {
                claims.tee_name(): &claims,
                "runtime_data_claims": {"tee-pubkey": &tee_pubkey},
                // As Trustee: the verified `[data]` entries, null for an unbound guest.
                "init_data_claims": init_data.as_ref().map(|d| &d.data),
            }
        }});
        let payload = TokenPayload {
            iss: "cloak-kbs".into(),
            iat,
            exp,
            tee_pubkey,
            cloak_claims: claims,
            init_data,
            pod: pod.into(),
            namespace: namespace.into(),
            submods,
        };
        let body = serde_json::to_vec(&payload).map_err(TokenError::Payload)?;
        let mut token = String::with_capacity(HEADER_B64.len() + body.len() * 4 / 3 + 48);
        token.push_str(HEADER_B64);
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(body, &mut token);
        let mac = self.mac(token.as_bytes());
        token.push('.');
        URL_SAFE_NO_PAD.encode_string(mac, &mut token);
        Ok((token, exp))
    }

    pub fn verify(&self, token: &str) -> Result<TokenPayload, TokenError> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Format);
        };
        if h != HEADER_B64 {
            return Err(TokenError::Alg);
        }
        let sig = URL_SAFE_NO_PAD.decode(s).map_err(|_| TokenError::Format)?;
        if sig.len() != MAC_LEN {
            return Err(TokenError::Signature);
        }
        // The signing input is the token up to its second dot.
        let signed = &token[..h.len() + 1 + p.len()];
        if !bool::from(self.mac(signed.as_bytes()).ct_eq(&sig[..])) {
            return Err(TokenError::Signature);
        }
        let body = URL_SAFE_NO_PAD.decode(p).map_err(|_| TokenError::Format)?;
        let payload: TokenPayload = serde_json::from_slice(&body).map_err(TokenError::Payload)?;
        if payload.exp <= crate::now_secs() {
            return Err(TokenError::Expired);
        }
        Ok(payload)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::claims::SampleClaims;

    fn key() -> TeePubKey {
        TeePubKey::EC { crv: "P-256".into(), alg: "ECDH-ES+A256KW".into(), x: "x".into(), y: "y".into() }
    }

    #[test]
    fn issue_verify_and_tamper() {
        let s = TokenSigner::generate(60).unwrap();
        let (t, _) = s
            .issue(key(), Claims::Sample(SampleClaims { svn: "1".into(), init_data: None }), None, "p", "n")
            .unwrap();
        let p = s.verify(&t).unwrap();
        assert_eq!(p.pod, "p");
        let other = TokenSigner::generate(60).unwrap();
        assert!(matches!(other.verify(&t), Err(TokenError::Signature)));
        let mut bad = t.clone();
        bad.push('A');
        assert!(s.verify(&bad).is_err());
        assert!(s.verify("a.b").is_err());
    }

    #[test]
    fn header_is_hs256_and_nothing_else_is_accepted() {
        assert_eq!(URL_SAFE_NO_PAD.decode(HEADER_B64).unwrap(), br#"{"alg":"HS256","typ":"JWT"}"#);
        let s = TokenSigner::generate(60).unwrap();
        let (t, _) = s
            .issue(key(), Claims::Sample(SampleClaims { svn: "1".into(), init_data: None }), None, "p", "n")
            .unwrap();
        let (_, rest) = t.split_once('.').unwrap();
        for alg in ["none", "ES256", "HS512"] {
            let h = URL_SAFE_NO_PAD.encode(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#));
            assert!(matches!(s.verify(&format!("{h}.{rest}")), Err(TokenError::Alg)), "{alg}");
        }
        // `alg: none` with an empty signature.
        let (hp, _) = t.rsplit_once('.').unwrap();
        assert!(s.verify(&format!("{hp}.")).is_err());
    }

    #[test]
    fn tampered_payload_is_refused() {
        let s = TokenSigner::generate(60).unwrap();
        let (t, _) = s
            .issue(key(), Claims::Sample(SampleClaims { svn: "1".into(), init_data: None }), None, "p", "n")
            .unwrap();
        let parts: Vec<&str> = t.split('.').collect();
        let body = String::from_utf8(URL_SAFE_NO_PAD.decode(parts[1]).unwrap()).unwrap();
        let forged = URL_SAFE_NO_PAD.encode(body.replace(r#""svn":"1""#, r#""svn":"9""#));
        assert_ne!(forged, parts[1]);
        let t2 = format!("{}.{forged}.{}", parts[0], parts[2]);
        assert!(matches!(s.verify(&t2), Err(TokenError::Signature)));
    }

    #[test]
    fn replicas_with_the_same_key_accept_each_others_tokens() {
        let a = TokenSigner::from_key(&[7u8; 32], 60).unwrap();
        let b = TokenSigner::from_key(&[7u8; 32], 60).unwrap();
        let (t, _) = a
            .issue(key(), Claims::Sample(SampleClaims { svn: "1".into(), init_data: None }), None, "p", "n")
            .unwrap();
        assert_eq!(b.verify(&t).unwrap().pod, "p");
        let c = TokenSigner::from_key(&[8u8; 32], 60).unwrap();
        assert!(matches!(c.verify(&t), Err(TokenError::Signature)));
    }

    #[test]
    fn expired_token_is_refused() {
        let s = TokenSigner::generate(0).unwrap();
        let (t, _) = s
            .issue(key(), Claims::Sample(SampleClaims { svn: "1".into(), init_data: None }), None, "p", "n")
            .unwrap();
        assert!(matches!(s.verify(&t), Err(TokenError::Expired)));
    }
}
