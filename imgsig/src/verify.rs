//! Policy evaluation: the scope that applies to an image, then each of its
//! requirements against the signatures found for the manifest digest that is
//! about to be pulled. All requirements must hold; a signing requirement holds
//! when at least one signature verifies under one of its keys, signs exactly
//! this manifest digest and claims an identity its `signedIdentity` accepts.
//!
//! Fetching signatures and loading keys are seams ([`SignatureSource`],
//! [`KeyLoader`]) so the core runs without I/O in tests and benchmarks.

use std::sync::Arc;

use futures::future::BoxFuture;
use oci::Digest;

use crate::gpg;
use crate::identity::SignedIdentity;
use crate::keys::PublicKey;
use crate::payload::{Payload, ATOMIC_TYPE, COSIGN_TYPE};
use crate::policy::{ImageIdentity, KeySource, Policy, Requirement};

/// One cosign signature as fetched: the payload blob (already checked against
/// its descriptor digest) and the decoded signature.
#[derive(Debug, Clone)]
pub struct FetchedSignature {
    /// Layer index in the signature manifest.
    pub index: usize,
    pub payload: Vec<u8>,
    pub signature: Vec<u8>,
}

/// The signatures found for one manifest digest, and where they were looked for.
#[derive(Debug, Clone, Default)]
pub struct Found<T> {
    /// `127.0.0.1:5000/app:sha256-….sig`, `file:///sigstore/app@sha256=…`.
    pub location: String,
    pub signatures: Vec<T>,
}

/// Signatures could not be fetched (not the same as "there are none").
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("{location}: {source}")]
    Source {
        location: String,
        #[source]
        source: oci::OciError,
    },
    #[error("{location}: {source}")]
    Manifest {
        location: String,
        #[source]
        source: crate::cosign::SignatureManifestError,
    },
    #[error("{location}: {reason}")]
    Other { location: String, reason: String },
}

/// Where signatures come from (the image's registry or layout, a lookaside store).
pub trait SignatureSource: Send + Sync {
    /// cosign signatures (`sha256-<hex>.sig`) of `digest`; an empty list when there are none.
    fn cosign<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Result<Found<FetchedSignature>, FetchError>>;
    /// GPG simple signatures of `digest` (raw OpenPGP messages).
    fn gpg<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Result<Found<Vec<u8>>, FetchError>>;
}

/// A key could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct KeyLoadError {
    pub key: String,
    pub reason: String,
}

/// Loads the bytes of trusted keys.
pub trait KeyLoader: Send + Sync {
    fn load<'a>(&'a self, src: &'a KeySource) -> BoxFuture<'a, Result<Vec<u8>, KeyLoadError>>;
}

/// Fetches `kbs:///…` resources (after attestation).
pub trait ResourceFetcher: Send + Sync {
    fn fetch<'a>(&'a self, uri: &'a str) -> BoxFuture<'a, Result<Vec<u8>, String>>;
}

/// Keys from files, inline data, and (when given) the KBS.
#[derive(Clone, Default)]
pub struct StandardKeys {
    pub kbs: Option<Arc<dyn ResourceFetcher>>,
}

/// Largest key file read.
const MAX_KEY_SIZE: u64 = 1 << 20;

impl KeyLoader for StandardKeys {
    fn load<'a>(&'a self, src: &'a KeySource) -> BoxFuture<'a, Result<Vec<u8>, KeyLoadError>> {
        Box::pin(async move {
            let err = |reason: String| KeyLoadError { key: src.describe(), reason };
            match src {
                KeySource::Data(d) => Ok(d.clone()),
                KeySource::Path(p) => {
                    let meta = std::fs::metadata(p).map_err(|e| err(e.to_string()))?;
                    if meta.len() > MAX_KEY_SIZE {
                        return Err(err(format!("{} bytes is too large for a key", meta.len())));
                    }
                    std::fs::read(p).map_err(|e| err(e.to_string()))
                }
                KeySource::Kbs(uri) => match &self.kbs {
                    Some(f) => f.fetch(uri).await.map_err(err),
                    None => Err(err("a kbs:/// key needs a KBS (--kbs URL)".into())),
                },
            }
        })
    }
}

