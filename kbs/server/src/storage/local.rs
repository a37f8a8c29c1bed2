//! The local-files backend (`local:DIR`, the default, `--resources DIR`): resources as
//! files `<dir>/<repo>/<type>/<tag>` ([`ResourceFiles`]), the policy in its YAML file
//! (watched by the broker, not by this backend), sessions in memory, a token key made at
//! start. One process; a restart voids sessions and tokens.
//!
//! Writes are atomic (temp file in the same directory, fsync, rename, fsync of the
//! directory), so a reader sees the old value or the new one, never half of it.

use std::io::Write;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::resource_path::valid_segment;
use super::{random_key, ResourcePath, Storage, StoreError};
use crate::session::{Created, Session, Sessions};

/// What the local-files backend fails with (besides "not found" and "exists", which
/// every backend answers with [`StoreError`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LocalError {
    #[error("file I/O on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("too many open sessions")]
    SessionsFull,
}

/// Resources as files under one directory.
#[derive(Clone, Debug)]
pub struct ResourceFiles {
    root: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> StoreError + '_ {
    move |source| LocalError::Io { path: path.to_owned(), source }.into()
}

/// `data` in a new, synced temporary file of `dir` (created if missing).
fn synced_temp(dir: &Path, data: &[u8]) -> Result<tempfile::NamedTempFile, StoreError> {
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir).map_err(io(dir))?;
    tmp.write_all(data).map_err(io(dir))?;
    tmp.as_file().sync_all().map_err(io(dir))?;
    Ok(tmp)
}

impl ResourceFiles {
    pub fn open(root: &Path) -> Result<Self, StoreError> {
        std::fs::create_dir_all(root).map_err(io(root))?;
        Ok(Self { root: root.to_owned() })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn file(&self, p: &ResourcePath) -> PathBuf {
        let [r, t, g] = p.segments();
        self.root.join(r).join(t).join(g)
    }

    pub fn get(&self, p: &ResourcePath) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        let f = self.file(p);
        match std::fs::read(&f) {
            Ok(v) => Ok(Zeroizing::new(v)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(StoreError::NotFound(p.as_string())),
            Err(e) => Err(LocalError::Io { path: f, source: e }.into()),
        }
    }

    pub fn put(&self, p: &ResourcePath, data: &[u8]) -> Result<(), StoreError> {
        let f = self.file(p);
        let dir = f.parent().unwrap_or(&self.root).to_owned();
        let tmp = synced_temp(&dir, data)?;
        tmp.persist(&f).map_err(|e| LocalError::Io { path: f.clone(), source: e.error })?;
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
            Err(e) => return Err(LocalError::Io { path: f, source: e }.into()),
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
                        out.push(ResourcePath::from_listed([r.clone(), t.clone(), g]));
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
            Err(e) => Err(LocalError::Io { path: f, source: e }.into()),
        }
    }
}

/// The local-files backend: the resource files and the in-memory sessions.
pub struct Local {
    files: ResourceFiles,
    sessions: Sessions,
}

impl Local {
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        Ok(Self { files: ResourceFiles::open(dir)?, sessions: Sessions::default() })
    }
}

impl Storage for Local {
    fn name(&self) -> &'static str {
        "local"
    }

    fn is_shared(&self) -> bool {
        false
    }

    fn describe(&self) -> String {
        format!("local:{}", self.files.root().display())
    }

    async fn resource_get(&self, p: &ResourcePath) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        self.files.get(p)
    }

    async fn resource_get_fresh(&self, p: &ResourcePath) -> Result<Zeroizing<Vec<u8>>, StoreError> {
        self.files.get(p)
    }

    async fn resource_put(&self, p: &ResourcePath, data: &[u8], create_only: bool) -> Result<(), StoreError> {
        let (s, p, d) = (self.files.clone(), p.clone(), Zeroizing::new(data.to_vec()));
        tokio::task::spawn_blocking(move || if create_only { s.create(&p, &d) } else { s.put(&p, &d) })
            .await
            .map_err(|e| LocalError::Io { path: PathBuf::new(), source: std::io::Error::other(e) })?
    }

    async fn resource_delete(&self, p: &ResourcePath) -> Result<(), StoreError> {
        self.files.delete(p)
    }

    async fn resource_list(&self) -> Result<Vec<ResourcePath>, StoreError> {
        self.files.list()
    }

    fn session_admission(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn session_create(&self, id: &str, s: &Session) -> Result<Created, StoreError> {
        self.sessions.create(id, s.clone()).ok_or(LocalError::SessionsFull.into())
    }

    async fn session_get(&self, id: &str) -> Result<Option<Session>, StoreError> {
        Ok(self.sessions.get(id))
    }

    /// Fresh per process.
    async fn token_key(&self) -> Result<Zeroizing<[u8; 32]>, StoreError> {
        Ok(random_key())
    }

    /// None: the local backend's policy is its file.
    fn policy_updates(&self) -> Option<tokio::sync::watch::Receiver<Option<String>>> {
        None
    }

    /// False: the caller writes the policy file.
    async fn policy_put(&self, _text: &str) -> Result<bool, StoreError> {
        Ok(false)
    }

    fn ready(&self) -> Result<(), String> {
        if self.files.root().is_dir() {
            Ok(())
        } else {
            Err("resource directory missing".into())
        }
    }

    /// Nothing is sealed.
    async fn reseal(&self) -> Result<usize, StoreError> {
        Ok(0)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::storage::{MAX_PATH_LEN, MAX_SEGMENT_LEN};

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
        let s = ResourceFiles::open(d.path()).unwrap();
        let p =
            ResourcePath::parse(&format!("default/{seg}/{}", "t".repeat(MAX_PATH_LEN - 9 - MAX_SEGMENT_LEN)))
                .unwrap();
        s.create(&p, b"v").unwrap();
        assert_eq!(&s.get(&p).unwrap()[..], b"v");
    }

    #[test]
    fn put_get_delete() {
        let d = tempfile::tempdir().unwrap();
        let s = ResourceFiles::open(d.path()).unwrap();
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
