//! HTTP face of the broker (axum). Handlers only translate between the wire and the
//! decision modules; every error becomes a status and a Trustee-style JSON body
//! (`{"type": ".../errors/<Kind>", "detail": ...}`) in one place, `ApiError`.
//!
//! Connections are served by hyper's HTTP/1 builder directly (not `axum::serve`) so a
//! peer is bounded in time as well as in size: its request headers must arrive within
//! `request_header_timeout_secs` of the connection opening or of the previous answer
//! (which also closes idle keep-alive connections), and its body within
//! `request_body_timeout_secs` of the headers. Half-open connections therefore cannot
//! hold the broker's file descriptors and lock guests out.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime};

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
use crate::jwe::JweError;
use crate::metrics::{
    label, DenialLabels, FailureLabels, Metrics, PodLabels, ResourceLabels, SuccessLabels, OTHER,
};
use crate::policy::{Denial, Policy, PolicyError, Reason};
use crate::seal::{MasterKey, MasterKeys, SealError};
use crate::session::{AttestationCache, CookieError, CookieKey, Created, Session, Ticket, COOKIE};
use crate::storage::{EtcdStoreError, LocalError, ResourcePath, Store, StoreError, StoreOptions};
use crate::token::{TokenError, TokenSigner};
use crate::verifier::{self, Trust};

