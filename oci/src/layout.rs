//! OCI image layouts on disk (`oci-layout`, `index.json`, `blobs/<alg>/<hex>`).
//!
//! Writes never expose partial state: a blob is streamed into a temp file inside the
//! layout and renamed to its content address only after its digest is known (and
//! matches, when the caller expected one); index.json is rewritten through a temp
//! file and a rename. A failure at any point leaves the layout as it was.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use tempfile::TempPath;
use tokio::io::AsyncWriteExt;

use crate::blob::BlobReader;
use crate::digest::{Algorithm, Digest, Hasher};
use crate::manifest::{Descriptor, ImageIndex, REF_NAME_ANNOTATION};

const OCI_LAYOUT_FILE: &str = "oci-layout";
const INDEX_FILE: &str = "index.json";
const OCI_LAYOUT_CONTENT: &str = "{\"imageLayoutVersion\":\"1.0.0\"}";
const TEMP_PREFIX: &str = ".cloak-tmp-";

/// What went wrong with a layout.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LayoutError {
    /// `why` says what is wrong with the `oci-layout` file; `source`, if any, why it
    /// could not be read or parsed.
    #[error("{dir} is not an OCI image layout: {why}")]
    NotALayout {
        dir: PathBuf,
        why: String,
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a valid OCI index")]
    BadIndex {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("no image tagged {tag:?} in layout {dir} (tags present: {})", fmt_list(available))]
    TagNotFound { dir: PathBuf, tag: String, available: Vec<String> },
    #[error(
        "layout {dir} holds {count} images; name one with oci:DIR:TAG (tags present: {})",
        fmt_list(available)
    )]
    Ambiguous { dir: PathBuf, count: usize, available: Vec<String> },
    #[error("layout {dir} has no blob {digest}")]
    BlobMissing { dir: PathBuf, digest: Digest },
    #[error("blob digest mismatch: expected {expected}, content hashes to {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },
    #[error("internal error: a blob written without hashing was finished without its digest")]
    NoDigest,
    #[error("blob {digest} is {size} bytes, over the limit of {max}")]
    TooLarge { digest: Digest, size: u64, max: u64 },
    #[error("blob writer only computes sha256; cannot check against {0}")]
    UnsupportedAlgorithm(Digest),
    #[error("the layout's index.json lock was poisoned by a panic in another thread")]
    LockPoisoned,
}

