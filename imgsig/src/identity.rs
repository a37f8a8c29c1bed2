//! Docker references as signatures and policies name them (no transport:
//! `host[:port]/repo[:tag][@digest]`, Docker Hub short names normalised), and
//! the `signedIdentity` rules of containers-policy.json that compare the
//! reference a signature claims with the one being pulled.

use std::fmt;

use oci::Digest;

/// Docker Hub's canonical registry name.
pub const DOCKER_HUB: &str = "docker.io";

/// Why a string is not a docker reference.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum IdentityError {
    #[error("empty reference")]
    Empty,
    #[error("bad digest")]
    Digest(#[source] oci::DigestError),
    #[error("tag {0:?} is not valid (1-128 of [A-Za-z0-9_.-], not starting with . or -)")]
    Tag(String),
    #[error("repository {0:?} is not valid (lowercase [a-z0-9._-] components separated by /)")]
    Repository(String),
    #[error("registry host {0:?} is not valid")]
    Host(String),
}

/// A normalised docker reference.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DockerRef {
    /// `host[:port]`, `docker.io` for Docker Hub.
    pub registry: String,
    /// Path inside the registry (`library/busybox`).
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<Digest>,
}

impl DockerRef {
    /// Parses `host[:port]/repo[:tag][@digest]` with Docker's normalisation of
    /// short names (`busybox` is `docker.io/library/busybox`).
    pub fn parse(s: &str) -> Result<DockerRef, IdentityError> {
        if s.is_empty() {
            return Err(IdentityError::Empty);
        }
        let (name, digest) = match s.split_once('@') {
            Some((n, d)) => (n, Some(d.parse::<Digest>().map_err(IdentityError::Digest)?)),
            None => (s, None),
        };
        let last_slash = name.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match name[last_slash..].rfind(':') {
            Some(i) => (&name[..last_slash + i], Some(name[last_slash + i + 1..].to_string())),
            None => (name, None),
        };
        if let Some(t) = &tag {
            let ok = !t.is_empty()
                && t.len() <= 128
                && !t.starts_with(['.', '-'])
                && t.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
            if !ok {
                return Err(IdentityError::Tag(t.clone()));
            }
        }
        let (registry, repository) = match name.split_once('/') {
            Some((first, rest))
                if first.contains(['.', ':'])
                    || first == "localhost"
                    || first.chars().any(char::is_uppercase) =>
            {
                check_host(first)?;
                (first.to_string(), rest.to_string())
            }
            Some(_) => (DOCKER_HUB.to_string(), name.to_string()),
            None => (DOCKER_HUB.to_string(), format!("library/{name}")),
        };
        check_repository(&repository)?;
        Ok(DockerRef { registry, repository, tag, digest })
    }

    /// `host/repo`, the name without tag or digest.
    pub fn repository_name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }

    /// Neither tag nor digest.
    pub fn is_name_only(&self) -> bool {
        self.tag.is_none() && self.digest.is_none()
    }

    /// From a registry reference as cloak's `oci` crate parsed it.
    pub fn from_registry_ref(r: &oci::RegistryRef) -> DockerRef {
        DockerRef {
            registry: r.registry.clone(),
            repository: r.repository.clone(),
            tag: r.tag.clone(),
            digest: r.digest.clone(),
        }
    }
}

impl fmt::Display for DockerRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.registry, self.repository)?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

fn check_host(h: &str) -> Result<(), IdentityError> {
    let (name, port) = match h.rsplit_once(':') {
        Some((n, p)) => (n, Some(p)),
        None => (h, None),
    };
    let name_ok = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok());
    if name_ok && port_ok {
        Ok(())
    } else {
        Err(IdentityError::Host(h.to_string()))
    }
}

fn check_repository(r: &str) -> Result<(), IdentityError> {
    let ok = !r.is_empty()
        && r.len() <= 255
        && r.split('/').all(|c| {
            !c.is_empty()
                && c.chars()
                    .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || matches!(ch, '.' | '_' | '-'))
                && c.starts_with(|ch: char| ch.is_ascii_alphanumeric())
        });
    if ok {
        Ok(())
    } else {
        Err(IdentityError::Repository(r.to_string()))
    }
}

/// A `signedIdentity` of containers-policy.json, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignedIdentity {
    /// The signature's reference equals the pulled one (both tagged or digested).
    MatchExact,
    /// Pulled by digest: same repository; pulled by tag: exact.
    MatchRepoDigestOrExact,
    /// Same repository, any tag or digest.
    MatchRepository,
    /// The signature must claim exactly this reference (pulled one ignored).
    ExactReference(DockerRef),
    /// The signature must claim this repository (pulled one ignored).
    ExactRepository(DockerRef),
    /// The pulled reference with `prefix` replaced by `signed_prefix`, then
    /// [`SignedIdentity::MatchRepoDigestOrExact`].
    RemapIdentity { prefix: String, signed_prefix: String },
}

impl fmt::Display for SignedIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SignedIdentity::MatchExact => f.write_str("matchExact"),
            SignedIdentity::MatchRepoDigestOrExact => f.write_str("matchRepoDigestOrExact"),
            SignedIdentity::MatchRepository => f.write_str("matchRepository"),
            SignedIdentity::ExactReference(r) => write!(f, "exactReference {r}"),
            SignedIdentity::ExactRepository(r) => write!(f, "exactRepository {}", r.repository_name()),
            SignedIdentity::RemapIdentity { prefix, signed_prefix } => {
                write!(f, "remapIdentity {prefix} -> {signed_prefix}")
            }
        }
    }
}

fn exact(a: &DockerRef, b: &DockerRef) -> bool {
    !a.is_name_only() && !b.is_name_only() && a == b
}