/// The protocol version Trustee's KBS accepts (exact match).
pub const PROTOCOL_VERSION: &str = kbs_client::protocol::KBS_PROTOCOL_VERSION;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("initial policy")]
    Policy(#[from] PolicyError),
    #[error("resource store")]
    Store(#[from] StoreError),
    #[error("master key")]
    Seal(#[from] SealError),
    #[error("admin key")]
    Admin(#[from] AdminError),
    #[error("token signer")]
    Token(#[from] TokenError),
    #[error("cannot listen on {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("server failed")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
}

/// Everything a handler can fail with. [`ApiError::status`] is the one mapping of the
/// service's errors to HTTP statuses and Trustee error kinds; the body's `detail` is
/// the error with its causes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApiError {
    #[error("malformed {what}")]
    Malformed {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
    #[error("{0}")]
    BadRequest(&'static str),
    #[error("KBS Client Protocol Version Mismatch: expect {v}, got {0}", v = PROTOCOL_VERSION)]
    ProtocolVersion(String),
    #[error("no kbs-session-id cookie; call /kbs/v0/auth first")]
    MissingCookie,
    /// The cookie error's text says what was wrong and what to do.
    #[error(transparent)]
    InvalidCookie(CookieError),
    /// The detail starts with the denial reason (clients and tests read it).
    #[error("{0}")]
    AttestationFailed(Denial),
    #[error("no attestation token: send Authorization: Bearer or an attested session cookie")]
    TokenNotFound,
    #[error("attestation token refused")]
    TokenInvalid(#[source] TokenError),
    #[error("cannot issue a token")]
    TokenIssue(#[source] TokenError),
    /// The detail starts with the denial reason; the resource is the one the peer
    /// asked for (its client names it), so the detail does not say it again.
    #[error("{denial}")]
    PolicyDeny { resource: String, denial: Denial },
    #[error("not_released: the resource is not listed in released_resources")]
    NotReleased(String),
    #[error(
        "resource {resource} is not admin-readable: the broker's admin_readable patterns are {patterns:?} \
         (add one with --admin-readable, or register the key yourself and pass it as a file)"
    )]
    NotAdminReadable { resource: String, patterns: Vec<String> },
    /// Each admin error says what was wrong with the admin request.
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error("policy refused")]
    PolicyInvalid(#[source] PolicyError),
    #[error("cannot write the policy file")]
    PolicyFile(#[source] std::io::Error),
    #[error("cannot canonicalise runtime data")]
    RuntimeData(#[source] serde_json::Error),
    #[error("cannot encrypt to the token's TEE key")]
    Jwe(#[source] JweError),
    #[error("resource store")]
    Store(#[from] StoreError),
    #[error("internal task failed")]
    Task(#[from] tokio::task::JoinError),
    #[error("no such endpoint")]
    NoEndpoint,
    #[error("the request body did not arrive within {0:?} of its headers (request_body_timeout_secs)")]
    BodyTimeout(Duration),
}

impl ApiError {
    /// The HTTP status and Trustee error kind of each error (the one mapping).
    pub fn status(&self) -> (StatusCode, &'static str) {
        match self {
            ApiError::Malformed { .. }
            | ApiError::BadRequest(_)
            | ApiError::PolicyInvalid(_)
            | ApiError::RuntimeData(_)
            | ApiError::Jwe(_) => (StatusCode::BAD_REQUEST, "BadRequest"),
            ApiError::ProtocolVersion(_) => (StatusCode::UNAUTHORIZED, "ProtocolVersion"),
            ApiError::MissingCookie => (StatusCode::UNAUTHORIZED, "MissingCookie"),
            ApiError::InvalidCookie(_) => (StatusCode::UNAUTHORIZED, "InvalidCookie"),
            ApiError::AttestationFailed(_) => (StatusCode::UNAUTHORIZED, "AttestationFailed"),
            ApiError::TokenNotFound => (StatusCode::UNAUTHORIZED, "TokenNotFound"),
            ApiError::TokenInvalid(_) => (StatusCode::UNAUTHORIZED, "TokenInvalid"),
            ApiError::PolicyDeny { .. } => (StatusCode::UNAUTHORIZED, "PolicyDeny"),
            ApiError::Admin(_) => (StatusCode::UNAUTHORIZED, "AdminAuth"),
            ApiError::NotReleased(_) | ApiError::NotAdminReadable { .. } => {
                (StatusCode::FORBIDDEN, "PolicyDeny")
            }
            ApiError::NoEndpoint => (StatusCode::NOT_FOUND, "NotFound"),
            ApiError::BodyTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "RequestTimeout"),
            ApiError::Store(e) => match e {
                StoreError::InvalidPath(_) | StoreError::NameTooLong { .. } => {
                    (StatusCode::BAD_REQUEST, "BadRequest")
                }
                StoreError::NotFound(_) => (StatusCode::NOT_FOUND, "ResourceNotFound"),
                StoreError::Exists(_) => (StatusCode::PRECONDITION_FAILED, "ResourceExists"),
                StoreError::Etcd(
                    EtcdStoreError::Unavailable(_) | EtcdStoreError::Stale(_) | EtcdStoreError::NotReady(_),
                )
                | StoreError::Local(LocalError::SessionsFull) => {
                    (StatusCode::SERVICE_UNAVAILABLE, "Unavailable")
                }
                _ => (StatusCode::INTERNAL_SERVER_ERROR, "InternalError"),
            },
            ApiError::TokenIssue(_) | ApiError::PolicyFile(_) | ApiError::Task(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "InternalError")
            }
        }
    }

    /// The message with its causes, each once: `a: b: c`.
    fn detail(&self) -> String {
        report::line(self)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind) = self.status();
        // An internal failure's causes name the broker's files (the resource directory,
        // the policy file): they go to the log, the peer learns only what failed.
        let detail = if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::warn!(error = %self.detail(), "request failed");
            format!("{self} (internal error; the broker's log has the details)")
        } else {
            if status.is_server_error() {
                tracing::warn!(error = %self.detail(), "request failed");
            }
            self.detail()
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
    store: Store,
    tokens: TokenSigner,
    /// Seals the session into the `/auth` cookie; derived from the token key.
    cookies: CookieKey,
    admin: Option<AdminVerifier>,
    trust: Trust,
    metrics: Metrics,
    cache: AttestationCache,
    session_ttl: Duration,
    body_limit: usize,
    /// How long a request body may take to arrive after its headers.
    body_timeout: Duration,
    policy_poll: Duration,
    /// Serialises admin policy writes with reloads so neither sees half of the other.
    policy_write: tokio::sync::Mutex<()>,
    /// Resource patterns the admin key may read back (build-side KEK reuse).
    admin_readable: Vec<String>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker").field("store", &self.store.describe()).finish()
    }
}

/// The master keys named in the config, if any.
pub fn master_keys(cfg: &ServeConfig) -> Result<Option<MasterKeys>, SealError> {
    let Some(p) = &cfg.master_key else { return Ok(None) };
    let old = cfg.old_master_keys.iter().map(|p| MasterKey::load(p)).collect::<Result<Vec<_>, _>>()?;
    Ok(Some(MasterKeys::new(MasterKey::load(p)?, old)))
}

/// Store options from the config; `seed_policy` is the policy file's text.
pub fn store_options(cfg: &ServeConfig, seed_policy: Option<String>) -> Result<StoreOptions, ServeError> {
    let read = |p: &Option<PathBuf>| -> Result<Option<Vec<u8>>, ConfigError> {
        match p {
            Some(p) => {
                Ok(Some(std::fs::read(p).map_err(|source| ConfigError::Read { path: p.clone(), source })?))
            }
            None => Ok(None),
        }
    };
    let ca_pem = read(&cfg.etcd_ca)?;
    let client_pem = match (read(&cfg.etcd_cert)?, read(&cfg.etcd_key)?) {
        (Some(mut cert), Some(key)) => {
            cert.push(b'\n');
            cert.extend_from_slice(&key);
            Some(Zeroizing::new(cert))
        }
        (None, None) => None,
        _ => return Err(ConfigError::Invalid("--etcd-cert and --etcd-key go together".into()).into()),
    };
    let password = match &cfg.etcd_password_file {
        Some(p) => {
            let raw = Zeroizing::new(
                std::fs::read_to_string(p).map_err(|source| ConfigError::Read { path: p.clone(), source })?,
            );
            Some(Zeroizing::new(raw.trim_end_matches(['\n', '\r']).to_string()))
        }
        None => None,
    };
    let auth = match (&cfg.etcd_user, password) {
        (Some(u), Some(pw)) => Some((u.clone(), pw)),
        (None, None) => None,
        _ => {
            return Err(ConfigError::Invalid("--etcd-user and --etcd-password-file go together".into()).into())
        }
    };
    Ok(StoreOptions {
        master_keys: master_keys(cfg)?,
        session_ttl: Duration::from_secs(cfg.session_ttl_secs.max(1)),
        stale: Duration::from_secs(cfg.store_stale_secs),
        timeout: Duration::from_millis(cfg.store_timeout_ms.max(50)),
        tls: crate::storage::etcd::EtcdTls { ca_pem, client_pem, auth },
        seed_policy,
    })
}

impl Broker {
    /// Opens the store and builds the broker. With a shared store the policy file only
    /// seeds the shared policy; the policy in force is the store's.
    pub async fn open(cfg: &ServeConfig) -> Result<Arc<Self>, ServeError> {
        let file_text = match &cfg.policy {
            Some(p) => Some(
                std::fs::read_to_string(p).map_err(|source| PolicyError::Read { path: p.clone(), source })?,
            ),
            None => None,
        };
        if let Some(t) = &file_text {
            Policy::parse(t)?;
        }
        cfg.check_limits()?;
        let metrics = Metrics::with_limits(cfg.metric_limits());
        let store = Store::open(&cfg.store_spec(), store_options(cfg, file_text.clone())?)
            .await?
            .with_metrics(&metrics);
        let text = match store.policy_updates() {
            Some(rx) => {
                let shared = rx.borrow().clone();
                shared.or(file_text)
            }
            None => file_text,
        };
        let policy = match &text {
            Some(t) => Policy::parse(t)?,
            None => {
                tracing::warn!("no policy configured: every attestation is refused until one is set");
                Policy::default()
            }
        };
        let admin = match &cfg.admin_public_key {
            Some(p) => {
                let pem = std::fs::read(p).map_err(|source| ConfigError::Read { path: p.clone(), source })?;
                Some(AdminVerifier::from_pem(
                    &pem,
                    cfg.admin_issuer.clone(),
                    cfg.admin_audience.clone(),
                    cfg.admin_token_max_lifetime_secs,
                )?)
            }
            None => {
                tracing::warn!("no admin public key configured: the admin API refuses every request");
                None
            }
        };
        let trust = cfg.trust()?;
        let token_key = store.token_key().await?;
        let tokens = TokenSigner::from_key(&token_key, cfg.token_ttl_secs)?;
        let cookies = CookieKey::derive(&token_key);
        drop(token_key);
        Ok(Arc::new(Self {
            policy: RwLock::new(PolicySlot { policy: Arc::new(policy), text }),
            policy_path: cfg.policy.clone(),
            store,
            tokens,
            cookies,
            admin,
            trust,
            metrics,
            cache: AttestationCache::new(Duration::from_secs(cfg.attestation_cache_secs)),
            session_ttl: Duration::from_secs(cfg.session_ttl_secs.max(1)),
            body_limit: cfg.body_limit_bytes,
            body_timeout: Duration::from_secs(cfg.request_body_timeout_secs),
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

    /// The store this broker runs on.
    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn metrics_text(&self) -> String {
        self.metrics.encode()
    }

    fn install(&self, policy: Policy, text: String) {
        if let Ok(mut slot) = self.policy.write() {
            *slot = PolicySlot { policy: Arc::new(policy), text: Some(text) };
        }
    }

    /// Installs a policy text unless it is the one in force; an invalid text leaves
    /// the old policy in force. Ok(true) when a new policy was installed.
    fn install_text(&self, text: String) -> Result<bool, PolicyError> {
        let unchanged = self.policy.read().map(|s| s.text.as_deref() == Some(text.as_str())).unwrap_or(false);
        if unchanged {
            return Ok(false);
        }
        let policy = Policy::parse(&text)?;
        self.install(policy, text);
        Ok(true)
    }

    /// Re-reads the policy file. Ok(true) when a new policy was installed; on error the
    /// old policy stays in force. With a shared store the file is not the policy's
    /// source (it only seeds the store), so this does nothing.
    pub async fn reload_policy(&self) -> Result<bool, PolicyError> {
        let Some(path) = &self.policy_path else {
            return Ok(false);
        };
        if self.store.is_shared() {
            return Ok(false);
        }
        let _guard = self.policy_write.lock().await;
        let text = std::fs::read_to_string(path)
            .map_err(|source| PolicyError::Read { path: path.clone(), source })?;
        self.install_text(text)
    }

    async fn reload_and_log(&self, why: &str) {
        match self.reload_policy().await {
            Ok(true) => tracing::info!(trigger = why, "policy reloaded"),
            Ok(false) => {}
            Err(e) => tracing::error!(
                trigger = why,
                error = %report::Line(&e),
                "new policy refused; the previous policy stays in force"
            ),
        }
    }

    /// Follows the policy: the shared store's watch (etcd), or the policy file
    /// (mtime/size/inode poll) and SIGHUP (local); runs until dropped.
    pub fn spawn_policy_watcher(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        if let Some(mut rx) = self.store.policy_updates() {
            let me = Arc::downgrade(self);
            return tokio::spawn(async move {
                while rx.changed().await.is_ok() {
                    let Some(text) = rx.borrow_and_update().clone() else { continue };
                    let Some(b) = me.upgrade() else { return };
                    match b.install_text(text) {
                        Ok(true) => tracing::info!("shared policy changed"),
                        Ok(false) => {}
                        Err(e) => {
                            tracing::error!(error = %report::Line(&e), "shared policy refused; the previous policy stays in force")
                        }
                    }
                }
            });
        }
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
            .fallback(|| async { ApiError::NoEndpoint })
            .layer(DefaultBodyLimit::max(self.body_limit))
            .layer(axum::middleware::from_fn_with_state(self.body_timeout, body_deadline))
            .with_state(Arc::clone(self))
    }
}

type St = State<Arc<Broker>>;

fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8], what: &'static str) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|source| ApiError::Malformed { what, source })
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

fn set_cookie(value: &str, ttl: Duration) -> Option<HeaderValue> {
    HeaderValue::from_str(&format!("{COOKIE}={value}; Path=/; Max-Age={}; HttpOnly", ttl.as_secs())).ok()
}

fn str_param(v: &Value, key: &str) -> String {
    label(v.get(key).and_then(Value::as_str).unwrap_or("unknown"))
}

/// `/auth`: a challenge, and the session sealed into the cookie (no store request; see
/// `session`).
async fn auth(State(b): St, body: Bytes) -> Result<Response, ApiError> {
    let req: Request = parse_json(&body, "auth request")?;
    if req.version != PROTOCOL_VERSION {
        return Err(ApiError::ProtocolVersion(req.version.chars().take(32).collect()));
    }
    // A handshake whose token could not be recorded is refused up front.
    b.store.session_admission()?;
    let mut nonce = [0u8; 32];
    rand::Rng::fill(&mut rand::thread_rng(), &mut nonce);
    let nonce = base64::engine::general_purpose::STANDARD.encode(nonce);
    let ticket = Ticket {
        tee: req.tee,
        pod: str_param(&req.extra_params, "pod"),
        namespace: str_param(&req.extra_params, "namespace"),
        nonce: nonce.clone(),
        exp: crate::now_secs() + b.session_ttl.as_secs(),
    };
    let (_id, cookie) = b.cookies.seal(&ticket);
    let challenge = Challenge { nonce, extra_params: Value::String(String::new()) };
    let mut resp = axum::Json(challenge).into_response();
    if let Some(c) = set_cookie(&cookie, b.session_ttl) {
        resp.headers_mut().insert(header::SET_COOKIE, c);
    }
    Ok(resp)
}

/// The label of a pod or namespace that verified init-data does not name.
const UNKNOWN: &str = "unknown";

/// Counts a refused attestation under `labels` (the pod's series, or `other`) and logs
/// it with the pod and namespace its verified init-data gave (else `unknown`).
fn attest_denied(b: &Broker, labels: &PodLabels, pod: &str, ns: &str, d: &Denial) -> ApiError {
    b.metrics
        .failure
        .get_or_create(&FailureLabels {
            pod: labels.pod.clone(),
            namespace: labels.namespace.clone(),
            reason: d.reason.as_str().into(),
        })
        .inc();
    tracing::info!(pod, namespace = ns, reason = d.reason.as_str(), detail = %d.detail, "attestation rejected");
    ApiError::AttestationFailed(d.clone())
}

/// SHA-384 of the RFC 8785 canonical runtime data, as Trustee's AS computes it.
pub fn runtime_data_hash(att: &Attestation) -> Result<[u8; 48], serde_json::Error> {
    let key = serde_json::to_value(&att.runtime_data.tee_pubkey)?;
    let rd = json!({
        "tee-pubkey": key,
        "nonce": att.runtime_data.nonce,
        "additional-evidence": att.tee_evidence.additional_evidence,
    });
    let canon = serde_json_canonicalizer::to_vec(&rd)?;
    Ok(Sha384::digest(canon).into())
}

/// `/attest`: opens the session from the cookie, verifies, and records the token with
/// one create-only store write; a session that already has a token (a repeated or
/// concurrent `/attest`, which Trustee answers with the token it issued) answers that
/// token instead. The evidence is verified first either way: the cookie alone buys no
/// token.
async fn attest(State(b): St, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    let cookie = session_cookie(&headers).ok_or(ApiError::MissingCookie)?;
    let (id, session) = b.cookies.open(&cookie).map_err(ApiError::InvalidCookie)?;
    let att: Attestation = parse_json(&body, "attestation")?;
    let nonce = session.nonce.clone();
    let tee = session.tee;
    // Until the guest has answered its own challenge it has shown nothing: its failure
    // is counted under `other`.
    if !bool::from(subtle::ConstantTimeEq::ct_eq(att.runtime_data.nonce.as_bytes(), nonce.as_bytes())) {
        return Err(attest_denied(
            &b,
            &Metrics::other_pod(),
            UNKNOWN,
            UNKNOWN,
            &Denial::new(Reason::NonceMismatch, "runtime-data nonce is not the session's challenge"),
        ));
    }
    // Until its init-data is bound to its verified report, the guest's pod and namespace
    // are its host's word: its attempt and failure count under `unknown`.
    let unbound = |d: Denial| {
        let labels = b.metrics.pod_labels(UNKNOWN, UNKNOWN);
        b.metrics.attempts.get_or_create(&labels).inc();
        attest_denied(&b, &labels, UNKNOWN, UNKNOWN, &d)
    };
    let hash = runtime_data_hash(&att).map_err(ApiError::RuntimeData)?;
    let evidence = &att.tee_evidence.primary_evidence;
    let ev_bytes = serde_json::to_vec(evidence).map_err(ApiError::RuntimeData)?;
    let cache_key = AttestationCache::key(tee, &ev_bytes, &hash);
    let claims: Claims = match b.cache.get(&cache_key) {
        Some(c) => c,
        None => {
            let c = verifier::verify(tee, evidence, &hash, &b.trust).await.map_err(unbound)?;
            b.cache.put(cache_key, c.clone());
            c
        }
    };
    let init_data = crate::initdata::bind(&claims, att.init_data.as_ref()).map_err(unbound)?;
    let entry =
        |name| init_data.as_ref().and_then(|i| i.entry(name)).map_or_else(|| UNKNOWN.to_owned(), label);
    let (pod, ns) = (entry(crate::initdata::POD_ENTRY), entry(crate::initdata::NAMESPACE_ENTRY));
    let labels = b.metrics.pod_labels(&pod, &ns);
    b.metrics.attempts.get_or_create(&labels).inc();
    let policy = b.policy();
    let mm = policy
        .check_claims(&claims)
        .and_then(|mm| policy.initdata.check(init_data.as_ref()).map(|()| mm))
        .map_err(|d| attest_denied(&b, &labels, &pod, &ns, &d))?;
    let (token, _exp) = b
        .tokens
        .issue(att.runtime_data.tee_pubkey.clone(), claims, init_data, &pod, &ns)
        .map_err(ApiError::TokenIssue)?;
    let token = Zeroizing::new(token);
    let record = Session {
        tee,
        pod: session.pod,
        namespace: session.namespace,
        token: token.clone(),
        expires_at: session.exp,
    };
    if let Created::Existing(first) = b.store.session_create(&id, &record).await? {
        // The session's first /attest won: its token is the session's.
        return Ok(token_response(&cookie, &first.token, b.session_ttl));
    }
    b.metrics
        .success
        .get_or_create(&SuccessLabels {
            pod: labels.pod,
            namespace: labels.namespace,
            measurement_match: mm.as_str().into(),
        })
        .inc();
    Ok(token_response(&cookie, &token, b.session_ttl))
}

fn token_response(cookie: &str, token: &str, ttl: Duration) -> Response {
    let mut resp = axum::Json(json!({ "token": token })).into_response();
    if let Some(c) = set_cookie(cookie, ttl) {
        resp.headers_mut().insert(header::SET_COOKIE, c);
    }
    resp
}

/// Counts a refused resource request; `resource` is the label: the name only once the
/// path is valid and the token verified (see `get_resource`), `other` before.
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
    let rp = ResourcePath::parse(&path)?;
    let resource = rp.as_string();
    // Until the token verifies, the name is the requester's choice, not a label.
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| Zeroizing::new(t.trim().to_string()));
    let token = match bearer {
        Some(t) => Some(t),
        None => match session_cookie(&headers) {
            Some(cookie) => {
                let (id, _) = b.cookies.open(&cookie).map_err(|e| {
                    deny_resource(&b, OTHER, Reason::TokenInvalid);
                    ApiError::InvalidCookie(e)
                })?;
                b.store.session_get(&id).await?.map(|s| s.token)
            }
            None => None,
        },
    };
    let Some(token) = token else {
        deny_resource(&b, OTHER, Reason::TokenInvalid);
        return Err(ApiError::TokenNotFound);
    };
    let payload = b.tokens.verify(&token).map_err(|e| {
        deny_resource(&b, OTHER, Reason::TokenInvalid);
        ApiError::TokenInvalid(e)
    })?;
    let label = b.metrics.resource_label(&resource);
    let policy = b.policy();
    let init_data = payload.init_data.as_ref();
    if let Err(denial) =
        policy.check_claims(&payload.cloak_claims).and_then(|_| policy.initdata.check(init_data))
    {
        deny_resource(&b, &label, denial.reason);
        return Err(ApiError::PolicyDeny { resource, denial });
    }
    if !policy.is_released(&resource) {
        deny_resource(&b, &label, Reason::NotReleased);
        return Err(ApiError::NotReleased(resource));
    }
    if let Err(denial) = policy.initdata.check_resource(&resource, init_data) {
        deny_resource(&b, &label, denial.reason);
        return Err(ApiError::PolicyDeny { resource, denial });
    }
    let data = b.store.resource_get(&rp).await.inspect_err(|e| {
        if matches!(e, StoreError::NotFound(_)) {
            deny_resource(&b, &label, Reason::NotFound);
        }
    })?;
    let jwe = crate::jwe::encrypt(&payload.tee_pubkey, &data).map_err(ApiError::Jwe)?;
    b.metrics.releases.get_or_create(&ResourceLabels { resource: label }).inc();
    Ok(axum::Json(jwe).into_response())
}

fn check_admin(b: &Broker, headers: &HeaderMap) -> Result<(), ApiError> {
    let verifier = b.admin.as_ref().ok_or(AdminError::Disabled)?;
    let auth = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
    verifier
        .check(auth)
        .inspect_err(|e| tracing::warn!(error = %report::Line(e), "admin request refused"))?;
    Ok(())
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
    let rp = ResourcePath::parse(&path)?;
    let create = create_only(&headers);
    b.store.resource_put(&rp, &body, create).await?;
    tracing::info!(resource = %rp, create_only = create, "resource stored");
    Ok(StatusCode::OK.into_response())
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
    let rp = ResourcePath::parse(path)?;
    let resource = rp.as_string();
    if !b.admin_readable.iter().any(|p| crate::policy::pattern_matches(p, &resource)) {
        tracing::warn!(resource = %rp, "admin read refused: not admin-readable");
        return Err(ApiError::NotAdminReadable { resource, patterns: b.admin_readable.clone() });
    }
    let data = b.store.resource_get_fresh(&rp).await?;
    tracing::info!(resource = %rp, "resource read back by the admin");
    let mut resp = Response::new(axum::body::Body::from(data.to_vec()));
    resp.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    Ok(resp)
}

async fn delete_resource(
    State(b): St,
    Path(path): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_admin(&b, &headers)?;
    let rp = ResourcePath::parse(&path)?;
    b.store.resource_delete(&rp).await?;
    tracing::info!(resource = %rp, "resource deleted");
    Ok(StatusCode::OK.into_response())
}

async fn set_policy(State(b): St, headers: HeaderMap, body: Bytes) -> Result<Response, ApiError> {
    check_admin(&b, &headers)?;
    let v: Value = parse_json(&body, "resource-policy request")?;
    let enc = v
        .get("policy")
        .and_then(Value::as_str)
        .ok_or(ApiError::BadRequest("missing string field \"policy\""))?;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    let raw = URL_SAFE_NO_PAD
        .decode(enc)
        .or_else(|_| STANDARD.decode(enc))
        .map_err(|_| ApiError::BadRequest("policy is not base64url"))?;
    let text = String::from_utf8(raw).map_err(|_| ApiError::BadRequest("policy is not UTF-8"))?;
    let policy = Policy::parse(&text).map_err(ApiError::PolicyInvalid)?;
    let _guard = b.policy_write.lock().await;
    if b.store.policy_put(&text).await? {
        // Shared store: every replica's watch installs it; this one installs it now.
        b.install(policy, text);
        tracing::info!("shared policy replaced through the admin API");
        return Ok(StatusCode::OK.into_response());
    }
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
        write().map_err(ApiError::PolicyFile)?;
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
    match b.store.ready() {
        Ok(()) => (StatusCode::OK, "ready").into_response(),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why).into_response(),
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

/// A request body with a deadline: the whole body must arrive before `sleep` ends
/// (counted from the headers, not reset by progress, so trickling a byte at a time
/// does not keep a request open). `fired` tells [`body_deadline`] to answer 408.
struct DeadlineBody {
    inner: axum::body::Body,
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    fired: Arc<std::sync::atomic::AtomicBool>,
    limit: Duration,
}

#[derive(Debug, thiserror::Error)]
#[error("request body not received within {0:?}")]
struct BodyDeadlineExceeded(Duration);

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Self::Error>>> {
        use std::future::Future;
        use std::task::Poll;
        let me = &mut *self;
        if let Poll::Ready(frame) = std::pin::Pin::new(&mut me.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        if me.sleep.as_mut().poll(cx).is_ready() {
            me.fired.store(true, std::sync::atomic::Ordering::Relaxed);
            return Poll::Ready(Some(Err(Box::new(BodyDeadlineExceeded(me.limit)))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Gives every request body a deadline (`request_body_timeout_secs`); a request whose
/// body missed it is answered 408 and its connection closed.
async fn body_deadline(
    State(limit): State<Duration>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    // A body that has already ended cannot be slow: no timer for it.
    if http_body::Body::is_end_stream(req.body()) {
        return next.run(req).await;
    }
    let fired = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sleep = Box::pin(tokio::time::sleep(limit));
    let flag = Arc::clone(&fired);
    let req = req.map(|inner| axum::body::Body::new(DeadlineBody { inner, sleep, fired: flag, limit }));
    let resp = next.run(req).await;
    if !fired.load(std::sync::atomic::Ordering::Relaxed) {
        return resp;
    }
    tracing::info!(limit = ?limit, "request body too slow; closing the connection");
    let mut resp = ApiError::BodyTimeout(limit).into_response();
    resp.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
    resp
}

/// Errors of `accept` that concern one connection only (the listener is fine).
fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(e.kind(), ConnectionRefused | ConnectionAborted | ConnectionReset)
}

/// Accepts connections and serves each on its own task with HTTP/1 and the header
/// deadline (see the module doc), over TLS when given an acceptor; runs until the task
/// is dropped.
async fn serve_connections(
    listener: tokio::net::TcpListener,
    app: Router,
    header_timeout: Duration,
    tls: Option<tokio_rustls::TlsAcceptor>,
) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _peer)) => stream,
            Err(e) if is_connection_error(&e) => continue,
            Err(e) => {
                // Out of file descriptors, most likely: wait for some to be freed
                // (the deadlines free them) instead of spinning.
                tracing::error!(error = %report::Line(&e), "cannot accept connections; retrying in 1 s");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        let svc = hyper_util::service::TowerToHyperService::new(app.clone());
        let tls = tls.clone();
        tokio::spawn(async move {
            let Some(tls) = tls else {
                return serve_connection(stream, svc, header_timeout).await;
            };
            // The handshake gets the header deadline too: a client that opens a
            // connection and never finishes the handshake holds it no longer.
            match tokio::time::timeout(header_timeout, tls.accept(stream)).await {
                Ok(Ok(stream)) => serve_connection(stream, svc, header_timeout).await,
                Ok(Err(e)) => tracing::debug!(error = %report::Line(&e), "TLS handshake failed"),
                Err(_) => tracing::debug!(limit = ?header_timeout, "TLS handshake not finished in time"),
            }
        });
    }
}

/// One connection's HTTP/1 exchanges, with the header deadline.
async fn serve_connection<I>(
    io: I,
    svc: hyper_util::service::TowerToHyperService<Router>,
    header_timeout: Duration,
) where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout)
        .keep_alive(true)
        .serve_connection(hyper_util::rt::TokioIo::new(io), svc);
    if let Err(e) = conn.await {
        tracing::debug!(error = %report::Line(&e), "connection closed");
    }
}

/// Raises the soft limit on open files to the hard limit, as servers that hold many
/// connections do: with a soft limit of a few hundred, that many half-open
/// connections (each dropped only after the header deadline) would lock guests out
/// until they time out. Returns the limit now in force, if it could be read.
pub fn raise_fd_limit() -> Option<u64> {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    // `None` is unlimited: a soft limit already unlimited, or an unlimited hard one
    // (the kernel caps NOFILE at fs.nr_open anyway), is left alone.
    if matches!((lim.current, lim.maximum), (Some(cur), Some(max)) if cur < max) {
        let before = lim.current;
        lim.current = lim.maximum;
        match setrlimit(Resource::Nofile, lim) {
            Ok(()) => tracing::info!(from = ?before, to = ?lim.current, "raised the open-files limit"),
            Err(e) => tracing::warn!(error = %report::Line(&e), "could not raise the open-files limit"),
        }
    }
    getrlimit(Resource::Nofile).current
}

/// Binds and starts the broker; returns the bound address and the task serving it.
pub async fn spawn(
    cfg: ServeConfig,
) -> Result<(SocketAddr, Arc<Broker>, tokio::task::JoinHandle<()>), ServeError> {
    // Before anything else: a broker that would serve plain HTTP to the network, or
    // whose certificate is unusable, does not start.
    let transport = cfg.transport()?;
    let tls = match &transport {
        crate::tls::Transport::Tls { cert, key } => Some(crate::tls::acceptor(cert, key)?),
        crate::tls::Transport::Plain { loopback: true } => {
            tracing::warn!(
                listen = %cfg.listen,
                "serving plain HTTP on a loopback address: only a TLS-terminating proxy beside the broker \
                 should reach it (give --tls-cert/--tls-key to serve TLS)"
            );
            None
        }
        crate::tls::Transport::Plain { loopback: false } => {
            tracing::warn!(
                listen = %cfg.listen,
                "--insecure-http: serving plain HTTP to the network; tokens and admin requests travel \
                 unencrypted unless a TLS-terminating proxy is the only way in"
            );
            None
        }
    };
    startup_notes(&cfg);
    raise_fd_limit();
    let broker = Broker::open(&cfg).await?;
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|source| ServeError::Bind { addr: cfg.listen, source })?;
    let addr = listener.local_addr()?;
    let watcher = broker.spawn_policy_watcher();
    let app = broker.router();
    let header_timeout = Duration::from_secs(cfg.request_header_timeout_secs);
    let scheme = if tls.is_some() { "https" } else { "http" };
    let (acceptor, reloader) = match tls {
        Some((acceptor, cert)) => (Some(acceptor), Some(crate::tls::spawn_reloader(cert))),
        None => (None, None),
    };
    let task = tokio::spawn(async move {
        serve_connections(listener, app, header_timeout, acceptor).await;
        watcher.abort();
        if let Some(r) = reloader {
            r.abort();
        }
    });
    tracing::info!(%addr, scheme, store = %broker.store.describe(), "cloak-kbs listening");
    Ok((addr, broker, task))
}

/// Runs the broker until the server fails.
pub async fn serve(cfg: ServeConfig) -> Result<(), ServeError> {
    let (_addr, _broker, task) = spawn(cfg).await?;
    task.await.map_err(|e| ServeError::Io(std::io::Error::other(e)))?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn io(msg: &str) -> std::io::Error {
        std::io::Error::new(std::io::ErrorKind::NotFound, msg.to_owned())
    }

    /// Issue 27: each error of the broker says its own step; the cause follows once.
    #[test]
    fn broker_errors_do_not_repeat_their_source() {
        let yaml = serde_yaml::from_str::<Vec<u32>>("a: [").unwrap_err();
        let errors: Vec<Box<dyn std::error::Error>> = vec![
            Box::new(ConfigError::Read { path: "/etc/kbs.yaml".into(), source: io("no such file") }),
            Box::new(ConfigError::Yaml { path: "/etc/kbs.yaml".into(), source: yaml }),
            Box::new(ServeError::Policy(PolicyError::Read { path: "/p.yaml".into(), source: io("gone") })),
            Box::new(PolicyError::Yaml(serde_yaml::from_str::<Vec<u32>>("{").unwrap_err())),
            Box::new(SealError::Read { path: "/mk".into(), source: io("no such file") }),
            Box::new(ServeError::Store(StoreError::Local(LocalError::Io {
                path: "/srv/r".into(),
                source: io("disk full"),
            }))),
            Box::new(ApiError::InvalidCookie(CookieError::Expired)),
            Box::new(ApiError::Admin(AdminError::Signature)),
            Box::new(ApiError::TokenInvalid(TokenError::Expired)),
        ];
        for e in &errors {
            let line = report::line(e.as_ref());
            assert_eq!(report::repeated_source(e.as_ref()), None, "{line}");
            assert_eq!(report::repeated_clause(&line), None, "{line}");
        }
        assert_eq!(
            report::line(errors[0].as_ref()),
            "cannot read config /etc/kbs.yaml: no such file",
            "the cause once, after the step"
        );
    }

    /// Issue 27: the `detail` of an HTTP error body says each clause once, and keeps
    /// what clients parse (the denial reason first).
    #[test]
    fn http_error_details_say_each_clause_once() {
        let denial = Denial::new(Reason::MeasurementMismatch, "launch measurement ab.. is not allowed");
        let cases = [
            (
                ApiError::AttestationFailed(denial.clone()),
                "measurement_mismatch: launch measurement ab.. is not allowed",
            ),
            (
                ApiError::PolicyDeny { resource: "default/key/1".into(), denial },
                "measurement_mismatch: launch measurement ab.. is not allowed",
            ),
            (
                ApiError::NotReleased("a/b/c".into()),
                "not_released: the resource is not listed in released_resources",
            ),
            (ApiError::Admin(AdminError::Signature), "admin token signature is invalid"),
            (
                ApiError::InvalidCookie(CookieError::Expired),
                "session expired (call /kbs/v0/auth for a new session)",
            ),
            (ApiError::TokenInvalid(TokenError::Expired), "attestation token refused: token has expired"),
        ];
        for (e, want) in cases {
            assert_eq!(e.detail(), want);
            assert_eq!(report::repeated_clause(&e.detail()), None, "{want}");
        }
    }
}
