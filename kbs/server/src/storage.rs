//! The storage seam: where the broker keeps resources, the policy, RCAR sessions and
//! the token key. Two backends:
//!
//! * `local:DIR` (the default, `--resources DIR`): resources as files (`store`), the
//!   policy in its YAML file (watched by the broker), sessions in memory, a token key
//!   made at start. One process; a restart voids sessions and tokens.
//! * `etcd://HOST:PORT[,...]/PREFIX`: everything in etcd under PREFIX, sealed with the
//!   master key (`seal`), so any replica serves any request:
//!   - `PREFIX/resources/REPO/TYPE/TAG`, `PREFIX/policy`: read through a cache fed by
//!     one etcd watch (an admin write on one replica reaches every other in
//!     milliseconds); admin writes go to etcd first (create-only ones as a
//!     transaction on the key's create revision) and reach the cache after.
//!   - `PREFIX/sessions/ID`: the token a session's `/attest` issued, written once by a
//!     create-only transaction (the session itself travels sealed in the cookie, so
//!     `/auth` touches no store: see `session`), attached to a lease of the session
//!     lifetime (plus at most one lease period), so etcd drops it itself; the expiry
//!     inside the record is checked on every read. Read back only for a repeated
//!     `/attest` (from the transaction's own answer) and a resource request that
//!     carries the cookie instead of the token.
//!   - `PREFIX/token-key`: the token HMAC key, created once (transaction) by the first
//!     replica and read by the others, so a token from one replica is good on all.
//!
//! Faults (etcd): a probe reads from the watched member every 250 ms (a linearizable
//! read, which a member without quorum cannot answer). While it fails, `/readyz`
//! answers 503, admin writes and new sessions (`/auth`, from the probe's state: no
//! etcd request) fail (503), and resource reads are
//! served from the last synchronised cache for at most `store_stale_secs` (0, the
//! default, fails closed at once). The attestation cache stays per replica: sharing
//! it would cost an etcd write per attestation to save a verifier run.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use zeroize::Zeroizing;

use crate::etcd::{prefix_end, EtcdClient, EtcdSpec, EtcdTls, Event};
use crate::metrics::{StoreLatency, StoreOpLabels};
use crate::seal::MasterKeys;
use crate::session::{Created, Session, Sessions};
use crate::store::{ResourcePath, ResourceStore, StoreError};

/// Where the broker's state lives: `local:DIR` or `etcd://HOST:PORT[,...]/PREFIX`.
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(try_from = "String")]
pub enum StoreSpec {
    Local(PathBuf),
    Etcd(EtcdSpec),
}

impl std::str::FromStr for StoreSpec {
    type Err = crate::etcd::EtcdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(dir) = s.strip_prefix("local:") {
            if dir.is_empty() {
                return Err(crate::etcd::EtcdError::Spec { spec: s.into(), why: "local: needs a directory" });
            }
            return Ok(StoreSpec::Local(PathBuf::from(dir)));
        }
        if s.starts_with("etcd://") {
            return Ok(StoreSpec::Etcd(s.parse()?));
        }
        Err(crate::etcd::EtcdError::Spec {
            spec: s.chars().take(200).collect(),
            why: "want local:DIR or etcd://...",
        })
    }
}

impl TryFrom<String> for StoreSpec {
    type Error = crate::etcd::EtcdError;
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

pub struct Store {
    backend: Backend,
    latency: Option<StoreLatency>,
    errors: Option<Family<StoreOpLabels, Counter>>,
}

enum Backend {
    Local { resources: ResourceStore, sessions: Sessions },
    Etcd(Arc<Etcd>),
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
            StoreSpec::Local(dir) => {
                Backend::Local { resources: ResourceStore::open(dir)?, sessions: Sessions::default() }
            }
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
        match self.backend {
            Backend::Local { .. } => "local",
            Backend::Etcd(_) => "etcd",
        }
    }

    pub fn is_shared(&self) -> bool {
        matches!(self.backend, Backend::Etcd(_))
    }

