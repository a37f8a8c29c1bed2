//! OCI image layouts on disk: copy one somewhere writable, read its manifests and
//! blobs, and list what a run left behind.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

/// Copies a directory tree (for copying golden layouts into a temp dir).
pub fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    std::fs::create_dir_all(dst)?;
    for entry in std::fs::read_dir(src).with_context(|| format!("reading {}", src.display()))? {
        let entry = entry?;
        let to = dst.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &to)?;
        } else {
            std::fs::copy(entry.path(), &to)?;
        }
    }
    Ok(())
}

/// The manifest of tag `tag` in an OCI layout (following index.json; one level).
pub fn layout_manifest(dir: &Path, tag: &str) -> Result<serde_json::Value> {
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("index.json"))?)?;
    let entries = index["manifests"].as_array().context("index.json has no manifests")?;
    let entry = entries
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .with_context(|| format!("tag {tag} not in {}", dir.display()))?;
    let digest = entry["digest"].as_str().context("entry without digest")?;
    blob_json(dir, digest)
}

/// A JSON blob of an OCI layout by digest.
pub fn blob_json(dir: &Path, digest: &str) -> Result<serde_json::Value> {
    Ok(serde_json::from_slice(&std::fs::read(blob_path(dir, digest))?)?)
}

/// `blobs/<alg>/<hex>` of a layout.
pub fn blob_path(dir: &Path, digest: &str) -> PathBuf {
    let (alg, hex) = digest.split_once(':').unwrap_or(("sha256", digest));
    dir.join("blobs").join(alg).join(hex)
}

/// `sha256:<hex>` of bytes.
pub fn sha256_digest(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// The layer digests listed by a manifest.
pub fn layer_digests(manifest: &serde_json::Value) -> Vec<String> {
    manifest["layers"]
        .as_array()
        .map(|ls| ls.iter().filter_map(|l| l["digest"].as_str().map(String::from)).collect())
        .unwrap_or_default()
}

/// Lists every path under `dir` (relative), to prove a failed run left nothing behind.
pub fn list_tree(dir: &Path) -> Vec<PathBuf> {
    fn walk(base: &Path, d: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(rd) = std::fs::read_dir(d) {
            for e in rd.flatten() {
                let p = e.path();
                out.push(p.strip_prefix(base).map(Path::to_path_buf).unwrap_or_else(|_| p.clone()));
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    walk(base, &p, out);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}
