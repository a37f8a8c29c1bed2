//! A streaming client for the OCI distribution (Docker registry v2) API.
//!
//! One client talks to one repository. Authentication follows the registry's
//! `WWW-Authenticate` challenge: Basic with the resolved credentials, or Bearer via
//! the token realm (anonymously or with the credentials); the header is cached and a
//! request that meets a 401 is retried once after re-authenticating. Streaming
//! uploads (whose bodies cannot be replayed) run only after a small request on the
//! same client has settled authentication.
//!
//! Blob uploads take the digest only at the end: POST opens a session, one streaming
//! PATCH carries the bytes as the caller produces them, and the closing
//! `PUT ?digest=` commits, after the caller's expected digest (if any) was checked.
//! Plain HTTP is used only when the caller sets `insecure_plain_http`.
//!
//! Whatever the registry or its token realm sends is bounded ([`crate::bounded`]):
//! bodies are read through one capped, deadlined helper (error bodies 4 KiB,
//! tokens [`MAX_TOKEN_ANSWER`], manifests and configs their callers' caps), every
//! request has the connect and no-progress deadlines of [`RegistryTimeouts`], and
//! every request but a layer stream or upload body also the total one.

use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use futures::Stream;
use reqwest::header::{
    HeaderValue, ACCEPT, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, RANGE, WWW_AUTHENTICATE,
};
use reqwest::{Method, StatusCode, Url};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::auth::{Credentials, Secret};
use crate::bounded::{self, Capped, Deadline, ReadFailure, RegistryTimeouts};
use crate::digest::{Algorithm, Digest, Hasher};
use crate::media_type;
use crate::reference::RegistryRef;

/// Chunks in flight between a blob writer and its PATCH request; bounds memory.
const UPLOAD_QUEUE: usize = 2;
/// Longest error body quoted in an error message.
const MAX_ERROR_BODY: usize = 512;
/// Bytes of an error body read at most (the rest is never read): enough for a
/// distribution error document, nothing a hostile registry can grow.
const ERROR_BODY_CAP: usize = 4 << 10;
/// Largest token answer accepted from a bearer realm (real ones are a few KiB).
pub const MAX_TOKEN_ANSWER: usize = 64 << 10;

/// What went wrong talking to a registry.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    #[error("cannot build the HTTP client")]
    Client(#[source] reqwest::Error),
    /// `via`: " through the proxy URL" when the proxy could not be used.
    #[error("{op} {url}{via}")]
    Http {
        op: String,
        url: String,
        via: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{op} {url}: registry answered {status}: {body}")]
    Status { op: String, url: String, status: u16, body: String },
    /// 401: `hint` says whether credentials were found for the registry, and where
    /// they were looked for (never their value).
    #[error("{op}: {registry} answered 401 Unauthorized: {hint}")]
    Unauthorized { op: String, registry: String, hint: String },
    /// The registry's TLS certificate was refused.
    #[error("{op}: the TLS certificate of the registry {registry} was refused: {problem}")]
    Certificate { op: String, registry: String, problem: crate::transport::CertProblem },
    #[error("setting up the connection to {registry}")]
    Transport {
        registry: String,
        #[source]
        source: crate::transport::TransportError,
    },
    #[error("{op}: access denied by {registry} (403)")]
    Denied { op: String, registry: String },
    #[error("{what} not found in {registry}/{repository}")]
    NotFound { what: String, registry: String, repository: String },
    #[error("cannot understand the registry's authentication challenge {0:?}")]
    BadChallenge(String),
    #[error("token request to {realm} failed: {why}")]
    Token { realm: String, why: String },
    /// The token service could not be reached (the cause has no URL: `realm` says it).
    #[error("token request to {realm} failed")]
    TokenHttp {
        realm: String,
        #[source]
        source: reqwest::Error,
    },
    /// The token service refused the credentials (401) or the scope (403).
    #[error(
        "the token service {realm} of {registry} refused {} ({status}){hint}",
        if *status == 401 { "the credentials" } else { "access to the repository" }
    )]
    TokenRefused { registry: String, realm: String, status: u16, hint: String },
    #[error("token request to {realm}: the answer is larger than the {max}-byte limit (real tokens are a few KiB); refusing it")]
    TokenTooLarge { realm: String, max: usize },
    #[error("{op} at {peer}: {deadline} after {limit:?}; check that the registry is reachable and answering, or raise the registry timeouts")]
    Timeout { op: String, peer: String, deadline: Deadline, limit: Duration },
    #[error("manifest {reference} is larger than {max} bytes")]
    ManifestTooLarge { reference: String, max: u64 },
    #[error("{op}: the registry gave no usable Location header")]
    MissingLocation { op: String },
    #[error("blob upload failed: {0}")]
    Upload(String),
    #[error("blob digest mismatch: expected {expected}, uploaded content hashes to {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("registry stored the manifest as {server}, but its bytes hash to {local}")]
    ServerDigestMismatch { server: String, local: Digest },
    #[error("blob {digest} is larger than the {max}-byte limit for this read")]
    BlobTooLarge { digest: Digest, max: u64 },
    #[error("registry ignored the Range request for {digest} at offset {offset}")]
    RangeIgnored { digest: Digest, offset: u64 },
    #[error("blob writer only computes sha256; cannot check against {0}")]
    UnsupportedAlgorithm(Digest),
}