    pub fn describe(&self) -> String {
        match &self.backend {
            Backend::Local { resources, .. } => format!("local:{}", resources.root().display()),
            Backend::Etcd(e) => e.spec.to_string(),
        }
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
        self.timed("resource_get", async {
            match &self.backend {
                Backend::Local { resources, .. } => resources.get(p),
                Backend::Etcd(e) => e.cached_resource(p),
            }
        })
        .await
    }

    /// A resource read straight from the source of truth (admin read-back, migrate).
    pub async fn resource_get_fresh(&self, p: &ResourcePath) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        self.timed("resource_get_fresh", async {
            match &self.backend {
                Backend::Local { resources, .. } => resources.get(p),
                Backend::Etcd(e) => e.fresh_resource(p).await,
            }
        })
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
            match &self.backend {
                Backend::Local { resources, .. } => {
                    let (s, p, d) = (resources.clone(), p.clone(), Zeroizing::new(data.to_vec()));
                    tokio::task::spawn_blocking(
                        move || if create_only { s.create(&p, &d) } else { s.put(&p, &d) },
                    )
                    .await
                    .map_err(|e| StoreError::Io { path: PathBuf::new(), source: std::io::Error::other(e) })?
                }
                Backend::Etcd(e) => e.put_resource(p, data, create_only).await,
            }
        })
        .await
    }

    pub async fn resource_delete(&self, p: &ResourcePath) -> Result<(), StoreError> {
        self.timed("resource_delete", async {
            match &self.backend {
                Backend::Local { resources, .. } => resources.delete(p),
                Backend::Etcd(e) => e.delete_resource(p).await,
            }
        })
        .await
    }

    pub async fn resource_list(&self) -> Result<Vec<ResourcePath>, StoreError> {
        self.timed("resource_list", async {
            match &self.backend {
                Backend::Local { resources, .. } => resources.list(),
                Backend::Etcd(e) => e.list_resources().await,
            }
        })
        .await
    }

    /// Whether a new session may start (`/auth`): refused while the shared store is
    /// out of sync with a quorum, since its `/attest` could not record the token. No
    /// store request: the etcd backend answers from its health probe.
    pub fn session_admission(&self) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Local { .. } => Ok(()),
            Backend::Etcd(e) => e.ready().map_err(StoreError::NotReady),
        }
    }

    /// Records session `id`'s token (`/attest`), create-only: [`Created::Existing`]
    /// with the recorded one when the session already has a token.
    pub async fn session_create(&self, id: &str, s: &Session) -> Result<Created, StoreError> {
        self.timed("session_create", async {
            match &self.backend {
                Backend::Local { sessions, .. } => {
                    sessions.create(id, s.clone()).ok_or(StoreError::SessionsFull)
                }
                Backend::Etcd(e) => e.session_create(id, s).await,
            }
        })
        .await
    }

    /// The live session `id` (a resource request that carries the cookie).
    pub async fn session_get(&self, id: &str) -> Result<Option<Session>, StoreError> {
        self.timed("session_get", async {
            match &self.backend {
                Backend::Local { sessions, .. } => Ok(sessions.get(id)),
                Backend::Etcd(e) => e.session_get(id).await,
            }
        })
        .await
    }

    /// The token MAC key: fresh per process for local, shared (sealed in etcd) for etcd.
    pub async fn token_key(&self) -> Result<Zeroizing<[u8; 32]>, StoreError> {
        self.timed("token_key", async {
            match &self.backend {
                Backend::Local { .. } => Ok(random_key()),
                Backend::Etcd(e) => e.token_key().await,
            }
        })
        .await
    }

    /// The shared policy text as it changes (etcd only; the local backend's policy is
    /// its file).
    pub fn policy_updates(&self) -> Option<tokio::sync::watch::Receiver<Option<String>>> {
        match &self.backend {
            Backend::Local { .. } => None,
            Backend::Etcd(e) => Some(e.policy_tx.subscribe()),
        }
    }

    /// Writes the shared policy (etcd only; returns false for the local backend, whose
    /// caller writes the file).
    pub async fn policy_put(&self, text: &str) -> Result<bool, StoreError> {
        self.timed("policy_put", async {
            match &self.backend {
                Backend::Local { .. } => Ok(false),
                Backend::Etcd(e) => e.policy_put(text).await.map(|()| true),
            }
        })
        .await
    }

    /// Ok when the backend can serve; the reason otherwise (for `/readyz`).
    pub fn ready(&self) -> Result<(), String> {
        match &self.backend {
            Backend::Local { resources, .. } => {
                if resources.root().is_dir() {
                    Ok(())
                } else {
                    Err("resource directory missing".into())
                }
            }
            Backend::Etcd(e) => e.ready(),
        }
    }

    /// Re-seals every value not under the current master key; returns how many.
    pub async fn reseal(&self) -> Result<usize, StoreError> {
        match &self.backend {
            Backend::Local { .. } => Ok(0),
            Backend::Etcd(e) => e.reseal().await,
        }
    }
}