fn fmt_list(v: &[String]) -> String {
    if v.is_empty() {
        "none".to_string()
    } else {
        v.join(", ")
    }
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> LayoutError {
    let path = path.to_path_buf();
    move |source| LayoutError::Io { op, path, source }
}

/// An OCI image layout directory.
#[derive(Debug)]
pub struct OciLayout {
    root: PathBuf,
    /// Serialises read-modify-write of index.json within this process.
    index_lock: Mutex<()>,
}

impl OciLayout {
    /// Open an existing layout; fails unless `oci-layout` and `index.json` exist.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self, LayoutError> {
        let root = dir.as_ref().to_path_buf();
        let marker = root.join(OCI_LAYOUT_FILE);
        let text = std::fs::read_to_string(&marker).map_err(|e| LayoutError::NotALayout {
            dir: root.clone(),
            why: format!("cannot read {OCI_LAYOUT_FILE}"),
            source: Some(Box::new(e)),
        })?;
        let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| LayoutError::NotALayout {
            dir: root.clone(),
            why: format!("{OCI_LAYOUT_FILE} is not JSON"),
            source: Some(Box::new(e)),
        })?;
        if v.get("imageLayoutVersion").and_then(|v| v.as_str()).is_none() {
            return Err(LayoutError::NotALayout {
                dir: root,
                why: format!("{OCI_LAYOUT_FILE} has no imageLayoutVersion"),
                source: None,
            });
        }
        let layout = OciLayout { root, index_lock: Mutex::new(()) };
        layout.read_index()?;
        Ok(layout)
    }

    /// Open the layout at `dir`, creating the directory, `oci-layout` and an empty
    /// `index.json` if they do not exist yet.
    pub fn create(dir: impl AsRef<Path>) -> Result<Self, LayoutError> {
        let root = dir.as_ref().to_path_buf();
        std::fs::create_dir_all(&root).map_err(io_err("create directory", &root))?;
        let marker = root.join(OCI_LAYOUT_FILE);
        if !marker.exists() {
            write_atomically(&root, &marker, OCI_LAYOUT_CONTENT.as_bytes())?;
        }
        let index = root.join(INDEX_FILE);
        if !index.exists() {
            let bytes = serde_json::to_vec(&ImageIndex::empty())
                .map_err(|source| LayoutError::BadIndex { path: index.clone(), source })?;
            write_atomically(&root, &index, &bytes)?;
        }
        OciLayout::open(root)
    }

    /// The layout directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob with digest `d` lives (whether or not it exists).
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.root.join("blobs").join(d.algorithm().as_str()).join(d.hex())
    }

    /// Whether the blob is present (its content is not re-checked).
    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// Parse index.json.
    pub fn read_index(&self) -> Result<ImageIndex, LayoutError> {
        let path = self.root.join(INDEX_FILE);
        let bytes = std::fs::read(&path).map_err(io_err("read", &path))?;
        serde_json::from_slice(&bytes).map_err(|source| LayoutError::BadIndex { path, source })
    }

    /// The index.json entry for `tag`, or for `digest`, or the only entry when
    /// neither is given (skopeo's rule for `oci:DIR` without a tag).
    pub fn resolve(&self, tag: Option<&str>, digest: Option<&Digest>) -> Result<Descriptor, LayoutError> {
        let index = self.read_index()?;
        let tags =
            || index.manifests.iter().filter_map(|d| d.ref_name().map(str::to_string)).collect::<Vec<_>>();
        if let Some(d) = digest {
            return index
                .manifests
                .iter()
                .find(|m| &m.digest == d)
                .cloned()
                .ok_or_else(|| LayoutError::BlobMissing { dir: self.root.clone(), digest: d.clone() });
        }
        match tag {
            Some(t) => index.manifests.iter().find(|m| m.ref_name() == Some(t)).cloned().ok_or_else(|| {
                LayoutError::TagNotFound { dir: self.root.clone(), tag: t.to_string(), available: tags() }
            }),
            None => match index.manifests.as_slice() {
                [only] => Ok(only.clone()),
                _ => Err(LayoutError::Ambiguous {
                    dir: self.root.clone(),
                    count: index.manifests.len(),
                    available: tags(),
                }),
            },
        }
    }

    /// Open a blob for streaming; the reader verifies size and digest.
    pub async fn open_blob(&self, d: &Digest, size: u64) -> Result<BlobReader, LayoutError> {
        let path = self.blob_path(d);
        let file = tokio::fs::File::open(&path).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                LayoutError::BlobMissing { dir: self.root.clone(), digest: d.clone() }
            } else {
                LayoutError::Io { op: "open", path, source: e }
            }
        })?;
        Ok(BlobReader::new(file, d.clone(), size))
    }

    /// Read a whole (small) blob, refusing more than `max` bytes, verifying the digest.
    pub async fn read_blob(&self, d: &Digest, max: u64) -> Result<Vec<u8>, LayoutError> {
        let path = self.blob_path(d);
        let meta = tokio::fs::metadata(&path).await.map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                LayoutError::BlobMissing { dir: self.root.clone(), digest: d.clone() }
            } else {
                LayoutError::Io { op: "stat", path: path.clone(), source: e }
            }
        })?;
        if meta.len() > max {
            return Err(LayoutError::TooLarge { digest: d.clone(), size: meta.len(), max });
        }
        let bytes = tokio::fs::read(&path).await.map_err(io_err("read", &path))?;
        let actual = Digest::of(d.algorithm(), &bytes);
        if &actual != d {
            return Err(LayoutError::DigestMismatch { expected: d.clone(), actual });
        }
        Ok(bytes)
    }

    /// Start writing a blob whose digest will be known at the end.
    pub async fn begin_blob(&self) -> Result<LayoutBlobWriter, LayoutError> {
        let root = self.root.clone();
        let named = tempfile::Builder::new()
            .prefix(TEMP_PREFIX)
            .tempfile_in(&root)
            .map_err(io_err("create temp file in", &root))?;
        let (file, temp) = named.into_parts();
        Ok(LayoutBlobWriter {
            file: tokio::fs::File::from_std(file),
            temp,
            hasher: Some(Algorithm::Sha256.hasher()),
            size: 0,
            root,
        })
    }

    /// Write a small blob in one go; returns its sha256 digest.
    pub async fn put_blob_bytes(&self, bytes: &[u8]) -> Result<Digest, LayoutError> {
        let d = Digest::sha256_of(bytes);
        if self.has_blob(&d) {
            return Ok(d);
        }
        let mut w = self.begin_blob().await?;
        w.write_all(bytes).await?;
        let (digest, _) = w.finish(Some(&d)).await?;
        Ok(digest)
    }

    /// Record `desc` in index.json. With a `tag`, any entry with the same
    /// `org.opencontainers.image.ref.name` is replaced; without, the entry is added
    /// unless an untagged entry for the same digest exists already. The blob itself
    /// must already be in the layout.
    pub fn set_manifest(&self, desc: &Descriptor, tag: Option<&str>) -> Result<(), LayoutError> {
        let _guard = self.index_lock.lock().map_err(|_| LayoutError::LockPoisoned)?;
        let mut index = self.read_index()?;
        let mut entry = desc.clone();
        match tag {
            Some(t) => {
                index.manifests.retain(|m| m.ref_name() != Some(t));
                entry
                    .annotations
                    .get_or_insert_with(Default::default)
                    .insert(REF_NAME_ANNOTATION.to_string(), t.to_string());
                index.manifests.push(entry);
            }
            None => {
                if let Some(a) = entry.annotations.as_mut() {
                    a.remove(REF_NAME_ANNOTATION);
                }
                let present =
                    index.manifests.iter().any(|m| m.digest == entry.digest && m.ref_name().is_none());
                if !present {
                    index.manifests.push(entry);
                }
            }
        }
        let path = self.root.join(INDEX_FILE);
        let bytes = serde_json::to_vec(&index)
            .map_err(|source| LayoutError::BadIndex { path: path.clone(), source })?;
        write_atomically(&self.root, &path, &bytes)
    }
}

