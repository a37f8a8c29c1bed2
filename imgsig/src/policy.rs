//! containers-policy.json: parsing into a validated [`Policy`] and finding the
//! requirements that apply to an image (the transport scope rules).
//!
//! Parsing refuses what cloak cannot enforce instead of ignoring it: unknown
//! keys, an empty requirement list, keyless (Fulcio/Rekor/PKI) sigstore
//! options, a scope that is not in its fully expanded form. Where the format
//! leaves room cloak takes the safe side: an omitted `signedIdentity` on
//! `sigstoreSigned` means `matchRepository` (containers/image: the looser
//! `matchRepoDigestOrExact` only for `signedBy`, see the README).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::Deserialize;

use crate::identity::{DockerRef, SignedIdentity};

/// Largest policy file read.
pub const MAX_POLICY_SIZE: usize = 1 << 20;

/// A policy that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("signature policy is {size} bytes, more than the {MAX_POLICY_SIZE} allowed")]
    TooLarge { size: usize },
    #[error("signature policy is not valid containers-policy.json")]
    Json(#[source] serde_json::Error),
    #[error("signature policy, {place}: {reason}")]
    Invalid { place: String, reason: String },
}

fn invalid(place: impl Into<String>, reason: impl Into<String>) -> PolicyError {
    PolicyError::Invalid { place: place.into(), reason: reason.into() }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    default: Vec<RawRequirement>,
    #[serde(default)]
    transports: BTreeMap<String, BTreeMap<String, Vec<RawRequirement>>>,
}

// Parsed once per policy and turned into `Requirement` at once: the size of the
// keyless variant's fields does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
enum RawRequirement {
    #[serde(rename = "insecureAcceptAnything")]
    InsecureAcceptAnything {},
    #[serde(rename = "reject")]
    Reject {},
    #[serde(rename = "signedBy")]
    SignedBy {
        #[serde(rename = "keyType")]
        key_type: String,
        #[serde(rename = "keyPath")]
        key_path: Option<String>,
        #[serde(rename = "keyPaths")]
        key_paths: Option<Vec<String>>,
        #[serde(rename = "keyData")]
        key_data: Option<String>,
        #[serde(rename = "signedIdentity")]
        signed_identity: Option<RawIdentity>,
    },
    #[serde(rename = "sigstoreSigned")]
    SigstoreSigned {
        #[serde(rename = "keyPath")]
        key_path: Option<String>,
        #[serde(rename = "keyPaths")]
        key_paths: Option<Vec<String>>,
        #[serde(rename = "keyData")]
        key_data: Option<String>,
        fulcio: Option<serde_json::Value>,
        #[serde(rename = "rekorPublicKeyPath")]
        rekor_public_key_path: Option<serde_json::Value>,
        #[serde(rename = "rekorPublicKeyPaths")]
        rekor_public_key_paths: Option<serde_json::Value>,
        #[serde(rename = "rekorPublicKeyData")]
        rekor_public_key_data: Option<serde_json::Value>,
        pki: Option<serde_json::Value>,
        #[serde(rename = "signedIdentity")]
        signed_identity: Option<RawIdentity>,
    },
}

#[derive(Deserialize)]
#[serde(tag = "type", deny_unknown_fields)]
enum RawIdentity {
    #[serde(rename = "matchExact")]
    MatchExact {},
    #[serde(rename = "matchRepoDigestOrExact")]
    MatchRepoDigestOrExact {},
    #[serde(rename = "matchRepository")]
    MatchRepository {},
    #[serde(rename = "exactReference")]
    ExactReference {
        #[serde(rename = "dockerReference")]
        docker_reference: String,
    },
    #[serde(rename = "exactRepository")]
    ExactRepository {
        #[serde(rename = "dockerRepository")]
        docker_repository: String,
    },
    #[serde(rename = "remapIdentity")]
    RemapIdentity {
        prefix: String,
        #[serde(rename = "signedPrefix")]
        signed_prefix: String,
    },
}