/// How a client was configured.
#[derive(Debug, Clone)]
pub struct RegistryConfig {
    /// Use `http://` instead of `https://`. Only for registries on a trusted host.
    pub insecure_plain_http: bool,
    /// Credentials, from [`crate::auth::resolve_credentials`]; `None` = anonymous.
    pub credentials: Option<Credentials>,
    /// Ask for push rights when a token is needed (destinations).
    pub push: bool,
    /// Connect, no-progress and total deadlines.
    pub timeouts: RegistryTimeouts,
    /// Where credentials were looked for (for a 401's message), e.g. "the auth
    /// file kbs:///default/credential/test".
    pub credentials_searched: String,
    /// Extra CA roots.
    pub roots: crate::transport::TlsRoots,
    /// The image-pull proxy; `None`: reqwest's default (the proxy environment variables).
    pub proxy: Option<crate::transport::ProxyConfig>,
}

struct Inner {
    http: reqwest::Client,
    base: Url,
    registry: String,
    repository: String,
    credentials: Option<Credentials>,
    push: bool,
    timeouts: RegistryTimeouts,
    credentials_searched: String,
    /// The proxy requests go through (its URL without user information), if any.
    proxy: Option<String>,
    /// The Authorization header currently in use.
    auth: Mutex<Option<Secret>>,
}

/// A distribution v2 client for one repository. Cheap to clone.
#[derive(Clone)]
pub struct RegistryClient {
    inner: Arc<Inner>,
}

impl fmt::Debug for RegistryClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryClient")
            .field("base", &self.inner.base.as_str())
            .field("repository", &self.inner.repository)
            .field("credentials", &self.inner.credentials)
            .finish_non_exhaustive()
    }
}

/// A manifest as served, with the media type the registry declared.
#[derive(Debug, Clone)]
pub struct FetchedManifest {
    pub bytes: Vec<u8>,
    pub media_type: String,
}

impl RegistryClient {
    /// A client for the repository `r` names.
    pub fn new(r: &RegistryRef, cfg: RegistryConfig) -> Result<Self, RegistryError> {
        let scheme = if cfg.insecure_plain_http { "http" } else { "https" };
        let base = Url::parse(&format!("{scheme}://{}/", r.api_host())).map_err(|_| {
            RegistryError::Upload(format!("registry host {:?} does not form a URL", r.registry))
        })?;
        let transport = |source| RegistryError::Transport { registry: r.registry.clone(), source };
        let mut builder = reqwest::Client::builder();
        let roots = cfg.roots.for_registry(&r.registry).map_err(transport)?;
        if !roots.is_empty() {
            builder = builder.tls_certs_merge(roots);
        }
        if let Some(p) = cfg.proxy.as_ref() {
            // Only the configured proxy: not the environment's.
            builder = p.apply(builder.no_proxy()).map_err(transport)?;
        }
        let http = builder
            .user_agent(concat!("cloak/", env!("CARGO_PKG_VERSION")))
            // Without the insecure flag, never follow a redirect to plain HTTP.
            .https_only(!cfg.insecure_plain_http)
            // No client-wide read or total timeout: a streaming upload's answer comes
            // only after its whole body, and a layer stream has no total. Those
            // deadlines are applied per request below.
            .connect_timeout(cfg.timeouts.connect)
            .build()
            .map_err(RegistryError::Client)?;
        Ok(RegistryClient {
            inner: Arc::new(Inner {
                http,
                base,
                registry: r.registry.clone(),
                repository: r.repository.clone(),
                credentials: cfg.credentials,
                push: cfg.push,
                timeouts: cfg.timeouts,
                credentials_searched: cfg.credentials_searched,
                proxy: cfg.proxy.as_ref().and_then(|p| {
                    let u = if cfg.insecure_plain_http { &p.http_proxy } else { &p.https_proxy };
                    u.as_deref().filter(|u| !u.is_empty()).map(crate::transport::redact_url)
                }),
                auth: Mutex::new(None),
            }),
        })
    }

    /// `scheme://host[:port]/` of the registry.
    pub fn base_url(&self) -> &Url {
        &self.inner.base
    }

    /// The repository this client works on.
    pub fn repository(&self) -> &str {
        &self.inner.repository
    }

    fn url(&self, tail: &str) -> Result<Url, RegistryError> {
        let s = format!("v2/{}/{tail}", self.inner.repository);
        self.inner.base.join(&s).map_err(|_| RegistryError::Upload(format!("cannot form a URL from {s:?}")))
    }

    fn auth_header(&self) -> Option<HeaderValue> {
        let guard = self.inner.auth.lock().ok()?;
        let s = guard.as_ref()?;
        let mut v = HeaderValue::from_str(s.expose()).ok()?;
        v.set_sensitive(true);
        Some(v)
    }

