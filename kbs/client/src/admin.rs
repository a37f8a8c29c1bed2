//! `AdminClient`: registers and deletes resources and sets the resource policy,
//! authenticated with a short-lived EdDSA (Ed25519) JWT carrying the claims
//! Trustee's `AuthenticatedAuthorization` mode expects (`iss`, `aud`, `role`,
//! `iat`, `exp`). A fresh JWT is signed per request, so none is kept around.

use std::time::{Duration, Instant, SystemTime};

use base64::prelude::{Engine, BASE64_URL_SAFE_NO_PAD};
use josekit::jws::alg::eddsa::EddsaJwsSigner;
use josekit::jws::{EdDSA, JwsHeader};
use josekit::jwt::{self, JwtPayload};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE};
use reqwest::{Method, StatusCode, Url};
use serde_json::json;
use zeroize::Zeroizing;

use crate::client::{endpoint, http_client, parse_base_url, send_with_retry, server_reason};
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

/// The KBS admin API client.
pub struct AdminClient {
    base: Url,
    http: reqwest::Client,
    signer: EddsaJwsSigner,
}

impl std::fmt::Debug for AdminClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminClient")
            .field("url", &self.base.as_str())
            .field("key", &"<redacted>")
            .finish()
    }
}

impl AdminClient {
    /// `admin_private_key_pem`: an Ed25519 PKCS#8 PEM, as
    /// `openssl genpkey -algorithm ed25519` writes it.
    pub fn new(url: &str, admin_private_key_pem: &[u8]) -> Result<Self, KbsError> {
        let base = parse_base_url(url)?;
        let signer = EdDSA.signer_from_pem(admin_private_key_pem).map_err(|_| {
            KbsError::Config("admin key is not an Ed25519 PKCS#8 PEM private key".into())
        })?;
        Ok(AdminClient {
            base,
            http: http_client()?,
            signer,
        })
    }

    /// A signed admin JWT valid for a few minutes.
    pub fn admin_token(&self) -> Result<Zeroizing<String>, KbsError> {
        let mut header = JwsHeader::new();
        header.set_token_type("JWT");
        let mut payload = JwtPayload::new();
        let now = SystemTime::now();
        payload.set_issuer(ADMIN_ISSUER);
        payload.set_audience(vec![ADMIN_AUDIENCE]);
        payload.set_issued_at(&now);
        payload.set_expires_at(&(now + ADMIN_TOKEN_TTL));
        payload
            .set_claim("role", Some(json!(ADMIN_ROLE)))
            .map_err(|e| KbsError::Config(format!("cannot build the admin token: {e}")))?;
        jwt::encode_with_signer(&payload, &header, &self.signer)
            .map(Zeroizing::new)
            .map_err(|e| KbsError::Config(format!("cannot sign the admin token: {e}")))
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        content_type: &'static str,
        body: Vec<u8>,
    ) -> Result<(), KbsError> {
        let url = endpoint(&self.base, path)?;
        let token = self.admin_token()?;
        let deadline = Instant::now() + ADMIN_DEADLINE;
        let body = Zeroizing::new(body);
        let answer = send_with_retry(&self.http, Step::Admin, deadline, |http| {
            http.request(method.clone(), url.clone())
                .header(AUTHORIZATION, format!("Bearer {}", token.as_str()))
                .header(CONTENT_TYPE, content_type)
                .body(body.to_vec())
        })
        .await?;
        if answer.status.is_success() {
            return Ok(());
        }
        let status = answer.status;
        let reason = server_reason(status, &answer.body);
        Err(KbsError::Rejected {
            step: Step::Admin,
            status: status.as_u16(),
            reason: if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                format!("admin token refused for {path}: {reason}")
            } else {
                format!("{path}: {reason}")
            },
        })
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
        self.call(
            Method::POST,
            "kbs/v0/resource-policy",
            "application/json",
            body,
        )
        .await
    }
}
