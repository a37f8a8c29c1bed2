//! The storage seam: where the broker keeps resources, the policy, RCAR sessions and
//! the token key. One trait, [`Storage`], with two implementations in modules of
//! their own:
//!
//! * [`local`] (`local:DIR`, the default, `--resources DIR`): resources as files, the
//!   policy in its YAML file, sessions in memory; one process.
//! * [`etcd`] (`etcd://HOST:PORT[,...]/PREFIX`): everything in etcd, sealed with the
//!   master key, so any replica serves any request.
//!
//! The broker calls [`Store`], which picks the backend once (from a [`StoreSpec`]) and
//! adds what every backend gets alike: per-operation latency and error metrics. Both
//! answer with [`StoreError`]: the outcomes every backend shares (a bad name, not
//! found, already there), or the backend's own error ([`LocalError`], [`EtcdStoreError`]).

pub mod etcd;
pub mod local;
pub mod resource_path;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use zeroize::Zeroizing;

pub use etcd::EtcdStoreError;
pub use local::LocalError;
pub use resource_path::{ResourcePath, MAX_PATH_LEN, MAX_SEGMENT_LEN};

use crate::metrics::{StoreLatency, StoreOpLabels};
use crate::seal::MasterKeys;
use crate::session::{Created, Session};
use etcd::{Etcd, EtcdError, EtcdSpec, EtcdTls};
use local::Local;