fn random_key() -> Zeroizing<[u8; 32]> {
    let mut k = Zeroizing::new([0u8; 32]);
    rand::Rng::fill(&mut rand::thread_rng(), &mut k[..]);
    k
}

// ---- etcd backend -----------------------------------------------------------------

/// How often the health probe runs, and how long after its last success the broker
/// still counts as synchronised.
const PROBE_EVERY: Duration = Duration::from_millis(250);
const FRESH_FOR: Duration = Duration::from_millis(1500);
/// Sessions share one lease per period per replica (a lease grant is a Raft write).
const LEASE_PERIOD: Duration = Duration::from_secs(60);

struct Cache {
    resources: HashMap<String, (i64, Zeroizing<Vec<u8>>)>,
    /// Deleted keys and their deletion revision, so a late event cannot resurrect one.
    gone: HashMap<String, i64>,
    policy_rev: i64,
}

struct Etcd {
    client: EtcdClient,
    spec: EtcdSpec,
    keys: MasterKeys,
    cache: RwLock<Cache>,
    policy_tx: tokio::sync::watch::Sender<Option<String>>,
    /// When the cache was last known to be in sync with a member that has quorum.
    last_ok: Mutex<Option<Instant>>,
    synced: AtomicBool,
    /// Set by the probe when the watched member stops answering; the sync loop then
    /// moves to another member.
    restart: tokio::sync::Notify,
    stale: Duration,
    session_ttl: Duration,
    lease: tokio::sync::Mutex<Option<(i64, Instant)>>,
}

impl Etcd {
    fn k_res(&self, p: &ResourcePath) -> String {
        format!("{}/resources/{p}", self.spec.prefix)
    }
    fn k_res_prefix(&self) -> String {
        format!("{}/resources/", self.spec.prefix)
    }
    fn k_policy(&self) -> String {
        format!("{}/policy", self.spec.prefix)
    }
    fn k_token(&self) -> String {
        format!("{}/token-key", self.spec.prefix)
    }
    fn k_session(&self, id: &str) -> String {
        format!("{}/sessions/{id}", self.spec.prefix)
    }

    async fn open(spec: &EtcdSpec, opts: StoreOptions) -> Result<Arc<Self>, StoreError> {
        let keys = opts.master_keys.ok_or(StoreError::NeedsMasterKey)?;
        let client = EtcdClient::new(spec, &opts.tls, opts.timeout)?;
        let (policy_tx, _) = tokio::sync::watch::channel(None);
        let me = Arc::new(Self {
            client,
            spec: spec.clone(),
            keys,
            cache: RwLock::new(Cache { resources: HashMap::new(), gone: HashMap::new(), policy_rev: 0 }),
            policy_tx,
            last_ok: Mutex::new(None),
            synced: AtomicBool::new(false),
            restart: tokio::sync::Notify::new(),
            stale: opts.stale,
            session_ttl: opts.session_ttl,
            lease: tokio::sync::Mutex::new(None),
        });
        if let Some(text) = &opts.seed_policy {
            let k = me.k_policy();
            let sealed = me.keys.seal(&k, text.as_bytes())?;
            if me.client.create(&k, &sealed, 0).await? {
                tracing::info!(key = %k, "seeded the shared policy from the policy file");
            }
        }
        me.token_key().await?;
        let rev = me.resync().await?;
        let weak = Arc::downgrade(&me);
        tokio::spawn(sync_loop(weak.clone(), rev));
        tokio::spawn(probe_loop(weak));
        Ok(me)
    }

