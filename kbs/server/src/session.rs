//! RCAR sessions (`kbs-session-id` cookie) and the short attestation cache.
//!
//! `/auth` keeps no state: the session (TEE, pod, namespace, challenge nonce, expiry) is
//! sealed into the cookie value itself ([`CookieKey`]), under a key derived from the
//! token key, so any replica that holds the token key opens it and no store write or
//! read is needed before `/attest`. `/attest` then makes the session's one record, the
//! issued token, with a create-only write keyed by the session id: the first `/attest`
//! of a session wins, so a challenge nonce yields at most one token, and a repeated
//! `/attest` (Trustee answers it with the token already issued) finds that record and
//! answers with it. The local backend keeps those records in [`Sessions`] (dropped
//! lazily when expired); the etcd backend keeps them in etcd, sealed, under a lease
//! (see `storage`), through the same [`Session`] type and its
//! [`Session::to_wire`]/[`Session::from_wire`] encoding.
//!
//! The cookie is `c1.` + base64url(salt (16) | AES-256-GCM(session JSON) | tag (16)).
//! Each cookie is sealed under its own key, HMAC-SHA256(cookie key, salt), with a zero
//! nonce: a key is never used twice, so the number of cookies a broker may seal is not
//! bounded by GCM's random-nonce limit (2^32 per key), and the salt (random) doubles
//! as the session id (a changed salt derives another key, so it does not open).
//! Clients treat the value as opaque, as Trustee's and cloak's clients do.

use std::borrow::Borrow;
use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use hmac::{Hmac, Mac};
use kbs_types::Tee;
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use zeroize::Zeroizing;

use crate::claims::Claims;

pub use kbs_client::protocol::SESSION_COOKIE as COOKIE;
/// Hard cap so a flood of sessions cannot exhaust memory.
const MAX_SESSIONS: usize = 200_000;

/// A session between `/auth` and `/attest`: what the sealed cookie carries.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    pub tee: Tee,
    pub pod: String,
    pub namespace: String,
    /// The challenge nonce (base64, as sent to the guest).
    pub nonce: String,
    /// Unix seconds after which the session is void.
    pub exp: u64,
}

/// Why a session cookie was refused (all answer 401 `InvalidCookie`).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum CookieError {
    #[error("kbs-session-id cookie is not one this broker issues (call /kbs/v0/auth for a new session)")]
    Malformed,
    #[error(
        "kbs-session-id cookie does not open: altered, or issued by a broker with another token key \
         (call /kbs/v0/auth for a new session)"
    )]
    Forged,
    #[error("session expired (call /kbs/v0/auth for a new session)")]
    Expired,
}

const COOKIE_TAG: &str = "c1.";
const SALT_LEN: usize = 16;
const GCM_TAG_LEN: usize = 16;
/// Bound to the format: a value sealed for another purpose under the same key does not open.
const COOKIE_AAD: &[u8] = b"cloak-kbs kbs-session-id c1";
/// Longest cookie value accepted before any work (a real one is a few hundred bytes).
const MAX_COOKIE: usize = 2048;

/// Seals and opens session cookies; derived from the token key, so every replica that
/// shares the token key shares this one.
pub struct CookieKey {
    /// HMAC-SHA256 keyed with the cookie key; cloned per cookie to derive its key.
    keyed: Hmac<Sha256>,
}

impl std::fmt::Debug for CookieKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CookieKey").field("key", &"<redacted>").finish()
    }
}

impl CookieKey {
    /// The cookie key is HMAC-SHA256(token key, label): a key of its own (the token key
    /// itself only ever MACs tokens), and one-way, so a cookie key says nothing of the
    /// token key.
    pub fn derive(token_key: &[u8; 32]) -> Self {
        let mut m = <Hmac<Sha256> as Mac>::new_from_slice(token_key).expect("HMAC takes any key length");
        m.update(b"cloak-kbs session cookie key v1");
        let k = Zeroizing::new(<[u8; 32]>::from(m.finalize().into_bytes()));
        Self { keyed: <Hmac<Sha256> as Mac>::new_from_slice(&k[..]).expect("HMAC takes any key length") }
    }

