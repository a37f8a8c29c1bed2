//! `KbsClient`: drives the RCAR handshake over HTTP, caches the token (and the
//! TEE key it is bound to) until it expires, and fetches resources with it.
//!
//! One attestation serves every resource of a pull. A 401 on a resource means the
//! token is stale or the policy changed: the client re-attests once and retries,
//! then fails closed. Connection errors and 5xx are retried with exponential
//! backoff and jitter, bounded by the configured deadline; 4xx are final.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reqwest::header::{HeaderMap, AUTHORIZATION, COOKIE, SET_COOKIE};
use reqwest::{Method, StatusCode, Url};
use serde_json::Value;
use tokio::sync::Mutex;
use zeroize::Zeroizing;

use crate::attester::Attester;
use crate::error::{KbsError, Step};
use crate::protocol::{self, TeeKeyKind, TeeKeyPair, Token, MAX_BODY, SESSION_COOKIE};
use crate::uri::ResourceUri;

/// Client settings.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Total time one `get_resource`/`attest` call may take, retries included.
    pub deadline: Duration,
    /// Kind of the ephemeral TEE key.
    pub tee_key: TeeKeyKind,
    /// Extra `extra-params` of the `/auth` request, e.g. `{"pod":..,"namespace":..}`.
    pub extra_params: Value,
    /// The guest's init-data, sent in every attestation (`init-data` of the RCAR).
    pub init_data: Option<crate::initdata::Initdata>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            deadline: Duration::from_secs(30),
            tee_key: TeeKeyKind::EcP256,
            extra_params: Value::Null,
            init_data: None,
        }
    }
}

/// Seconds of validity a cached token must have left to be reused.
const TOKEN_MARGIN_S: u64 = 5;

/// A token and the TEE key the KBS will encrypt to.
struct Session {
    token: Token,
    key: TeeKeyPair,
    /// Increases with every handshake, so a 401 invalidates only the session
    /// that was actually refused, not one another task just made.
    generation: u64,
}

struct Inner {
    base: Url,
    /// `/auth` and `/attest` under `base`, joined once.
    auth_url: Url,
    attest_url: Url,
    http: reqwest::Client,
    attester: Arc<dyn Attester>,
    cfg: ClientConfig,
    session: Mutex<Option<Arc<Session>>>,
    attestations: AtomicU64,
}

/// A KBS client; cheap to clone, clones share the token.
#[derive(Clone)]
pub struct KbsClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for KbsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KbsClient")
            .field("url", &self.inner.base.as_str())
            .field("tee", &self.inner.attester.tee())
            .finish_non_exhaustive()
    }
}

/// What one HTTP exchange returned (after retries of transient failures).
pub(crate) struct Answer {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Zeroizing<Vec<u8>>,
}

/// Parses and checks a KBS base URL (`http://host:port`, optional path prefix).
pub(crate) fn parse_base_url(url: &str) -> Result<Url, KbsError> {
    let mut u = Url::parse(url).map_err(|e| KbsError::Config(format!("KBS URL {url:?}: {e}")))?;
    if u.scheme() != "http" && u.scheme() != "https" {
        return Err(KbsError::Config(format!("KBS URL {url:?}: scheme must be http or https")));
    }
    if u.host().is_none() || u.query().is_some() || u.fragment().is_some() {
        return Err(KbsError::Config(format!("KBS URL {url:?}: needs a host and no query or fragment")));
    }
    if !u.path().ends_with('/') {
        let p = format!("{}/", u.path());
        u.set_path(&p);
    }
    Ok(u)
}

pub(crate) fn endpoint(base: &Url, path: &str) -> Result<Url, KbsError> {
    base.join(path).map_err(|e| KbsError::Config(format!("cannot build KBS endpoint {path}: {e}")))
}

/// The HTTP client the KBS client uses by default (built-in roots only; see
/// [`crate::tls::http_client`] for a broker with its own CA).
pub fn http_client() -> Result<reqwest::Client, KbsError> {
    crate::tls::http_client(None)
}