/// Why a policy refused an image.
#[derive(Debug, thiserror::Error)]
pub enum RefusalReason {
    #[error("the scope rejects every image (type reject)")]
    Reject,
    #[error("the image is not signed: no signatures at {location}")]
    Unsigned { location: String },
    #[error("no key could be loaded: {0}")]
    Key(#[source] KeyLoadError),
    #[error("bad key: {0}")]
    BadKey(#[source] crate::keys::KeyError),
    #[error("fetching signatures failed: {0}")]
    Fetch(#[source] FetchError),
    #[error("no signature at {location} was accepted ({}); keys tried: {}", rejected.join("; "), keys.join(", "))]
    NoneAccepted { location: String, rejected: Vec<String>, keys: Vec<String> },
}

/// A refusal, naming the scope and requirement that refused.
#[derive(Debug, thiserror::Error)]
#[error("signature policy refused {image} (manifest {digest}): {scope} requirement {number} ({requirement}): {reason}")]
pub struct Refusal {
    pub image: String,
    pub digest: Digest,
    pub scope: String,
    /// 1-based position of the requirement in its scope.
    pub number: usize,
    pub requirement: String,
    #[source]
    pub reason: RefusalReason,
}

/// What the policy accepted, for logs and `--json`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Decision {
    pub scope: String,
    /// One line per requirement: how it was met.
    pub accepted: Vec<String>,
}

/// Evaluates `policy` for pulling `image` at manifest `digest`.
pub async fn evaluate(
    policy: &Policy,
    image: &ImageIdentity,
    digest: &Digest,
    sigs: &dyn SignatureSource,
    keys: &dyn KeyLoader,
) -> Result<Decision, Refusal> {
    let scope = policy.scope_for(image);
    let scope_name = scope.to_string();
    let mut cosign: Option<Found<FetchedSignature>> = None;
    let mut gpg_sigs: Option<Found<Vec<u8>>> = None;
    let mut accepted = Vec::new();
    for (i, req) in scope.requirements.iter().enumerate() {
        let refuse = |reason| Refusal {
            image: image.to_string(),
            digest: digest.clone(),
            scope: scope_name.clone(),
            number: i + 1,
            requirement: req.to_string(),
            reason,
        };
        match req {
            Requirement::InsecureAcceptAnything => accepted.push("insecureAcceptAnything".to_string()),
            Requirement::Reject => return Err(refuse(RefusalReason::Reject)),
            Requirement::SigstoreSigned { keys: sources, identity } => {
                let pubkeys = load_public_keys(keys, sources).await.map_err(refuse)?;
                if cosign.is_none() {
                    cosign = Some(sigs.cosign(digest).await.map_err(|e| refuse(RefusalReason::Fetch(e)))?);
                }
                let found = cosign.as_ref().ok_or_else(|| refuse(RefusalReason::Reject))?;
                if found.signatures.is_empty() {
                    return Err(refuse(RefusalReason::Unsigned { location: found.location.clone() }));
                }
                let mut rejected = Vec::new();
                let mut ok = None;
                for s in &found.signatures {
                    match check_cosign(s, &pubkeys, digest, image, identity) {
                        Ok(line) => {
                            ok = Some(line);
                            break;
                        }
                        Err(why) => rejected.push(why),
                    }
                }
                match ok {
                    Some(line) => accepted.push(line),
                    None => {
                        return Err(refuse(RefusalReason::NoneAccepted {
                            location: found.location.clone(),
                            rejected,
                            keys: pubkeys.iter().map(describe_key).collect(),
                        }))
                    }
                }
            }
            Requirement::SignedBy { keys: sources, identity } => {
                let mut rings = Vec::new();
                for s in sources {
                    rings.push(keys.load(s).await.map_err(|e| refuse(RefusalReason::Key(e)))?);
                }
                if gpg_sigs.is_none() {
                    gpg_sigs = Some(sigs.gpg(digest).await.map_err(|e| refuse(RefusalReason::Fetch(e)))?);
                }
                let found = gpg_sigs.as_ref().ok_or_else(|| refuse(RefusalReason::Reject))?;
                if found.signatures.is_empty() {
                    return Err(refuse(RefusalReason::Unsigned { location: found.location.clone() }));
                }
                let mut rejected = Vec::new();
                let mut ok = None;
                for (n, s) in found.signatures.iter().enumerate() {
                    let rings = rings.clone();
                    let s2 = s.clone();
                    let verified = tokio::task::spawn_blocking(move || gpg::verify(&s2, &rings))
                        .await
                        .map_err(|e| gpg::GpgError::Run(e.to_string()))
                        .and_then(|r| r);
                    match verified.map_err(|e| format!("signature-{}: {e}", n + 1)).and_then(|v| {
                        check_claims(&v.payload, ATOMIC_TYPE, digest, image, identity, &format!("signature-{}", n + 1), &format!("GPG key {}", v.fingerprint))
                    }) {
                        Ok(line) => {
                            ok = Some(line);
                            break;
                        }
                        Err(why) => rejected.push(why),
                    }
                }
                match ok {
                    Some(line) => accepted.push(line),
                    None => {
                        return Err(refuse(RefusalReason::NoneAccepted {
                            location: found.location.clone(),
                            rejected,
                            keys: sources.iter().map(KeySource::describe).collect(),
                        }))
                    }
                }
            }
        }
    }
    Ok(Decision { scope: scope_name, accepted })
}

fn describe_key(k: &PublicKey) -> String {
    format!("{} ({} {})", k.origin, k.kind(), k.fingerprint())
}

async fn load_public_keys(keys: &dyn KeyLoader, sources: &[KeySource]) -> Result<Vec<PublicKey>, RefusalReason> {
    let mut out = Vec::new();
    for s in sources {
        let bytes = keys.load(s).await.map_err(RefusalReason::Key)?;
        out.push(PublicKey::from_pem(&bytes, s.describe()).map_err(RefusalReason::BadKey)?);
    }
    Ok(out)
}

fn check_cosign(
    s: &FetchedSignature,
    keys: &[PublicKey],
    digest: &Digest,
    image: &ImageIdentity,
    identity: &SignedIdentity,
) -> Result<String, String> {
    let name = format!("signature layer {}", s.index);
    let key = keys
        .iter()
        .find(|k| k.verify(&s.payload, &s.signature))
        .ok_or_else(|| format!("{name}: not made by any of the keys tried"))?;
    check_claims(&s.payload, COSIGN_TYPE, digest, image, identity, &name, &describe_key(key))
}

/// After the signature verified: what the payload claims must be what is pulled.
fn check_claims(
    payload: &[u8],
    kind: &'static str,
    digest: &Digest,
    image: &ImageIdentity,
    identity: &SignedIdentity,
    name: &str,
    key: &str,
) -> Result<String, String> {
    let p = Payload::parse(payload, kind).map_err(|e| format!("{name} (by {key}): {e}"))?;
    if &p.manifest_digest != digest {
        return Err(format!(
            "{name} (by {key}) signs manifest {}, but the manifest pulled is {digest}",
            p.manifest_digest
        ));
    }
    if !identity.matches(image.docker(), &p.docker_reference) {
        return Err(format!(
            "{name} (by {key}) claims identity {}, which signedIdentity {identity} does not accept for {image}",
            p.docker_reference
        ));
    }
    Ok(format!("{name} by {key}, identity {}", p.docker_reference))
}
