//! Admin authentication, as Trustee's `AuthenticatedAuthorization` mode: a Bearer JWT
//! signed with EdDSA (Ed25519) by the key whose SPKI PEM the operator configured, not
//! expired, not before `nbf`, with a `role` claim equal to "admin", and `iss`/`aud`
//! matching when they are configured. A token is also refused when it is valid for
//! longer than the configured maximum (`exp - iat` or `exp - now`), so a token that
//! leaks cannot be used for years.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use openssl::pkey::{Id, PKey, Public};
use openssl::sign::Verifier;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin API is disabled: no admin public key is configured")]
    Disabled,
    #[error("missing Authorization: Bearer header")]
    Missing,
    #[error("admin token is not a compact JWS: {0}")]
    Format(&'static str),
    #[error("admin token algorithm {0:?} is not EdDSA")]
    Alg(String),
    #[error("admin token signature is invalid")]
    Signature,
    #[error("admin token has expired")]
    Expired,
    #[error("admin token is not valid yet")]
    NotYetValid,
    #[error("admin token has no exp claim")]
    NoExpiry,
    #[error(
        "admin token is valid for {lifetime_secs} s, longer than this broker's maximum of {max_secs} s \
         (admin_token_max_lifetime_secs); sign tokens that expire sooner"
    )]
    LifetimeTooLong { lifetime_secs: u64, max_secs: u64 },
    #[error("admin token role {0:?} is not allowed (need \"admin\")")]
    Role(String),
    #[error("admin token issuer or audience does not match")]
    IssuerAudience,
    #[error("admin public key is not an Ed25519 SPKI PEM: {0}")]
    Key(String),
}

#[derive(Deserialize)]
struct AdminClaims {
    // Numbers as JSON values: some JWT libraries write NumericDate as a float.
    exp: Option<serde_json::Value>,
    nbf: Option<serde_json::Value>,
    iat: Option<serde_json::Value>,
    role: Option<String>,
    iss: Option<String>,
    aud: Option<serde_json::Value>,
}

pub struct AdminVerifier {
    key: PKey<Public>,
    issuer: Option<String>,
    audience: Option<String>,
    max_lifetime_secs: u64,
}

impl std::fmt::Debug for AdminVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminVerifier")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("max_lifetime_secs", &self.max_lifetime_secs)
            .finish()
    }
}

impl AdminVerifier {
    /// `max_lifetime_secs`: the longest validity a token may claim (see the module doc).
    pub fn from_pem(
        pem: &[u8],
        issuer: Option<String>,
        audience: Option<String>,
        max_lifetime_secs: u64,
    ) -> Result<Self, AdminError> {
        let key = PKey::public_key_from_pem(pem).map_err(|e| AdminError::Key(e.to_string()))?;
        if key.id() != Id::ED25519 {
            return Err(AdminError::Key("key type is not Ed25519".into()));
        }
        Ok(Self { key, issuer, audience, max_lifetime_secs })
    }

