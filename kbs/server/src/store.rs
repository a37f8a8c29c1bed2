//! Resources as files: `<dir>/<repo>/<type>/<tag>`. Writes are atomic (temp file in the
//! same directory, fsync, rename, fsync of the directory), so a reader sees the old
//! value or the new one, never half of it. Segments are validated with Trustee's rule
//! `[a-zA-Z0-9_\-]+[a-zA-Z0-9_\-\.]*`, which excludes "", ".", ".." and separators,
//! and bounded in length: each segment is a file or directory name here (NAME_MAX is
//! 255 bytes), and Trustee's own local store keeps all three joined in one file name,
//! so every name Trustee can hold is shorter than both limits.

use std::io::Write;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

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
    #[error("resource store I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The shared store (etcd) cannot be reached or has no quorum, and the broker's
    /// last synchronised state is older than it may serve.
    #[error("shared store unavailable")]
    Unavailable(#[source] crate::etcd::EtcdError),
    /// The synchronised state is too old to serve (etcd unreachable for longer than the
    /// configured stale-read window).
    #[error("shared store unreachable for {0:?}, longer than this broker may serve stale reads")]
    Stale(std::time::Duration),
    #[error("stored value cannot be opened")]
    Seal(#[from] crate::seal::SealError),
    #[error("the etcd store needs --master-key (its values are sealed under it)")]
    NeedsMasterKey,
    #[error("too many open sessions")]
    SessionsFull,
    /// New sessions are refused while the shared store is not in sync with a quorum
    /// (their `/attest` could not record the token): the reason.
    #[error("no new sessions: {0}")]
    NotReady(String),
    #[error("stored {what} under {key} is malformed")]
    Corrupt { what: &'static str, key: String },
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

impl From<crate::etcd::EtcdError> for StoreError {
    fn from(e: crate::etcd::EtcdError) -> Self {
        StoreError::Unavailable(e)
    }
}

/// The longest segment (repo, type or tag) of a resource name, in bytes: NAME_MAX.
pub const MAX_SEGMENT_LEN: usize = 255;
/// The longest resource name "repo/type/tag", in bytes.
pub const MAX_PATH_LEN: usize = 512;

/// A validated "repo/type/tag".
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourcePath {
    segments: [String; 3],
}

fn valid_segment(s: &str) -> bool {
    let b = s.as_bytes();
    let first_ok = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c == b'-';
    !b.is_empty() && first_ok(b[0]) && b.iter().all(|&c| first_ok(c) || c == b'.')
}

impl ResourcePath {
    pub fn parse(path: &str) -> Result<Self, StoreError> {
        // Checked before anything else so a long name costs nothing and is never echoed whole.
        let too_long = |what, len, max, s: &str| StoreError::NameTooLong {
            what,
            len,
            max,
            start: s.chars().take(32).collect(),
        };
        if path.len() > MAX_PATH_LEN {
            return Err(too_long("name", path.len(), MAX_PATH_LEN, path));
        }
        if let Some(seg) = path.split('/').find(|s| s.len() > MAX_SEGMENT_LEN) {
            return Err(too_long("name segment", seg.len(), MAX_SEGMENT_LEN, seg));
        }
        let parts: Vec<&str> = path.split('/').collect();
        if parts.len() != 3 || !parts.iter().all(|s| valid_segment(s)) {
            return Err(StoreError::InvalidPath(path.chars().take(200).collect()));
        }
        Ok(Self { segments: [parts[0].into(), parts[1].into(), parts[2].into()] })
    }

    pub fn as_string(&self) -> String {
        self.segments.join("/")
    }
}

impl std::fmt::Display for ResourcePath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.as_string())
    }
}

#[derive(Clone, Debug)]
pub struct ResourceStore {
    root: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| StoreError::Io { path: path.to_owned(), source }
}

/// `data` in a new, synced temporary file of `dir` (created if missing).
fn synced_temp(dir: &Path, data: &[u8]) -> Result<tempfile::NamedTempFile, StoreError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir).map_err(io(dir))?;
    tmp.write_all(data).map_err(io(dir))?;
    tmp.as_file().sync_all().map_err(io(dir))?;
    Ok(tmp)
}

impl ResourceStore {
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(root).map_err(io(root))?;
        Ok(Self { root: root.to_owned() })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn file(&self, p: &ResourcePath) -> PathBuf {
        let [r, t, g] = &p.segments;
        self.root.join(r).join(t).join(g)
    }

