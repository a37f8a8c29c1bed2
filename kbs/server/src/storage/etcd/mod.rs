//! The etcd backend (`etcd://HOST:PORT[,...]/PREFIX`): everything in etcd under PREFIX,
//! sealed with the master key (`seal`), so any replica serves any request:
//! - `PREFIX/resources/REPO/TYPE/TAG`, `PREFIX/policy`: read through a cache fed by
//!   one etcd watch (an admin write on one replica reaches every other in
//!   milliseconds); admin writes go to etcd first (create-only ones as a
//!   transaction on the key's create revision) and reach the cache after.
//! - `PREFIX/sessions/ID`: the token a session's `/attest` issued, written once by a
//!   create-only transaction (the session itself travels sealed in the cookie, so
//!   `/auth` touches no store: see `session`), attached to a lease of the session
//!   lifetime (plus at most one lease period), so etcd drops it itself; the expiry
//!   inside the record is checked on every read. Read back only for a repeated
//!   `/attest` (from the transaction's own answer) and a resource request that
//!   carries the cookie instead of the token.
//! - `PREFIX/token-key`: the token HMAC key, created once (transaction) by the first
//!   replica and read by the others, so a token from one replica is good on all.
//!
//! Faults: a probe reads from the watched member every 250 ms (a linearizable
//! read, which a member without quorum cannot answer). While it fails, `/readyz`
//! answers 503, admin writes and new sessions (`/auth`, from the probe's state: no
//! etcd request) fail (503), and resource reads are
//! served from the last synchronised cache for at most `store_stale_secs` (0, the
//! default, fails closed at once). The attestation cache stays per replica: sharing
//! it would cost an etcd write per attestation to save a verifier run.
//!
//! This module is the backend; it talks to etcd through two transports below it, which
//! never call back up: `gateway` (the JSON gateway client, which routes transactions
//! to `grpc`) and `grpc` (`KV/Txn` over native gRPC), both on the shared `types`.

pub mod gateway;
pub mod grpc;
pub mod types;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

pub use types::{EtcdError, EtcdSpec, EtcdTls};

use super::{random_key, ResourcePath, Storage, StoreError, StoreOptions};
use crate::seal::{MasterKeys, SealError};
use crate::session::{Created, Session};
use gateway::{prefix_end, EtcdClient, Event};