    fn cipher(&self, salt: &[u8]) -> Aes256Gcm {
        let mut m = self.keyed.clone();
        m.update(salt);
        let k = Zeroizing::new(<[u8; 32]>::from(m.finalize().into_bytes()));
        Aes256Gcm::new((&*k).into())
    }

    /// A new session: its id (hex of the salt) and its cookie value.
    pub fn seal(&self, t: &Ticket) -> (String, String) {
        let mut salt = [0u8; SALT_LEN];
        rand::Rng::fill(&mut rand::thread_rng(), &mut salt);
        // A Ticket always serialises (plain strings and integers).
        let plain = serde_json::to_vec(t).unwrap_or_default();
        // Encryption with a fresh key cannot fail for a message this short.
        let ct = self
            .cipher(&salt)
            .encrypt(Nonce::from_slice(&[0u8; 12]), Payload { msg: &plain, aad: COOKIE_AAD })
            .unwrap_or_default();
        let mut raw = Vec::with_capacity(SALT_LEN + ct.len());
        raw.extend_from_slice(&salt);
        raw.extend_from_slice(&ct);
        let mut v = String::with_capacity(COOKIE_TAG.len() + raw.len() * 4 / 3 + 4);
        v.push_str(COOKIE_TAG);
        URL_SAFE_NO_PAD.encode_string(raw, &mut v);
        (hex::encode(salt), v)
    }

    /// The session id and ticket of a cookie value this broker (or a replica with the
    /// same token key) sealed and that has not expired.
    pub fn open(&self, cookie: &str) -> Result<(String, Ticket), CookieError> {
        if cookie.len() > MAX_COOKIE {
            return Err(CookieError::Malformed);
        }
        let b64 = cookie.strip_prefix(COOKIE_TAG).ok_or(CookieError::Malformed)?;
        let raw = URL_SAFE_NO_PAD.decode(b64).map_err(|_| CookieError::Malformed)?;
        if raw.len() < SALT_LEN + GCM_TAG_LEN {
            return Err(CookieError::Malformed);
        }
        let (salt, ct) = raw.split_at(SALT_LEN);
        let plain = self
            .cipher(salt)
            .decrypt(Nonce::from_slice(&[0u8; 12]), Payload { msg: ct, aad: COOKIE_AAD })
            .map_err(|_| CookieError::Forged)?;
        // Authentic but unreadable would be a bug of ours; refuse it all the same.
        let t: Ticket = serde_json::from_slice(&plain).map_err(|_| CookieError::Forged)?;
        if t.exp <= crate::now_secs() {
            return Err(CookieError::Expired);
        }
        Ok((hex::encode(salt), t))
    }
}

/// The one stored record of a session: the token its `/attest` issued.
#[derive(Clone)]
pub struct Session {
    pub tee: Tee,
    pub pod: String,
    pub namespace: String,
    pub token: Zeroizing<String>,
    /// Unix seconds after which the session is void.
    pub expires_at: u64,
}

/// The stored form of a session (JSON; sealed by the etcd backend).
#[derive(Serialize, Deserialize)]
struct Wire {
    tee: Tee,
    pod: String,
    namespace: String,
    token: String,
    exp: u64,
}

impl Session {
    pub fn live(&self) -> bool {
        self.expires_at > crate::now_secs()
    }

    pub fn to_wire(&self) -> Zeroizing<Vec<u8>> {
        let mut w = Wire {
            tee: self.tee,
            pod: self.pod.clone(),
            namespace: self.namespace.clone(),
            token: self.token.to_string(),
            exp: self.expires_at,
        };
        let out = Zeroizing::new(serde_json::to_vec(&w).unwrap_or_default());
        zeroize::Zeroize::zeroize(&mut w.token);
        out
    }