/// What a store operation answers when it has no value: the outcomes every backend
/// shares, or the failure of the backend (its own error type, shown as it is).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    #[error("invalid resource path {0:?}: need REPO/TYPE/TAG with segments [A-Za-z0-9_-][A-Za-z0-9_.-]*")]
    InvalidPath(String),
    /// A resource name (or one of its segments) longer than the broker accepts.
    #[error("resource {what} is {len} bytes, longer than the {max} bytes allowed (it starts {start:?})")]
    NameTooLong { what: &'static str, len: usize, max: usize, start: String },
    #[error("resource {0} not found")]
    NotFound(String),
    /// A create-only write found the resource already there (its bytes are untouched).
    #[error("resource {0} already exists")]
    Exists(String),
    /// The local-files backend failed.
    #[error(transparent)]
    Local(#[from] LocalError),
    /// The etcd backend failed.
    #[error(transparent)]
    Etcd(#[from] EtcdStoreError),
}

impl StoreError {
    /// Whether the backend failed (as opposed to answering "not found", "exists" or
    /// "invalid path"): what the error metric counts.
    pub fn is_failure(&self) -> bool {
        !matches!(
            self,
            StoreError::InvalidPath(_)
                | StoreError::NameTooLong { .. }
                | StoreError::NotFound(_)
                | StoreError::Exists(_)
        )
    }
}

/// What a backend does; [`Store`] calls it. The futures are `Send` (the broker's
/// handlers run on a multi-threaded runtime) and never boxed: [`Store`] dispatches
/// with a `match` on the backend, so the attestation path (`session_create`,
/// `resource_get`) costs no allocation for the seam.
pub trait Storage: Send + Sync {
    /// "local" or "etcd": the `backend` label of the store metrics.
    fn name(&self) -> &'static str;

    /// Whether replicas share this state (the policy then lives in the store, not its file).
    fn is_shared(&self) -> bool;

    /// The spec this backend runs on, for logs.
    fn describe(&self) -> String;

    /// A resource for a guest.
    fn resource_get(
        &self,
        p: &ResourcePath,
    ) -> impl Future<Output = Result<Zeroizing<Vec<u8>>, StoreError>> + Send;

    /// A resource read straight from the source of truth (admin read-back, migrate).
    fn resource_get_fresh(
        &self,
        p: &ResourcePath,
    ) -> impl Future<Output = Result<Zeroizing<Vec<u8>>, StoreError>> + Send;

    /// Stores a resource; `create_only` leaves an existing one untouched and answers
    /// [`StoreError::Exists`].
    fn resource_put(
        &self,
        p: &ResourcePath,
        data: &[u8],
        create_only: bool,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn resource_delete(&self, p: &ResourcePath) -> impl Future<Output = Result<(), StoreError>> + Send;

    fn resource_list(&self) -> impl Future<Output = Result<Vec<ResourcePath>, StoreError>> + Send;

    /// Whether a new session may start (`/auth`), without a store request.
    fn session_admission(&self) -> Result<(), StoreError>;

    /// Records session `id`'s token (`/attest`), create-only: [`Created::Existing`]
    /// with the recorded one when the session already has a token.
    fn session_create(
        &self,
        id: &str,
        s: &Session,
    ) -> impl Future<Output = Result<Created, StoreError>> + Send;

    /// The live session `id` (a resource request that carries the cookie).
    fn session_get(&self, id: &str) -> impl Future<Output = Result<Option<Session>, StoreError>> + Send;

    /// The token MAC key.
    fn token_key(&self) -> impl Future<Output = Result<Zeroizing<[u8; 32]>, StoreError>> + Send;

    /// The shared policy text as it changes, when the policy lives in the store.
    fn policy_updates(&self) -> Option<tokio::sync::watch::Receiver<Option<String>>>;

    /// Writes the shared policy; false when the policy does not live in the store.
    fn policy_put(&self, text: &str) -> impl Future<Output = Result<bool, StoreError>> + Send;

    /// Ok when the backend can serve; the reason otherwise (for `/readyz`).
    fn ready(&self) -> Result<(), String>;

    /// Re-seals every value not under the current master key; returns how many.
    fn reseal(&self) -> impl Future<Output = Result<usize, StoreError>> + Send;
}

/// Where the broker's state lives: `local:DIR` or `etcd://HOST:PORT[,...]/PREFIX`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum StoreSpec {
    Local(PathBuf),
    Etcd(EtcdSpec),
}

/// Why a `--store` value is not a store: the local form's errors name no etcd; an
/// `etcd://` value's come from the etcd spec parser.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreSpecError {
    #[error("invalid store {spec:?}: {why} (want local:DIR or etcd://HOST:PORT[,HOST:PORT...]/PREFIX)")]
    Invalid { spec: String, why: &'static str },
    #[error(transparent)]
    Etcd(#[from] EtcdError),
}

impl std::str::FromStr for StoreSpec {
    type Err = StoreSpecError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(dir) = s.strip_prefix("local:") {
            if dir.is_empty() {
                return Err(StoreSpecError::Invalid { spec: s.into(), why: "local: needs a directory" });
            }
            return Ok(StoreSpec::Local(PathBuf::from(dir)));
        }
        if s.starts_with("etcd://") {
            return Ok(StoreSpec::Etcd(s.parse()?));
        }
        Err(StoreSpecError::Invalid { spec: s.chars().take(200).collect(), why: "unknown kind of store" })
    }
}

impl TryFrom<String> for StoreSpec {
    type Error = StoreSpecError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl std::fmt::Display for StoreSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoreSpec::Local(d) => write!(f, "local:{}", d.display()),
            StoreSpec::Etcd(e) => e.fmt(f),
        }
    }
}

/// What opening a store needs besides its spec.
pub struct StoreOptions {
    /// Required for etcd (values are sealed); unused by the local backend.
    pub master_keys: Option<MasterKeys>,
    pub session_ttl: Duration,
    /// How long resource reads may be served from the last synchronised state while
    /// etcd is unreachable; zero fails closed.
    pub stale: Duration,
    /// Per-request timeout towards etcd.
    pub timeout: Duration,
    pub tls: EtcdTls,
    /// Policy text written to etcd when it has none yet (create-only).
    pub seed_policy: Option<String>,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            master_keys: None,
            session_ttl: Duration::from_secs(300),
            stale: Duration::ZERO,
            timeout: Duration::from_secs(1),
            tls: EtcdTls::default(),
            seed_policy: None,
        }
    }
}

/// The store the broker calls: one backend, and the metrics every backend gets alike.
pub struct Store {
    backend: Backend,
    latency: Option<StoreLatency>,
    errors: Option<Family<StoreOpLabels, Counter>>,
}

/// A `match`, not a `Box<dyn Storage>`: a trait object would box every call's future.
enum Backend {
    Local(Local),
    Etcd(Arc<Etcd>),
}