    fn mark_ok(&self) {
        if let Ok(mut t) = self.last_ok.lock() {
            *t = Some(Instant::now());
        }
    }

    fn since_ok(&self) -> Option<Duration> {
        self.last_ok.lock().ok().and_then(|t| t.map(|t| t.elapsed()))
    }

    fn ready(&self) -> Result<(), String> {
        match self.since_ok() {
            Some(d) if d < FRESH_FOR && self.synced.load(Ordering::Relaxed) => Ok(()),
            Some(d) => {
                Err(format!("etcd ({}) not reachable with quorum for {} ms", self.spec, d.as_millis()))
            }
            None => Err(format!("etcd ({}) never synchronised", self.spec)),
        }
    }

    /// Whether the cache may serve a read now (fresh, or stale within the window).
    fn may_serve(&self) -> Result<(), StoreError> {
        match self.since_ok() {
            Some(d) if d < FRESH_FOR + self.stale => Ok(()),
            Some(d) => Err(StoreError::Stale(d)),
            None => Err(StoreError::Stale(Duration::MAX)),
        }
    }

    /// Reloads policy and resources at one revision; returns it.
    async fn resync(&self) -> Result<i64, StoreError> {
        let start = self.k_policy();
        let end = prefix_end(&self.k_res_prefix());
        let (rev, kvs) = self.client.range(&start, Some(&end)).await?;
        let mut resources = HashMap::new();
        let mut policy = None;
        let mut policy_rev = 0;
        for kv in kvs {
            match self.keys.open(&kv.key, &kv.value) {
                Ok((plain, _)) if kv.key == start => {
                    policy = Some(String::from_utf8_lossy(&plain).into_owned());
                    policy_rev = kv.mod_revision;
                }
                Ok((plain, _)) => {
                    if let Some(name) = kv.key.strip_prefix(&self.k_res_prefix()) {
                        resources.insert(name.to_string(), (kv.mod_revision, plain));
                    }
                }
                Err(e) => tracing::error!(error = %e, "skipping a value that does not open"),
            }
        }
        if let Ok(mut c) = self.cache.write() {
            *c = Cache { resources, gone: HashMap::new(), policy_rev };
        }
        if policy.is_some() {
            self.policy_tx.send_if_modified(|p| {
                let changed = *p != policy;
                *p = policy;
                changed
            });
        }
        self.synced.store(true, Ordering::Relaxed);
        self.mark_ok();
        Ok(rev)
    }

