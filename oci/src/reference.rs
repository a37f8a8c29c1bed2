//! Image references in skopeo's transport syntax.
//!
//! `oci:DIR[:TAG]`, `oci:DIR@sha256:…` name an OCI image layout on disk;
//! `docker://HOST[:PORT]/REPO[:TAG][@sha256:…]` names an image in a distribution v2
//! registry. Parsing is the only place references are checked; everything downstream
//! takes an [`ImageRef`].

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use crate::digest::{Digest, DigestError};

/// The transports cloak understands, as listed in error messages.
pub const SUPPORTED_TRANSPORTS: &str = "oci:DIR[:TAG], docker://HOST[:PORT]/REPO[:TAG|@DIGEST]";

/// Registry host used for references without an explicit registry (Docker Hub).
pub const DOCKER_HUB: &str = "docker.io";

/// Why a string is not a usable image reference.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum RefError {
    #[error("image reference {0:?} has no transport (supported: {SUPPORTED_TRANSPORTS})")]
    MissingTransport(String),
    #[error("transport {transport:?} is not supported (supported: {SUPPORTED_TRANSPORTS})")]
    UnsupportedTransport { transport: String },
    #[error("oci: reference {0:?} has an empty directory")]
    EmptyDir(String),
    #[error("tag {tag:?} in {reference:?} is not valid ({why})")]
    BadTag { reference: String, tag: String, why: &'static str },
    #[error("docker reference {reference:?} must start with `//` (docker://HOST/REPO[:TAG])")]
    MissingSlashes { reference: String },
    #[error("repository {repository:?} in {reference:?} is not valid: {why}")]
    BadRepository { reference: String, repository: String, why: &'static str },
    #[error("registry host {host:?} in {reference:?} is not valid")]
    BadHost { reference: String, host: String },
    #[error("bad digest in {reference:?}")]
    BadDigest {
        reference: String,
        #[source]
        source: DigestError,
    },
}

/// An image in an OCI image layout directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayoutRef {
    /// The layout directory.
    pub dir: PathBuf,
    /// The `org.opencontainers.image.ref.name` to select, if any.
    pub tag: Option<String>,
    /// A manifest digest to select instead of a tag.
    pub digest: Option<Digest>,
}

/// An image in a registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryRef {
    /// Host and optional port as written (`127.0.0.1:5000`, `docker.io`).
    pub registry: String,
    /// Repository path (`library/alpine`, `app`).
    pub repository: String,
    /// The tag; `None` only when the reference is pinned by digest.
    pub tag: Option<String>,
    /// The pinned manifest digest, if any.
    pub digest: Option<Digest>,
}

impl RegistryRef {
    /// Host name the API is actually served from (Docker Hub's API lives elsewhere).
    pub fn api_host(&self) -> &str {
        if self.registry == DOCKER_HUB {
            "registry-1.docker.io"
        } else {
            &self.registry
        }
    }

    /// What to put after `/manifests/`: the digest when pinned, else the tag.
    pub fn manifest_reference(&self) -> String {
        match (&self.digest, &self.tag) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.clone(),
            (None, None) => "latest".to_string(),
        }
    }
}

/// A parsed image reference: where an image lives and which one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    Layout(LayoutRef),
    Registry(RegistryRef),
}

impl ImageRef {
    /// The tag of the reference, if any.
    pub fn tag(&self) -> Option<&str> {
        match self {
            ImageRef::Layout(l) => l.tag.as_deref(),
            ImageRef::Registry(r) => r.tag.as_deref(),
        }
    }

    /// The pinned digest of the reference, if any.
    pub fn digest(&self) -> Option<&Digest> {
        match self {
            ImageRef::Layout(l) => l.digest.as_ref(),
            ImageRef::Registry(r) => r.digest.as_ref(),
        }
    }
}