    /// A transport error, or the connect deadline if that is what it was.
    fn http_error(&self, op: &str, source: reqwest::Error) -> RegistryError {
        if source.is_connect() && source.is_timeout() {
            let peer = source.url().and_then(|u| u.host_str().map(str::to_string)).unwrap_or_default();
            return self.timeout(op, &peer, Deadline::Connect, self.inner.timeouts.connect);
        }
        if let Some(problem) = crate::transport::cert_problem(&source) {
            return RegistryError::Certificate {
                op: op.to_string(),
                registry: self.inner.registry.clone(),
                problem,
            };
        }
        // A failed CONNECT (hyper's "tunnel error") is the proxy's: name it.
        let via = match &self.inner.proxy {
            Some(p) if report::line(&source).contains("tunnel") => format!(" through the proxy {p}"),
            _ => String::new(),
        };
        // The URL is said once, by this error; reqwest's own text would repeat it.
        RegistryError::Http {
            op: op.to_string(),
            url: source.url().map(|u| u.to_string()).unwrap_or_default(),
            via,
            source: source.without_url(),
        }
    }

    fn timeout(&self, op: &str, peer: &str, deadline: Deadline, limit: Duration) -> RegistryError {
        RegistryError::Timeout { op: op.to_string(), peer: peer.to_string(), deadline, limit }
    }

    fn read_failure(&self, op: &str, peer: &str, f: ReadFailure) -> RegistryError {
        match f {
            ReadFailure::Http(source) => self.http_error(op, source),
            ReadFailure::Timeout(deadline, limit) => self.timeout(op, peer, deadline, limit),
        }
    }

    /// Runs a small request (`fut`) under the total deadline.
    async fn bounded<T>(
        &self,
        op: &str,
        fut: impl Future<Output = Result<T, RegistryError>>,
    ) -> Result<T, RegistryError> {
        let limit = self.inner.timeouts.request;
        match tokio::time::timeout(limit, fut).await {
            Ok(r) => r,
            Err(_) => Err(self.timeout(op, &self.inner.registry, Deadline::Total, limit)),
        }
    }