/// `on_backend!(self, b => expr)`: `expr` with `b` bound to the store's backend, the one
/// place a backend is chosen.
macro_rules! on_backend {
    ($store:expr, $b:ident => $e:expr) => {
        match &$store.backend {
            Backend::Local($b) => $e,
            Backend::Etcd($b) => $e,
        }
    };
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl Store {
    /// Opens the store; for etcd, seeds the token key and the policy when absent and
    /// loads the cache before returning (so a replica starts with the shared state).
    pub async fn open(spec: &StoreSpec, opts: StoreOptions) -> Result<Self, StoreError> {
        let backend = match spec {
            StoreSpec::Local(dir) => Backend::Local(Local::open(dir)?),
            StoreSpec::Etcd(e) => Backend::Etcd(Etcd::open(e, opts).await?),
        };
        Ok(Self { backend, latency: None, errors: None })
    }

    /// Records per-operation latency and errors into these metric families.
    pub fn with_metrics(mut self, m: &crate::metrics::Metrics) -> Self {
        self.latency = Some(m.store_latency.clone());
        self.errors = Some(m.store_errors.clone());
        self
    }

    pub fn backend_name(&self) -> &'static str {
        on_backend!(self, b => b.name())
    }

    pub fn is_shared(&self) -> bool {
        on_backend!(self, b => b.is_shared())
    }

    pub fn describe(&self) -> String {
        on_backend!(self, b => b.describe())
    }

    async fn timed<T>(
        &self,
        op: &'static str,
        f: impl std::future::Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        let t = Instant::now();
        let r = f.await;
        let labels = || StoreOpLabels { backend: self.backend_name().into(), op: op.into() };
        if let Some(l) = &self.latency {
            l.get_or_create(&labels()).observe(t.elapsed().as_secs_f64());
        }
        if r.as_ref().is_err_and(StoreError::is_failure) {
            if let Some(e) = &self.errors {
                e.get_or_create(&labels()).inc();
            }
        }
        r
    }

    /// A resource for a guest: the file, or etcd's value through the watch cache.
    pub async fn resource_get(&self, p: &ResourcePath) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        self.timed("resource_get", async { on_backend!(self, b => b.resource_get(p).await) }).await
    }

    /// A resource read straight from the source of truth (admin read-back, migrate).
    pub async fn resource_get_fresh(&self, p: &ResourcePath) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        self.timed("resource_get_fresh", async { on_backend!(self, b => b.resource_get_fresh(p).await) })
            .await
    }

    /// Stores a resource; `create_only` leaves an existing one untouched and answers
    /// [`StoreError::Exists`].
    pub async fn resource_put(
        &self,
        p: &ResourcePath,
        data: &[u8],
        create_only: bool,
    ) -> Result<(), StoreError> {
        self.timed(if create_only { "resource_create" } else { "resource_put" }, async {
            on_backend!(self, b => b.resource_put(p, data, create_only).await)
        })
        .await
    }

    pub async fn resource_delete(&self, p: &ResourcePath) -> Result<(), StoreError> {
        self.timed("resource_delete", async { on_backend!(self, b => b.resource_delete(p).await) }).await
    }

    pub async fn resource_list(&self) -> Result<Vec<ResourcePath>, StoreError> {
        self.timed("resource_list", async { on_backend!(self, b => b.resource_list().await) }).await
    }

    /// Whether a new session may start (`/auth`): refused while the shared store is
    /// out of sync with a quorum, since its `/attest` could not record the token. No
    /// store request: the etcd backend answers from its health probe.
    pub fn session_admission(&self) -> Result<(), StoreError> {
        on_backend!(self, b => b.session_admission())
    }

    /// Records session `id`'s token (`/attest`), create-only: [`Created::Existing`]
    /// with the recorded one when the session already has a token.
    pub async fn session_create(&self, id: &str, s: &Session) -> Result<Created, StoreError> {
        self.timed("session_create", async { on_backend!(self, b => b.session_create(id, s).await) }).await
    }

    /// The live session `id` (a resource request that carries the cookie).
    pub async fn session_get(&self, id: &str) -> Result<Option<Session>, StoreError> {
        self.timed("session_get", async { on_backend!(self, b => b.session_get(id).await) }).await
    }

    /// The token MAC key: fresh per process for local, shared (sealed in etcd) for etcd.
    pub async fn token_key(&self) -> Result<Zeroizing<[u8; 32]>, StoreError> {
        self.timed("token_key", async { on_backend!(self, b => b.token_key().await) }).await
    }

    /// The shared policy text as it changes (etcd only; the local backend's policy is
    /// its file).
    pub fn policy_updates(&self) -> Option<tokio::sync::watch::Receiver<Option<String>>> {
        on_backend!(self, b => b.policy_updates())
    }

    /// Writes the shared policy (etcd only; returns false for the local backend, whose
    /// caller writes the file).
    pub async fn policy_put(&self, text: &str) -> Result<bool, StoreError> {
        self.timed("policy_put", async { on_backend!(self, b => b.policy_put(text).await) }).await
    }

    /// Ok when the backend can serve; the reason otherwise (for `/readyz`).
    pub fn ready(&self) -> Result<(), String> {
        on_backend!(self, b => b.ready())
    }

    /// Re-seals every value not under the current master key; returns how many.
    pub async fn reseal(&self) -> Result<usize, StoreError> {
        on_backend!(self, b => b.reseal().await)
    }
}

