//! HTTP face of the broker (axum). Handlers only translate between the wire and the
//! decision modules; every error becomes a status and a Trustee-style JSON body
//! (`{"type": ".../errors/<Kind>", "detail": ...}`) in one place, `ApiError`.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use base64::Engine;
use kbs_types::{Attestation, Challenge, ErrorInformation, Request};
use serde_json::{json, Value};
use sha2::{Digest, Sha384};
use zeroize::Zeroizing;

use crate::admin::{AdminError, AdminVerifier};
use crate::claims::Claims;
use crate::config::{ConfigError, ServeConfig};
use crate::metrics::{label, DenialLabels, FailureLabels, Metrics, PodLabels, ResourceLabels, SuccessLabels};
use crate::policy::{Denial, Policy, PolicyError, Reason};
use crate::session::{new_id, AttestationCache, Session, SessionState, Sessions, COOKIE};
use crate::store::{ResourcePath, ResourceStore, StoreError};
use crate::token::TokenSigner;
use crate::verifier::{self, Trust};

/// The protocol version Trustee's KBS accepts (exact match).
pub const PROTOCOL_VERSION: &str = kbs_client::protocol::KBS_PROTOCOL_VERSION;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("initial policy: {0}")]
    Policy(#[from] PolicyError),
    #[error("resource store: {0}")]
    Store(#[from] StoreError),
    #[error("admin key: {0}")]
    Admin(#[from] AdminError),
    #[error("token signer: {0}")]
    Token(#[from] crate::token::TokenError),
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("server failed: {0}")]
    Io(#[from] std::io::Error),
}

/// Everything a handler can fail with, mapped to HTTP in `into_response`.
#[derive(Debug)]
enum ApiError {
    BadRequest(String),
    /// 401 with a Trustee error kind.
    Unauthorized(&'static str, String),
    Forbidden(String),
    NotFound(String),
    /// 412: a create-only write (`If-None-Match: *`) met an existing resource.
    Exists(String),
    Unavailable(String),
    Internal(String),
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind, detail) = match self {
            ApiError::BadRequest(d) => (StatusCode::BAD_REQUEST, "BadRequest", d),
            ApiError::Unauthorized(k, d) => (StatusCode::UNAUTHORIZED, k, d),
            ApiError::Forbidden(d) => (StatusCode::FORBIDDEN, "PolicyDeny", d),
            ApiError::NotFound(d) => (StatusCode::NOT_FOUND, "ResourceNotFound", d),
            ApiError::Exists(d) => (StatusCode::PRECONDITION_FAILED, "ResourceExists", d),
            ApiError::Unavailable(d) => (StatusCode::SERVICE_UNAVAILABLE, "Unavailable", d),
            ApiError::Internal(d) => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError", d),
        };
        let body = ErrorInformation {
            error_type: format!("https://github.com/confidential-containers/kbs/errors/{kind}"),
            detail,
        };
        (status, axum::Json(body)).into_response()
    }
}

/// Policy plus where it came from, swapped as one unit on reload.
struct PolicySlot {
    policy: Arc<Policy>,
    text: Option<String>,
}

pub struct Broker {
    policy: RwLock<PolicySlot>,
    policy_path: Option<PathBuf>,
    store: ResourceStore,
    sessions: Sessions,
    tokens: TokenSigner,
    admin: Option<AdminVerifier>,
    trust: Trust,
    metrics: Metrics,
    cache: AttestationCache,
    session_ttl: Duration,
    body_limit: usize,
    policy_poll: Duration,
    /// Serialises admin policy writes with reloads so neither sees half of the other.
    policy_write: tokio::sync::Mutex<()>,
    /// Resource patterns the admin key may read back (build-side KEK reuse).
    admin_readable: Vec<String>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").field("store", &self.store.root()).finish()
    }
}

impl Broker {
    pub fn new(cfg: &ServeConfig) -> Result<Arc<Self>, ServeError> {
        let (policy, text) = match &cfg.policy {
            Some(p) => {
                let text = std::fs::read_to_string(p)
                    .map_err(|source| PolicyError::Read { path: p.clone(), source })?;
                (Policy::parse(&text)?, Some(text))
            }
            None => {
                tracing::warn!("no policy file configured: every attestation is refused until one is set");
                (Policy::default(), None)
            }
        };
        let admin = match &cfg.admin_public_key {
            Some(p) => {
                let pem = std::fs::read(p).map_err(|source| ConfigError::Read { path: p.clone(), source })?;
                Some(AdminVerifier::from_pem(&pem, cfg.admin_issuer.clone(), cfg.admin_audience.clone())?)
            }
            None => {
                tracing::warn!("no admin public key configured: the admin API refuses every request");
                None
            }
        };
        let trust = cfg.trust()?;
        Ok(Arc::new(Self {
            policy: RwLock::new(PolicySlot { policy: Arc::new(policy), text }),
            policy_path: cfg.policy.clone(),
            store: ResourceStore::open(&cfg.resources)?,
            sessions: Sessions::default(),
            tokens: TokenSigner::generate(cfg.token_ttl_secs)?,
            admin,
            trust,
            metrics: Metrics::new(),
            cache: AttestationCache::new(Duration::from_secs(cfg.attestation_cache_secs)),
            session_ttl: Duration::from_secs(cfg.session_ttl_secs.max(1)),
            body_limit: cfg.body_limit_bytes,
            policy_poll: Duration::from_millis(cfg.policy_poll_ms.max(50)),
            policy_write: tokio::sync::Mutex::new(()),
            admin_readable: cfg.admin_readable.clone(),
        }))
    }

    /// The policy in force now.
    pub fn policy(&self) -> Arc<Policy> {
        match self.policy.read() {
            Ok(slot) => slot.policy.clone(),
            // A poisoned lock means a writer panicked mid-swap; deny everything.
            Err(_) => Arc::new(Policy::default()),
        }
    }

    pub fn metrics_text(&self) -> String {
        self.metrics.encode()
    }

    fn install(&self, policy: Policy, text: String) {
        if let Ok(mut slot) = self.policy.write() {
            *slot = PolicySlot { policy: Arc::new(policy), text: Some(text) };
        }
    }

    /// Re-reads the policy file. Ok(true) when a new policy was installed; on error the
    /// old policy stays in force.
    pub async fn reload_policy(&self) -> Result<bool, PolicyError> {
        let Some(path) = &self.policy_path else {
            return Ok(false);
        };
        let _guard = self.policy_write.lock().await;
        let text = std::fs::read_to_string(path)
            .map_err(|source| PolicyError::Read { path: path.clone(), source })?;
        let unchanged = self.policy.read().map(|s| s.text.as_deref() == Some(text.as_str())).unwrap_or(false);
        if unchanged {
            return Ok(false);
        }
        let policy = Policy::parse(&text)?;
        self.install(policy, text);
        Ok(true)
    }

    async fn reload_and_log(&self, why: &str) {
        match self.reload_policy().await {
            Ok(true) => tracing::info!(trigger = why, "policy reloaded"),
            Ok(false) => {}
            Err(e) => tracing::error!(
                trigger = why,
                error = %e,
                "new policy refused; the previous policy stays in force"
            ),
        }
    }

    /// Watches the policy file (mtime/size/inode poll) and SIGHUP; runs until dropped.
    pub fn spawn_policy_watcher(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let me = Arc::clone(self);
        tokio::spawn(async move {
            let Some(path) = me.policy_path.clone() else { return };
            let stamp = |p: &std::path::Path| {
                std::fs::metadata(p).ok().map(|m| {
                    use std::os::unix::fs::MetadataExt;
                    (m.modified().unwrap_or(SystemTime::UNIX_EPOCH), m.len(), m.ino())
                })
            };
            let mut last = stamp(&path);
            let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
            let mut tick = tokio::time::interval(me.policy_poll);
            loop {
                let by_signal = match hup.as_mut() {
                    Some(h) => tokio::select! {
                        _ = tick.tick() => false,
                        _ = h.recv() => true,
                    },
                    None => {
                        tick.tick().await;
                        false
                    }
                };
                if by_signal {
                    me.reload_and_log("SIGHUP").await;
                    last = stamp(&path);
                    continue;
                }
                let now = stamp(&path);
                if now != last {
                    last = now;
                    me.reload_and_log("file change").await;
                }
            }
        })
    }

    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/kbs/v0/auth", post(auth))
            .route("/kbs/v0/attest", post(attest))
            .route("/kbs/v0/resource/{*path}", get(get_resource).post(put_resource).delete(delete_resource))
            .route("/kbs/v0/resource-policy", post(set_policy))
            .route(ADMIN_READ_ROUTE, get(admin_read_resource))
            .route("/metrics", get(metrics))
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .fallback(|| async { ApiError::NotFound("no such endpoint".into()) })
            .layer(DefaultBodyLimit::max(self.body_limit))
            .with_state(Arc::clone(self))
    }
}

