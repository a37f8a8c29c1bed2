//! `AdminClient`: registers and deletes resources and sets the resource policy,
//! authenticated with a short-lived EdDSA (Ed25519) JWT carrying the claims
//! Trustee's `AuthenticatedAuthorization` mode expects (`iss`, `aud`, `role`,
//! `iat`, `exp`). A fresh JWT is signed per request, so none is kept around.
//!
//! `iat` and `exp` are whole seconds: Trustee's JWT validation reads a NumericDate
//! with a fraction as a missing claim and refuses the token.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::prelude::{Engine, BASE64_URL_SAFE_NO_PAD};
use josekit::jws::alg::eddsa::EddsaJwsSigner;
use josekit::jws::{EdDSA, JwsHeader};
use josekit::jwt::{self, JwtPayload};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, IF_NONE_MATCH};
use reqwest::{Method, StatusCode, Url};
use serde_json::json;
use zeroize::Zeroizing;

use crate::client::{
    broker_answered, endpoint, parse_base_url, send_with_retry, shown, Answer, Deadline, Target,
};
use crate::error::{KbsError, Step};
use crate::uri::ResourceUri;

/// Issuer claim of admin tokens.
pub const ADMIN_ISSUER: &str = "cloak-admin";
/// Audience claim of admin tokens.
pub const ADMIN_AUDIENCE: &str = "kbs";
/// Role claim of admin tokens (Trustee's regex ACLs match on it).
pub const ADMIN_ROLE: &str = "admin";
/// Lifetime of one admin token.
const ADMIN_TOKEN_TTL: Duration = Duration::from_secs(300);
/// Total retry budget of one admin call.
const ADMIN_DEADLINE: Duration = Duration::from_secs(30);

/// Header cloak-kbs puts on every answer of its admin read-back route, so a client can
/// tell "the route exists and the resource is absent" from "no such route" (Trustee).
pub const ADMIN_READ_HEADER: &str = "x-cloak-admin-read";

/// What a create-only write found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// The resource was stored.
    New,
    /// The resource existed already; its bytes were left as they were.
    Exists,
}

fn refusal(base: &Url, path: &str, answer: &Answer) -> KbsError {
    let status = answer.status;
    KbsError::Rejected {
        step: Step::Admin,
        status: status.as_u16(),
        reason: format!("{path} refused: {}", broker_answered(base, status, &answer.body)),
    }
}

/// The KBS admin API client.
pub struct AdminClient {
    base: Url,
    http: reqwest::Client,
    signer: EddsaJwsSigner,
}

impl std::fmt::Debug for AdminClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminClient").field("url", &self.base.as_str()).field("key", &"<redacted>").finish()
    }
}

impl AdminClient {
    /// `admin_private_key_pem`: an Ed25519 PKCS#8 PEM, as
    /// `openssl genpkey -algorithm ed25519` writes it.
    pub fn new(url: &str, admin_private_key_pem: &[u8]) -> Result<Self, KbsError> {
        Self::trusting(url, admin_private_key_pem, None)
    }

    /// Like [`AdminClient::new`], also trusting `ca` for an https broker (`--kbs-cert`).
    pub fn trusting(
        url: &str,
        admin_private_key_pem: &[u8],
        ca: Option<&crate::tls::CaBundle>,
    ) -> Result<Self, KbsError> {
        let base = parse_base_url(url)?;
        let signer = EdDSA
            .signer_from_pem(admin_private_key_pem)
            .map_err(|_| KbsError::Config("admin key is not an Ed25519 PKCS#8 PEM private key".into()))?;
        Ok(AdminClient { base, http: crate::tls::http_client(ca)?, signer })
    }