fn random_key() -> Zeroizing<[u8; 32]> {
    let mut k = Zeroizing::new([0u8; 32]);
    rand::Rng::fill(&mut rand::thread_rng(), &mut k[..]);
    k
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn spec_forms() {
        assert_eq!("local:/x".parse::<StoreSpec>().unwrap(), StoreSpec::Local("/x".into()));
        assert!(matches!("etcd://a:1/p".parse::<StoreSpec>().unwrap(), StoreSpec::Etcd(_)));
        assert!("local:".parse::<StoreSpec>().is_err());
        assert!("/dir".parse::<StoreSpec>().is_err());
    }

    /// Issue 22: a bad local store read "invalid etcd store \"local:\": …".
    #[test]
    fn local_store_spec_errors_do_not_name_etcd() {
        for bad in ["local:", "/dir"] {
            let e = bad.parse::<StoreSpec>().unwrap_err().to_string();
            assert!(!e.contains("etcd store"), "{e}");
            assert!(e.contains("local:DIR"), "{e}");
        }
        let e = "etcd://".parse::<StoreSpec>().unwrap_err().to_string();
        assert!(e.contains("etcd"), "{e}");
    }

    #[tokio::test]
    async fn local_backend_sessions_and_resources() {
        let d = tempfile::tempdir().unwrap();
        let s = Store::open(&StoreSpec::Local(d.path().into()), StoreOptions::default()).await.unwrap();
        let p = ResourcePath::parse("a/b/c").unwrap();
        s.resource_put(&p, b"v1", true).await.unwrap();
        assert!(matches!(s.resource_put(&p, b"v2", true).await, Err(StoreError::Exists(_))));
        assert_eq!(&s.resource_get(&p).await.unwrap()[..], b"v1");
        let sess = Session {
            tee: kbs_types::Tee::Sample,
            pod: "p".into(),
            namespace: "n".into(),
            token: Zeroizing::new("t1".into()),
            expires_at: crate::now_secs() + 60,
        };
        s.session_admission().unwrap();
        assert!(matches!(s.session_create("id1", &sess).await.unwrap(), Created::New));
        let again = Session { token: Zeroizing::new("t2".into()), ..sess.clone() };
        match s.session_create("id1", &again).await.unwrap() {
            Created::Existing(old) => assert_eq!(&old.token[..], "t1"),
            Created::New => panic!("a session's token is recorded once"),
        }
        assert_eq!(&s.session_get("id1").await.unwrap().unwrap().token[..], "t1");
        assert!(s.session_get("nope").await.unwrap().is_none());
        let expired = Session { expires_at: 1, ..sess };
        assert!(matches!(s.session_create("old", &expired).await.unwrap(), Created::New));
        assert!(s.session_get("old").await.unwrap().is_none());
    }
}