/// Where a trusted key comes from.
#[derive(Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A file (`keyPath`, `keyPaths`), relative paths taken from the policy's directory.
    Path(PathBuf),
    /// A KBS resource (`kbs:///repo/type/tag`), fetched after attestation.
    Kbs(String),
    /// Inline (`keyData`, already base64-decoded). `index` is the requirement's position.
    Data(Vec<u8>),
}

impl std::fmt::Debug for KeySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.describe())
    }
}

impl KeySource {
    /// For messages: `keyPath /keys/a.pub`, `keyPath kbs:///…`, `keyData`.
    pub fn describe(&self) -> String {
        match self {
            KeySource::Path(p) => format!("keyPath {}", p.display()),
            KeySource::Kbs(u) => format!("keyPath {u}"),
            KeySource::Data(_) => "keyData".into(),
        }
    }
}

/// One requirement of a scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Requirement {
    InsecureAcceptAnything,
    Reject,
    /// GPG simple signing.
    SignedBy {
        keys: Vec<KeySource>,
        identity: SignedIdentity,
    },
    /// cosign, key-based.
    SigstoreSigned {
        keys: Vec<KeySource>,
        identity: SignedIdentity,
    },
}

impl std::fmt::Display for Requirement {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Requirement::InsecureAcceptAnything => f.write_str("insecureAcceptAnything"),
            Requirement::Reject => f.write_str("reject"),
            Requirement::SignedBy { identity, .. } => write!(f, "signedBy, signedIdentity {identity}"),
            Requirement::SigstoreSigned { identity, .. } => {
                write!(f, "sigstoreSigned, signedIdentity {identity}")
            }
        }
    }
}

/// A validated containers-policy.json.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    default: Vec<Requirement>,
    /// Per transport (`docker`, `oci`, others kept but unused), scope → requirements.
    transports: BTreeMap<String, BTreeMap<String, Vec<Requirement>>>,
}

/// The scope that applied and its requirements.
#[derive(Debug, Clone, Copy)]
pub struct Scope<'a> {
    /// `docker: "127.0.0.1:5000/app"`, `default`.
    pub name: &'a str,
    pub transport: Option<&'a str>,
    pub requirements: &'a [Requirement],
}

impl std::fmt::Display for Scope<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.transport {
            Some(t) => write!(f, "transports.{t}[{:?}]", self.name),
            None => f.write_str("default"),
        }
    }
}

/// The image a policy is evaluated for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageIdentity {
    /// `docker://…`: has a docker reference.
    Docker(DockerRef),
    /// `oci:DIR[:TAG]`: no docker reference; scopes are paths.
    Layout { dir: PathBuf, tag: Option<String> },
}

impl ImageIdentity {
    /// From the puller's parsed reference.
    pub fn from_image_ref(r: &oci::ImageRef) -> ImageIdentity {
        match r {
            oci::ImageRef::Registry(reg) => ImageIdentity::Docker(DockerRef::from_registry_ref(reg)),
            oci::ImageRef::Layout(l) => {
                let dir = std::path::absolute(&l.dir).unwrap_or_else(|_| l.dir.clone());
                ImageIdentity::Layout { dir, tag: l.tag.clone() }
            }
        }
    }

    /// The docker reference signatures are compared with, if any.
    pub fn docker(&self) -> Option<&DockerRef> {
        match self {
            ImageIdentity::Docker(d) => Some(d),
            ImageIdentity::Layout { .. } => None,
        }
    }
}

impl std::fmt::Display for ImageIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageIdentity::Docker(d) => write!(f, "docker://{d}"),
            ImageIdentity::Layout { dir, tag: Some(t) } => write!(f, "oci:{}:{t}", dir.display()),
            ImageIdentity::Layout { dir, tag: None } => write!(f, "oci:{}", dir.display()),
        }
    }
}