    /// A signed admin JWT valid for a few minutes.
    pub fn admin_token(&self) -> Result<Zeroizing<String>, KbsError> {
        let mut header = JwsHeader::new();
        header.set_token_type("JWT");
        let mut payload = JwtPayload::new();
        // josekit's set_issued_at/set_expires_at write fractional seconds.
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| KbsError::Config("the system clock is before 1970".into()))?
            .as_secs();
        payload.set_issuer(ADMIN_ISSUER);
        payload.set_audience(vec![ADMIN_AUDIENCE]);
        let claims = [
            ("iat", json!(now)),
            ("exp", json!(now + ADMIN_TOKEN_TTL.as_secs())),
            ("role", json!(ADMIN_ROLE)),
        ];
        for (name, value) in claims {
            payload
                .set_claim(name, Some(value))
                .map_err(|e| KbsError::Config(format!("cannot build the admin token: {e}")))?;
        }
        jwt::encode_with_signer(&payload, &header, &self.signer)
            .map(Zeroizing::new)
            .map_err(|e| KbsError::Config(format!("cannot sign the admin token: {e}")))
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        content_type: &'static str,
        create_only: bool,
        body: Vec<u8>,
    ) -> Result<Answer, KbsError> {
        let url = endpoint(&self.base, path)?;
        let token = self.admin_token()?;
        let target = Target { base: &self.base, deadline: Deadline::from_now(ADMIN_DEADLINE) };
        let body = Zeroizing::new(body);
        send_with_retry(&self.http, Step::Admin, &target, |http| {
            let req = http
                .request(method.clone(), url.clone())
                .header(AUTHORIZATION, format!("Bearer {}", token.as_str()))
                .header(CONTENT_TYPE, content_type);
            let req = if create_only { req.header(IF_NONE_MATCH, "*") } else { req };
            req.body(body.to_vec())
        })
        .await
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        content_type: &'static str,
        body: Vec<u8>,
    ) -> Result<(), KbsError> {
        let answer = self.send(method, path, content_type, false, body).await?;
        if answer.status.is_success() {
            return Ok(());
        }
        Err(refusal(&self.base, path, &answer))
    }

    /// Stores `data` as the resource `uri` only if the KBS holds nothing there yet
    /// (`If-None-Match: *`; cloak-kbs answers 412 when it exists and keeps its bytes).
    ///
    /// Only cloak-kbs honours the precondition: Trustee overwrites. Callers that must
    /// not replace a resource on Trustee check [`AdminClient::read_back`] first, which
    /// fails with [`KbsError::Unsupported`] there.
    pub async fn create_resource(&self, uri: &ResourceUri, data: &[u8]) -> Result<Created, KbsError> {
        let path = format!("kbs/v0/resource/{}", uri.path());
        let answer = self.send(Method::POST, &path, "application/octet-stream", true, data.to_vec()).await?;
        if answer.status.is_success() {
            Ok(Created::New)
        } else if answer.status == StatusCode::PRECONDITION_FAILED {
            Ok(Created::Exists)
        } else {
            Err(refusal(&self.base, &path, &answer))
        }
    }

    /// Reads a resource back with the admin key (`GET /kbs/v0/admin/resource/<path>`,
    /// a cloak-kbs extension limited to its `admin_readable` patterns): `Some(bytes)`,
    /// or `None` when the resource does not exist. A broker without the route
    /// (Trustee) gives [`KbsError::Unsupported`].
    pub async fn read_back(&self, uri: &ResourceUri) -> Result<Option<Zeroizing<Vec<u8>>>, KbsError> {
        let path = format!("kbs/v0/admin/resource/{}", uri.path());
        let answer = self.send(Method::GET, &path, "application/octet-stream", false, Vec::new()).await?;
        if !answer.headers.contains_key(ADMIN_READ_HEADER) {
            return Err(KbsError::Unsupported(format!(
                "the KBS at {} has no admin read-back of resources (HTTP {} for {path}; Trustee has none): \
                 cannot tell whether {uri} already holds a key",
                shown(&self.base),
                answer.status.as_u16()
            )));
        }
        if answer.status.is_success() {
            return Ok(Some(answer.body));
        }
        if answer.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        Err(refusal(&self.base, &path, &answer))
    }

    /// Stores `data` as the resource `uri` (`POST /kbs/v0/resource/<path>`).
    pub async fn put_resource(&self, uri: &ResourceUri, data: &[u8]) -> Result<(), KbsError> {
        self.call(
            Method::POST,
            &format!("kbs/v0/resource/{}", uri.path()),
            "application/octet-stream",
            data.to_vec(),
        )
        .await
    }

    /// Deletes the resource `uri`.
    pub async fn delete_resource(&self, uri: &ResourceUri) -> Result<(), KbsError> {
        self.call(
            Method::DELETE,
            &format!("kbs/v0/resource/{}", uri.path()),
            "application/octet-stream",
            Vec::new(),
        )
        .await
    }

    /// Replaces the resource policy (`POST /kbs/v0/resource-policy`,
    /// `{"policy": base64url(policy)}`).
    pub async fn set_resource_policy(&self, policy: &str) -> Result<(), KbsError> {
        let body = serde_json::to_vec(&json!({"policy": BASE64_URL_SAFE_NO_PAD.encode(policy)}))
            .map_err(|e| KbsError::Config(format!("cannot encode the policy: {e}")))?;
        self.call(Method::POST, "kbs/v0/resource-policy", "application/json", body).await
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Issue 21, finding 10: `exp` was written as `1796611887.2587447`, which Trustee
    /// reads as no `exp` at all ("Cannot verify token with any of the issuers").
    #[test]
    fn admin_token_iat_and_exp_are_integer_numeric_dates() {
        let key = josekit::jws::EdDSA.generate_key_pair(josekit::jwk::alg::ed::EdCurve::Ed25519).unwrap();
        let admin = AdminClient::new("http://127.0.0.1:1", &key.to_pem_private_key()).unwrap();
        let token = admin.admin_token().unwrap();
        let payload = token.split('.').nth(1).unwrap();
        let claims: serde_json::Value =
            serde_json::from_slice(&BASE64_URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        let (iat, exp) = (&claims["iat"], &claims["exp"]);
        assert!(iat.is_u64() && exp.is_u64(), "{claims}");
        assert_eq!(exp.as_u64().unwrap() - iat.as_u64().unwrap(), ADMIN_TOKEN_TTL.as_secs());
        assert_eq!(claims["role"], ADMIN_ROLE);
    }
}