type St = State<Arc<Broker>>;

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8], what: &str) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadRequest(format!("malformed {what}: {e}")))
}

fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.trim().to_string())
}

fn set_cookie(id: &str, ttl: Duration) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!("{COOKIE}={id}; Path=/; Max-Age={}; HttpOnly", ttl.as_secs())).ok()
}

fn str_param(v: &Value, key: &str) -> String {
    label(v.get(key).and_then(Value::as_str).unwrap_or("unknown"))
}

/// pod/namespace from a TOML init-data body: simple `key = "value"` lines, enough for
/// labels; the init-data itself is not interpreted further.
fn initdata_param(body: &str, keys: &[&str]) -> Option<String> {
    body.lines().find_map(|l| {
        let (k, v) = l.split_once('=')?;
        keys.contains(&k.trim()).then(|| v.trim().trim_matches('"').trim_matches('\'').to_string())
    })
}

async fn auth(State(b): St, body: Bytes) -> Result<Response, ApiError> {
    let req: Request = parse_json(&body, "auth request")?;
    if req.version != PROTOCOL_VERSION {
        return Err(ApiError::Unauthorized(
            "ProtocolVersion",
            format!(
                "KBS Client Protocol Version Mismatch: expect {PROTOCOL_VERSION}, got {}",
                req.version.chars().take(32).collect::<String>()
            ),
        ));
    }
    let mut nonce = [0u8; 32];
    rand::Rng::fill(&mut rand::thread_rng(), &mut nonce);
    let nonce = base64::engine::general_purpose::STANDARD.encode(nonce);
    let id = new_id();
    let session = Session {
        tee: req.tee,
        pod: str_param(&req.extra_params, "pod"),
        namespace: str_param(&req.extra_params, "namespace"),
        state: SessionState::Authed { nonce: nonce.clone() },
        expires: Instant::now() + b.session_ttl,
    };
    if !b.sessions.insert(id.clone(), session) {
        return Err(ApiError::Unavailable("too many open sessions".into()));
    }
    let challenge = Challenge { nonce, extra_params: Value::String(String::new()) };
    let mut resp = axum::Json(challenge).into_response();
    if let Some(c) = set_cookie(&id, b.session_ttl) {
        resp.headers_mut().insert(header::SET_COOKIE, c);
    }
    Ok(resp)
}