/// Exponential backoff with jitter: attempt 1 waits ~100 ms, doubling to a cap of
/// 3 s; the actual delay is uniform in [d/2, d] so many guests retrying after
/// the same outage do not hit the KBS in lockstep.
pub fn backoff_delay(attempt: u32, rng: &mut impl rand::Rng) -> Duration {
    const BASE_MS: u64 = 100;
    const CAP_MS: u64 = 3_000;
    let exp = attempt.saturating_sub(1).min(16);
    let d = BASE_MS.saturating_mul(1u64 << exp).min(CAP_MS);
    Duration::from_millis(rng.gen_range(d / 2..=d))
}

/// Short, printable reason from a KBS error body: Trustee's `{"type","detail"}`
/// or the first bytes of the text.
pub(crate) fn server_reason(status: StatusCode, body: &[u8]) -> String {
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        if let Some(d) = v.get("detail").and_then(Value::as_str) {
            return clean(d);
        }
        if let Some(d) = v.get("error").and_then(Value::as_str) {
            return clean(d);
        }
    }
    let text = String::from_utf8_lossy(body);
    let text = clean(&text);
    if text.is_empty() {
        format!("HTTP {status}")
    } else {
        text
    }
}

/// The client's account of a refusal: which broker, its HTTP status, and what it said.
pub(crate) fn broker_answered(base: &Url, status: StatusCode, body: &[u8]) -> String {
    format!("the broker at {} answered {}", shown(base), status_and_reason(status, body))
}

/// The base URL as the user gave it (no trailing slash added by [`parse_base_url`]).
pub(crate) fn shown(base: &Url) -> &str {
    base.as_str().strip_suffix('/').unwrap_or(base.as_str())
}

/// `HTTP 503 Service Unavailable: <the broker's reason>`, the status said once when
/// the body has no reason of its own.
fn status_and_reason(status: StatusCode, body: &[u8]) -> String {
    let said = server_reason(status, body);
    let bare = format!("HTTP {status}");
    if said == bare {
        bare
    } else {
        format!("{bare}: {said}")
    }
}

fn clean(s: &str) -> String {
    s.chars().filter(|c| !c.is_control()).take(300).collect::<String>().trim().to_owned()
}

/// The time one call may take: `total` from its start, ending at `at`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Deadline {
    pub at: Instant,
    pub total: Duration,
}

impl Deadline {
    pub fn from_now(total: Duration) -> Self {
        Deadline { at: Instant::now() + total, total }
    }
}

/// Where a request goes and until when: the broker's base URL (named in errors)
/// and the deadline.
pub(crate) struct Target<'a> {
    pub base: &'a Url,
    pub deadline: Deadline,
}

/// Sends a request, retrying connection errors, timeouts and 5xx with backoff
/// until the deadline. Returns the first non-5xx answer.
pub(crate) async fn send_with_retry(
    http: &reqwest::Client,
    step: Step,
    target: &Target<'_>,
    build: impl Fn(&reqwest::Client) -> reqwest::RequestBuilder,
) -> Result<Answer, KbsError> {
    let deadline = target.deadline.at;
    let give_up = |attempts: u32, cause: &str| {
        KbsError::unavailable_at(step, shown(target.base), target.deadline.total, attempts, cause)
    };
    let mut attempt: u32 = 0;
    loop {
        attempt += 1;
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(give_up(attempt - 1, "the deadline passed before this request could be sent"));
        }
        let failure = match build(http).timeout(remaining).send().await {
            Ok(resp) => {
                let status = resp.status();
                let headers = resp.headers().clone();
                match read_body(resp).await {
                    Ok(body) if !status.is_server_error() => return Ok(Answer { status, headers, body }),
                    Ok(body) => status_and_reason(status, &body),
                    Err(e) => e,
                }
            }
            Err(e) => match crate::tls::cert_problem(&e) {
                Some(problem) => {
                    return Err(KbsError::Certificate { broker: shown(target.base).to_owned(), problem })
                }
                None => describe_reqwest(&e),
            },
        };
        let delay = backoff_delay(attempt, &mut rand::thread_rng());
        if Instant::now() + delay >= deadline {
            return Err(give_up(attempt, &failure));
        }
        tracing::debug!(%step, attempt, reason = %failure, "KBS request failed, retrying");
        tokio::time::sleep(delay).await;
    }
}