    fn apply(&self, events: Vec<Event>) {
        let policy_key = self.k_policy();
        let res_prefix = self.k_res_prefix();
        let Ok(mut c) = self.cache.write() else { return };
        for ev in events {
            match ev {
                Event::Put(kv) if kv.key == policy_key => {
                    if kv.mod_revision <= c.policy_rev {
                        continue;
                    }
                    match self.keys.open(&kv.key, &kv.value) {
                        Ok((plain, _)) => {
                            c.policy_rev = kv.mod_revision;
                            let text = String::from_utf8_lossy(&plain).into_owned();
                            self.policy_tx.send_replace(Some(text));
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "shared policy does not open; the old one stays")
                        }
                    }
                }
                Event::Put(kv) => {
                    let Some(name) = kv.key.strip_prefix(&res_prefix).map(str::to_string) else { continue };
                    let newer = c.resources.get(&name).is_none_or(|(r, _)| *r < kv.mod_revision)
                        && c.gone.get(&name).is_none_or(|r| *r < kv.mod_revision);
                    if !newer {
                        continue;
                    }
                    match self.keys.open(&kv.key, &kv.value) {
                        Ok((plain, _)) => {
                            c.gone.remove(&name);
                            c.resources.insert(name, (kv.mod_revision, plain));
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "resource does not open; not served");
                            c.resources.remove(&name);
                        }
                    }
                }
                Event::Delete { key, mod_revision } => {
                    if let Some(name) = key.strip_prefix(&res_prefix) {
                        if c.resources.get(name).is_none_or(|(r, _)| *r < mod_revision) {
                            c.resources.remove(name);
                            c.gone.insert(name.to_string(), mod_revision);
                        }
                    }
                }
            }
        }
    }

    fn cached_resource(&self, p: &ResourcePath) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        self.may_serve()?;
        let c = self.cache.read().map_err(|_| StoreError::Stale(Duration::MAX))?;
        c.resources
            .get(&p.as_string())
            .map(|(_, v)| v.clone())
            .ok_or_else(|| StoreError::NotFound(p.as_string()))
    }

    async fn fresh_resource(&self, p: &ResourcePath) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        let k = self.k_res(p);
        let kv = self.client.get(&k).await?.ok_or_else(|| StoreError::NotFound(p.as_string()))?;
        Ok(self.keys.open(&k, &kv.value)?.0)
    }

    async fn put_resource(&self, p: &ResourcePath, data: &[u8], create_only: bool) -> Result<(), StoreError> {
        let k = self.k_res(p);
        let sealed = self.keys.seal(&k, data)?;
        let rev = if create_only {
            if !self.client.create(&k, &sealed, 0).await? {
                return Err(StoreError::Exists(p.as_string()));
            }
            // The create's revision is not returned by the txn answer we keep; the watch
            // delivers it, and a read-your-write on this replica reads it now.
            self.client.get(&k).await?.map(|kv| kv.mod_revision).unwrap_or(0)
        } else {
            self.client.put(&k, &sealed, 0).await?
        };
        if let Ok(mut c) = self.cache.write() {
            let name = p.as_string();
            if c.resources.get(&name).is_none_or(|(r, _)| *r < rev)
                && c.gone.get(&name).is_none_or(|r| *r < rev)
            {
                c.gone.remove(&name);
                c.resources.insert(name, (rev, Zeroizing::new(data.to_vec())));
            }
        }
        Ok(())
    }

    async fn delete_resource(&self, p: &ResourcePath) -> Result<(), StoreError> {
        let (rev, existed) = self.client.delete(&self.k_res(p)).await?;
        if let Ok(mut c) = self.cache.write() {
            let name = p.as_string();
            c.resources.remove(&name);
            c.gone.insert(name, rev);
        }
        if existed {
            Ok(())
        } else {
            Err(StoreError::NotFound(p.as_string()))
        }
    }

    async fn list_resources(&self) -> Result<Vec<ResourcePath>, StoreError> {
        let prefix = self.k_res_prefix();
        let (_, kvs) = self.client.range(&prefix, Some(&prefix_end(&prefix))).await?;
        Ok(kvs.iter().filter_map(|kv| ResourcePath::parse(kv.key.strip_prefix(&prefix)?).ok()).collect())
    }

    async fn policy_put(&self, text: &str) -> Result<(), StoreError> {
        let k = self.k_policy();
        let sealed = self.keys.seal(&k, text.as_bytes())?;
        let rev = self.client.put(&k, &sealed, 0).await?;
        if let Ok(mut c) = self.cache.write() {
            if rev > c.policy_rev {
                c.policy_rev = rev;
                self.policy_tx.send_replace(Some(text.to_string()));
            }
        }
        Ok(())
    }

    async fn token_key(&self) -> Result<Zeroizing<[u8; 32]>, StoreError> {
        let k = self.k_token();
        let kv = match self.client.get(&k).await? {
            Some(kv) => kv,
            None => {
                let fresh = random_key();
                let sealed = self.keys.seal(&k, &fresh[..])?;
                if self.client.create(&k, &sealed, 0).await? {
                    tracing::info!("created the shared token key");
                    return Ok(fresh);
                }
                self.client.get(&k).await?.ok_or(StoreError::Corrupt { what: "token key", key: k.clone() })?
            }
        };
        let (plain, _) = self.keys.open(&k, &kv.value)?;
        let arr: [u8; 32] = plain
            .as_slice()
            .try_into()
            .map_err(|_| StoreError::Corrupt { what: "token key", key: k.clone() })?;
        Ok(Zeroizing::new(arr))
    }

    /// The lease new sessions attach to: one per replica per [`LEASE_PERIOD`], with a
    /// TTL of the session lifetime plus that period.
    async fn session_lease(&self, renew: bool) -> Result<i64, StoreError> {
        let mut l = self.lease.lock().await;
        if let Some((id, at)) = *l {
            if !renew && at.elapsed() < LEASE_PERIOD {
                return Ok(id);
            }
        }
        let ttl = self.session_ttl.as_secs().max(1) + LEASE_PERIOD.as_secs() + 1;
        let id = self.client.lease_grant(ttl).await?;
        *l = Some((id, Instant::now()));
        Ok(id)
    }

    /// One create-only transaction: the record, or the one already there.
    async fn session_create(&self, id: &str, s: &Session) -> Result<Created, StoreError> {
        let k = self.k_session(id);
        let sealed = self.keys.seal(&k, &s.to_wire())?;
        let lease = self.session_lease(false).await?;
        let found = match self.client.create_or_get(&k, &sealed, lease).await {
            Err(crate::etcd::EtcdError::Status { message, .. }) if message.contains("lease not found") => {
                let lease = self.session_lease(true).await?;
                self.client.create_or_get(&k, &sealed, lease).await?
            }
            r => r?,
        };
        let Some(kv) = found else { return Ok(Created::New) };
        let (plain, _) = self.keys.open(&k, &kv.value)?;
        let old = Session::from_wire(&plain).ok_or(StoreError::Corrupt { what: "session", key: k })?;
        Ok(Created::Existing(old))
    }

    async fn session_get(&self, id: &str) -> Result<Option<Session>, StoreError> {
        let k = self.k_session(id);
        let Some(kv) = self.client.get(&k).await? else { return Ok(None) };
        let (plain, _) = self.keys.open(&k, &kv.value)?;
        let s = Session::from_wire(&plain).ok_or(StoreError::Corrupt { what: "session", key: k })?;
        Ok(s.live().then_some(s))
    }

    async fn reseal(&self) -> Result<usize, StoreError> {
        let prefix = format!("{}/", self.spec.prefix);
        let (_, kvs) = self.client.range(&prefix, Some(&prefix_end(&prefix))).await?;
        let mut n = 0;
        for kv in kvs {
            if self.keys.is_current(&kv.value) {
                continue;
            }
            let (plain, _) = self.keys.open(&kv.key, &kv.value)?;
            let sealed = self.keys.seal(&kv.key, &plain)?;
            // A concurrent write wins (it is sealed under the current key already).
            if self.client.cas(&kv.key, kv.mod_revision, &sealed, kv.lease).await? {
                n += 1;
            }
        }
        Ok(n)
    }
}