impl Policy {
    /// Parses policy bytes; relative key paths are taken from `base_dir`.
    pub fn parse(bytes: &[u8], base_dir: &Path) -> Result<Policy, PolicyError> {
        if bytes.len() > MAX_POLICY_SIZE {
            return Err(PolicyError::TooLarge { size: bytes.len() });
        }
        let raw: RawPolicy = serde_json::from_slice(bytes).map_err(PolicyError::Json)?;
        let default = requirements(raw.default, "default", base_dir)?;
        let mut transports = BTreeMap::new();
        for (t, scopes) in raw.transports {
            let mut out = BTreeMap::new();
            for (scope, reqs) in scopes {
                let place = format!("transports.{t}[{scope:?}]");
                if t == "docker" {
                    validate_docker_scope(&scope).map_err(|reason| invalid(&place, reason))?;
                }
                out.insert(scope, requirements(reqs, &place, base_dir)?);
            }
            transports.insert(t, out);
        }
        Ok(Policy { default, transports })
    }

    /// Reads and parses a policy file.
    pub fn load(path: &Path) -> Result<Policy, std::io::Error> {
        let bytes = std::fs::read(path)?;
        let base = path.parent().unwrap_or(Path::new("."));
        Policy::parse(&bytes, base).map_err(std::io::Error::other)
    }

    /// The most specific scope that applies to `image`.
    pub fn scope_for(&self, image: &ImageIdentity) -> Scope<'_> {
        let (transport, candidates) = match image {
            ImageIdentity::Docker(d) => ("docker", docker_candidates(d)),
            ImageIdentity::Layout { dir, tag } => ("oci", layout_candidates(dir, tag.as_deref())),
        };
        if let Some(scopes) = self.transports.get(transport) {
            for c in candidates.iter().map(String::as_str).chain(std::iter::once("")) {
                if let Some((name, reqs)) = scopes.get_key_value(c) {
                    return Scope { name, transport: Some(transport_name(transport)), requirements: reqs };
                }
            }
        }
        Scope { name: "default", transport: None, requirements: &self.default }
    }
}

fn transport_name(t: &str) -> &'static str {
    if t == "docker" {
        "docker"
    } else {
        "oci"
    }
}

/// Most specific first: `repo@digest`, `repo:tag`, `repo`, each parent
/// namespace, the host, then `*.domain` wildcards (port stripped).
fn docker_candidates(d: &DockerRef) -> Vec<String> {
    let name = d.repository_name();
    let mut out = Vec::new();
    if let Some(dg) = &d.digest {
        out.push(format!("{name}@{dg}"));
    }
    if let Some(t) = &d.tag {
        out.push(format!("{name}:{t}"));
    }
    let mut n = name.as_str();
    out.push(n.to_string());
    while let Some((parent, _)) = n.rsplit_once('/') {
        out.push(parent.to_string());
        n = parent;
    }
    let mut host = d.registry.split(':').next().unwrap_or_default();
    while let Some((_, rest)) = host.split_once('.') {
        out.push(format!("*.{rest}"));
        host = rest;
    }
    out
}

/// `DIR:TAG`, `DIR`, then each parent directory.
fn layout_candidates(dir: &Path, tag: Option<&str>) -> Vec<String> {
    let mut out = Vec::new();
    let d = dir.display().to_string();
    if let Some(t) = tag {
        out.push(format!("{d}:{t}"));
    }
    let mut p = Some(dir);
    while let Some(x) = p {
        let s = x.display().to_string();
        if !s.is_empty() {
            out.push(s);
        }
        p = x.parent();
    }
    out
}

