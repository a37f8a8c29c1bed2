//! Secrets at rest in a shared store: AES-256-GCM under the broker master key.
//!
//! The master key is 32 bytes given to every replica (`--master-key FILE`); it is never
//! written to the store, so a snapshot or backup of the store alone reveals no resource,
//! session or token key. A sealed value is
//! `"cloak-seal-1" (12) | key id (8) | nonce (12) | ciphertext | tag (16)`, where the key
//! id is the first 8 bytes of SHA-256("cloak-kbs master key id" | key) and the AAD is the
//! store key the value lives under, so a value moved to another key does not open.
//!
//! Rotation: replicas are given the new key as `--master-key` and the old one as
//! `--old-master-key`; they open values under either and seal under the new one;
//! `cloak-kbs reseal` then rewrites every value under the new key (compare-and-swap per
//! value, so concurrent admin writes win), after which the old key can be dropped.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

const MAGIC: &[u8; 12] = b"cloak-seal-1";
const ID_LEN: usize = 8;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;
const HEADER: usize = MAGIC.len() + ID_LEN + NONCE_LEN;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SealError {
    #[error("cannot read master key file {path}")]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("master key file {path} holds {len} bytes; it must hold exactly 32 (head -c 32 /dev/urandom)")]
    KeyLength { path: std::path::PathBuf, len: usize },
    #[error("value under {key} is not sealed (no cloak-seal-1 header): refusing plaintext from the store")]
    NotSealed { key: String },
    #[error("value under {key} is sealed under master key id {id}, which this broker was not given")]
    UnknownKey { key: String, id: String },
    #[error("value under {key} does not open under the master key (corrupted, or moved from another key)")]
    Open { key: String },
    #[error("sealing failed")]
    Seal,
}

/// One AES-256 master key and its id.
pub struct MasterKey {
    cipher: Aes256Gcm,
    id: [u8; ID_LEN],
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MasterKey").field("id", &hex::encode(self.id)).field("key", &"<redacted>").finish()
    }
}

impl MasterKey {
    pub fn from_bytes(raw: &[u8; 32]) -> Self {
        let mut h = Sha256::new();
        h.update(b"cloak-kbs master key id");
        h.update(raw);
        let d = h.finalize();
        let mut id = [0u8; ID_LEN];
        id.copy_from_slice(&d[..ID_LEN]);
        Self { cipher: Aes256Gcm::new(raw.into()), id }
    }

    pub fn load(path: &std::path::Path) -> Result<Self, SealError> {
        let raw = Zeroizing::new(
            std::fs::read(path).map_err(|source| SealError::Read { path: path.to_owned(), source })?,
        );
        let arr: &[u8; 32] = raw
            .as_slice()
            .try_into()
            .map_err(|_| SealError::KeyLength { path: path.to_owned(), len: raw.len() })?;
        Ok(Self::from_bytes(arr))
    }

    pub fn id_hex(&self) -> String {
        hex::encode(self.id)
    }
}

/// The key values are sealed under, plus older keys still accepted for opening.
#[derive(Debug)]
pub struct MasterKeys {
    current: MasterKey,
    old: Vec<MasterKey>,
}

impl MasterKeys {
    pub fn new(current: MasterKey, old: Vec<MasterKey>) -> Self {
        Self { current, old }
    }

    pub fn current_id(&self) -> String {
        self.current.id_hex()
    }

    pub fn seal(&self, key: &str, plain: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut nonce = [0u8; NONCE_LEN];
        rand::Rng::fill(&mut rand::thread_rng(), &mut nonce);
        let ct = self
            .current
            .cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plain, aad: key.as_bytes() })
            .map_err(|_| SealError::Seal)?;
        let mut out = Vec::with_capacity(HEADER + ct.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.current.id);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Opens a sealed value; `Ok((plain, true))` when it was sealed under an old key and
    /// should be re-sealed.
    pub fn open(&self, key: &str, sealed: &[u8]) -> Result<(Zeroizing<Vec<u8>>, bool), SealError> {
        if sealed.len() < HEADER + TAG_LEN || &sealed[..MAGIC.len()] != MAGIC {
            return Err(SealError::NotSealed { key: key.into() });
        }
        let id = &sealed[MAGIC.len()..MAGIC.len() + ID_LEN];
        let nonce = &sealed[MAGIC.len() + ID_LEN..HEADER];
        let (mk, stale) = if id == self.current.id {
            (&self.current, false)
        } else {
            match self.old.iter().find(|k| k.id == id) {
                Some(k) => (k, true),
                None => return Err(SealError::UnknownKey { key: key.into(), id: hex::encode(id) }),
            }
        };
        let plain = mk
            .cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: &sealed[HEADER..], aad: key.as_bytes() })
            .map_err(|_| SealError::Open { key: key.into() })?;
        Ok((Zeroizing::new(plain), stale))
    }

    /// Whether `sealed` is already under the current key (no need to re-seal).
    pub fn is_current(&self, sealed: &[u8]) -> bool {
        sealed.len() >= HEADER
            && &sealed[..MAGIC.len()] == MAGIC
            && sealed[MAGIC.len()..][..ID_LEN] == self.current.id
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_bind_and_rotate() {
        let a = MasterKey::from_bytes(&[1u8; 32]);
        let keys = MasterKeys::new(a, vec![]);
        let s = keys.seal("/p/res/a/b/c", b"kek bytes").unwrap();
        assert!(!s.windows(9).any(|w| w == b"kek bytes"));
        assert_eq!(&keys.open("/p/res/a/b/c", &s).unwrap().0[..], b"kek bytes");
        // Bound to its key name; tampering is detected; plaintext is refused.
        assert!(matches!(keys.open("/p/res/a/b/d", &s), Err(SealError::Open { .. })));
        let mut t = s.clone();
        *t.last_mut().unwrap() ^= 1;
        assert!(matches!(keys.open("/p/res/a/b/c", &t), Err(SealError::Open { .. })));
        assert!(matches!(keys.open("k", b"plain value"), Err(SealError::NotSealed { .. })));
        // Rotation: the new key set opens old values and flags them stale.
        let rotated =
            MasterKeys::new(MasterKey::from_bytes(&[2u8; 32]), vec![MasterKey::from_bytes(&[1u8; 32])]);
        let (p, stale) = rotated.open("/p/res/a/b/c", &s).unwrap();
        assert_eq!(&p[..], b"kek bytes");
        assert!(stale && !rotated.is_current(&s));
        let s2 = rotated.seal("/p/res/a/b/c", &p).unwrap();
        assert!(rotated.is_current(&s2));
        // Without the old key, old values do not open.
        let only_new = MasterKeys::new(MasterKey::from_bytes(&[2u8; 32]), vec![]);
        assert!(matches!(only_new.open("/p/res/a/b/c", &s), Err(SealError::UnknownKey { .. })));
    }

    #[test]
    fn key_file_length_is_checked() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("mk");
        std::fs::write(&p, [0u8; 31]).unwrap();
        assert!(matches!(MasterKey::load(&p), Err(SealError::KeyLength { len: 31, .. })));
        std::fs::write(&p, [0u8; 32]).unwrap();
        assert!(MasterKey::load(&p).is_ok());
    }
}