    /// Send the request `build` makes; on a 401, authenticate and send it once more.
    async fn send(
        &self,
        op: &str,
        build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, RegistryError> {
        let mut retried = false;
        loop {
            let mut rb = build(&self.inner.http);
            if let Some(h) = self.auth_header() {
                rb = rb.header(AUTHORIZATION, h);
            }
            let idle = self.inner.timeouts.idle;
            let resp = match tokio::time::timeout(idle, rb.send()).await {
                Ok(r) => r.map_err(|source| self.http_error(op, source))?,
                Err(_) => return Err(self.timeout(op, &self.inner.registry, Deadline::NoProgress, idle)),
            };
            match resp.status() {
                StatusCode::UNAUTHORIZED if !retried => {
                    let challenge = resp
                        .headers()
                        .get(WWW_AUTHENTICATE)
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    self.authenticate(op, &challenge).await?;
                    retried = true;
                }
                StatusCode::UNAUTHORIZED => {
                    return Err(RegistryError::Unauthorized {
                        op: op.to_string(),
                        registry: self.inner.registry.clone(),
                        hint: self.unauthorized_hint(),
                    })
                }
                StatusCode::FORBIDDEN => {
                    return Err(RegistryError::Denied {
                        op: op.to_string(),
                        registry: self.inner.registry.clone(),
                    })
                }
                _ => return Ok(resp),
            }
        }
    }

    /// What a 401 says about credentials: whether any were found for this
    /// registry, and where they were looked for.
    fn unauthorized_hint(&self) -> String {
        let reg = &self.inner.registry;
        let searched = &self.inner.credentials_searched;
        match &self.inner.credentials {
            Some(c) => format!(
                "the credentials for {reg} (user {:?}, from {searched}) were refused; check them",
                c.username
            ),
            None => format!("no credentials were found for {reg} in {searched}"),
        }
    }

    async fn authenticate(&self, op: &str, challenge: &str) -> Result<(), RegistryError> {
        let parsed = Challenge::parse(challenge)?;
        let header = match parsed.scheme.as_str() {
            "basic" => {
                let c = self.inner.credentials.as_ref().ok_or_else(|| RegistryError::Unauthorized {
                    op: op.to_string(),
                    registry: self.inner.registry.clone(),
                    hint: self.unauthorized_hint(),
                })?;
                basic_header(c)
            }
            "bearer" => {
                let token = self.fetch_token(&parsed).await?;
                Secret::new(format!("Bearer {}", token.expose()))
            }
            _ => return Err(RegistryError::BadChallenge(challenge.to_string())),
        };
        if let Ok(mut g) = self.inner.auth.lock() {
            *g = Some(header);
        }
        Ok(())
    }

    async fn fetch_token(&self, ch: &Challenge) -> Result<Secret, RegistryError> {
        let realm = ch
            .param("realm")
            .ok_or_else(|| RegistryError::BadChallenge("Bearer challenge without realm".into()))?;
        let mut url = Url::parse(realm).map_err(|_| RegistryError::Token {
            realm: realm.to_string(),
            why: "realm is not a URL".into(),
        })?;
        let actions = if self.inner.push { "pull,push" } else { "pull" };
        let own = format!("repository:{}:{actions}", self.inner.repository);
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = ch.param("service") {
                q.append_pair("service", s);
            }
            q.append_pair("scope", &own);
            if let Some(s) = ch.param("scope").filter(|s| *s != own) {
                q.append_pair("scope", s);
            }
        }
        let token_err = |why: String| RegistryError::Token { realm: realm.to_string(), why };
        let rb = match self.inner.credentials.as_ref().and_then(|c| c.identity_token.as_ref()) {
            // An identity token is an OAuth2 refresh token: POSTed to the realm
            // (distribution's token spec), in the body, never in the URL.
            Some(refresh) => {
                let mut form = Url::parse("http://form.invalid/").map_err(|_| token_err("form".into()))?;
                form.query_pairs_mut()
                    .append_pair("grant_type", "refresh_token")
                    .append_pair("refresh_token", refresh.expose())
                    .append_pair("client_id", "cloak")
                    .append_pair("service", ch.param("service").unwrap_or_default())
                    .append_pair("scope", &own);
                let body = zeroize::Zeroizing::new(form.query().unwrap_or_default().to_string());
                let mut post = url.clone();
                post.set_query(None);
                self.inner
                    .http
                    .post(post)
                    .header(CONTENT_TYPE, "application/x-www-form-urlencoded")
                    .body(body.as_bytes().to_vec())
            }
            None => {
                let mut rb = self.inner.http.get(url);
                if let Some(c) = &self.inner.credentials {
                    rb = rb.header(AUTHORIZATION, basic_header_value(c));
                }
                rb
            }
        };
        let t = self.inner.timeouts;
        let op = "GET token";
        let fetch = async {
            let resp = match tokio::time::timeout(t.idle, rb.send()).await {
                Ok(Ok(resp)) => resp,
                Ok(Err(e)) if e.is_connect() && e.is_timeout() => {
                    return Err(self.timeout(op, realm, Deadline::Connect, t.connect))
                }
                Ok(Err(e)) => {
                    return Err(RegistryError::TokenHttp {
                        realm: realm.to_string(),
                        source: e.without_url(),
                    })
                }
                Err(_) => return Err(self.timeout(op, realm, Deadline::NoProgress, t.idle)),
            };
            let status = resp.status();
            if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                let hint = if status == StatusCode::UNAUTHORIZED {
                    format!(": {}", self.unauthorized_hint())
                } else {
                    String::new()
                };
                return Err(RegistryError::TokenRefused {
                    registry: self.inner.registry.clone(),
                    realm: realm.to_string(),
                    status: status.as_u16(),
                    hint,
                });
            }
            if !status.is_success() {
                return Err(token_err(format!("status {status}")));
            }
            match bounded::read_capped(resp, MAX_TOKEN_ANSWER, &t).await {
                Ok(Capped::Whole(b)) => Ok(zeroize::Zeroizing::new(b)),
                Ok(Capped::Over(_)) => {
                    Err(RegistryError::TokenTooLarge { realm: realm.to_string(), max: MAX_TOKEN_ANSWER })
                }
                Err(ReadFailure::Http(e)) => {
                    Err(RegistryError::TokenHttp { realm: realm.to_string(), source: e.without_url() })
                }
                Err(ReadFailure::Timeout(d, limit)) => Err(self.timeout(op, realm, d, limit)),
            }
        };
        let body = match tokio::time::timeout(t.request, fetch).await {
            Ok(r) => r?,
            Err(_) => return Err(self.timeout(op, realm, Deadline::Total, t.request)),
        };
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            token: Option<String>,
            access_token: Option<String>,
        }
        let t: TokenResponse =
            serde_json::from_slice(&body).map_err(|e| token_err(format!("bad JSON: {e}")))?;
        t.token
            .or(t.access_token)
            .filter(|t| !t.is_empty())
            .map(Secret::new)
            .ok_or_else(|| token_err("no token in the answer".into()))
    }

    async fn error_from(&self, op: &str, resp: reqwest::Response) -> RegistryError {
        let status = resp.status().as_u16();
        let url = resp.url().to_string();
        // At most ERROR_BODY_CAP bytes are read, under the deadlines; the rest of
        // the body is never read (the connection is dropped).
        let (bytes, mut cut) = match bounded::read_capped(resp, ERROR_BODY_CAP, &self.inner.timeouts).await {
            Ok(Capped::Whole(b)) => (b, false),
            Ok(Capped::Over(b)) => (b, true),
            Err(_) => (Vec::new(), true),
        };
        let text = String::from_utf8_lossy(&bytes);
        cut |= text.chars().nth(MAX_ERROR_BODY).is_some();
        let mut body: String = text.chars().take(MAX_ERROR_BODY).collect::<String>().trim().to_string();
        if body.is_empty() && !cut {
            body = "(empty body)".into();
        } else if cut {
            body.push_str(" …(truncated)");
        }
        RegistryError::Status { op: op.to_string(), url, status, body }
    }

    fn not_found(&self, what: String) -> RegistryError {
        RegistryError::NotFound {
            what,
            registry: self.inner.registry.clone(),
            repository: self.inner.repository.clone(),
        }
    }

    /// GET a manifest by tag or digest, at most `max` bytes, raw.
    pub async fn get_manifest(&self, reference: &str, max: u64) -> Result<FetchedManifest, RegistryError> {
        let url = self.url(&format!("manifests/{reference}"))?;
        let accept = media_type::MANIFEST_TYPES.join(", ");
        let op = format!("GET manifest {reference}");
        self.bounded(&op, self.get_manifest_inner(&op, &url, reference, &accept, max)).await
    }

    async fn get_manifest_inner(
        &self,
        op: &str,
        url: &Url,
        reference: &str,
        accept: &str,
        max: u64,
    ) -> Result<FetchedManifest, RegistryError> {
        let resp = self.send(op, |c| c.get(url.clone()).header(ACCEPT, accept)).await?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Err(self.not_found(format!("manifest {reference}")));
        }
        if !resp.status().is_success() {
            return Err(self.error_from(op, resp).await);
        }
        let declared = resp
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|s| s.split(';').next().unwrap_or(s).trim().to_string());
        let cap = usize::try_from(max).unwrap_or(usize::MAX);
        let bytes = match bounded::read_capped(resp, cap, &self.inner.timeouts).await {
            Ok(Capped::Whole(b)) => b,
            Ok(Capped::Over(_)) => {
                return Err(RegistryError::ManifestTooLarge { reference: reference.to_string(), max })
            }
            Err(f) => return Err(self.read_failure(op, &self.inner.registry, f)),
        };
        // Registries may answer a generic JSON type; trust the document's own field then.
        let media_type = match declared {
            Some(m) if media_type::is_manifest(&m) => m,
            _ => crate::manifest::sniff_media_type(&bytes)
                .unwrap_or_else(|| media_type::OCI_MANIFEST.to_string()),
        };
        Ok(FetchedManifest { bytes, media_type })
    }

    /// PUT a manifest under `reference` (a tag or its digest). Returns its sha256.
    pub async fn put_manifest(
        &self,
        reference: &str,
        bytes: &[u8],
        media_type: &str,
    ) -> Result<Digest, RegistryError> {
        let url = self.url(&format!("manifests/{reference}"))?;
        let op = format!("PUT manifest {reference}");
        let body = Bytes::copy_from_slice(bytes);
        let resp = self
            .bounded(&op, async {
                let resp = self
                    .send(&op, |c| c.put(url.clone()).header(CONTENT_TYPE, media_type).body(body.clone()))
                    .await?;
                if !resp.status().is_success() {
                    return Err(self.error_from(&op, resp).await);
                }
                Ok(resp)
            })
            .await?;
        let local = Digest::sha256_of(bytes);
        if let Some(server) = resp.headers().get("docker-content-digest").and_then(|v| v.to_str().ok()) {
            if server != local.to_string() {
                return Err(RegistryError::ServerDigestMismatch { server: server.to_string(), local });
            }
        }
        Ok(local)
    }

    /// Whether the repository has the blob (HEAD).
    pub async fn has_blob(&self, d: &Digest) -> Result<bool, RegistryError> {
        let url = self.url(&format!("blobs/{d}"))?;
        let op = format!("HEAD blob {d}");
        self.bounded(&op, async {
            let resp = self.send(&op, |c| c.head(url.clone())).await?;
            match resp.status() {
                s if s.is_success() => Ok(true),
                StatusCode::NOT_FOUND => Ok(false),
                _ => Err(self.error_from(&op, resp).await),
            }
        })
        .await
    }

    /// GET a blob and check the answer's status; the body is not read yet.
    async fn get_blob_response(
        &self,
        d: &Digest,
        offset: u64,
        op: &str,
    ) -> Result<reqwest::Response, RegistryError> {
        let url = self.url(&format!("blobs/{d}"))?;
        let resp = self
            .send(op, |c| {
                let rb = c.get(url.clone());
                if offset > 0 {
                    rb.header(RANGE, format!("bytes={offset}-"))
                } else {
                    rb
                }
            })
            .await?;
        match resp.status() {
            StatusCode::NOT_FOUND => Err(self.not_found(format!("blob {d}"))),
            StatusCode::OK if offset > 0 => Err(RegistryError::RangeIgnored { digest: d.clone(), offset }),
            s if s.is_success() => Ok(resp),
            _ => Err(self.error_from(op, resp).await),
        }
    }

    /// GET a blob from byte `offset` on (HTTP Range, for resuming). The stream is NOT
    /// verified: wrap a full read (offset 0) in [`crate::BlobReader`], as
    /// [`crate::ImageSource::blob`] does. There is no total deadline (a big layer
    /// over a slow link passes), but the stream fails with a
    /// [`std::io::ErrorKind::TimedOut`] error when the registry sends nothing for
    /// the no-progress timeout.
    pub async fn get_blob_stream(
        &self,
        d: &Digest,
        offset: u64,
    ) -> Result<impl Stream<Item = std::io::Result<Bytes>> + Send + 'static, RegistryError> {
        let op = format!("GET blob {d}");
        let resp = self.get_blob_response(d, offset, &op).await?;
        let idle = self.inner.timeouts.idle;
        let registry = self.inner.registry.clone();
        Ok(bounded::idle_bounded(resp.bytes_stream(), idle, move || {
            RegistryError::Timeout {
                op: op.clone(),
                peer: registry.clone(),
                deadline: Deadline::NoProgress,
                limit: idle,
            }
            .to_string()
        }))
    }

    /// GET a small blob (a config) whole, at most `max` bytes, under the total
    /// deadline. NOT verified: the caller checks the digest.
    pub async fn get_blob_bytes(&self, d: &Digest, max: u64) -> Result<Vec<u8>, RegistryError> {
        let op = format!("GET blob {d}");
        self.bounded(&op, async {
            let resp = self.get_blob_response(d, 0, &op).await?;
            let cap = usize::try_from(max).unwrap_or(usize::MAX);
            match bounded::read_capped(resp, cap, &self.inner.timeouts).await {
                Ok(Capped::Whole(b)) => Ok(b),
                Ok(Capped::Over(_)) => Err(RegistryError::BlobTooLarge { digest: d.clone(), max }),
                Err(f) => Err(self.read_failure(&op, &self.inner.registry, f)),
            }
        })
        .await
    }

    /// Open an upload session; returns its URL.
    async fn start_upload(&self, query: Option<(&Digest, &str)>) -> Result<(StatusCode, Url), RegistryError> {
        let mut url = self.url("blobs/uploads/")?;
        if let Some((d, from)) = query {
            url.query_pairs_mut().append_pair("mount", &d.to_string()).append_pair("from", from);
        }
        let op = "POST blob upload";
        self.bounded(op, async {
            let resp = self.send(op, |c| c.post(url.clone()).header(CONTENT_LENGTH, "0")).await?;
            let status = resp.status();
            if !status.is_success() {
                return Err(self.error_from(op, resp).await);
            }
            let loc = location(&resp, op)?;
            Ok((status, loc))
        })
        .await
    }

    /// Try a cross-repository mount of `d` from `from_repo` on the same registry.
    /// `Ok(true)` if the blob is now present.
    pub async fn mount_blob(&self, d: &Digest, from_repo: &str) -> Result<bool, RegistryError> {
        let (status, loc) = self.start_upload(Some((d, from_repo))).await?;
        if status == StatusCode::CREATED {
            return Ok(true);
        }
        // The registry opened a normal upload session instead; close it.
        self.cancel_upload(loc).await;
        Ok(false)
    }

    async fn cancel_upload(&self, loc: Url) {
        let op = "DELETE blob upload";
        let r = self.bounded(op, self.send(op, |c| c.delete(loc.clone()))).await;
        if let Err(e) = r {
            tracing::debug!("cancelling upload session failed: {}", report::Line(&e));
        }
    }

    /// Upload a small blob in one request (POST, then PUT with the body).
    pub async fn put_blob_bytes(&self, bytes: &[u8]) -> Result<Digest, RegistryError> {
        let d = Digest::sha256_of(bytes);
        if self.has_blob(&d).await? {
            return Ok(d);
        }
        let (_, mut loc) = self.start_upload(None).await?;
        loc.query_pairs_mut().append_pair("digest", &d.to_string());
        let op = format!("PUT blob {d}");
        let body = Bytes::copy_from_slice(bytes);
        self.bounded(&op, async {
            let resp = self
                .send(&op, |c| {
                    c.put(loc.clone()).header(CONTENT_TYPE, "application/octet-stream").body(body.clone())
                })
                .await?;
            if !resp.status().is_success() {
                return Err(self.error_from(&op, resp).await);
            }
            Ok(d)
        })
        .await
    }

    /// Start a streaming upload whose digest is given at the end.
    pub async fn begin_blob(&self) -> Result<RegistryBlobWriter, RegistryError> {
        // The POST settles authentication, so the streaming PATCH below (which cannot
        // be replayed) goes out with a valid header.
        let (_, loc) = self.start_upload(None).await?;
        let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(UPLOAD_QUEUE);
        let body = reqwest::Body::wrap_stream(tokio_stream_from(rx));
        let client = self.clone();
        let patch_url = loc.clone();
        let patch = tokio::spawn(async move {
            let mut rb = client
                .inner
                .http
                .request(Method::PATCH, patch_url.clone())
                .header(CONTENT_TYPE, "application/octet-stream")
                .body(body);
            if let Some(h) = client.auth_header() {
                rb = rb.header(AUTHORIZATION, h);
            }
            let op = "PATCH blob upload";
            let resp = rb.send().await.map_err(|source| RegistryError::Http {
                op: op.to_string(),
                url: patch_url.to_string(),
                via: String::new(),
                source: source.without_url(),
            })?;
            if !resp.status().is_success() {
                return Err(client.error_from(op, resp).await);
            }
            location(&resp, op)
        });
        Ok(RegistryBlobWriter {
            client: self.clone(),
            session: Some(loc),
            tx: Some(tx),
            patch: Some(patch),
            hasher: Some(Algorithm::Sha256.hasher()),
            size: 0,
        })
    }
}

