//! The layer store: extracted layer trees cached by diff_id.
//!
//! Layout under the store root:
//! `layers/sha256/<hex>/tree/` (the layer, whiteouts kept as markers),
//! `layers/sha256/<hex>/complete.json` (written last, names the diff_id),
//! `staging/<random>/` (work in progress, private), `locks/<hex>.lock`.
//! An entry becomes visible by one `rename` of its staging directory, after the
//! blob digest, HMAC and diff_id checks have passed, so a reader sees a whole
//! entry or none. An entry without a matching `complete.json` is treated as
//! corrupt and removed. A per-layer file lock makes concurrent pulls of the same
//! layer do the work once.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

use oci::{Algorithm, Digest};
use serde::{Deserialize, Serialize};

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// Not a sha256 digest: the store's layout has room for sha256 only.
    #[error("invalid diff_id \"{0}\" (expected sha256:<64 hex>)")]
    BadDiffId(Digest),
    #[error("layer store {path}: {op}")]
    Io {
        path: PathBuf,
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

fn io_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> StoreError + 'a {
    move |source| StoreError::Io { path: path.to_path_buf(), op, source }
}

/// The completion marker of a committed entry (`complete.json`; digests are
/// written as `sha256:<hex>` strings).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Completion {
    /// The digest of the layer's uncompressed tar.
    pub diff_id: Digest,
    /// The blob digest the layer was fetched as (informational: another image
    /// may carry the same diff_id under another blob).
    pub blob_digest: Digest,
    /// Number of tar entries.
    pub entries: u64,
    /// Regular-file bytes.
    pub bytes: u64,
}

/// A layer store rooted at a directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
}

/// The lowercase hex of a sha256 diff_id (it becomes a file name; [`Digest`]
/// has checked it); other algorithms have no place in the layout.
pub fn diff_id_hex(diff_id: &Digest) -> Result<&str, StoreError> {
    match diff_id.algorithm() {
        Algorithm::Sha256 => Ok(diff_id.hex()),
        _ => Err(StoreError::BadDiffId(diff_id.clone())),
    }
}

fn mkdir_private(p: &Path) -> Result<(), StoreError> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(p).map_err(io_err(p, "create directory"))
}

impl Store {
    /// Opens (creating) a store at `root`.
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        for sub in ["layers/sha256", "staging", "locks"] {
            mkdir_private(&root.join(sub))?;
        }
        let root = fs::canonicalize(root).map_err(io_err(root, "resolve store root"))?;
        Ok(Self { root })
    }

    /// The store root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Directory of a committed entry.
    pub fn entry_dir(&self, diff_id: &Digest) -> Result<PathBuf, StoreError> {
        Ok(self.root.join("layers/sha256").join(diff_id_hex(diff_id)?))
    }

    /// The tree of a committed, valid entry, or `None`. An entry that exists
    /// without a matching completion marker is removed so it is fetched again.
    pub fn lookup(&self, diff_id: &Digest) -> Result<Option<PathBuf>, StoreError> {
        let dir = self.entry_dir(diff_id)?;
        if !dir.exists() {
            return Ok(None);
        }
        let ok = fs::read(dir.join("complete.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<Completion>(&b).ok())
            .is_some_and(|c| &c.diff_id == diff_id)
            && dir.join("tree").is_dir();
        if ok {
            return Ok(Some(dir.join("tree")));
        }
        tracing::warn!(diff_id = %diff_id, "removing incomplete or corrupt layer store entry");
        self.remove_entry(&dir)?;
        Ok(None)
    }

    fn remove_entry(&self, dir: &Path) -> Result<(), StoreError> {
        // Move aside first so a concurrent reader never sees a half-removed tree.
        let trash = self.root.join("staging").join(format!("trash-{}", random_suffix()));
        match fs::rename(dir, &trash) {
            Ok(()) => remove_tree(&trash),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err(dir, "move corrupt entry aside")(e)),
        }
    }

    /// Takes the per-layer lock (blocking; call from a blocking thread).
    pub fn lock(&self, diff_id: &Digest) -> Result<LayerLock, StoreError> {
        let path = self.root.join("locks").join(format!("{}.lock", diff_id_hex(diff_id)?));
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path, "open lock file"))?;
        file.lock().map_err(io_err(&path, "lock"))?;
        Ok(LayerLock { _file: file })
    }

    /// A fresh private staging directory; removed on drop unless committed.
    pub fn begin(&self, diff_id: &Digest) -> Result<Staging, StoreError> {
        diff_id_hex(diff_id)?;
        let dir = self.root.join("staging").join(format!("layer-{}", random_suffix()));
        fs::DirBuilder::new().mode(0o700).create(&dir).map_err(io_err(&dir, "create staging directory"))?;
        let tree = dir.join("tree");
        fs::DirBuilder::new().mode(0o755).create(&tree).map_err(io_err(&tree, "create staging tree"))?;
        Ok(Staging { dir, committed: false, diff_id: diff_id.clone() })
    }

    /// Commits a fully verified staging directory as the entry for its diff_id.
    pub fn commit(&self, mut staging: Staging, completion: &Completion) -> Result<PathBuf, StoreError> {
        if completion.diff_id != staging.diff_id {
            return Err(StoreError::BadDiffId(completion.diff_id.clone()));
        }
        let marker = staging.dir.join("complete.json");
        let body = serde_json::to_vec_pretty(completion)
            .map_err(|e| io_err(&marker, "encode marker")(io::Error::other(e)))?;
        let mut f = File::create(&marker).map_err(io_err(&marker, "write marker"))?;
        f.write_all(&body).map_err(io_err(&marker, "write marker"))?;
        f.sync_all().map_err(io_err(&marker, "sync marker"))?;
        let dest = self.entry_dir(&staging.diff_id)?;
        if dest.exists() {
            // Someone without the lock left a stale entry: replace it.
            self.remove_entry(&dest)?;
        }
        fs::rename(&staging.dir, &dest).map_err(io_err(&dest, "commit entry"))?;
        staging.committed = true;
        Ok(dest.join("tree"))
    }

    /// Removes leftovers of crashed pulls (staging directories nobody holds).
    pub fn clean_staging(&self) {
        if let Ok(rd) = fs::read_dir(self.root.join("staging")) {
            for e in rd.flatten() {
                let name = e.file_name();
                if name.to_string_lossy().starts_with("trash-") {
                    let _ = remove_tree(&e.path());
                }
            }
        }
    }
}