impl FromStr for ImageRef {
    type Err = RefError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (transport, rest) = s.split_once(':').ok_or_else(|| RefError::MissingTransport(s.to_string()))?;
        match transport {
            "oci" => parse_oci(s, rest).map(ImageRef::Layout),
            "docker" => parse_docker(s, rest).map(ImageRef::Registry),
            _ => Err(RefError::UnsupportedTransport { transport: transport.to_string() }),
        }
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ImageRef::Layout(l) => {
                write!(f, "oci:{}", l.dir.display())?;
                if let Some(d) = &l.digest {
                    write!(f, "@{d}")
                } else if let Some(t) = &l.tag {
                    write!(f, ":{t}")
                } else {
                    Ok(())
                }
            }
            ImageRef::Registry(r) => {
                write!(f, "docker://{}/{}", r.registry, r.repository)?;
                if let Some(t) = &r.tag {
                    write!(f, ":{t}")?;
                }
                if let Some(d) = &r.digest {
                    write!(f, "@{d}")?;
                }
                Ok(())
            }
        }
    }
}

fn parse_oci(whole: &str, rest: &str) -> Result<LayoutRef, RefError> {
    // `oci:DIR@sha256:…` — only when what follows `@` looks like a digest (`sha…:`),
    // so that a directory name containing `@` still works in the `DIR:TAG` form.
    if let Some((dir, dgst)) = rest.rsplit_once('@') {
        if !dir.contains(':') && dgst.starts_with("sha") && dgst.contains(':') {
            let digest = dgst
                .parse()
                .map_err(|source| RefError::BadDigest { reference: whole.to_string(), source })?;
            if dir.is_empty() {
                return Err(RefError::EmptyDir(whole.to_string()));
            }
            return Ok(LayoutRef { dir: PathBuf::from(dir), tag: None, digest: Some(digest) });
        }
    }
    // Like skopeo (containers/image SplitPathAndImage): the path ends at the first `:`.
    let (dir, tag) = match rest.split_once(':') {
        Some((d, t)) => (d, Some(t)),
        None => (rest, None),
    };
    if dir.is_empty() {
        return Err(RefError::EmptyDir(whole.to_string()));
    }
    let tag = match tag {
        None | Some("") => None,
        Some(t) => {
            validate_layout_tag(whole, t)?;
            Some(t.to_string())
        }
    };
    Ok(LayoutRef { dir: PathBuf::from(dir), tag, digest: None })
}

/// ref.name values in a layout are looser than registry tags (the OCI spec allows
/// `/`, `:`-free path-like names); we refuse only what cannot be meant as a name.
fn validate_layout_tag(whole: &str, tag: &str) -> Result<(), RefError> {
    let bad = |why| RefError::BadTag { reference: whole.to_string(), tag: tag.to_string(), why };
    if tag.len() > 255 {
        return Err(bad("longer than 255 characters"));
    }
    if !tag.chars().all(|c| c.is_ascii_alphanumeric() || "._-+/=".contains(c)) {
        return Err(bad("only letters, digits and . _ - + / = are allowed"));
    }
    Ok(())
}

fn validate_registry_tag(whole: &str, tag: &str) -> Result<(), RefError> {
    let bad = |why| RefError::BadTag { reference: whole.to_string(), tag: tag.to_string(), why };
    let mut chars = tag.chars();
    match chars.next() {
        None => return Err(bad("empty")),
        Some(c) if c.is_ascii_alphanumeric() || c == '_' => {}
        Some(_) => return Err(bad("must start with a letter, digit or _")),
    }
    if tag.len() > 128 {
        return Err(bad("longer than 128 characters"));
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) {
        return Err(bad("only letters, digits and _ . - are allowed"));
    }
    Ok(())
}

fn validate_repository(whole: &str, repo: &str) -> Result<(), RefError> {
    let bad =
        |why| RefError::BadRepository { reference: whole.to_string(), repository: repo.to_string(), why };
    if repo.is_empty() {
        return Err(bad("empty"));
    }
    if repo.len() > 255 {
        return Err(bad("longer than 255 characters"));
    }
    for comp in repo.split('/') {
        // distribution's grammar: [a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*
        if comp.is_empty() {
            return Err(bad("empty path component"));
        }
        let b = comp.as_bytes();
        let alnum = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit();
        if !b.iter().all(|&c| alnum(c) || c == b'.' || c == b'_' || c == b'-') {
            return Err(bad("only lowercase letters, digits and . _ - are allowed"));
        }
        if !alnum(b[0]) || !alnum(b[b.len() - 1]) {
            return Err(bad("components must start and end with a letter or digit"));
        }
        if comp.contains("..") || comp.contains("___") || comp.contains("._") || comp.contains("_.") {
            return Err(bad("separators . and _ may not repeat or mix"));
        }
    }
    Ok(())
}

