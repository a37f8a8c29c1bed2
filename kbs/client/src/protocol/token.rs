//! The attestation token: an opaque JWT for the client, kept only to present it
//! as a Bearer and to know when it expires (`exp`). The client cannot and need
//! not verify its signature: the KBS that reads it does.

use std::fmt;

use base64::prelude::{Engine, BASE64_URL_SAFE_NO_PAD};
use zeroize::Zeroizing;

use super::{malformed, ProtocolError};

/// A bearer token. `Debug` is redacted and there is no `Display`.
#[derive(Clone)]
pub struct Token {
    jwt: Zeroizing<String>,
    exp: Option<u64>,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Token(<redacted>, exp={:?})", self.exp)
    }
}

/// Longest token accepted; multi-GPU EARs reach ~170 KiB, this leaves room.
const MAX_TOKEN: usize = 1024 * 1024;

impl Token {
    /// Parses a compact JWT just enough to read its `exp` claim.
    pub fn parse(jwt: String) -> Result<Token, ProtocolError> {
        let jwt = Zeroizing::new(jwt);
        if jwt.len() > MAX_TOKEN {
            return Err(malformed("token", "longer than 1 MiB"));
        }
        let mut parts = jwt.split('.');
        let (Some(_header), Some(payload), Some(_sig), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(malformed("token", "not a compact JWT (three dot-separated parts)"));
        };
        let raw = BASE64_URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .map_err(|e| malformed("token payload", e))?;
        let claims: serde_json::Value =
            serde_json::from_slice(&raw).map_err(|e| malformed("token payload", e))?;
        if !claims.is_object() {
            return Err(malformed("token payload", "not a JSON object"));
        }
        let exp = match claims.get("exp") {
            None | Some(serde_json::Value::Null) => None,
            Some(v) => Some(
                v.as_u64()
                    .or_else(|| v.as_f64().filter(|f| *f >= 0.0).map(|f| f as u64))
                    .ok_or_else(|| malformed("token exp", "not a non-negative number"))?,
            ),
        };
        Ok(Token { jwt, exp })
    }

    /// The `exp` claim (seconds since the epoch), if present.
    pub fn exp(&self) -> Option<u64> {
        self.exp
    }

    /// Whether the token can still be presented at `now` (seconds since the
    /// epoch), keeping `margin` seconds for clock skew and the request itself.
    /// A token without `exp` is used until the KBS says 401.
    pub fn is_fresh(&self, now: u64, margin: u64) -> bool {
        self.exp.is_none_or(|exp| now.saturating_add(margin) < exp)
    }

    /// The JWT text, for the `Authorization` header only.
    pub fn expose(&self) -> &str {
        &self.jwt
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn jwt(claims: &str) -> String {
        format!(
            "{}.{}.sig",
            BASE64_URL_SAFE_NO_PAD.encode(br#"{"alg":"ES256"}"#),
            BASE64_URL_SAFE_NO_PAD.encode(claims)
        )
    }

    #[test]
    fn expiry_logic() {
        let t = Token::parse(jwt(r#"{"exp":1000,"iat":900}"#)).unwrap();
        assert_eq!(t.exp(), Some(1000));
        assert!(t.is_fresh(900, 10));
        assert!(t.is_fresh(989, 10));
        assert!(!t.is_fresh(990, 10));
        assert!(!t.is_fresh(1000, 0));
        assert!(!t.is_fresh(u64::MAX, 10));
        let t = Token::parse(jwt(r#"{"sub":"x"}"#)).unwrap();
        assert_eq!(t.exp(), None);
        assert!(t.is_fresh(u64::MAX, 10));
        let t = Token::parse(jwt(r#"{"exp":1000.5}"#)).unwrap();
        assert_eq!(t.exp(), Some(1000));
    }

    #[test]
    fn rejects_malformed_tokens() {
        for bad in [
            String::new(),
            "a.b".to_owned(),
            "a.b.c.d".to_owned(),
            "a.!!!.c".to_owned(),
            jwt("[1]"),
            jwt(r#"{"exp":"soon"}"#),
            jwt(r#"{"exp":-5}"#),
        ] {
            assert!(Token::parse(bad.clone()).is_err(), "{bad}");
        }
    }

    #[test]
    fn debug_is_redacted() {
        let t = Token::parse(jwt(r#"{"exp":5}"#)).unwrap();
        let d = format!("{t:?}");
        assert!(!d.contains("sig"), "{d}");
    }
}