/// Holds a per-layer lock until dropped.
#[derive(Debug)]
pub struct LayerLock {
    _file: File,
}

/// A private staging directory for one layer.
#[derive(Debug)]
pub struct Staging {
    dir: PathBuf,
    diff_id: Digest,
    committed: bool,
}

impl Staging {
    /// Where the layer tree is extracted.
    pub fn tree(&self) -> PathBuf {
        self.dir.join("tree")
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        if !self.committed {
            // Fail closed: nothing unverified survives.
            let _ = remove_tree(&self.dir);
        }
    }
}

/// Removes a directory tree, first making directories writable (a layer may
/// carry 0555 directories, which even `remove_dir_all` cannot empty as non-root).
pub fn remove_tree(path: &Path) -> Result<(), StoreError> {
    fn chmod_dirs(p: &Path) {
        if let Ok(m) = fs::symlink_metadata(p) {
            if m.is_dir() {
                let _ = fs::set_permissions(p, fs::Permissions::from_mode(0o700));
                if let Ok(rd) = fs::read_dir(p) {
                    for e in rd.flatten() {
                        chmod_dirs(&e.path());
                    }
                }
            }
        }
    }
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(_) => {
            chmod_dirs(path);
            fs::remove_dir_all(path).map_err(io_err(path, "remove"))
        }
    }
}

/// A short random suffix for private names.
pub(crate) fn random_suffix() -> String {
    // 128 random bits, so nobody can plant a link at the name ahead of us; the
    // clock only if the generator cannot be read (then creation is still exclusive
    // for the staging directories, which is what most callers make).
    let rnd = crate::fsutil::unpredictable_suffix().unwrap_or_else(|_| {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        format!("{:x}", t.as_nanos())
    });
    format!("{}-{rnd}", std::process::id())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn digest(byte: u8) -> Digest {
        Digest::from_sha256_bytes([byte; 32])
    }

    /// Keyed by `Digest`, the marker on disk still names the digests as
    /// `sha256:<hex>` strings, so stores written before read the same.
    #[test]
    fn completion_marker_keeps_its_string_digests() {
        let c = Completion { diff_id: digest(1), blob_digest: digest(2), entries: 3, bytes: 4 };
        let v = serde_json::to_value(&c).unwrap();
        assert_eq!(v["diff_id"], format!("sha256:{}", "01".repeat(32)));
        assert_eq!(v["blob_digest"], format!("sha256:{}", "02".repeat(32)));
        assert_eq!(serde_json::from_value::<Completion>(v).unwrap(), c);
    }

    #[test]
    fn an_entry_is_found_by_its_digest_only_after_commit() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let id = digest(7);
        assert_eq!(store.lookup(&id).unwrap(), None);
        let staging = store.begin(&id).unwrap();
        std::fs::write(staging.tree().join("f"), b"x").unwrap();
        let c = Completion { diff_id: id.clone(), blob_digest: digest(8), entries: 1, bytes: 1 };
        let tree = store.commit(staging, &c).unwrap();
        assert_eq!(store.lookup(&id).unwrap(), Some(tree));
        assert!(store.entry_dir(&id).unwrap().ends_with(format!("layers/sha256/{}", "07".repeat(32))));
        let sha512: Digest = format!("sha512:{}", "ab".repeat(64)).parse().unwrap();
        let e = store.begin(&sha512).unwrap_err();
        assert_eq!(e.to_string(), format!("invalid diff_id \"{sha512}\" (expected sha256:<64 hex>)"));
    }
}