    /// None when the bytes are not a session record.
    pub fn from_wire(b: &[u8]) -> Option<Self> {
        let w: Wire = serde_json::from_slice(b).ok()?;
        Some(Self {
            tee: w.tee,
            pod: w.pod,
            namespace: w.namespace,
            token: Zeroizing::new(w.token),
            expires_at: w.exp,
        })
    }
}

/// A map whose entries expire, swept in amortised O(1) per insert: entries are also
/// queued in insertion order with their expiry, and each insert first drops the
/// expired ones at the front of that queue. (Sweeping the whole map once it held a
/// few thousand live entries made every insert O(live entries) under the lock: at a
/// steady 1,000 attestations/s with a 30 s cache, 30,000 clock reads per attestation.)
///
/// Expiries that are not in insertion order are fine: a later-expiring entry at the
/// front only delays the drop of those behind it, and every read checks the expiry.
struct ExpiryMap<K, V, E> {
    map: HashMap<K, (E, V)>,
    order: VecDeque<(E, K)>,
}

impl<K: Hash + Eq + Clone, V, E: Ord + Copy> ExpiryMap<K, V, E> {
    fn new() -> Self {
        Self { map: HashMap::new(), order: VecDeque::new() }
    }

    /// Drops the entries (at the front of the queue) that expired at or before `now`.
    fn sweep(&mut self, now: E) {
        while self.order.front().is_some_and(|(at, _)| *at <= now) {
            let Some((at, k)) = self.order.pop_front() else { break };
            // A key inserted again since has a newer queue entry: keep it.
            if self.map.get(&k).is_some_and(|(e, _)| *e == at) {
                self.map.remove(&k);
            }
        }
        // Queue entries of keys that were replaced or removed: compact now and then so
        // the queue stays within a constant factor of the map (amortised O(1)).
        if self.order.len() > 2 * self.map.len() + 1024 {
            let map = &self.map;
            self.order.retain(|(at, k)| map.get(k).is_some_and(|(e, _)| e == at));
        }
    }

    fn get<Q: Hash + Eq + ?Sized>(&self, k: &Q, now: E) -> Option<&V>
    where
        K: Borrow<Q>,
    {
        self.map.get(k).filter(|(e, _)| *e > now).map(|(_, v)| v)
    }

    fn remove<Q: Hash + Eq + ?Sized>(&mut self, k: &Q)
    where
        K: Borrow<Q>,
    {
        self.map.remove(k);
    }

    fn len(&self) -> usize {
        self.map.len()
    }

    fn insert(&mut self, k: K, expires: E, v: V) {
        self.order.push_back((expires, k.clone()));
        self.map.insert(k, (expires, v));
    }
}

/// The local backend's session table.
pub struct Sessions {
    map: Mutex<ExpiryMap<String, Session, u64>>,
}

impl Default for Sessions {
    fn default() -> Self {
        Self { map: Mutex::new(ExpiryMap::new()) }
    }
}

/// What a create-only session write found.
pub enum Created {
    /// This write made the record.
    New,
    /// The session already had one (a repeated or concurrent `/attest`): that one.
    Existing(Session),
}

impl Sessions {
    /// Creates session `id` unless a live one exists (then answers it); None when the
    /// table is full of live sessions.
    pub fn create(&self, id: &str, s: Session) -> Option<Created> {
        let mut m = self.map.lock().ok()?;
        let now = crate::now_secs();
        if let Some(old) = m.get(id, now) {
            return Some(Created::Existing(old.clone()));
        }
        m.sweep(now);
        if m.len() >= MAX_SESSIONS {
            return None;
        }
        m.insert(id.to_string(), s.expires_at, s);
        Some(Created::New)
    }

