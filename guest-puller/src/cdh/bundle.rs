//! Guard rails on what a ttRPC caller names: the bundle directory (absolute,
//! no `..`, inside `--bundle-root`, also after symlinks are resolved) and the
//! image reference (kata's plain form, registry transport only).

use std::path::{Component, Path, PathBuf};

/// kata-agent's bundle root (`CONTAINER_BASE`).
pub const DEFAULT_BUNDLE_ROOT: &str = "/run/kata-containers";

/// Why a request's bundle path or image was refused.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error("bundle_path {0:?} must be an absolute path")]
    NotAbsolute(String),
    #[error("bundle_path {0:?} must not contain `.` or `..` components")]
    DotDot(String),
    #[error("bundle_path {path:?} is not inside the bundle root {root}")]
    OutsideRoot { path: String, root: String },
    #[error("bundle_path {path:?}: {reason}")]
    Bundle { path: String, reason: String },
    #[error("image_url {image:?} is not a valid reference")]
    Reference {
        image: String,
        #[source]
        source: oci::RefError,
    },
    #[error("image_url {0:?} is empty or has whitespace or control characters")]
    BadImage(String),
    #[error("image_url {image:?}: transport {transport:?} is not allowed here (give a registry reference such as registry.example/app@sha256:...)")]
    Transport { image: String, transport: String },
}

/// Checks `bundle` lexically: absolute, only normal components, strictly
/// inside `root`. Returns it as a path.
pub fn check_bundle_path(root: &Path, bundle: &str) -> Result<PathBuf, RequestError> {
    let p = Path::new(bundle);
    if bundle.is_empty() || !p.is_absolute() {
        return Err(RequestError::NotAbsolute(bundle.into()));
    }
    if bundle.contains('\0') {
        return Err(RequestError::Bundle { path: bundle.into(), reason: "has a NUL byte".into() });
    }
    if p.components().any(|c| matches!(c, Component::CurDir | Component::ParentDir))
        || bundle.split('/').any(|s| s == "." || s == "..")
    {
        return Err(RequestError::DotDot(bundle.into()));
    }
    let outside = || RequestError::OutsideRoot { path: bundle.into(), root: root.display().to_string() };
    let rest = p.strip_prefix(root).map_err(|_| outside())?;
    if rest.as_os_str().is_empty() {
        return Err(outside());
    }
    Ok(p.to_path_buf())
}

/// Creates the bundle directory if needed and checks that, with symlinks
/// resolved, it is still inside the (resolved) root.
pub fn prepare_bundle(root: &Path, bundle: &Path) -> Result<PathBuf, RequestError> {
    let err = |reason: String| RequestError::Bundle { path: bundle.display().to_string(), reason };
    std::fs::create_dir_all(root).map_err(|e| err(format!("creating the bundle root: {e}")))?;
    let real_root =
        std::fs::canonicalize(root).map_err(|e| err(format!("resolving the bundle root: {e}")))?;
    // Resolve the deepest existing ancestor before creating anything, so a
    // symlink planted in the path cannot make us create directories elsewhere.
    let mut existing = bundle.to_path_buf();
    while !existing.exists() {
        match existing.parent() {
            Some(p) => existing = p.to_path_buf(),
            None => break,
        }
    }
    let real_existing = std::fs::canonicalize(&existing)
        .map_err(|e| err(format!("resolving {}: {e}", existing.display())))?;
    if !(real_existing.starts_with(&real_root)) {
        return Err(RequestError::OutsideRoot {
            path: bundle.display().to_string(),
            root: root.display().to_string(),
        });
    }
    std::fs::create_dir_all(bundle).map_err(|e| err(format!("creating it: {e}")))?;
    let real = std::fs::canonicalize(bundle).map_err(|e| err(format!("resolving it: {e}")))?;
    if !real.starts_with(&real_root) || real == real_root {
        return Err(RequestError::OutsideRoot {
            path: bundle.display().to_string(),
            root: root.display().to_string(),
        });
    }
    Ok(real)
}

/// kata's `image_url` (a plain reference, or `docker://…`) as a cloak
/// `docker://` reference. Local layouts and other transports are refused: a
/// guest caller names registry images only.
pub fn docker_reference(image_url: &str) -> Result<String, RequestError> {
    let s = image_url;
    if s.is_empty() || s.chars().any(|c| c.is_whitespace() || c.is_control()) || s.len() > 4096 {
        return Err(RequestError::BadImage(s.chars().take(200).collect()));
    }
    let plain = s.strip_prefix("docker://").unwrap_or(s);
    // A transport prefix is `word:` before any `/`; `host:port/…` has a `/` after the port.
    if let Some((head, _)) = plain.split_once(':') {
        if !head.contains('/') && !plain[head.len() + 1..].starts_with(|c: char| c.is_ascii_digit()) {
            // `name:tag` without a registry (e.g. `busybox:latest`) also matches
            // here; it has no `/` after the colon.
            let after = &plain[head.len() + 1..];
            if after.contains('/') || after.starts_with("//") {
                return Err(RequestError::Transport { image: s.into(), transport: head.into() });
            }
        }
    }
    Ok(format!("docker://{plain}"))
}

/// The registry host of a reference, as the insecure-registry list names it.
pub fn registry_of(docker_ref: &str) -> Option<String> {
    use std::str::FromStr;
    match oci::ImageRef::from_str(docker_ref).ok()? {
        oci::ImageRef::Registry(r) => Some(r.registry),
        oci::ImageRef::Layout(_) => None,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn bundle_paths() {
        let root = Path::new("/run/kata-containers");
        assert!(check_bundle_path(root, "/run/kata-containers/abc").is_ok());
        assert!(check_bundle_path(root, "/run/kata-containers/abc/def").is_ok());
        for bad in [
            "",
            "run/kata-containers/abc",
            "/run/kata-containers/../etc",
            "/run/kata-containers/a/./b",
            "/run/kata-containers",
            "/run/kata-containers/",
            "/run/kata-containersX/a",
            "/etc/passwd",
        ] {
            assert!(check_bundle_path(root, bad).is_err(), "{bad:?} accepted");
        }
        let e = check_bundle_path(root, "/tmp/x").unwrap_err().to_string();
        assert!(e.contains("not inside the bundle root"), "{e}");
    }

    #[test]
    fn symlink_escape_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        let outside = dir.path().join("outside");
        std::fs::create_dir_all(&root).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
        let b = root.join("link/bundle");
        let e = prepare_bundle(&root, &b).unwrap_err();
        assert!(matches!(e, RequestError::OutsideRoot { .. }), "{e}");
        assert!(!outside.join("bundle").exists(), "a directory was created outside the root");
        assert!(prepare_bundle(&root, &root.join("ok")).is_ok());
    }

    #[test]
    fn image_urls() {
        assert_eq!(
            docker_reference("registry.example/app@sha256:abc").unwrap(),
            "docker://registry.example/app@sha256:abc"
        );
        assert_eq!(docker_reference("127.0.0.1:5000/app:v1").unwrap(), "docker://127.0.0.1:5000/app:v1");
        assert_eq!(docker_reference("docker://quay.io/a/b:1").unwrap(), "docker://quay.io/a/b:1");
        assert_eq!(docker_reference("busybox:latest").unwrap(), "docker://busybox:latest");
        for bad in ["", "a b", "oci:/some/dir:tag", "oci-archive:/x.tar", "dir:/x/y", "x\n"] {
            assert!(docker_reference(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(registry_of("docker://127.0.0.1:5000/app:v1").as_deref(), Some("127.0.0.1:5000"));
    }
}