    /// Checks an `Authorization` header value.
    pub fn check(&self, authorization: Option<&str>) -> Result<(), AdminError> {
        let token = authorization
            .and_then(|h| h.strip_prefix("Bearer ").or_else(|| h.strip_prefix("bearer ")))
            .map(str::trim)
            .ok_or(AdminError::Missing)?;
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) = (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AdminError::Format("need three dot-separated parts"));
        };
        let header: serde_json::Value = URL_SAFE_NO_PAD
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(AdminError::Format("header is not base64url JSON"))?;
        let alg = header.get("alg").and_then(|a| a.as_str()).unwrap_or_default();
        if alg != "EdDSA" {
            return Err(AdminError::Alg(alg.into()));
        }
        let sig = URL_SAFE_NO_PAD.decode(s).map_err(|_| AdminError::Format("signature is not base64url"))?;
        let ok = Verifier::new_without_digest(&self.key)
            .and_then(|mut v| v.verify_oneshot(&sig, format!("{h}.{p}").as_bytes()))
            .unwrap_or(false);
        if !ok {
            return Err(AdminError::Signature);
        }
        let claims: AdminClaims = URL_SAFE_NO_PAD
            .decode(p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(AdminError::Format("claims are not base64url JSON of the expected types"))?;
        let now = crate::now_secs();
        // `as u64` saturates: 1e300 becomes u64::MAX, negative dates 0.
        let date = |v: &Option<serde_json::Value>| v.as_ref().and_then(|x| x.as_f64()).map(|f| f as u64);
        let exp = date(&claims.exp).ok_or(AdminError::NoExpiry)?;
        if exp <= now {
            return Err(AdminError::Expired);
        }
        let lifetime_secs = (exp - now).max(date(&claims.iat).map_or(0, |iat| exp.saturating_sub(iat)));
        if lifetime_secs > self.max_lifetime_secs {
            return Err(AdminError::LifetimeTooLong { lifetime_secs, max_secs: self.max_lifetime_secs });
        }
        if date(&claims.nbf).is_some_and(|nbf| nbf > now) {
            return Err(AdminError::NotYetValid);
        }
        match claims.role.as_deref() {
            Some("admin") => {}
            other => return Err(AdminError::Role(other.unwrap_or("").into())),
        }
        if let Some(want) = &self.issuer {
            if claims.iss.as_deref() != Some(want.as_str()) {
                return Err(AdminError::IssuerAudience);
            }
        }
        if let Some(want) = &self.audience {
            let ok = match &claims.aud {
                Some(serde_json::Value::String(a)) => a == want,
                Some(serde_json::Value::Array(v)) => v.iter().any(|a| a.as_str() == Some(want)),
                _ => false,
            };
            if !ok {
                return Err(AdminError::IssuerAudience);
            }
        }
        Ok(())
    }
}

/// Generates an Ed25519 admin key pair as (PKCS#8 private PEM, SPKI public PEM), the
/// format `openssl genpkey -algorithm ed25519` writes.
pub fn generate_admin_key() -> Result<(zeroize::Zeroizing<Vec<u8>>, Vec<u8>), openssl::error::ErrorStack> {
    let key = PKey::generate_ed25519()?;
    Ok((zeroize::Zeroizing::new(key.private_key_to_pem_pkcs8()?), key.public_key_to_pem()?))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use openssl::pkey::Private;
    use serde_json::json;

    fn token(key: &PKey<Private>, claims: &serde_json::Value) -> String {
        let h = URL_SAFE_NO_PAD.encode(r#"{"alg":"EdDSA","typ":"JWT"}"#);
        let p = URL_SAFE_NO_PAD.encode(claims.to_string());
        let mut signer = openssl::sign::Signer::new_without_digest(key).unwrap();
        let sig = signer.sign_oneshot_to_vec(format!("{h}.{p}").as_bytes()).unwrap();
        format!("Bearer {h}.{p}.{}", URL_SAFE_NO_PAD.encode(sig))
    }

    /// Issue 21, finding 9: tokens valid for 100 years, or with `exp = 1e300`, were
    /// accepted.
    #[test]
    fn admin_tokens_valid_for_a_century_or_until_1e300_are_refused() {
        let key = PKey::generate_ed25519().unwrap();
        let v = AdminVerifier::from_pem(&key.public_key_to_pem().unwrap(), None, None, 3600).unwrap();
        let now = crate::now_secs();
        let check = |c: serde_json::Value| v.check(Some(&token(&key, &c)));
        check(json!({"role": "admin", "iat": now, "exp": now + 600})).unwrap();
        check(json!({"role": "admin", "iat": now, "exp": now + 3600})).unwrap();
        // Fractional dates (other JWT libraries) are still read.
        check(json!({"role": "admin", "iat": now as f64 + 0.25, "exp": now as f64 + 600.5})).unwrap();
        let century = now + 100 * 365 * 86_400;
        for claims in [
            json!({"role": "admin", "iat": now, "exp": century}),
            json!({"role": "admin", "exp": century}),
            json!({"role": "admin", "iat": now, "exp": 1e300}),
            json!({"role": "admin", "exp": 1e300}),
            // Issued two hours ago, still valid a minute: a 2 h token.
            json!({"role": "admin", "iat": now - 7200, "exp": now + 60}),
        ] {
            let e = check(claims.clone()).unwrap_err();
            assert!(matches!(e, AdminError::LifetimeTooLong { max_secs: 3600, .. }), "{claims}: {e}");
            assert!(e.to_string().contains("maximum of 3600 s"), "{e}");
        }
    }
}
