//! RCAR sessions (`kbs-session-id` cookie) and the short attestation cache.
//!
//! A session is `Authed` after `/auth` (holds the challenge nonce) and `Attested` after
//! `/attest` (holds the token). Both expire (`expires_at`, Unix seconds). The local
//! backend keeps them in [`Sessions`] (dropped lazily when expired); the etcd backend
//! keeps them in etcd, sealed, under a lease (see `storage`), through the same
//! [`Session`] type and its [`Session::to_wire`]/[`Session::from_wire`] encoding.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kbs_types::Tee;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use crate::claims::Claims;

pub use kbs_client::protocol::SESSION_COOKIE as COOKIE;
/// Above this many live entries, inserting sweeps out expired ones first.
const SWEEP_AT: usize = 4096;
/// Hard cap so a flood of `/auth` calls cannot exhaust memory.
const MAX_SESSIONS: usize = 200_000;

#[derive(Clone)]
pub enum SessionState {
    Authed { nonce: String },
    Attested { token: Zeroizing<String> },
}

#[derive(Clone)]
pub struct Session {
    pub tee: Tee,
    pub pod: String,
    pub namespace: String,
    pub state: SessionState,
    /// Unix seconds after which the session is void.
    pub expires_at: u64,
}

/// The stored form of a session (JSON; sealed by the etcd backend).
#[derive(Serialize, Deserialize)]
struct Wire {
    tee: Tee,
    pod: String,
    namespace: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    nonce: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    token: Option<String>,
    exp: u64,
}

impl Session {
    pub fn live(&self) -> bool {
        self.expires_at > crate::now_secs()
    }

    pub fn to_wire(&self) -> Zeroizing<Vec<u8>> {
        let (nonce, token) = match &self.state {
            SessionState::Authed { nonce } => (Some(nonce.clone()), None),
            SessionState::Attested { token } => (None, Some(token.to_string())),
        };
        let mut w = Wire {
            tee: self.tee,
            pod: self.pod.clone(),
            namespace: self.namespace.clone(),
            nonce,
            token,
            exp: self.expires_at,
        };
        let out = Zeroizing::new(serde_json::to_vec(&w).unwrap_or_default());
        if let Some(t) = w.token.as_mut() {
            zeroize::Zeroize::zeroize(t);
        }
        out
    }

    /// None when the bytes are not a session record.
    pub fn from_wire(b: &[u8]) -> Option<Self> {
        let w: Wire = serde_json::from_slice(b).ok()?;
        let state = match (w.nonce, w.token) {
            (_, Some(t)) => SessionState::Attested { token: Zeroizing::new(t) },
            (Some(n), None) => SessionState::Authed { nonce: n },
            (None, None) => return None,
        };
        Some(Self { tee: w.tee, pod: w.pod, namespace: w.namespace, state, expires_at: w.exp })
    }
}

/// The local backend's session table.
#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// Inserts a session; false when the table is full of live sessions.
    pub fn insert(&self, id: String, s: Session) -> bool {
        let Ok(mut m) = self.map.lock() else { return false };
        if m.len() >= SWEEP_AT {
            m.retain(|_, s| s.live());
        }
        if m.len() >= MAX_SESSIONS {
            return false;
        }
        m.insert(id, s);
        true
    }

    /// A copy of the live session `id`; None when unknown or expired.
    pub fn get(&self, id: &str) -> Option<Session> {
        let mut m = self.map.lock().ok()?;
        match m.get(id) {
            Some(s) if s.live() => Some(s.clone()),
            Some(_) => {
                m.remove(id);
                None
            }
            None => None,
        }
    }

    /// Replaces the live session `id`; false when it is gone.
    pub fn replace(&self, id: &str, s: Session) -> bool {
        let Ok(mut m) = self.map.lock() else { return false };
        match m.get_mut(id) {
            Some(old) if old.live() => {
                *old = s;
                true
            }
            _ => false,
        }
    }
}

/// New random session id: 32 lowercase hex characters (a UUID v4 in simple form is the
/// same length; clients treat it as opaque).
pub fn new_id() -> String {
    let mut b = [0u8; 16];
    rand::Rng::fill(&mut rand::thread_rng(), &mut b);
    hex::encode(b)
}

/// Recent verdicts keyed by a hash of (TEE, evidence, runtime-data hash): when the same
/// evidence is presented again within `ttl`, its claims are reused instead of running
/// the verifier, so a brief verifier outage does not block a restarting pod. Entries
/// past `ttl` are ignored (fail closed). The policy is still applied to cached claims.
pub struct AttestationCache {
    ttl: Duration,
    map: Mutex<HashMap<[u8; 48], (Instant, Claims)>>,
}

impl AttestationCache {
    pub fn new(ttl: Duration) -> Self {
        Self { ttl, map: Mutex::new(HashMap::new()) }
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
        m.get(key).filter(|(at, _)| at.elapsed() < self.ttl).map(|(_, c)| c.clone())
    }

    pub fn put(&self, key: [u8; 48], claims: Claims) {
        if self.ttl.is_zero() {
            return;
        }
        if let Ok(mut m) = self.map.lock() {
            if m.len() >= SWEEP_AT {
                let ttl = self.ttl;
                m.retain(|_, (at, _)| at.elapsed() < ttl);
            }
            if m.len() < MAX_SESSIONS {
                m.insert(key, (Instant::now(), claims));
            }
        }
    }
}