fn repo_digest_or_exact(pulled: &DockerRef, signed: &DockerRef) -> bool {
    if pulled.digest.is_some() {
        pulled.repository_name() == signed.repository_name()
    } else {
        exact(pulled, signed)
    }
}

/// `ref` starts with `prefix` at a path boundary. A `:`/`@` boundary counts only
/// when the prefix names a repository (has a `/`), so `example.com` never
/// matches `example.com:5000/…` (containers/image documents that as unintended).
fn prefix_matches(reference: &str, prefix: &str) -> bool {
    match reference.strip_prefix(prefix) {
        Some("") => true,
        Some(rest) => rest.starts_with('/') || (prefix.contains('/') && rest.starts_with([':', '@'])),
        None => false,
    }
}

impl SignedIdentity {
    /// Whether a signature claiming `signed` is acceptable for pulling `pulled`.
    /// `pulled` is `None` for images without a docker identity (OCI layouts):
    /// only the forms that ignore the pulled reference can match then.
    pub fn matches(&self, pulled: Option<&DockerRef>, signed: &DockerRef) -> bool {
        match self {
            SignedIdentity::ExactReference(r) => exact(r, signed),
            SignedIdentity::ExactRepository(r) => r.repository_name() == signed.repository_name(),
            SignedIdentity::MatchExact => pulled.is_some_and(|p| exact(p, signed)),
            SignedIdentity::MatchRepoDigestOrExact => pulled.is_some_and(|p| repo_digest_or_exact(p, signed)),
            SignedIdentity::MatchRepository => {
                pulled.is_some_and(|p| p.repository_name() == signed.repository_name())
            }
            SignedIdentity::RemapIdentity { prefix, signed_prefix } => {
                let Some(p) = pulled else { return false };
                let s = p.to_string();
                if !prefix_matches(&s, prefix) {
                    return repo_digest_or_exact(p, signed);
                }
                match DockerRef::parse(&format!("{signed_prefix}{}", &s[prefix.len()..])) {
                    Ok(remapped) => repo_digest_or_exact(&remapped, signed),
                    Err(_) => false,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const D: &str = "sha256:3c4b0491ad42ed94682815ca7a46e4a5595792d857cec1410833a9d226bb948e";

    fn r(s: &str) -> DockerRef {
        DockerRef::parse(s).unwrap()
    }

    #[test]
    fn normalises_like_docker() {
        assert_eq!(r("busybox").to_string(), "docker.io/library/busybox");
        assert_eq!(r("user/app:1").to_string(), "docker.io/user/app:1");
        assert_eq!(r("localhost/app").registry, "localhost");
        let x = r(&format!("127.0.0.1:5000/a/b:v1@{D}"));
        assert_eq!(
            (x.registry.as_str(), x.repository.as_str(), x.tag.as_deref()),
            ("127.0.0.1:5000", "a/b", Some("v1"))
        );
        assert!(x.digest.is_some());
        assert!(DockerRef::parse("h.io/App").is_err());
        assert!(DockerRef::parse("h.io/a:").is_err());
        assert!(DockerRef::parse("h.io/a@sha256:00").is_err());
        assert!(DockerRef::parse("").is_err());
    }

    #[test]
    fn every_signed_identity_form() {
        let tagged = r("h.io/app-a:v1");
        let digested = r(&format!("h.io/app-a@{D}"));
        let sig_repo = r("h.io/app-a");
        let sig_tag = r("h.io/app-a:v1");
        let sig_other = r("h.io/app-b:v1");

        use SignedIdentity::*;
        assert!(MatchExact.matches(Some(&tagged), &sig_tag));
        assert!(!MatchExact.matches(Some(&tagged), &sig_repo), "name-only signature never matches exactly");
        assert!(!MatchExact.matches(Some(&digested), &sig_tag));
        assert!(!MatchExact.matches(None, &sig_tag), "a layout has no identity to compare");

        assert!(MatchRepoDigestOrExact.matches(Some(&digested), &sig_repo));
        assert!(MatchRepoDigestOrExact.matches(Some(&tagged), &sig_tag));
        assert!(!MatchRepoDigestOrExact.matches(Some(&tagged), &sig_repo));

        assert!(MatchRepository.matches(Some(&tagged), &sig_repo));
        assert!(MatchRepository.matches(Some(&digested), &sig_tag));
        assert!(!MatchRepository.matches(Some(&tagged), &sig_other));

        assert!(ExactReference(r("h.io/app-a:v1")).matches(Some(&r("x.io/y:z")), &sig_tag));
        assert!(!ExactReference(r("h.io/app-a:v2")).matches(Some(&tagged), &sig_tag));
        assert!(ExactRepository(r("h.io/app-a")).matches(None, &sig_tag));
        assert!(!ExactRepository(r("h.io/app-b")).matches(Some(&tagged), &sig_tag));

        let remap = RemapIdentity { prefix: "mirror.local/team".into(), signed_prefix: "h.io".into() };
        assert!(remap.matches(Some(&r("mirror.local/team/app-a:v1")), &sig_tag));
        assert!(!remap.matches(Some(&r("mirror.local/team/app-b:v1")), &sig_tag));
        assert!(!remap.matches(Some(&r("mirror.local/teamx/app-a:v1")), &r("h.iox/app-a:v1")));
        // Not under the prefix: plain matchRepoDigestOrExact.
        assert!(remap.matches(Some(&tagged), &sig_tag));
        let host_only = RemapIdentity { prefix: "example.com".into(), signed_prefix: "h.io".into() };
        assert!(!host_only.matches(Some(&r("example.com:5000/app-a:v1")), &r("h.io:5000/app-a:v1")));
    }
}