    /// A copy of the live session `id`; None when unknown or expired.
    pub fn get(&self, id: &str) -> Option<Session> {
        let mut m = self.map.lock().ok()?;
        match m.get(id, crate::now_secs()) {
            Some(s) => Some(s.clone()),
            None => {
                m.remove(id);
                None
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }
}

/// Recent verdicts keyed by a hash of (TEE, evidence, runtime-data hash): when the same
/// evidence is presented again within `ttl`, its claims are reused instead of running
/// the verifier, so a brief verifier outage does not block a restarting pod. Entries
/// past `ttl` are ignored (fail closed). The policy is still applied to cached claims.
pub struct AttestationCache {
    ttl: Duration,
    map: Mutex<ExpiryMap<[u8; 48], Claims, Instant>>,
}

impl AttestationCache {
    pub fn new(ttl: Duration) -> Self {
        Self { ttl, map: Mutex::new(ExpiryMap::new()) }
    }

    pub fn key(tee: Tee, evidence: &[u8], runtime_hash: &[u8]) -> [u8; 48] {
        use sha2::{Digest, Sha384};
        let mut h = Sha384::new();
        h.update(tee.to_string().as_bytes());
        h.update([0u8]);
        h.update((evidence.len() as u64).to_be_bytes());
        h.update(evidence);
        h.update(runtime_hash);
        h.finalize().into()
    }

    pub fn get(&self, key: &[u8; 48]) -> Option<Claims> {
        if self.ttl.is_zero() {
            return None;
        }
        let m = self.map.lock().ok()?;
        m.get(key, Instant::now()).cloned()
    }

    pub fn put(&self, key: [u8; 48], claims: Claims) {
        if self.ttl.is_zero() {
            return;
        }
        if let Ok(mut m) = self.map.lock() {
            let now = Instant::now();
            m.sweep(now);
            if m.len() < MAX_SESSIONS {
                m.insert(key, now + self.ttl, claims);
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.lock().map(|m| m.len()).unwrap_or(0)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ticket(exp: u64) -> Ticket {
        Ticket { tee: Tee::Sample, pod: "p".into(), namespace: "n".into(), nonce: "bm9uY2U=".into(), exp }
    }

    #[test]
    fn cookie_round_trip_between_replicas_with_one_token_key() {
        let a = CookieKey::derive(&[7u8; 32]);
        let b = CookieKey::derive(&[7u8; 32]);
        let t = ticket(crate::now_secs() + 60);
        let (id, c) = a.seal(&t);
        assert_eq!(id.len(), 32);
        assert!(c.starts_with("c1.") && c.len() < 400, "{c}");
        // Cookie-safe characters only, and the nonce is not readable in it.
        assert!(c.bytes().all(|x| x.is_ascii_alphanumeric() || b"._-".contains(&x)), "{c}");
        assert_eq!(b.open(&c).unwrap(), (id.clone(), t.clone()));
        // Two sessions never share an id.
        assert_ne!(a.seal(&t).0, id);
    }

    #[test]
    fn tampered_foreign_expired_and_garbage_cookies_are_refused() {
        let k = CookieKey::derive(&[7u8; 32]);
        let (_, c) = k.seal(&ticket(crate::now_secs() + 60));
        let raw = URL_SAFE_NO_PAD.decode(&c[3..]).unwrap();
        for i in [0, SALT_LEN, raw.len() - 1] {
            let mut t = raw.clone();
            t[i] ^= 1;
            let forged = format!("c1.{}", URL_SAFE_NO_PAD.encode(&t));
            assert_eq!(k.open(&forged), Err(CookieError::Forged), "byte {i}");
        }
        assert_eq!(CookieKey::derive(&[8u8; 32]).open(&c), Err(CookieError::Forged));
        let (_, old) = k.seal(&ticket(crate::now_secs() - 1));
        assert_eq!(k.open(&old), Err(CookieError::Expired));
        for bad in ["", "0123456789abcdef0123456789abcdef", "c1.", "c1.!!", "c2.AAAA", &"c1.A".repeat(1000)] {
            assert_eq!(k.open(bad), Err(CookieError::Malformed), "{bad}");
        }
    }

    #[test]
    fn a_session_record_is_created_once() {
        let s = Sessions::default();
        let rec = |tok: &str| Session {
            tee: Tee::Sample,
            pod: "p".into(),
            namespace: "n".into(),
            token: Zeroizing::new(tok.into()),
            expires_at: crate::now_secs() + 60,
        };
        assert!(matches!(s.create("a", rec("t1")), Some(Created::New)));
        match s.create("a", rec("t2")) {
            Some(Created::Existing(old)) => assert_eq!(&old.token[..], "t1"),
            _ => panic!("second create must find the first"),
        }
        assert_eq!(&s.get("a").unwrap().token[..], "t1");
        let dead = Session { expires_at: 1, ..rec("t3") };
        assert!(matches!(s.create("b", dead), Some(Created::New)));
        assert!(s.get("b").is_none());
    }

    #[test]
    fn expired_entries_leave_on_later_inserts_and_live_ones_stay() {
        let mut m: ExpiryMap<u32, &str, u64> = ExpiryMap::new();
        for k in 1..=10u32 {
            m.insert(k, u64::from(k), "v");
        }
        m.sweep(5);
        assert_eq!(m.len(), 5, "keys expiring at 1..=5 are gone at t=5");
        assert!(m.get(&5, 4).is_none(), "swept");
        assert_eq!(m.get(&7, 5), Some(&"v"));
        assert!(m.get(&7, 7).is_none(), "a read never answers an expired entry, swept or not");
        // A key inserted again with a later expiry survives the sweep of its first entry.
        m.insert(8, 100, "again");
        m.sweep(50);
        assert_eq!(m.len(), 1);
        assert_eq!(m.get(&8, 50), Some(&"again"));
        // Out of order: a later expiry at the front delays, but never hides, expiry.
        let mut m: ExpiryMap<u32, (), u64> = ExpiryMap::new();
        m.insert(1, 100, ());
        m.insert(2, 10, ());
        m.sweep(20);
        assert!(m.get(&2, 20).is_none());
        m.sweep(100);
        assert_eq!(m.len(), 0);
    }

    #[test]
    fn the_order_queue_stays_within_a_constant_factor_of_the_map() {
        let mut m: ExpiryMap<u32, (), u64> = ExpiryMap::new();
        for i in 0..100_000u64 {
            // One key replaced over and over, never expiring: only the queue could grow.
            m.insert(7, 1_000_000 + i, ());
            m.sweep(i);
            assert!(m.order.len() <= 2 * m.len() + 1025, "queue {} for {} entries", m.order.len(), m.len());
        }
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn the_attestation_cache_drops_expired_verdicts_at_any_size() {
        let c = AttestationCache::new(Duration::from_millis(200));
        let claims = Claims::Sample(crate::claims::SampleClaims { svn: "1".into(), init_data: None });
        // Fewer entries than the old sweep threshold (4096): they used to stay.
        for i in 0..100u32 {
            let mut k = [0u8; 48];
            k[..4].copy_from_slice(&i.to_be_bytes());
            c.put(k, claims.clone());
        }
        assert_eq!(c.len(), 100);
        assert!(c.get(&[0u8; 48]).is_some());
        std::thread::sleep(Duration::from_millis(250));
        assert!(c.get(&[0u8; 48]).is_none());
        c.put([0xff; 48], claims);
        assert_eq!(c.len(), 1, "expired verdicts are dropped on the next insert");
        let s = Sessions::default();
        let rec = |exp: u64| Session {
            tee: Tee::Sample,
            pod: "p".into(),
            namespace: "n".into(),
            token: Zeroizing::new("t".into()),
            expires_at: exp,
        };
        for i in 0..50 {
            s.create(&format!("old{i}"), rec(1));
        }
        s.create("live", rec(crate::now_secs() + 60));
        assert_eq!(s.len(), 1, "expired sessions are dropped on the next create");
    }
}
