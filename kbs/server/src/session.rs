//! RCAR sessions (`kbs-session-id` cookie) and the short attestation cache.
//!
//! A session is `Authed` after `/auth` (holds the challenge nonce) and `Attested` after
//! `/attest` (holds the token). Both expire; expired entries are dropped lazily.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kbs_types::Tee;
use zeroize::Zeroizing;

use crate::claims::Claims;

pub const COOKIE: &str = kbs_client::protocol::SESSION_COOKIE;
/// Above this many live entries, inserting sweeps out expired ones first.
const SWEEP_AT: usize = 4096;
/// Hard cap so a flood of `/auth` calls cannot exhaust memory.
const MAX_SESSIONS: usize = 200_000;

pub enum SessionState {
    Authed { nonce: String },
    Attested { token: Zeroizing<String> },
}

pub struct Session {
    pub tee: Tee,
    pub pod: String,
    pub namespace: String,
    pub state: SessionState,
    pub expires: Instant,
}

#[derive(Default)]
pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
}

impl Sessions {
    /// Inserts a session; false when the table is full of live sessions.
    pub fn insert(&self, id: String, s: Session) -> bool {
        let Ok(mut m) = self.map.lock() else { return false };
        if m.len() >= SWEEP_AT {
            let now = Instant::now();
            m.retain(|_, s| s.expires > now);
        }
        if m.len() >= MAX_SESSIONS {
            return false;
        }
        m.insert(id, s);
        true
    }

    /// Runs `f` on the live session `id`; None when unknown or expired.
    pub fn with<R>(&self, id: &str, f: impl FnOnce(&mut Session) -> R) -> Option<R> {
        let mut m = self.map.lock().ok()?;
        let now = Instant::now();
        match m.get_mut(id) {
            Some(s) if s.expires > now => Some(f(s)),
            Some(_) => {
                m.remove(id);
                None
            }
            None => None,
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
