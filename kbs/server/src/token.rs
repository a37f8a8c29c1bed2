//! The attestation token: a compact JWS (ES256) signed by a key generated when the
//! process starts, so tokens never outlive the broker. Its payload carries the TEE
//! public key (at `/tee-pubkey` and at the EAR path Trustee uses) and the verified
//! claims, which the resource endpoint re-checks against the current policy.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use kbs_types::TeePubKey;
use openssl::bn::BigNum;
use openssl::ec::{EcGroup, EcKey};
use openssl::ecdsa::EcdsaSig;
use openssl::nid::Nid;
use openssl::pkey::Private;
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::claims::Claims;

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("token is not a compact JWS")]
    Format,
    #[error("token header is not ES256")]
    Alg,
    #[error("token signature is invalid")]
    Signature,
    #[error("token has expired")]
    Expired,
    #[error("token payload is malformed: {0}")]
    Payload(String),
    #[error("token signing failed: {0}")]
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
    pub pod: String,
    pub namespace: String,
    /// EAR-shaped copy for Trustee-style consumers; not read back by the broker.
    #[serde(default, skip_deserializing)]
    pub submods: serde_json::Value,
}

pub struct TokenSigner {
    key: EcKey<Private>,
    ttl_secs: u64,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner").field("key", &"<redacted>").finish()
    }
}

const HEADER: &str = r#"{"alg":"ES256","typ":"JWT"}"#;

impl TokenSigner {
    pub fn generate(ttl_secs: u64) -> Result<Self, TokenError> {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1)?;
        Ok(Self {
            key: EcKey::generate(&group)?,
            ttl_secs,
        })
    }

    pub fn ttl_secs(&self) -> u64 {
        self.ttl_secs
    }

    pub fn issue(
        &self,
        tee_pubkey: TeePubKey,
        claims: Claims,
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
            }
        }});
        let payload = TokenPayload {
            iss: "cloak-kbs".into(),
            iat,
            exp,
            tee_pubkey,
            cloak_claims: claims,
            pod: pod.into(),
            namespace: namespace.into(),
            submods,
        };
        let body = serde_json::to_vec(&payload).map_err(|e| TokenError::Payload(e.to_string()))?;
        let signing_input = format!(
            "{}.{}",
            URL_SAFE_NO_PAD.encode(HEADER),
            URL_SAFE_NO_PAD.encode(body)
        );
        let digest = openssl::sha::sha256(signing_input.as_bytes());
        let sig = EcdsaSig::sign(&digest, &self.key)?;
        // JWS wants r||s, each 32 bytes big-endian, not DER.
        let mut raw = sig.r().to_vec_padded(32)?;
        raw.extend(sig.s().to_vec_padded(32)?);
        Ok((
            format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(raw)),
            exp,
        ))
    }

    pub fn verify(&self, token: &str) -> Result<TokenPayload, TokenError> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Format);
        };
        let header = URL_SAFE_NO_PAD.decode(h).map_err(|_| TokenError::Format)?;
        let header: serde_json::Value = serde_json::from_slice(&header).map_err(|_| TokenError::Format)?;
        if header.get("alg").and_then(|a| a.as_str()) != Some("ES256") {
            return Err(TokenError::Alg);
        }
        let sig = URL_SAFE_NO_PAD.decode(s).map_err(|_| TokenError::Format)?;
        if sig.len() != 64 {
            return Err(TokenError::Signature);
        }
        let ok = (|| -> Result<bool, openssl::error::ErrorStack> {
            let sig = EcdsaSig::from_private_components(
                BigNum::from_slice(&sig[..32])?,
                BigNum::from_slice(&sig[32..])?,
            )?;
            let digest = openssl::sha::sha256(format!("{h}.{p}").as_bytes());
            sig.verify(&digest, &self.key)
        })()
        .unwrap_or(false);
        if !ok {
            return Err(TokenError::Signature);
        }
        let body = URL_SAFE_NO_PAD.decode(p).map_err(|_| TokenError::Format)?;
        let payload: TokenPayload =
            serde_json::from_slice(&body).map_err(|e| TokenError::Payload(e.to_string()))?;
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
        let (t, _) = s.issue(key(), Claims::Sample(SampleClaims { svn: "1".into() }), "p", "n").unwrap();
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
    fn expired_token_is_refused() {
        let s = TokenSigner::generate(0).unwrap();
        let (t, _) = s.issue(key(), Claims::Sample(SampleClaims { svn: "1".into() }), "p", "n").unwrap();
        assert!(matches!(s.verify(&t), Err(TokenError::Expired)));
    }
}