fn attest_denied(b: &Broker, pod: &str, ns: &str, d: &Denial) -> ApiError {
    b.metrics
        .failure
        .get_or_create(&FailureLabels {
            pod: pod.into(),
            namespace: ns.into(),
            reason: d.reason.as_str().into(),
        })
        .inc();
    tracing::info!(pod, namespace = ns, reason = d.reason.as_str(), detail = %d.detail, "attestation rejected");
    ApiError::Unauthorized("AttestationFailed", d.to_string())
}

/// SHA-384 of the RFC 8785 canonical runtime data, as Trustee's AS computes it.
pub fn runtime_data_hash(att: &Attestation) -> Result<[u8; 48], String> {
    let key = serde_json::to_value(&att.runtime_data.tee_pubkey).map_err(|e| e.to_string())?;
    let rd = json!({
        "tee-pubkey": key,
        "nonce": att.runtime_data.nonce,
        "additional-evidence": att.tee_evidence.additional_evidence,
    });
    let canon = serde_json_canonicalizer::to_vec(&rd).map_err(|e| e.to_string())?;
    Ok(Sha384::digest(canon).into())
}

async fn attest(State(b): St, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    let id = session_cookie(&headers).ok_or_else(|| {
        ApiError::Unauthorized("MissingCookie", "no kbs-session-id cookie; call /kbs/v0/auth first".into())
    })?;
    let att: Attestation = parse_json(&body, "attestation")?;
    enum Next {
        Verify { tee: kbs_types::Tee, nonce: String, pod: String, ns: String },
        Done(Zeroizing<String>),
    }
    let next = b
        .sessions
        .with(&id, |s| match &s.state {
            SessionState::Authed { nonce } => {
                Next::Verify { tee: s.tee, nonce: nonce.clone(), pod: s.pod.clone(), ns: s.namespace.clone() }
            }
            // Trustee answers a repeated /attest with the token it already issued.
            SessionState::Attested { token } => Next::Done(token.clone()),
        })
        .ok_or_else(|| ApiError::Unauthorized("InvalidCookie", "unknown or expired session".into()))?;
    let (tee, nonce, mut pod, mut ns) = match next {
        Next::Done(token) => return Ok(token_response(&id, &token, b.session_ttl)),
        Next::Verify { tee, nonce, pod, ns } => (tee, nonce, pod, ns),
    };
    if let Some(init) = &att.init_data {
        if pod == "unknown" {
            if let Some(p) = initdata_param(&init.body, &["pod", "pod_name"]) {
                pod = label(&p);
            }
        }
        if ns == "unknown" {
            if let Some(n) = initdata_param(&init.body, &["namespace", "pod_namespace"]) {
                ns = label(&n);
            }
        }
    }
    b.metrics.attempts.get_or_create(&PodLabels { pod: pod.clone(), namespace: ns.clone() }).inc();
    if !bool::from(subtle::ConstantTimeEq::ct_eq(att.runtime_data.nonce.as_bytes(), nonce.as_bytes())) {
        return Err(attest_denied(
            &b,
            &pod,
            &ns,
            &Denial::new(Reason::NonceMismatch, "runtime-data nonce is not the session's challenge"),
        ));
    }
    let hash = runtime_data_hash(&att)
        .map_err(|e| ApiError::BadRequest(format!("cannot canonicalise runtime data: {e}")))?;
    let evidence = &att.tee_evidence.primary_evidence;
    let ev_bytes = serde_json::to_vec(evidence).map_err(|e| ApiError::Internal(e.to_string()))?;
    let cache_key = AttestationCache::key(tee, &ev_bytes, &hash);
    let claims: Claims = match b.cache.get(&cache_key) {
        Some(c) => c,
        None => {
            let c = verifier::verify(tee, evidence, &hash, &b.trust)
                .await
                .map_err(|d| attest_denied(&b, &pod, &ns, &d))?;
            b.cache.put(cache_key, c.clone());
            c
        }
    };
    let mm = b.policy().check_claims(&claims).map_err(|d| attest_denied(&b, &pod, &ns, &d))?;
    let (token, _exp) = b
        .tokens
        .issue(att.runtime_data.tee_pubkey.clone(), claims, &pod, &ns)
        .map_err(|e| ApiError::Internal(format!("token: {e}")))?;
    let token = Zeroizing::new(token);
    b.sessions.with(&id, |s| {
        s.state = SessionState::Attested { token: token.clone() };
    });
    b.metrics
        .success
        .get_or_create(&SuccessLabels { pod, namespace: ns, measurement_match: mm.as_str().into() })
        .inc();
    Ok(token_response(&id, &token, b.session_ttl))
}