/// Write `bytes` to `dest` via a synced temp file in `dir` and a rename.
fn write_atomically(dir: &Path, dest: &Path, bytes: &[u8]) -> Result<(), LayoutError> {
    let mut tmp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .tempfile_in(dir)
        .map_err(io_err("create temp file in", dir))?;
    tmp.write_all(bytes).map_err(io_err("write", tmp.path()))?;
    tmp.as_file().sync_all().map_err(io_err("sync", tmp.path()))?;
    tmp.persist(dest).map_err(|e| LayoutError::Io {
        op: "rename into",
        path: dest.to_path_buf(),
        source: e.error,
    })?;
    Ok(())
}

/// A blob being written into a layout. Dropping it without [`finish`](Self::finish)
/// removes the temp file and leaves the layout untouched.
#[derive(Debug)]
pub struct LayoutBlobWriter {
    file: tokio::fs::File,
    temp: TempPath,
    /// `None` once the caller took over hashing ([`skip_hashing`](Self::skip_hashing)).
    hasher: Option<Hasher>,
    size: u64,
    root: PathBuf,
}

impl LayoutBlobWriter {
    /// Append `buf` to the blob.
    pub async fn write_all(&mut self, buf: &[u8]) -> Result<(), LayoutError> {
        if let Some(h) = self.hasher.as_mut() {
            h.update(buf);
        }
        self.size += buf.len() as u64;
        let path = self.temp.to_path_buf();
        self.file.write_all(buf).await.map_err(io_err("write", &path))
    }

    /// Bytes written so far.
    pub fn written(&self) -> u64 {
        self.size
    }

    /// The caller hashes what it writes and passes the digest to
    /// [`finish`](Self::finish), which then names the blob by it unchecked.
    /// Only before the first write; afterwards it does nothing.
    pub fn skip_hashing(&mut self) {
        if self.size == 0 {
            self.hasher = None;
        }
    }

    /// Complete the blob: check it against `expected` (if given) and move it to its
    /// content address. Returns the digest and size.
    pub async fn finish(mut self, expected: Option<&Digest>) -> Result<(Digest, u64), LayoutError> {
        let actual = match (self.hasher.take(), expected) {
            (Some(h), _) => h.finish(),
            (None, Some(e)) => e.clone(),
            (None, None) => return Err(LayoutError::NoDigest),
        };
        if let Some(e) = expected {
            if e.algorithm() != Algorithm::Sha256 {
                return Err(LayoutError::UnsupportedAlgorithm(e.clone()));
            }
            if e != &actual {
                return Err(LayoutError::DigestMismatch { expected: e.clone(), actual });
            }
        }
        let tmp_path = self.temp.to_path_buf();
        self.file.flush().await.map_err(io_err("flush", &tmp_path))?;
        // Synced before the rename so a crash can never leave a blob file named by
        // a digest its (empty or torn) content does not have.
        self.file.sync_data().await.map_err(io_err("sync", &tmp_path))?;
        let dest = self.root.join("blobs").join(actual.algorithm().as_str()).join(actual.hex());
        if let Some(parent) = dest.parent() {
            tokio::fs::create_dir_all(parent).await.map_err(io_err("create directory", parent))?;
        }
        self.temp.persist(&dest).map_err(|e| LayoutError::Io {
            op: "rename into",
            path: dest.clone(),
            source: e.error,
        })?;
        Ok((actual, self.size))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::media_type;
    use tokio::io::AsyncReadExt;

    fn leftover_temps(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| {
                let n = e.unwrap().file_name().to_string_lossy().to_string();
                n.starts_with(TEMP_PREFIX).then_some(n)
            })
            .collect()
    }