/// What the etcd backend fails with (besides "not found" and "exists", which every
/// backend answers with [`StoreError`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EtcdStoreError {
    /// The shared store (etcd) cannot be reached or has no quorum, and the broker's
    /// last synchronised state is older than it may serve.
    #[error("shared store unavailable")]
    Unavailable(#[source] EtcdError),
    /// The synchronised state is too old to serve (etcd unreachable for longer than the
    /// configured stale-read window).
    #[error("shared store unreachable for {0:?}, longer than this broker may serve stale reads")]
    Stale(Duration),
    #[error("stored value cannot be opened")]
    Seal(#[from] SealError),
    #[error("the etcd store needs --master-key (its values are sealed under it)")]
    NeedsMasterKey,
    /// New sessions are refused while the shared store is not in sync with a quorum
    /// (their `/attest` could not record the token): the reason.
    #[error("no new sessions: {0}")]
    NotReady(String),
    #[error("stored {what} under {key} is malformed")]
    Corrupt { what: &'static str, key: String },
}

impl From<EtcdError> for EtcdStoreError {
    fn from(e: EtcdError) -> Self {
        EtcdStoreError::Unavailable(e)
    }
}

impl From<EtcdError> for StoreError {
    fn from(e: EtcdError) -> Self {
        EtcdStoreError::Unavailable(e).into()
    }
}

impl From<SealError> for StoreError {
    fn from(e: SealError) -> Self {
        EtcdStoreError::Seal(e).into()
    }
}

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

/// The etcd backend: a client, the watch-fed cache and the health state.
pub struct Etcd {
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

    /// Seeds the token key and the policy when absent and loads the cache before
    /// returning (so a replica starts with the shared state), then keeps it in step.
    pub async fn open(spec: &EtcdSpec, opts: StoreOptions) -> Result<Arc<Self>, StoreError> {
        let keys = opts.master_keys.ok_or(EtcdStoreError::NeedsMasterKey)?;
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

    /// Whether the cache may serve a read now (fresh, or stale within the window).
    fn may_serve(&self) -> Result<(), StoreError> {
        match self.since_ok() {
            Some(d) if d < FRESH_FOR + self.stale => Ok(()),
            Some(d) => Err(EtcdStoreError::Stale(d).into()),
            None => Err(EtcdStoreError::Stale(Duration::MAX).into()),
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
                Err(e) => tracing::error!(error = %report::Line(&e), "skipping a value that does not open"),
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
                            tracing::error!(error = %report::Line(&e), "shared policy does not open; the old one stays")
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
                            tracing::error!(error = %report::Line(&e), "resource does not open; not served");
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
}

impl Storage for Etcd {
    fn name(&self) -> &'static str {
        "etcd"
    }

    fn is_shared(&self) -> bool {
        true
    }

    fn describe(&self) -> String {
        self.spec.to_string()
    }

    /// From the watch cache, while it is fresh (or stale within the window).
    async fn resource_get(&self, p: &ResourcePath) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        self.may_serve()?;
        let c = self.cache.read().map_err(|_| EtcdStoreError::Stale(Duration::MAX))?;
        c.resources
            .get(&p.as_string())
            .map(|(_, v)| v.clone())
            .ok_or_else(|| StoreError::NotFound(p.as_string()))
    }

    async fn resource_get_fresh(&self, p: &ResourcePath) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        let k = self.k_res(p);
        let kv = self.client.get(&k).await?.ok_or_else(|| StoreError::NotFound(p.as_string()))?;
        Ok(self.keys.open(&k, &kv.value)?.0)
    }

    /// To etcd first (create-only as a transaction on the key's create revision), then
    /// to this replica's cache, unless the watch already brought something newer.
    async fn resource_put(&self, p: &ResourcePath, data: &[u8], create_only: bool) -> Result<(), StoreError> {
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

    async fn resource_delete(&self, p: &ResourcePath) -> Result<(), StoreError> {
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

    async fn resource_list(&self) -> Result<Vec<ResourcePath>, StoreError> {
        let prefix = self.k_res_prefix();
        let (_, kvs) = self.client.range(&prefix, Some(&prefix_end(&prefix))).await?;
        Ok(kvs.iter().filter_map(|kv| ResourcePath::parse(kv.key.strip_prefix(&prefix)?).ok()).collect())
    }

    /// From the health probe's state: no etcd request.
    fn session_admission(&self) -> Result<(), StoreError> {
        self.ready().map_err(|e| EtcdStoreError::NotReady(e).into())
    }

    /// One create-only transaction: the record, or the one already there.
    async fn session_create(&self, id: &str, s: &Session) -> Result<Created, StoreError> {
        let k = self.k_session(id);
        let sealed = self.keys.seal(&k, &s.to_wire())?;
        let lease = self.session_lease(false).await?;
        let found = match self.client.create_or_get(&k, &sealed, lease).await {
            Err(EtcdError::Status { message, .. }) if message.contains("lease not found") => {
                let lease = self.session_lease(true).await?;
                self.client.create_or_get(&k, &sealed, lease).await?
            }
            r => r?,
        };
        let Some(kv) = found else { return Ok(Created::New) };
        let (plain, _) = self.keys.open(&k, &kv.value)?;
        let old = Session::from_wire(&plain).ok_or(EtcdStoreError::Corrupt { what: "session", key: k })?;
        Ok(Created::Existing(old))
    }

    async fn session_get(&self, id: &str) -> Result<Option<Session>, StoreError> {
        let k = self.k_session(id);
        let Some(kv) = self.client.get(&k).await? else { return Ok(None) };
        let (plain, _) = self.keys.open(&k, &kv.value)?;
        let s = Session::from_wire(&plain).ok_or(EtcdStoreError::Corrupt { what: "session", key: k })?;
        Ok(s.live().then_some(s))
    }

    /// Shared, sealed in etcd: created once (transaction) by the first replica.
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
                self.client
                    .get(&k)
                    .await?
                    .ok_or(EtcdStoreError::Corrupt { what: "token key", key: k.clone() })?
            }
        };
        let (plain, _) = self.keys.open(&k, &kv.value)?;
        let arr: [u8; 32] = plain
            .as_slice()
            .try_into()
            .map_err(|_| EtcdStoreError::Corrupt { what: "token key", key: k.clone() })?;
        Ok(Zeroizing::new(arr))
    }

    fn policy_updates(&self) -> Option<tokio::sync::watch::Receiver<Option<String>>> {
        Some(self.policy_tx.subscribe())
    }

    async fn policy_put(&self, text: &str) -> Result<bool, StoreError> {
        let k = self.k_policy();
        let sealed = self.keys.seal(&k, text.as_bytes())?;
        let rev = self.client.put(&k, &sealed, 0).await?;
        if let Ok(mut c) = self.cache.write() {
            if rev > c.policy_rev {
                c.policy_rev = rev;
                self.policy_tx.send_replace(Some(text.to_string()));
            }
        }
        Ok(true)
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
            r = e.client.watch(member, &start, &end, rev + 1, |evs| e.apply(evs)) => r.map_err(EtcdStoreError::from),
            _ = e.restart.notified() => Err(EtcdStoreError::Stale(FRESH_FOR)),
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