fn token_response(id: &str, token: &str, ttl: Duration) -> Response {
    let mut resp = axum::Json(json!({ "token": token })).into_response();
    if let Some(c) = set_cookie(id, ttl) {
        resp.headers_mut().insert(header::SET_COOKIE, c);
    }
    resp
}

fn deny_resource(b: &Broker, resource: &str, reason: Reason) {
    b.metrics
        .denials
        .get_or_create(&DenialLabels { resource: resource.into(), reason: reason.as_str().into() })
        .inc();
}

async fn get_resource(
    State(b): St,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let rp = ResourcePath::parse(&path).map_err(|e| ApiError::NotFound(e.to_string()))?;
    let resource = rp.as_string();
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| Zeroizing::new(t.trim().to_string()));
    let token = match bearer {
        Some(t) => Some(t),
        None => session_cookie(&headers).and_then(|id| {
            b.sessions.with(&id, |s| match &s.state {
                SessionState::Attested { token } => Some(token.clone()),
                SessionState::Authed { .. } => None,
            })?
        }),
    };
    let Some(token) = token else {
        deny_resource(&b, &resource, Reason::TokenInvalid);
        return Err(ApiError::Unauthorized(
            "TokenNotFound",
            "no attestation token: send Authorization: Bearer or an attested session cookie".into(),
        ));
    };
    let payload = b.tokens.verify(&token).map_err(|e| {
        deny_resource(&b, &resource, Reason::TokenInvalid);
        ApiError::Unauthorized("TokenInvalid", e.to_string())
    })?;
    let policy = b.policy();
    if let Err(d) = policy.check_claims(&payload.cloak_claims) {
        deny_resource(&b, &resource, d.reason);
        return Err(ApiError::Unauthorized("PolicyDeny", format!("resource {resource} denied: {d}")));
    }
    if !policy.is_released(&resource) {
        deny_resource(&b, &resource, Reason::NotReleased);
        return Err(ApiError::Forbidden(format!(
            "resource {resource} denied: not_released: not listed in released_resources"
        )));
    }
    let data = match b.store.get(&rp) {
        Ok(d) => d,
        Err(StoreError::NotFound(_)) => {
            deny_resource(&b, &resource, Reason::NotFound);
            return Err(ApiError::NotFound(format!("resource {resource} not found")));
        }
        Err(e) => return Err(ApiError::Internal(e.to_string())),
    };
    let jwe = crate::jwe::encrypt(&payload.tee_pubkey, &data)
        .map_err(|e| ApiError::BadRequest(format!("cannot encrypt to the token's TEE key: {e}")))?;
    b.metrics.releases.get_or_create(&ResourceLabels { resource }).inc();
    Ok(axum::Json(jwe).into_response())
}