fn validate_docker_scope(scope: &str) -> Result<(), String> {
    if scope.is_empty() {
        return Ok(());
    }
    if let Some(domain) = scope.strip_prefix("*.") {
        let ok = !domain.is_empty()
            && domain
                .split('.')
                .all(|l| !l.is_empty() && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-'));
        return if ok { Ok(()) } else { Err(format!("wildcard scope {scope:?} is not *.DOMAIN")) };
    }
    if !scope.contains('/') {
        let is_host = scope.contains(['.', ':']) || scope == "localhost";
        let (name, port) = scope.rsplit_once(':').map_or((scope, None), |(n, p)| (n, Some(p)));
        let ok = is_host
            && !name.is_empty()
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
            && port.is_none_or(|p| p.parse::<u16>().is_ok());
        return if ok {
            Ok(())
        } else {
            Err(format!("scope {scope:?} is neither a host[:port] nor a full repository (write e.g. docker.io/library/{scope})"))
        };
    }
    let r = DockerRef::parse(scope).map_err(|e| format!("scope {scope:?}: {}", report::Line(&e)))?;
    if r.to_string() != scope {
        return Err(format!("scope {scope:?} must be written in full, as {r:?}", r = r.to_string()));
    }
    if r.tag.is_some() && r.digest.is_some() {
        return Err(format!("scope {scope:?} has both a tag and a digest"));
    }
    Ok(())
}

fn requirements(raw: Vec<RawRequirement>, place: &str, base: &Path) -> Result<Vec<Requirement>, PolicyError> {
    if raw.is_empty() {
        return Err(invalid(place, "an empty requirement list is not allowed (use [{\"type\":\"reject\"}] or [{\"type\":\"insecureAcceptAnything\"}])"));
    }
    raw.into_iter()
        .enumerate()
        .map(|(i, r)| requirement(r, &format!("{place} requirement {}", i + 1), base))
        .collect()
}

fn requirement(r: RawRequirement, place: &str, base: &Path) -> Result<Requirement, PolicyError> {
    Ok(match r {
        RawRequirement::InsecureAcceptAnything {} => Requirement::InsecureAcceptAnything,
        RawRequirement::Reject {} => Requirement::Reject,
        RawRequirement::SignedBy { key_type, key_path, key_paths, key_data, signed_identity } => {
            if key_type != "GPGKeys" {
                return Err(invalid(
                    place,
                    format!("signedBy keyType {key_type:?} is not supported (only GPGKeys)"),
                ));
            }
            Requirement::SignedBy {
                keys: key_sources(key_path, key_paths, key_data, place, base)?,
                identity: identity(signed_identity, SignedIdentity::MatchRepoDigestOrExact, place)?,
            }
        }
        RawRequirement::SigstoreSigned {
            key_path,
            key_paths,
            key_data,
            fulcio,
            rekor_public_key_path,
            rekor_public_key_paths,
            rekor_public_key_data,
            pki,
            signed_identity,
        } => {
            if fulcio.is_some() || pki.is_some() {
                return Err(invalid(place, "sigstoreSigned with fulcio/pki (keyless) is not supported; use keyPath, keyPaths or keyData"));
            }
            if rekor_public_key_path.is_some()
                || rekor_public_key_paths.is_some()
                || rekor_public_key_data.is_some()
            {
                return Err(invalid(place, "rekorPublicKey* is not supported: cloak verifies key-based signatures offline and cannot enforce a Rekor inclusion proof; remove it"));
            }
            Requirement::SigstoreSigned {
                keys: key_sources(key_path, key_paths, key_data, place, base)?,
                // The safe side where image-rs checks nothing: omitted = matchRepository.
                identity: identity(signed_identity, SignedIdentity::MatchRepository, place)?,
            }
        }
    })
}

fn key_sources(
    path: Option<String>,
    paths: Option<Vec<String>>,
    data: Option<String>,
    place: &str,
    base: &Path,
) -> Result<Vec<KeySource>, PolicyError> {
    let one_path = |p: String| -> Result<KeySource, PolicyError> {
        if p.starts_with("kbs://") {
            if !p.starts_with("kbs:///") {
                return Err(invalid(place, format!("key {p:?}: a KBS key is written kbs:///REPO/TYPE/TAG")));
            }
            return Ok(KeySource::Kbs(p));
        }
        if p.is_empty() {
            return Err(invalid(place, "keyPath is empty"));
        }
        Ok(KeySource::Path(base.join(p)))
    };
    match (path, paths, data) {
        (Some(p), None, None) => Ok(vec![one_path(p)?]),
        (None, Some(ps), None) if !ps.is_empty() => ps.into_iter().map(one_path).collect(),
        (None, Some(_), None) => Err(invalid(place, "keyPaths is empty")),
        (None, None, Some(d)) => match B64.decode(d.trim()) {
            Ok(bytes) => Ok(vec![KeySource::Data(bytes)]),
            Err(_) if d.trim_start().starts_with("-----BEGIN") => Err(invalid(
                place,
                "keyData must be the base64 of the key file (containers-policy.json(5)), not the PEM text itself",
            )),
            Err(_) => Err(invalid(place, "keyData is not base64")),
        },
        (None, None, None) => Err(invalid(place, "needs one of keyPath, keyPaths, keyData")),
        _ => Err(invalid(place, "exactly one of keyPath, keyPaths, keyData may be set")),
    }
}

fn identity(
    raw: Option<RawIdentity>,
    default: SignedIdentity,
    place: &str,
) -> Result<SignedIdentity, PolicyError> {
    let parse = |s: &str, what: &str| {
        DockerRef::parse(s)
            .map_err(|e| invalid(place, format!("signedIdentity {what} {s:?}: {}", report::Line(&e))))
    };
    Ok(match raw {
        None => default,
        Some(RawIdentity::MatchExact {}) => SignedIdentity::MatchExact,
        Some(RawIdentity::MatchRepoDigestOrExact {}) => SignedIdentity::MatchRepoDigestOrExact,
        Some(RawIdentity::MatchRepository {}) => SignedIdentity::MatchRepository,
        Some(RawIdentity::ExactReference { docker_reference }) => {
            let r = parse(&docker_reference, "dockerReference")?;
            if r.is_name_only() {
                return Err(invalid(
                    place,
                    format!(
                        "exactReference {docker_reference:?} needs a tag or digest (or use exactRepository)"
                    ),
                ));
            }
            SignedIdentity::ExactReference(r)
        }
        Some(RawIdentity::ExactRepository { docker_repository }) => {
            let r = parse(&docker_repository, "dockerRepository")?;
            if !r.is_name_only() {
                return Err(invalid(
                    place,
                    format!("exactRepository {docker_repository:?} must not have a tag or digest"),
                ));
            }
            SignedIdentity::ExactRepository(r)
        }
        Some(RawIdentity::RemapIdentity { prefix, signed_prefix }) => {
            for (what, p) in [("prefix", &prefix), ("signedPrefix", &signed_prefix)] {
                if p.starts_with("*.") {
                    return Err(invalid(
                        place,
                        format!("remapIdentity {what} {p:?}: wildcards are not supported"),
                    ));
                }
                validate_docker_scope(p).map_err(|e| invalid(place, format!("remapIdentity {what}: {e}")))?;
                if p.is_empty()
                    || p.contains(['@'])
                    || p.rsplit('/').next().is_some_and(|last| p.contains('/') && last.contains(':'))
                {
                    return Err(invalid(place, format!("remapIdentity {what} {p:?} must be host[:port][/namespace…] without tag or digest")));
                }
            }
            SignedIdentity::RemapIdentity { prefix, signed_prefix }
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn p(s: &str) -> Result<Policy, PolicyError> {
        Policy::parse(s.as_bytes(), Path::new("/etc/containers"))
    }

    fn docker(s: &str) -> ImageIdentity {
        ImageIdentity::Docker(DockerRef::parse(s).unwrap())
    }

    const FULL: &str = r#"{
      "default": [{"type": "reject"}],
      "transports": {
        "docker": {
          "127.0.0.1:5000/app/hello:v1": [{"type": "reject"}],
          "127.0.0.1:5000/app/hello": [{"type": "sigstoreSigned", "keyPath": "keys/app.pub"}],
          "127.0.0.1:5000/app": [{"type": "signedBy", "keyType": "GPGKeys", "keyPaths": ["/k/a.gpg", "kbs:///default/gpg/a"]}],
          "127.0.0.1:5000": [{"type": "insecureAcceptAnything"}],
          "*.example.com": [{"type": "sigstoreSigned", "keyData": "Zm9v", "signedIdentity": {"type": "matchExact"}}],
          "": [{"type": "reject"}]
        },
        "oci": {"/layouts/signed": [{"type": "sigstoreSigned", "keyPath": "kbs:///default/cosign-public-key/test"}]},
        "docker-daemon": {"": [{"type": "insecureAcceptAnything"}]}
      }}"#;

    #[test]
    fn scope_lookup_most_specific_first() {
        let pol = p(FULL).unwrap();
        let name = |s: &str| pol.scope_for(&docker(s)).to_string();
        assert_eq!(
            name("127.0.0.1:5000/app/hello:v1"),
            r#"transports.docker["127.0.0.1:5000/app/hello:v1"]"#
        );
        assert_eq!(name("127.0.0.1:5000/app/hello:v2"), r#"transports.docker["127.0.0.1:5000/app/hello"]"#);
        assert_eq!(name("127.0.0.1:5000/app/other:v1"), r#"transports.docker["127.0.0.1:5000/app"]"#);
        assert_eq!(name("127.0.0.1:5000/x"), r#"transports.docker["127.0.0.1:5000"]"#);
        assert_eq!(name("reg.example.com:443/x"), r#"transports.docker["*.example.com"]"#);
        assert_eq!(name("other.io/x"), r#"transports.docker[""]"#);
        let s = pol.scope_for(&docker("127.0.0.1:5000/app/hello:v2"));
        assert_eq!(
            s.requirements,
            &[Requirement::SigstoreSigned {
                keys: vec![KeySource::Path("/etc/containers/keys/app.pub".into())],
                identity: SignedIdentity::MatchRepository,
            }]
        );
        let s = pol
            .scope_for(&ImageIdentity::Layout { dir: "/layouts/signed/img".into(), tag: Some("v1".into()) });
        assert_eq!(s.to_string(), r#"transports.oci["/layouts/signed"]"#);
        let s = pol.scope_for(&ImageIdentity::Layout { dir: "/elsewhere".into(), tag: None });
        assert_eq!(s.to_string(), "default");
        match &pol.scope_for(&docker("127.0.0.1:5000/app/x")).requirements[0] {
            Requirement::SignedBy { keys, identity } => {
                assert_eq!(identity, &SignedIdentity::MatchRepoDigestOrExact);
                assert_eq!(keys[1], KeySource::Kbs("kbs:///default/gpg/a".into()));
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn digest_scope_before_tag_scope() {
        let d = "sha256:3c4b0491ad42ed94682815ca7a46e4a5595792d857cec1410833a9d226bb948e";
        let pol = p(&format!(
            r#"{{"default":[{{"type":"reject"}}],"transports":{{"docker":{{"h.io/a@{d}":[{{"type":"insecureAcceptAnything"}}]}}}}}}"#
        ))
        .unwrap();
        assert_eq!(
            pol.scope_for(&docker(&format!("h.io/a:v1@{d}"))).requirements,
            &[Requirement::InsecureAcceptAnything]
        );
        assert_eq!(pol.scope_for(&docker("h.io/a:v1")).requirements, &[Requirement::Reject]);
    }

    #[test]
    fn refusals_name_the_problem() {
        let cases = [
            (r#"{"transports":{}}"#, "default"),
            (r#"{"default":[]}"#, "empty requirement list"),
            (r#"{"default":[{"type":"rejectt"}]}"#, "rejectt"),
            (r#"{"default":[{"type":"reject","x":1}]}"#, "x"),
            (r#"{"default":[{"type":"sigstoreSigned"}]}"#, "needs one of keyPath"),
            (r#"{"default":[{"type":"sigstoreSigned","keyPath":"a","keyData":"Zm9v"}]}"#, "exactly one"),
            (
                r#"{"default":[{"type":"sigstoreSigned","keyData":"-----BEGIN PUBLIC KEY-----"}]}"#,
                "base64 of the key file",
            ),
            (r#"{"default":[{"type":"sigstoreSigned","fulcio":{}}]}"#, "keyless"),
            (r#"{"default":[{"type":"sigstoreSigned","keyPath":"a","rekorPublicKeyPath":"r"}]}"#, "Rekor"),
            (r#"{"default":[{"type":"signedBy","keyType":"X509","keyPath":"a"}]}"#, "X509"),
            (
                r#"{"default":[{"type":"sigstoreSigned","keyPath":"a","signedIdentity":{"type":"exactReference","dockerReference":"h.io/a"}}]}"#,
                "needs a tag",
            ),
            (
                r#"{"default":[{"type":"sigstoreSigned","keyPath":"a","signedIdentity":{"type":"exactRepository","dockerRepository":"h.io/a:v1"}}]}"#,
                "must not have a tag",
            ),
            (
                r#"{"default":[{"type":"sigstoreSigned","keyPath":"a","signedIdentity":{"type":"remapIdentity","prefix":"*.a.io","signedPrefix":"b.io"}}]}"#,
                "wildcards",
            ),
            (
                r#"{"default":[{"type":"sigstoreSigned","keyPath":"a","signedIdentity":{"type":"matchSomething"}}]}"#,
                "matchSomething",
            ),
            (
                r#"{"default":[{"type":"reject"}],"transports":{"docker":{"busybox":[{"type":"reject"}]}}}"#,
                "docker.io/library/busybox",
            ),
            (
                r#"{"default":[{"type":"reject"}],"transports":{"docker":{"docker.io/library/busybox":[]}}}"#,
                "transports.docker[\"docker.io/library/busybox\"]",
            ),
            (r#"{"default":[{"type":"sigstoreSigned","keyPath":"kbs://host/a/b/c"}]}"#, "kbs:///"),
        ];
        for (json, needle) in cases {
            let e = p(json).unwrap_err();
            assert_eq!(report::repeated_source(&e), None, "{json}");
            let e = report::line(&e);
            assert!(e.contains(needle), "{json}: {e}");
        }
        assert!(matches!(
            Policy::parse(&vec![b' '; MAX_POLICY_SIZE + 1], Path::new("/")),
            Err(PolicyError::TooLarge { .. })
        ));
    }

    #[test]
    fn every_identity_form_parses() {
        let pol = p(r#"{"default":[
          {"type":"sigstoreSigned","keyPath":"a","signedIdentity":{"type":"matchExact"}},
          {"type":"sigstoreSigned","keyPath":"a","signedIdentity":{"type":"matchRepoDigestOrExact"}},
          {"type":"sigstoreSigned","keyPath":"a","signedIdentity":{"type":"matchRepository"}},
          {"type":"sigstoreSigned","keyPath":"a","signedIdentity":{"type":"exactReference","dockerReference":"h.io/a:v1"}},
          {"type":"sigstoreSigned","keyPath":"a","signedIdentity":{"type":"exactRepository","dockerRepository":"h.io/a"}},
          {"type":"sigstoreSigned","keyPath":"a","signedIdentity":{"type":"remapIdentity","prefix":"m.io/ns","signedPrefix":"h.io"}},
          {"type":"signedBy","keyType":"GPGKeys","keyPath":"a"}]}"#)
        .unwrap();
        let ids: Vec<String> = pol.default.iter().map(|r| r.to_string()).collect();
        assert_eq!(
            ids,
            [
                "sigstoreSigned, signedIdentity matchExact",
                "sigstoreSigned, signedIdentity matchRepoDigestOrExact",
                "sigstoreSigned, signedIdentity matchRepository",
                "sigstoreSigned, signedIdentity exactReference h.io/a:v1",
                "sigstoreSigned, signedIdentity exactRepository h.io/a",
                "sigstoreSigned, signedIdentity remapIdentity m.io/ns -> h.io",
                "signedBy, signedIdentity matchRepoDigestOrExact",
            ]
        );
    }
}