    #[tokio::test]
    async fn create_write_read_round_trip() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("img");
        let l = OciLayout::create(&dir).unwrap();
        assert!(dir.join("oci-layout").is_file());
        assert!(l.read_index().unwrap().manifests.is_empty());

        let d = l.put_blob_bytes(b"layer bytes").await.unwrap();
        assert_eq!(d, Digest::sha256_of(b"layer bytes"));
        assert!(l.has_blob(&d));
        assert_eq!(l.read_blob(&d, 100).await.unwrap(), b"layer bytes");
        assert!(matches!(l.read_blob(&d, 3).await, Err(LayoutError::TooLarge { .. })));
        let mut r = l.open_blob(&d, 11).await.unwrap();
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, b"layer bytes");

        // reopen works and create() on an existing layout keeps its content
        let l2 = OciLayout::create(&dir).unwrap();
        assert!(l2.has_blob(&d));
        assert!(leftover_temps(&dir).is_empty());
    }

    #[tokio::test]
    async fn streamed_blob_gets_its_digest_at_the_end() {
        let tmp = tempfile::tempdir().unwrap();
        let l = OciLayout::create(tmp.path()).unwrap();
        let mut w = l.begin_blob().await.unwrap();
        for chunk in [&b"abc"[..], b"def", b""] {
            w.write_all(chunk).await.unwrap();
        }
        let (d, n) = w.finish(None).await.unwrap();
        assert_eq!(n, 6);
        assert_eq!(d, Digest::sha256_of(b"abcdef"));
        assert_eq!(std::fs::read(l.blob_path(&d)).unwrap(), b"abcdef");
    }

    #[tokio::test]
    async fn prehashed_blob_takes_the_callers_digest_and_needs_one() {
        let tmp = tempfile::tempdir().unwrap();
        let l = OciLayout::create(tmp.path()).unwrap();
        let d = Digest::sha256_of(b"abcdef");
        let mut w = l.begin_blob().await.unwrap();
        w.skip_hashing();
        w.write_all(b"abcdef").await.unwrap();
        assert_eq!(w.finish(Some(&d)).await.unwrap(), (d.clone(), 6));
        assert_eq!(std::fs::read(l.blob_path(&d)).unwrap(), b"abcdef");

        let mut w = l.begin_blob().await.unwrap();
        w.skip_hashing();
        w.write_all(b"xyz").await.unwrap();
        assert!(matches!(w.finish(None).await, Err(LayoutError::NoDigest)));
        assert!(leftover_temps(tmp.path()).is_empty());

        // After the first write it is too late to skip: the writer keeps checking.
        let mut w = l.begin_blob().await.unwrap();
        w.write_all(b"abc").await.unwrap();
        w.skip_hashing();
        let e = w.finish(Some(&d)).await.unwrap_err();
        assert!(matches!(e, LayoutError::DigestMismatch { .. }), "{e}");
    }

    #[tokio::test]
    async fn failed_or_dropped_blob_write_leaves_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let l = OciLayout::create(tmp.path()).unwrap();
        let mut w = l.begin_blob().await.unwrap();
        w.write_all(b"abc").await.unwrap();
        let wrong = Digest::sha256_of(b"xyz");
        let e = w.finish(Some(&wrong)).await.unwrap_err();
        assert!(matches!(e, LayoutError::DigestMismatch { .. }), "{e}");
        assert!(!l.has_blob(&wrong));
        assert!(!l.has_blob(&Digest::sha256_of(b"abc")));

        let mut w = l.begin_blob().await.unwrap();
        w.write_all(b"partial").await.unwrap();
        drop(w);
        assert!(leftover_temps(tmp.path()).is_empty());
        assert!(
            !tmp.path().join("blobs/sha256").exists()
                || std::fs::read_dir(tmp.path().join("blobs/sha256")).unwrap().count() == 0
        );
    }

    #[tokio::test]
    async fn corrupted_blob_is_detected_on_read() {
        let tmp = tempfile::tempdir().unwrap();
        let l = OciLayout::create(tmp.path()).unwrap();
        let d = l.put_blob_bytes(b"good").await.unwrap();
        std::fs::write(l.blob_path(&d), b"evil").unwrap();
        assert!(matches!(l.read_blob(&d, 100).await, Err(LayoutError::DigestMismatch { .. })));
        let mut r = l.open_blob(&d, 4).await.unwrap();
        let mut out = Vec::new();
        let e = r.read_to_end(&mut out).await.unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::InvalidData);
    }

    #[tokio::test]
    async fn tagging_replaces_same_ref_name_and_keeps_others() {
        let tmp = tempfile::tempdir().unwrap();
        let l = OciLayout::create(tmp.path()).unwrap();
        let a = l.put_blob_bytes(b"{\"a\":1}").await.unwrap();
        let b = l.put_blob_bytes(b"{\"b\":1}").await.unwrap();
        let da = Descriptor::new(media_type::OCI_MANIFEST, a.clone(), 7);
        let db = Descriptor::new(media_type::OCI_MANIFEST, b.clone(), 7);
        l.set_manifest(&da, Some("v1")).unwrap();
        l.set_manifest(&da, Some("v2")).unwrap();
        l.set_manifest(&db, Some("v1")).unwrap();
        let idx = l.read_index().unwrap();
        assert_eq!(idx.manifests.len(), 2);
        assert_eq!(l.resolve(Some("v1"), None).unwrap().digest, b);
        assert_eq!(l.resolve(Some("v2"), None).unwrap().digest, a);
        assert_eq!(l.resolve(None, Some(&a)).unwrap().ref_name(), Some("v2"));
        let e = l.resolve(Some("v3"), None).unwrap_err();
        assert!(e.to_string().contains("v1, v2") || e.to_string().contains("v2, v1"), "{e}");
        assert!(matches!(l.resolve(None, None), Err(LayoutError::Ambiguous { count: 2, .. })));
        // untagged adds are idempotent
        l.set_manifest(&da, None).unwrap();
        l.set_manifest(&da, None).unwrap();
        assert_eq!(l.read_index().unwrap().manifests.len(), 3);
        assert!(leftover_temps(tmp.path()).is_empty());
    }

    #[tokio::test]
    async fn failed_index_update_leaves_layout_intact() {
        let tmp = tempfile::tempdir().unwrap();
        let l = OciLayout::create(tmp.path()).unwrap();
        let a = l.put_blob_bytes(b"m").await.unwrap();
        let da = Descriptor::new(media_type::OCI_MANIFEST, a, 1);
        l.set_manifest(&da, Some("v1")).unwrap();
        let before = std::fs::read(tmp.path().join(INDEX_FILE)).unwrap();
        // Make the rename target impossible: index.json becomes a non-empty directory.
        let idx = tmp.path().join(INDEX_FILE);
        let saved = tmp.path().join("saved-index");
        std::fs::rename(&idx, &saved).unwrap();
        std::fs::create_dir(&idx).unwrap();
        std::fs::write(idx.join("x"), b"").unwrap();
        assert!(l.set_manifest(&da, Some("v2")).is_err());
        std::fs::remove_dir_all(&idx).unwrap();
        std::fs::rename(&saved, &idx).unwrap();
        assert_eq!(std::fs::read(&idx).unwrap(), before);
        assert!(leftover_temps(tmp.path()).is_empty());
    }

    #[test]
    fn not_a_layout_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let e = OciLayout::open(tmp.path()).unwrap_err();
        assert!(matches!(e, LayoutError::NotALayout { .. }));
        assert!(e.to_string().contains("oci-layout"), "{e}");
        std::fs::write(tmp.path().join("oci-layout"), b"{}").unwrap();
        assert!(OciLayout::open(tmp.path()).is_err());
        std::fs::write(tmp.path().join("oci-layout"), OCI_LAYOUT_CONTENT).unwrap();
        std::fs::write(tmp.path().join("index.json"), b"{not json").unwrap();
        assert!(matches!(OciLayout::open(tmp.path()), Err(LayoutError::BadIndex { .. })));
    }
}