fn check_admin(b: &Broker, headers: &HeaderMap) -> Result<(), ApiError> {
    let verifier = b
        .admin
        .as_ref()
        .ok_or_else(|| ApiError::Unauthorized("AdminAuth", AdminError::Disabled.to_string()))?;
    let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    verifier.check(auth).map_err(|e| {
        tracing::warn!(error = %e, "admin request refused");
        ApiError::Unauthorized("AdminAuth", e.to_string())
    })
}

/// Whether the request asks for a create-only write (`If-None-Match: *`).
fn create_only(headers: &HeaderMap) -> bool {
    headers.get(header::IF_NONE_MATCH).and_then(|v| v.to_str().ok()).is_some_and(|v| v.trim() == "*")
}

/// `POST /kbs/v0/resource/...`: stores the body. With `If-None-Match: *` the write is
/// create-only: an existing resource answers 412 and keeps its bytes.
async fn put_resource(
    State(b): St,
    Path(path): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    check_admin(&b, &headers)?;
    let rp = ResourcePath::parse(&path).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let store = b.store.clone();
    let rp2 = rp.clone();
    let create = create_only(&headers);
    let written =
        tokio::task::spawn_blocking(
            move || {
                if create {
                    store.create(&rp2, &body)
                } else {
                    store.put(&rp2, &body)
                }
            },
        )
        .await
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    match written {
        Ok(()) => {
            tracing::info!(resource = %rp, create_only = create, "resource stored");
            Ok(StatusCode::OK.into_response())
        }
        Err(e @ StoreError::Exists(_)) => Err(ApiError::Exists(e.to_string())),
        Err(e) => Err(ApiError::Internal(e.to_string())),
    }
}

/// The admin read-back route: build tools fetch a KEK they registered earlier so that
/// a second image encrypted under the same id reuses it instead of replacing it.
pub const ADMIN_READ_ROUTE: &str = "/kbs/v0/admin/resource/{*path}";

/// `GET /kbs/v0/admin/resource/...` (admin token): the stored bytes, for resources that
/// match `admin_readable` only; 404 `ResourceNotFound` when absent, 403 when the
/// resource is outside the readable patterns.
async fn admin_read_resource(State(b): St, Path(path): Path<String>, headers: HeaderMap) -> Response {
    let answer = admin_read(&b, &path, &headers).await;
    let mut resp = match answer {
        Ok(r) => r,
        Err(e) => e.into_response(),
    };
    resp.headers_mut().insert(kbs_client::admin::ADMIN_READ_HEADER, HeaderValue::from_static("1"));
    resp
}