    pub fn get(&self, p: &ResourcePath) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        let f = self.file(p);
        match std::fs::read(&f) {
            Ok(v) => Ok(Zeroizing::new(v)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StoreError::NotFound(p.as_string())),
            Err(e) => Err(StoreError::Io { path: f, source: e }),
        }
    }

    pub fn put(&self, p: &ResourcePath, data: &[u8]) -> Result<(), StoreError> {
        let f = self.file(p);
        let dir = f.parent().unwrap_or(&self.root).to_owned();
        let tmp = synced_temp(&dir, data)?;
        tmp.persist(&f).map_err(|e| StoreError::Io { path: f.clone(), source: e.error })?;
        // The rename is durable only once the directory entry is on disk.
        std::fs::File::open(&dir).and_then(|d| d.sync_all()).map_err(io(&dir))?;
        Ok(())
    }

    /// Stores `data` only if `p` holds nothing yet: the bytes go to a synced temporary
    /// file that is then hard-linked into place, which fails atomically when the name
    /// exists, so two concurrent creators end with exactly one winner and the loser
    /// gets [`StoreError::Exists`] with the stored bytes unchanged.
    pub fn create(&self, p: &ResourcePath, data: &[u8]) -> Result<(), StoreError> {
        let f = self.file(p);
        let dir = f.parent().unwrap_or(&self.root).to_owned();
        let tmp = synced_temp(&dir, data)?;
        match std::fs::hard_link(tmp.path(), &f) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(StoreError::Exists(p.as_string()));
            }
            Err(e) => return Err(StoreError::Io { path: f, source: e }),
        }
        drop(tmp);
        std::fs::File::open(&dir).and_then(|d| d.sync_all()).map_err(io(&dir))?;
        Ok(())
    }

    /// Every resource under the root (for `migrate`), skipping temporary files.
    pub fn list(&self) -> Result<Vec<ResourcePath>, StoreError> {
        let mut out = Vec::new();
        let rd = |d: &Path| -> Result<Vec<(String, PathBuf)>, StoreError> {
            let mut v = Vec::new();
            for e in std::fs::read_dir(d).map_err(io(d))? {
                let e = e.map_err(io(d))?;
                if let Some(n) = e.file_name().to_str() {
                    v.push((n.to_string(), e.path()));
                }
            }
            Ok(v)
        };
        for (r, rp) in rd(&self.root)? {
            if !rp.is_dir() || !valid_segment(&r) {
                continue;
            }
            for (t, tp) in rd(&rp)? {
                if !tp.is_dir() || !valid_segment(&t) {
                    continue;
                }
                for (g, gp) in rd(&tp)? {
                    if gp.is_file() && valid_segment(&g) {
                        out.push(ResourcePath { segments: [r.clone(), t.clone(), g] });
                    }
                }
            }
        }
        out.sort_by_key(|p| p.as_string());
        Ok(out)
    }

    pub fn delete(&self, p: &ResourcePath) -> Result<(), StoreError> {
        let f = self.file(p);
        match std::fs::remove_file(&f) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StoreError::NotFound(p.as_string())),
            Err(e) => Err(StoreError::Io { path: f, source: e }),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_validated() {
        assert!(ResourcePath::parse("default/key/1").is_ok());
        assert!(ResourcePath::parse("default/key/v1.2").is_ok());
        for bad in
            ["../key/1", "default/../1", "/default/key/1", "default/key", "a//b", "a/b/c/d", "a/b/.x", ""]
        {
            assert!(ResourcePath::parse(bad).is_err(), "{bad}");
        }
    }

    /// Issue 21, finding 8: a 300-byte tag reached the filesystem (ENAMETOOLONG, a 500
    /// naming the resource directory, counted as a store failure).
    #[test]
    fn resource_tag_of_300_bytes_is_refused_before_the_store() {
        let long = "t".repeat(300);
        let e = ResourcePath::parse(&format!("default/key/{long}")).unwrap_err();
        assert!(matches!(e, StoreError::NameTooLong { len: 300, max: MAX_SEGMENT_LEN, .. }), "{e}");
        assert!(!e.is_failure());
        assert!(e.to_string().len() < 200, "{e}");
        let seg = "s".repeat(MAX_SEGMENT_LEN);
        let e = ResourcePath::parse(&format!("{seg}/{seg}/x")).unwrap_err();
        assert!(matches!(e, StoreError::NameTooLong { what: "name", .. }), "{e}");
        // The longest names allowed work on the local store.
        let d = tempfile::tempdir().unwrap();
        let s = ResourceStore::open(d.path()).unwrap();
        let p =
            ResourcePath::parse(&format!("default/{seg}/{}", "t".repeat(MAX_PATH_LEN - 9 - MAX_SEGMENT_LEN)))
                .unwrap();
        s.create(&p, b"v").unwrap();
        assert_eq!(&s.get(&p).unwrap()[..], b"v");
    }

    #[test]
    fn put_get_delete() {
        let d = tempfile::tempdir().unwrap();
        let s = ResourceStore::open(d.path()).unwrap();
        let p = ResourcePath::parse("default/key/1").unwrap();
        assert!(matches!(s.get(&p), Err(StoreError::NotFound(_))));
        s.put(&p, b"one").unwrap();
        s.put(&p, b"two").unwrap();
        assert_eq!(&s.get(&p).unwrap()[..], b"two");
        s.delete(&p).unwrap();
        assert!(matches!(s.get(&p), Err(StoreError::NotFound(_))));
        s.create(&p, b"first").unwrap();
        assert!(matches!(s.create(&p, b"second"), Err(StoreError::Exists(_))));
        assert_eq!(&s.get(&p).unwrap()[..], b"first");
        s.put(&ResourcePath::parse("a/b/c").unwrap(), b"x").unwrap();
        let names: Vec<String> = s.list().unwrap().iter().map(|p| p.as_string()).collect();
        assert_eq!(names, ["a/b/c", "default/key/1"]);
    }
}