fn looks_like_host(component: &str) -> bool {
    component.contains('.') || component.contains(':') || component == "localhost"
}

fn validate_host(whole: &str, host: &str) -> Result<(), RefError> {
    let (name, port) = match host.rsplit_once(':') {
        // IPv6 literals are not supported; they would need brackets handling.
        Some((n, p)) => (n, Some(p)),
        None => (host, None),
    };
    let name_ok = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
    let port_ok = port.is_none_or(|p| !p.is_empty() && p.parse::<u16>().is_ok());
    if name_ok && port_ok {
        Ok(())
    } else {
        Err(RefError::BadHost { reference: whole.to_string(), host: host.to_string() })
    }
}

fn parse_docker(whole: &str, rest: &str) -> Result<RegistryRef, RefError> {
    let rest =
        rest.strip_prefix("//").ok_or_else(|| RefError::MissingSlashes { reference: whole.to_string() })?;
    let (name, digest) = match rest.split_once('@') {
        Some((n, d)) => {
            let digest =
                d.parse().map_err(|source| RefError::BadDigest { reference: whole.to_string(), source })?;
            (n, Some(digest))
        }
        None => (rest, None),
    };
    // A tag is the part after the last `:` that comes after the last `/`, so that
    // `host:5000/repo` is not read as tag `5000/repo`.
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    let (name, tag) = match name[last_slash..].rfind(':') {
        Some(i) => {
            let at = last_slash + i;
            (&name[..at], Some(&name[at + 1..]))
        }
        None => (name, None),
    };
    if let Some(t) = tag {
        validate_registry_tag(whole, t)?;
    }
    let (registry, repository) = match name.split_once('/') {
        Some((first, remainder)) if looks_like_host(first) => {
            validate_host(whole, first)?;
            (first.to_string(), remainder.to_string())
        }
        // Docker Hub normalisation: `alpine` -> docker.io/library/alpine.
        _ if !name.contains('/') => (DOCKER_HUB.to_string(), format!("library/{name}")),
        _ => (DOCKER_HUB.to_string(), name.to_string()),
    };
    validate_repository(whole, &repository)?;
    let tag = match (tag, &digest) {
        (Some(t), _) => Some(t.to_string()),
        (None, Some(_)) => None,
        (None, None) => Some("latest".to_string()),
    };
    Ok(RegistryRef { registry, repository, tag, digest })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    const D: &str = "sha256:3c4b0491ad42ed94682815ca7a46e4a5595792d857cec1410833a9d226bb948e";

    fn layout(s: &str) -> LayoutRef {
        match s.parse::<ImageRef>().unwrap() {
            ImageRef::Layout(l) => l,
            other => panic!("not a layout: {other:?}"),
        }
    }

    fn registry(s: &str) -> RegistryRef {
        match s.parse::<ImageRef>().unwrap() {
            ImageRef::Registry(r) => r,
            other => panic!("not a registry: {other:?}"),
        }
    }

    #[test]
    fn oci_refs() {
        let l = layout("oci:/tmp/img:v1");
        assert_eq!(l.dir, PathBuf::from("/tmp/img"));
        assert_eq!(l.tag.as_deref(), Some("v1"));
        assert_eq!(l.digest, None);

        let l = layout("oci:img");
        assert_eq!(l.dir, PathBuf::from("img"));
        assert_eq!(l.tag, None);

        let l = layout("oci:img:");
        assert_eq!(l.tag, None);

        let l = layout(&format!("oci:some/dir@{D}"));
        assert_eq!(l.dir, PathBuf::from("some/dir"));
        assert_eq!(l.digest.unwrap().to_string(), D);

        // `@` in a directory name with a tag still works
        let l = layout("oci:a@b:v2");
        assert_eq!(l.dir, PathBuf::from("a@b"));
        assert_eq!(l.tag.as_deref(), Some("v2"));
    }

    #[test]
    fn oci_bad_refs() {
        assert_eq!("oci::v1".parse::<ImageRef>(), Err(RefError::EmptyDir("oci::v1".into())));
        assert!(matches!("oci:img:bad tag".parse::<ImageRef>(), Err(RefError::BadTag { .. })));
        assert!(matches!("oci:img@sha256:1234".parse::<ImageRef>(), Err(RefError::BadDigest { .. })));
    }

    #[test]
    fn docker_refs() {
        let r = registry("docker://127.0.0.1:5000/app:enc");
        assert_eq!(r.registry, "127.0.0.1:5000");
        assert_eq!(r.repository, "app");
        assert_eq!(r.tag.as_deref(), Some("enc"));
        assert_eq!(r.manifest_reference(), "enc");

        let r = registry("docker://localhost:5000/a/b/c");
        assert_eq!(r.registry, "localhost:5000");
        assert_eq!(r.repository, "a/b/c");
        assert_eq!(r.tag.as_deref(), Some("latest"));

        let r = registry(&format!("docker://quay.io/org/app@{D}"));
        assert_eq!(r.registry, "quay.io");
        assert_eq!(r.tag, None);
        assert_eq!(r.manifest_reference(), D);

        let r = registry(&format!("docker://quay.io/org/app:v1@{D}"));
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.manifest_reference(), D, "the digest wins over the tag");

        let r = registry("docker://alpine");
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.repository, "library/alpine");
        assert_eq!(r.api_host(), "registry-1.docker.io");

        let r = registry("docker://myorg/app:1.0");
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.repository, "myorg/app");
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "oci:/tmp/img:v1",
            "oci:img",
            "docker://127.0.0.1:5000/app:enc",
            &format!("docker://h.io/a/b@{D}"),
            &format!("oci:x@{D}"),
        ] {
            let r: ImageRef = s.parse().unwrap();
            assert_eq!(r.to_string(), s);
            assert_eq!(r.to_string().parse::<ImageRef>().unwrap(), r);
        }
    }

    #[test]
    fn docker_bad_refs() {
        assert!(matches!("docker:127.0.0.1/app".parse::<ImageRef>(), Err(RefError::MissingSlashes { .. })));
        assert!(matches!(
            "docker://127.0.0.1:5000/App".parse::<ImageRef>(),
            Err(RefError::BadRepository { .. })
        ));
        assert!(matches!(
            "docker://127.0.0.1:5000/".parse::<ImageRef>(),
            Err(RefError::BadRepository { .. })
        ));
        assert!(matches!("docker://127.0.0.1:5000/app:-x".parse::<ImageRef>(), Err(RefError::BadTag { .. })));
        assert!(matches!("docker://127.0.0.1:99999/app".parse::<ImageRef>(), Err(RefError::BadHost { .. })));
        assert!(matches!(
            "docker://h.io/app@sha256:xyz".parse::<ImageRef>(),
            Err(RefError::BadDigest { .. })
        ));
        assert!(matches!("docker://h.io/a//b".parse::<ImageRef>(), Err(RefError::BadRepository { .. })));
    }

    #[test]
    fn unknown_transport_names_it_and_the_supported_ones() {
        let e = "dir:/tmp/x".parse::<ImageRef>().unwrap_err();
        assert_eq!(e, RefError::UnsupportedTransport { transport: "dir".into() });
        let msg = e.to_string();
        assert!(msg.contains("\"dir\""), "{msg}");
        assert!(msg.contains("oci:") && msg.contains("docker://"), "{msg}");

        let e = "/tmp/x".parse::<ImageRef>().unwrap_err();
        assert!(matches!(e, RefError::MissingTransport(_)));
    }
}