/// Keeps the cache in step: a watch from the last synchronised revision; when it
/// breaks (member gone, compaction, probe failures), re-read everything and watch again.
async fn sync_loop(me: Weak<Etcd>, mut rev: i64) {
    loop {
        let Some(e) = me.upgrade() else { return };
        let member = e.client.current_member();
        let start = e.k_policy();
        let end = prefix_end(&e.k_res_prefix());
        let outcome = tokio::select! {
            r = e.client.watch(member, &start, &end, rev + 1, |evs| e.apply(evs)) => r.map_err(StoreError::from),
            _ = e.restart.notified() => Err(StoreError::Stale(FRESH_FOR)),
        };
        if let Err(err) = outcome {
            tracing::warn!(error = %err, source = ?std::error::Error::source(&err).map(|s| s.to_string()), "etcd watch ended; re-synchronising");
        }
        e.synced.store(false, Ordering::Relaxed);
        e.client.skip_member(member);
        drop(e);
        loop {
            let Some(e) = me.upgrade() else { return };
            match e.resync().await {
                Ok(r) => {
                    rev = r;
                    break;
                }
                Err(err) => {
                    tracing::warn!(error = %err, "etcd re-synchronisation failed; retrying");
                    drop(e);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    }
}

/// Marks the cache fresh while the watched member answers linearizable reads.
async fn probe_loop(me: Weak<Etcd>) {
    let mut fails = 0u32;
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        let Some(e) = me.upgrade() else { return };
        let member = e.client.current_member();
        match e.client.probe(member, &e.k_policy()).await {
            Ok(_) => {
                fails = 0;
                if e.synced.load(Ordering::Relaxed) {
                    e.mark_ok();
                }
            }
            Err(err) => {
                fails += 1;
                tracing::debug!(error = %err, fails, "etcd probe failed");
                if fails >= 2 {
                    e.restart.notify_one();
                    fails = 0;
                }
            }
        }
    }
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