/// What went wrong under a reqwest error, each clause once.
///
/// reqwest's own text ("error sending request for url (http://...)") repeats the URL
/// the caller's error already names and hides the cause; the causes below it say what
/// happened (connection refused, timeout, ...). A cause whose text its parent already
/// contains (hyper's and the OS's errors sometimes repeat each other) is left out.
pub(crate) fn describe_reqwest(e: &reqwest::Error) -> String {
    let mut clauses: Vec<String> = Vec::new();
    let mut src = std::error::Error::source(e);
    while let Some(c) = src {
        let text = c.to_string();
        if !text.is_empty() && !clauses.last().is_some_and(|prev| prev.contains(&text)) {
            clauses.push(text);
        }
        src = c.source();
    }
    if e.is_timeout() && !clauses.iter().any(|c| c.contains("timed out")) {
        clauses.push("timed out".to_owned());
    }
    if clauses.is_empty() {
        clauses.push(e.to_string());
    }
    clauses.join(": ")
}

async fn read_body(mut resp: reqwest::Response) -> Result<Zeroizing<Vec<u8>>, String> {
    if resp.content_length().is_some_and(|n| n > MAX_BODY as u64) {
        return Err(format!("answer larger than {MAX_BODY} bytes"));
    }
    let mut body = Zeroizing::new(Vec::new());
    while let Some(chunk) =
        resp.chunk().await.map_err(|e| format!("reading the answer: {}", describe_reqwest(&e)))?
    {
        if body.len() + chunk.len() > MAX_BODY {
            return Err(format!("answer larger than {MAX_BODY} bytes"));
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .filter_map(|v| v.split(';').next())
        .map(str::trim)
        .find_map(|kv| {
            kv.strip_prefix(SESSION_COOKIE)
                .and_then(|r| r.strip_prefix('='))
                .map(|v| format!("{SESSION_COOKIE}={v}"))
        })
}

fn now_unix() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl KbsClient {
    /// A client for the KBS at `url` (e.g. `http://127.0.0.1:8080`).
    pub fn new(url: &str, attester: Arc<dyn Attester>, cfg: ClientConfig) -> Result<Self, KbsError> {
        Self::with_http_client(url, attester, cfg, http_client()?)
    }

    /// Like [`KbsClient::new`], also trusting `ca` for an https broker (`--kbs-cert`).
    pub fn trusting(
        url: &str,
        attester: Arc<dyn Attester>,
        cfg: ClientConfig,
        ca: Option<&crate::tls::CaBundle>,
    ) -> Result<Self, KbsError> {
        Self::with_http_client(url, attester, cfg, crate::tls::http_client(ca)?)
    }

    /// Like [`KbsClient::new`], over an existing HTTP client (connection pool).
    /// Building a client loads the TLS roots, which costs milliseconds; callers
    /// that make many short-lived KBS clients (a load generator, a daemon serving
    /// many guests) share one. Safe: the session cookie is kept per `KbsClient`,
    /// not in the HTTP client.
    pub fn with_http_client(
        url: &str,
        attester: Arc<dyn Attester>,
        cfg: ClientConfig,
        http: reqwest::Client,
    ) -> Result<Self, KbsError> {
        let base = parse_base_url(url)?;
        Ok(KbsClient {
            inner: Arc::new(Inner {
                auth_url: endpoint(&base, "kbs/v0/auth")?,
                attest_url: endpoint(&base, "kbs/v0/attest")?,
                base,
                http,
                attester,
                cfg,
                session: Mutex::new(None),
                attestations: AtomicU64::new(0),
            }),
        })
    }

    /// Number of successful RCAR handshakes so far.
    pub fn attestation_count(&self) -> u64 {
        self.inner.attestations.load(Ordering::Relaxed)
    }

    /// Attests now (even if a token is cached) and keeps the new token.
    pub async fn attest(&self) -> Result<(), KbsError> {
        let deadline = Deadline::from_now(self.inner.cfg.deadline);
        let mut slot = self.inner.session.lock().await;
        let generation = slot.as_ref().map_or(0, |s| s.generation) + 1;
        *slot = Some(Arc::new(self.handshake(deadline, generation).await?));
        Ok(())
    }

    /// Fetches and decrypts one resource. Attests lazily, once, and reuses the
    /// token until it expires; re-attests once if the KBS answers 401.
    pub async fn get_resource(&self, uri: &ResourceUri) -> Result<Zeroizing<Vec<u8>>, KbsError> {
        let deadline = Deadline::from_now(self.inner.cfg.deadline);
        let target = Target { base: &self.inner.base, deadline };
        let url = endpoint(&self.inner.base, &format!("kbs/v0/resource/{}", uri.path()))?;
        let mut refused: Option<u64> = None;
        loop {
            let session = self.session(deadline, refused).await?;
            let token = session.token.clone();
            let answer = send_with_retry(&self.inner.http, Step::Resource, &target, |http| {
                http.request(Method::GET, url.clone())
                    .header(AUTHORIZATION, format!("Bearer {}", token.expose()))
            })
            .await?;
            let status = answer.status;
            if status == StatusCode::OK {
                let proto = |source| KbsError::Protocol {
                    step: Step::Resource,
                    resource: Some(Box::new(uri.clone())),
                    source,
                };
                let resp = protocol::parse_response(&answer.body).map_err(proto)?;
                return protocol::decrypt_response(&session.key, &resp).map_err(proto);
            }
            if status == StatusCode::UNAUTHORIZED && refused.is_none() {
                tracing::info!(resource = %uri, "KBS answered 401, re-attesting once");
                refused = Some(session.generation);
                continue;
            }
            let verb = match status {
                StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => "denied",
                StatusCode::NOT_FOUND => "not found",
                _ => "refused",
            };
            return Err(KbsError::Rejected {
                step: Step::Resource,
                status: status.as_u16(),
                reason: format!("{uri} {verb}: {}", broker_answered(&self.inner.base, status, &answer.body)),
            });
        }
    }

    /// The current token and the TEE private key (PEM) it is bound to, attesting
    /// first if there is none or it expired: what attestation-agent's
    /// `GetToken("kbs")` answers. Neither may be logged.
    pub async fn token_and_key(&self) -> Result<(Token, Zeroizing<String>), KbsError> {
        let deadline = Deadline::from_now(self.inner.cfg.deadline);
        let session = self.session(deadline, None).await?;
        let pem = session.key.private_pem().map_err(|source| KbsError::Protocol {
            step: Step::Attest,
            resource: None,
            source,
        })?;
        Ok((session.token.clone(), pem))
    }

    /// The attester behind this client (evidence for runtime data of the caller's choosing).
    pub fn attester(&self) -> &Arc<dyn Attester> {
        &self.inner.attester
    }

    /// The current session, attesting if there is none, it expired, or it is the
    /// one the KBS just refused (`refused` = its generation).
    async fn session(&self, deadline: Deadline, refused: Option<u64>) -> Result<Arc<Session>, KbsError> {
        // Holding the lock across the handshake makes concurrent callers wait for
        // one attestation instead of each running their own.
        let mut slot = self.inner.session.lock().await;
        if let Some(s) = slot.as_ref() {
            if Some(s.generation) != refused && s.token.is_fresh(now_unix(), TOKEN_MARGIN_S) {
                return Ok(Arc::clone(s));
            }
        }
        let generation = slot.as_ref().map_or(0, |s| s.generation) + 1;
        *slot = None;
        let s = Arc::new(self.handshake(deadline, generation).await?);
        *slot = Some(Arc::clone(&s));
        Ok(s)
    }

    /// One RCAR handshake: request → challenge → evidence → token.
    async fn handshake(&self, deadline: Deadline, generation: u64) -> Result<Session, KbsError> {
        let inner = &self.inner;
        let target = Target { base: &inner.base, deadline };
        let proto = |step: Step| {
            move |source: protocol::ProtocolError| KbsError::Protocol { step, resource: None, source }
        };

        let request = protocol::build_request(inner.attester.tee(), &inner.cfg.extra_params);
        let answer = send_with_retry(&inner.http, Step::Auth, &target, |http| {
            http.request(Method::POST, inner.auth_url.clone()).json(&request)
        })
        .await?;
        if answer.status != StatusCode::OK {
            return Err(KbsError::Rejected {
                step: Step::Auth,
                status: answer.status.as_u16(),
                reason: broker_answered(&inner.base, answer.status, &answer.body),
            });
        }
        let challenge = protocol::parse_challenge(&answer.body).map_err(proto(Step::Auth))?;
        let cookie = session_cookie(&answer.headers);

        let kind = inner.cfg.tee_key;
        let key = match kind {
            // Tens of microseconds: less than handing it to the blocking pool would cost.
            TeeKeyKind::EcP256 => TeeKeyPair::generate(kind),
            TeeKeyKind::Rsa => tokio::task::spawn_blocking(move || TeeKeyPair::generate(kind))
                .await
                .map_err(|e| proto(Step::Attest)(protocol::ProtocolError::KeyTask(e.to_string())))?,
        }
        .map_err(proto(Step::Attest))?;
        let jwk = key.public_jwk().map_err(proto(Step::Attest))?;
        let digest =
            protocol::runtime_data_digest(&challenge.nonce, &jwk, "").map_err(proto(Step::Attest))?;
        let report_data = protocol::report_data(&digest);
        let evidence = inner.attester.evidence(&report_data).await?;
        if let Some(init) = &inner.cfg.init_data {
            // Fail early, as attestation-agent does, rather than be denied by the broker.
            crate::attester::check_initdata(inner.attester.tee(), &evidence, init)?;
        }
        let attestation =
            protocol::build_attestation(&challenge.nonce, jwk, evidence, inner.cfg.init_data.as_ref());

        let answer = send_with_retry(&inner.http, Step::Attest, &target, |http| {
            let rb = http.request(Method::POST, inner.attest_url.clone()).json(&attestation);
            match &cookie {
                Some(c) => rb.header(COOKIE, c.as_str()),
                None => rb,
            }
        })
        .await?;
        if answer.status != StatusCode::OK {
            return Err(KbsError::Rejected {
                step: Step::Attest,
                status: answer.status.as_u16(),
                reason: broker_answered(&inner.base, answer.status, &answer.body),
            });
        }
        let token = protocol::parse_attest_response(&answer.body).map_err(proto(Step::Attest))?;
        inner.attestations.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(tee = %inner.attester.tee(), exp = ?token.exp(), "attested to the KBS");
        Ok(Session { token, key, generation })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_jittered_and_capped() {
        let mut rng = rand::thread_rng();
        for _ in 0..200 {
            let d1 = backoff_delay(1, &mut rng).as_millis();
            assert!((50..=100).contains(&d1), "{d1}");
            let d3 = backoff_delay(3, &mut rng).as_millis();
            assert!((200..=400).contains(&d3), "{d3}");
            for a in [7, 20, u32::MAX] {
                let d = backoff_delay(a, &mut rng).as_millis();
                assert!((1500..=3000).contains(&d), "{a}: {d}");
            }
        }
        // Jitter: not every delay is the same.
        let set: std::collections::HashSet<u128> =
            (0..50).map(|_| backoff_delay(5, &mut rng).as_millis()).collect();
        assert!(set.len() > 1);
    }

    #[test]
    fn base_url_validation() {
        assert!(parse_base_url("http://127.0.0.1:8080").is_ok());
        assert_eq!(
            endpoint(&parse_base_url("http://h:1/prefix").unwrap(), "kbs/v0/auth").unwrap().as_str(),
            "http://h:1/prefix/kbs/v0/auth"
        );
        for bad in ["", "ftp://h", "127.0.0.1:8080", "http://h/?q=1"] {
            assert!(parse_base_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.append(SET_COOKIE, "other=1; Path=/".parse().unwrap());
        h.append(SET_COOKIE, "kbs-session-id=abc123; Expires=x".parse().unwrap());
        assert_eq!(session_cookie(&h).as_deref(), Some("kbs-session-id=abc123"));
        assert_eq!(session_cookie(&HeaderMap::new()), None);
    }

    #[test]
    fn server_reason_prefers_trustee_detail() {
        let r = server_reason(StatusCode::UNAUTHORIZED, br#"{"type":"PolicyDeny","detail":"denied"}"#);
        assert_eq!(r, "denied");
        assert_eq!(server_reason(StatusCode::BAD_GATEWAY, b""), "HTTP 502 Bad Gateway");
        assert_eq!(server_reason(StatusCode::BAD_REQUEST, b"oops\n\x07"), "oops");
    }
}