/// Turn a receiver into a stream without pulling in tokio-stream.
fn tokio_stream_from(
    rx: mpsc::Receiver<std::io::Result<Bytes>>,
) -> impl Stream<Item = std::io::Result<Bytes>> + Send + 'static {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|item| (item, rx)) })
}

fn location(resp: &reqwest::Response, op: &str) -> Result<Url, RegistryError> {
    let missing = || RegistryError::MissingLocation { op: op.to_string() };
    let raw = resp.headers().get(LOCATION).and_then(|v| v.to_str().ok()).ok_or_else(missing)?;
    // Location may be relative to the request URL.
    resp.url().join(raw).map_err(|_| missing())
}

fn basic_header(c: &Credentials) -> Secret {
    let raw = zeroize::Zeroizing::new(format!("{}:{}", c.username, c.password.expose()));
    Secret::new(format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw.as_bytes())))
}

fn basic_header_value(c: &Credentials) -> HeaderValue {
    let s = basic_header(c);
    let mut v = HeaderValue::from_str(s.expose()).unwrap_or_else(|_| HeaderValue::from_static(""));
    v.set_sensitive(true);
    v
}

/// A parsed `WWW-Authenticate` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    /// Lowercased scheme: `basic` or `bearer`.
    pub scheme: String,
    pub params: Vec<(String, String)>,
}