async fn admin_read(b: &Broker, path: &str, headers: &HeaderMap) -> Result<Response, ApiError> {
    check_admin(b, headers)?;
    let rp = ResourcePath::parse(path).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let resource = rp.as_string();
    if !b.admin_readable.iter().any(|p| crate::policy::pattern_matches(p, &resource)) {
        tracing::warn!(resource = %rp, "admin read refused: not admin-readable");
        return Err(ApiError::Forbidden(format!(
            "resource {resource} is not admin-readable: the broker's admin_readable patterns are {:?} \
             (add one with --admin-readable, or register the key yourself and pass it as a file)",
            b.admin_readable
        )));
    }
    match b.store.get(&rp) {
        Ok(data) => {
            tracing::info!(resource = %rp, "resource read back by the admin");
            let mut resp = Response::new(axum::body::Body::from(data.to_vec()));
            resp.headers_mut()
                .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
            Ok(resp)
        }
        Err(e @ StoreError::NotFound(_)) => Err(ApiError::NotFound(e.to_string())),
        Err(e) => Err(ApiError::Internal(e.to_string())),
    }
}

async fn delete_resource(
    State(b): St,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_admin(&b, &headers)?;
    let rp = ResourcePath::parse(&path).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    match b.store.delete(&rp) {
        Ok(()) => {
            tracing::info!(resource = %rp, "resource deleted");
            Ok(StatusCode::OK.into_response())
        }
        Err(StoreError::NotFound(r)) => Err(ApiError::NotFound(format!("resource {r} not found"))),
        Err(e) => Err(ApiError::Internal(e.to_string())),
    }
}

async fn set_policy(State(b): St, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    check_admin(&b, &headers)?;
    let v: Value = parse_json(&body, "resource-policy request")?;
    let enc = v
        .get("policy")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::BadRequest("missing string field \"policy\"".into()))?;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    let raw = URL_SAFE_NO_PAD
        .decode(enc)
        .or_else(|_| STANDARD.decode(enc))
        .map_err(|_| ApiError::BadRequest("policy is not base64url".into()))?;
    let text = String::from_utf8(raw).map_err(|_| ApiError::BadRequest("policy is not UTF-8".into()))?;
    let policy = Policy::parse(&text).map_err(|e| ApiError::BadRequest(format!("policy refused: {e}")))?;
    let _guard = b.policy_write.lock().await;
    if let Some(path) = &b.policy_path {
        // Persist first, so the file watcher sees the same text and the policy survives a restart.
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
        let write = || -> std::io::Result<()> {
            use std::io::Write;
            let mut tmp = tempfile::Builder::new().prefix(".policy-").tempfile_in(dir)?;
            tmp.write_all(text.as_bytes())?;
            tmp.as_file().sync_all()?;
            tmp.persist(path).map_err(|e| e.error)?;
            Ok(())
        };
        write().map_err(|e| ApiError::Internal(format!("cannot write policy file: {e}")))?;
    }
    b.install(policy, text);
    tracing::info!("policy replaced through the admin API");
    Ok(StatusCode::OK.into_response())
}

async fn metrics(State(b): St) -> Response {
    ([(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], b.metrics_text())
        .into_response()
}

async fn readyz(State(b): St) -> Response {
    if b.store.root().is_dir() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "resource directory missing").into_response()
    }
}

fn startup_notes(cfg: &ServeConfig) {
    if cfg.tdx.pccs_url.is_none()
        && cfg.tdx.collateral_dir.is_none()
        && cfg.tdx.collateral_cache_dir.is_none()
    {
        tracing::warn!(
            "TDX: no collateral source (tdx.pccs_url / tdx.collateral_dir); TDX evidence will be refused"
        );
    }
    if cfg.snp.ark.is_none() {
        tracing::info!("SNP: using the bundled AMD ARKs (Milan, Genoa, Turin)");
    }
}

/// Binds and starts the broker; returns the bound address and the task serving it.
pub async fn spawn(
    cfg: ServeConfig,
) -> Result<(SocketAddr, Arc<Broker>, tokio::task::JoinHandle<()>), ServeError> {
    startup_notes(&cfg);
    let broker = Broker::new(&cfg)?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| ServeError::Bind { addr: cfg.listen, source })?;
    let addr = listener.local_addr()?;
    let watcher = broker.spawn_policy_watcher();
    let app = broker.router();
    let task = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "server stopped");
        }
        watcher.abort();
    });
    tracing::info!(%addr, "cloak-kbs listening");
    Ok((addr, broker, task))
}

/// Runs the broker until the server fails.
pub async fn serve(cfg: ServeConfig) -> Result<(), ServeError> {
    let (_addr, _broker, task) = spawn(cfg).await?;
    task.await.map_err(|e| ServeError::Io(std::io::Error::other(e)))?;
    Ok(())
}