impl Challenge {
    /// Parse `Scheme k="v",k2=v2`; quoted values may contain commas (scopes do).
    pub fn parse(s: &str) -> Result<Challenge, RegistryError> {
        let bad = || RegistryError::BadChallenge(s.to_string());
        let s = s.trim();
        let (scheme, rest) = match s.split_once(' ') {
            Some((a, b)) => (a, b),
            None if !s.is_empty() => (s, ""),
            None => return Err(bad()),
        };
        let mut params = Vec::new();
        let mut chars = rest.chars().peekable();
        loop {
            while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
                chars.next();
            }
            if chars.peek().is_none() {
                break;
            }
            let mut key = String::new();
            while let Some(&c) = chars.peek() {
                if c == '=' {
                    break;
                }
                key.push(c);
                chars.next();
            }
            if chars.next() != Some('=') || key.trim().is_empty() {
                return Err(bad());
            }
            let mut value = String::new();
            if chars.peek() == Some(&'"') {
                chars.next();
                let mut closed = false;
                while let Some(c) = chars.next() {
                    match c {
                        '\\' => {
                            if let Some(n) = chars.next() {
                                value.push(n);
                            }
                        }
                        '"' => {
                            closed = true;
                            break;
                        }
                        _ => value.push(c),
                    }
                }
                if !closed {
                    return Err(bad());
                }
            } else {
                while let Some(&c) = chars.peek() {
                    if c == ',' {
                        break;
                    }
                    value.push(c);
                    chars.next();
                }
            }
            params.push((key.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
        Ok(Challenge { scheme: scheme.to_ascii_lowercase(), params })
    }

    /// The first value of a parameter.
    pub fn param(&self, key: &str) -> Option<&str> {
        self.params.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// A streaming blob upload to a registry. Dropping it without
/// [`finish`](Self::finish) cancels the upload session (best effort).
pub struct RegistryBlobWriter {
    client: RegistryClient,
    session: Option<Url>,
    tx: Option<mpsc::Sender<std::io::Result<Bytes>>>,
    patch: Option<JoinHandle<Result<Url, RegistryError>>>,
    /// `None` once the caller took over hashing ([`skip_hashing`](Self::skip_hashing)).
    hasher: Option<Hasher>,
    size: u64,
}

impl fmt::Debug for RegistryBlobWriter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryBlobWriter").field("written", &self.size).finish_non_exhaustive()
    }
}

impl RegistryBlobWriter {
    /// Send `buf` to the registry (queued; waits when the queue is full).
    pub async fn write_all(&mut self, buf: &[u8]) -> Result<(), RegistryError> {
        self.write_bytes(Bytes::copy_from_slice(buf)).await
    }

    /// Like [`write_all`](Self::write_all) without a copy.
    pub async fn write_bytes(&mut self, buf: Bytes) -> Result<(), RegistryError> {
        if buf.is_empty() {
            return Ok(());
        }
        if let Some(h) = self.hasher.as_mut() {
            h.update(&buf);
        }
        self.size += buf.len() as u64;
        let sent = match &self.tx {
            // The queue moves only as fast as the registry reads the PATCH body: a
            // registry that stops reading fails the upload after the no-progress timeout.
            Some(tx) => {
                let idle = self.client.inner.timeouts.idle;
                match tokio::time::timeout(idle, tx.send(Ok(buf))).await {
                    Ok(r) => r.is_ok(),
                    Err(_) => {
                        let registry = &self.client.inner.registry;
                        return Err(self.client.timeout(
                            "PATCH blob upload",
                            registry,
                            Deadline::NoProgress,
                            idle,
                        ));
                    }
                }
            }
            None => false,
        };
        if sent {
            return Ok(());
        }
        // The PATCH request ended early: surface its error.
        self.tx = None;
        match self.patch.take() {
            Some(h) => match h.await {
                Ok(Err(e)) => Err(e),
                Ok(Ok(_)) => Err(RegistryError::Upload(
                    "the registry closed the upload before all data was sent".into(),
                )),
                Err(e) => Err(RegistryError::Upload(format!("upload task failed: {e}"))),
            },
            None => Err(RegistryError::Upload("upload already failed".into())),
        }
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.size
    }

    /// The caller hashes what it sends and passes the digest to
    /// [`finish`](Self::finish), which commits under it unchecked here (the
    /// registry still checks it). Only before the first write.
    pub fn skip_hashing(&mut self) {
        if self.size == 0 {
            self.hasher = None;
        }
    }

    /// End the stream, check `expected` (if given), then commit with `PUT ?digest=`.
    pub async fn finish(mut self, expected: Option<&Digest>) -> Result<(Digest, u64), RegistryError> {
        self.tx = None; // ends the PATCH body
        let mut patch =
            self.patch.take().ok_or_else(|| RegistryError::Upload("upload already failed".into()))?;
        // The body has been handed over (a queue of UPLOAD_QUEUE chunks at most):
        // the registry's answer is now a small request's.
        let limit = self.client.inner.timeouts.request;
        let mut loc = match tokio::time::timeout(limit, &mut patch).await {
            Ok(Ok(r)) => r?,
            Ok(Err(e)) => return Err(RegistryError::Upload(format!("upload task failed: {e}"))),
            Err(_) => {
                patch.abort();
                let op = "PATCH blob upload";
                return Err(self.client.timeout(op, &self.client.inner.registry, Deadline::Total, limit));
            }
        };
        let actual = match (self.hasher.take(), expected) {
            (Some(h), _) => h.finish(),
            (None, Some(e)) => e.clone(),
            (None, None) => {
                return Err(RegistryError::Upload(
                    "internal error: a blob sent without hashing was finished without its digest".into(),
                ))
            }
        };
        if let Some(e) = expected {
            if e.algorithm() != Algorithm::Sha256 {
                return Err(RegistryError::UnsupportedAlgorithm(e.clone()));
            }
            if e != &actual {
                // Drop cancels the session: nothing becomes visible.
                return Err(RegistryError::DigestMismatch { expected: e.clone(), actual });
            }
        }
        self.session = Some(loc.clone());
        loc.query_pairs_mut().append_pair("digest", &actual.to_string());
        let op = format!("PUT blob {actual}");
        let client = self.client.clone();
        client
            .bounded(&op, async {
                let resp = client.send(&op, |c| c.put(loc.clone()).header(CONTENT_LENGTH, "0")).await?;
                if !resp.status().is_success() {
                    return Err(client.error_from(&op, resp).await);
                }
                Ok(())
            })
            .await?;
        self.session = None;
        Ok((actual, self.size))
    }
}

impl Drop for RegistryBlobWriter {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(h) = self.patch.take() {
            h.abort();
        }
        if let Some(loc) = self.session.take() {
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                let client = self.client.clone();
                rt.spawn(async move { client.cancel_upload(loc).await });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn bearer_challenge_with_comma_in_scope() {
        let c = Challenge::parse(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        )
        .unwrap();
        assert_eq!(c.scheme, "bearer");
        assert_eq!(c.param("realm"), Some("https://auth.example/token"));
        assert_eq!(c.param("service"), Some("registry.example"));
        assert_eq!(c.param("scope"), Some("repository:a/b:pull,push"));
    }

    #[test]
    fn basic_challenge_and_bad_ones() {
        let c = Challenge::parse(r#"Basic realm="Registry Realm""#).unwrap();
        assert_eq!(c.scheme, "basic");
        assert_eq!(c.param("realm"), Some("Registry Realm"));
        assert!(Challenge::parse("").is_err());
        assert!(Challenge::parse(r#"Bearer realm="unterminated"#).is_err());
        assert!(Challenge::parse(r#"Bearer =x"#).is_err());
    }

    #[test]
    fn basic_header_is_base64_user_pass() {
        let c = Credentials::parse_creds("user:pa:ss").unwrap();
        assert_eq!(basic_header(&c).expose(), "Basic dXNlcjpwYTpzcw==");
    }
}
