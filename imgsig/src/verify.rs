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
    #[error("{location}")]
    Source {
        location: String,
        #[source]
        source: Box<oci::OciError>,
    },
    #[error("{location}")]
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
    fn cosign<'a>(&'a self, digest: &'a Digest)
        -> BoxFuture<'a, Result<Found<FetchedSignature>, FetchError>>;
    /// GPG simple signatures of `digest` (raw OpenPGP messages).
    fn gpg<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Result<Found<Vec<u8>>, FetchError>>;
}

/// A key could not be loaded.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct KeyLoadError {
    pub key: String,
    pub reason: String,
    /// For a `kbs:///` key, the fetcher's own error (the error's `source()`), so that a
    /// caller can tell a key the broker does not have (or will not release) from a broker
    /// it cannot reach. `reason` then says only which step failed.
    #[source]
    pub cause: Option<ResourceError>,
}

/// Why a `kbs:///` resource could not be fetched: the fetcher's own error (the guest's
/// KBS client error, in cloak-pull and cloak-cdh), for callers to downcast.
pub type ResourceError = Box<dyn std::error::Error + Send + Sync>;

/// Loads the bytes of trusted keys.
pub trait KeyLoader: Send + Sync {
    fn load<'a>(&'a self, src: &'a KeySource) -> BoxFuture<'a, Result<Vec<u8>, KeyLoadError>>;
}

/// Fetches `kbs:///…` resources (after attestation).
pub trait ResourceFetcher: Send + Sync {
    fn fetch<'a>(&'a self, uri: &'a str) -> BoxFuture<'a, Result<Vec<u8>, ResourceError>>;
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
            let err = |reason: String| KeyLoadError { key: src.describe(), reason, cause: None };
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
                    Some(f) => f.fetch(uri).await.map_err(|e| KeyLoadError {
                        key: src.describe(),
                        reason: "fetching it from the KBS failed".into(),
                        cause: Some(e),
                    }),
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
    #[error("no key could be loaded")]
    Key(#[source] KeyLoadError),
    #[error("bad key")]
    BadKey(#[source] crate::keys::KeyError),
    #[error("fetching signatures failed")]
    Fetch(#[source] FetchError),
    #[error("no signature at {location} was accepted ({}); keys tried: {}", each_reason_once(rejected), keys.join(", "))]
    NoneAccepted { location: String, rejected: Vec<String>, keys: Vec<String> },
}

/// Why each signature was refused (`NAME: REASON`), a reason shared by several said once:
/// `signature layer 0, signature layer 1: not signed by any trusted key`.
fn each_reason_once(rejected: &[String]) -> String {
    let mut grouped: Vec<(Vec<&str>, &str)> = Vec::new();
    for r in rejected {
        let (name, why) = r.split_once(": ").unwrap_or(("", r.as_str()));
        match grouped.iter_mut().find(|(_, w)| *w == why) {
            Some((names, _)) => names.push(name),
            None => grouped.push((vec![name], why)),
        }
    }
    let parts: Vec<String> = grouped
        .into_iter()
        .map(|(names, why)| {
            let names: Vec<&str> = names.into_iter().filter(|n| !n.is_empty()).collect();
            if names.is_empty() {
                why.to_string()
            } else {
                format!("{}: {why}", names.join(", "))
            }
        })
        .collect();
    parts.join("; ")
}

/// A refusal, naming the scope and requirement that refused.
#[derive(Debug, thiserror::Error)]
#[error("signature policy refused {image} (manifest {digest}): {scope} requirement {number} ({requirement})")]
pub struct Refusal {
    pub image: String,
    pub digest: Digest,
    pub scope: String,
    /// 1-based position of the requirement in its scope.
    pub number: usize,
    pub requirement: String,
    #[source]
    pub reason: Box<RefusalReason>,
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
            reason: Box::new(reason),
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
                let checked =
                    found.signatures.iter().map(|s| check_cosign(s, &pubkeys, digest, image, identity));
                let line = first_accepted(checked).map_err(|rejected| {
                    refuse(RefusalReason::NoneAccepted {
                        location: found.location.clone(),
                        rejected,
                        keys: pubkeys.iter().map(describe_key).collect(),
                    })
                })?;
                accepted.push(line);
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
                // gpg runs as a process: the signatures are checked off the async threads.
                let (sigs_, digest_, image_, identity_) =
                    (found.signatures.clone(), digest.clone(), image.clone(), identity.clone());
                let checked = tokio::task::spawn_blocking(move || {
                    first_accepted(sigs_.iter().enumerate().map(|(n, s)| {
                        let name = format!("signature-{}", n + 1);
                        let v = gpg::verify(s, &rings).map_err(|e| format!("{name}: {e}"))?;
                        let key = format!("GPG key {}", v.fingerprint);
                        check_claims(&v.payload, ATOMIC_TYPE, &digest_, &image_, &identity_, &name, &key)
                    }))
                })
                .await
                .unwrap_or_else(|e| Err(vec![format!("signature check: {e}")]));
                let line = checked.map_err(|rejected| {
                    refuse(RefusalReason::NoneAccepted {
                        location: found.location.clone(),
                        rejected,
                        keys: sources.iter().map(KeySource::describe).collect(),
                    })
                })?;
                accepted.push(line);
            }
        }
    }
    Ok(Decision { scope: scope_name, accepted })
}

/// The first signature a requirement accepts (checks stop there), else why each one was
/// refused, in order.
fn first_accepted(checks: impl IntoIterator<Item = Result<String, String>>) -> Result<String, Vec<String>> {
    let mut rejected = Vec::new();
    for c in checks {
        match c {
            Ok(line) => return Ok(line),
            Err(why) => rejected.push(why),
        }
    }
    Err(rejected)
}

fn describe_key(k: &PublicKey) -> String {
    format!("{} ({} {})", k.origin, k.kind(), k.fingerprint())
}

async fn load_public_keys(
    keys: &dyn KeyLoader,
    sources: &[KeySource],
) -> Result<Vec<PublicKey>, RefusalReason> {
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
    let p = Payload::parse(payload, kind).map_err(|e| format!("{name} (by {key}): {}", report::Line(&e)))?;
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use std::path::Path;

    use base64::Engine as _;

    use super::*;
    use crate::identity::DockerRef;
    use crate::keys::SigningKey;

    const TD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata");

    struct Mem(Vec<FetchedSignature>);

    impl SignatureSource for Mem {
        fn cosign<'a>(&'a self, _: &'a Digest) -> BoxFuture<'a, Result<Found<FetchedSignature>, FetchError>> {
            Box::pin(async move { Ok(Found { location: "mem".into(), signatures: self.0.clone() }) })
        }
        fn gpg<'a>(&'a self, _: &'a Digest) -> BoxFuture<'a, Result<Found<Vec<u8>>, FetchError>> {
            Box::pin(async move { Ok(Found { location: "mem-gpg".into(), signatures: vec![] }) })
        }
    }

    struct FakeKbs;

    impl ResourceFetcher for FakeKbs {
        fn fetch<'a>(&'a self, uri: &'a str) -> BoxFuture<'a, Result<Vec<u8>, ResourceError>> {
            Box::pin(async move {
                match uri {
                    "kbs:///default/cosign-public-key/test" => Ok(std::fs::read(format!("{TD}/cosign.pub"))?),
                    _ => Err("the broker has no such resource".into()),
                }
            })
        }
    }

    /// Issue 27: a refusal shown as the binaries show it, each clause once.
    trait SaidOnce {
        fn said_once(&self) -> String;
    }

    impl SaidOnce for Refusal {
        fn said_once(&self) -> String {
            let line = report::line(self);
            assert_eq!(report::repeated_source(self), None, "{line}");
            assert_eq!(report::repeated_clause(&line), None, "{line}");
            line
        }
    }

    fn key(name: &str) -> SigningKey {
        let pw: Option<&[u8]> = if name == "cosign.key" { Some(b"cloak-test") } else { None };
        SigningKey::from_pem(&std::fs::read(format!("{TD}/{name}")).unwrap(), pw, name).unwrap()
    }

    fn sig(k: &str, identity: &str, digest: &Digest) -> FetchedSignature {
        let payload = Payload::cosign_bytes(identity, digest);
        FetchedSignature { index: 0, signature: key(k).sign(&payload).unwrap(), payload }
    }

    fn policy(reqs: &str) -> Policy {
        Policy::parse(
            format!(r#"{{"default":[{{"type":"reject"}}],"transports":{{"docker":{{"h.io/app":{reqs}}}}}}}"#)
                .as_bytes(),
            Path::new(TD),
        )
        .unwrap()
    }

    fn image(s: &str) -> ImageIdentity {
        ImageIdentity::Docker(DockerRef::parse(s).unwrap())
    }

    fn eval(p: &Policy, img: &str, d: &Digest, sigs: Vec<FetchedSignature>) -> Result<Decision, Refusal> {
        let keys = StandardKeys { kbs: Some(Arc::new(FakeKbs)) };
        futures::executor::block_on(evaluate(p, &image(img), d, &Mem(sigs), &keys))
    }

    const COSIGN: &str = r#"[{"type":"sigstoreSigned","keyPath":"cosign.pub"}]"#;

    #[test]
    fn refusal_says_each_reason_once() {
        // Two signatures by a key the policy does not trust: the reason is said once.
        let d = Digest::sha256_of(b"m");
        let mut second = sig("p384.key", "h.io/app", &d);
        second.index = 1;
        let e = eval(&policy(COSIGN), "h.io/app:v1", &d, vec![sig("p384.key", "h.io/app", &d), second])
            .unwrap_err()
            .said_once();
        assert!(e.contains("(signature layer 0, signature layer 1: "), "{e}");
    }

    #[test]
    fn accepts_a_good_signature_and_says_how() {
        let d = Digest::sha256_of(b"m");
        let ok = eval(&policy(COSIGN), "h.io/app:v1", &d, vec![sig("cosign.key", "h.io/app", &d)]).unwrap();
        assert_eq!(ok.scope, r#"transports.docker["h.io/app"]"#);
        assert!(ok.accepted[0].contains("ECDSA P-256"), "{:?}", ok.accepted);
    }

    #[test]
    fn refuses_unsigned_other_key_other_digest_other_identity() {
        let d = Digest::sha256_of(b"m");
        let p = policy(COSIGN);
        let e = eval(&p, "h.io/app:v1", &d, vec![]).unwrap_err();
        assert!(matches!(*e.reason, RefusalReason::Unsigned { .. }), "{e}");

        let e = eval(&p, "h.io/app:v1", &d, vec![sig("p384.key", "h.io/app", &d)]).unwrap_err().said_once();
        assert!(e.contains("not made by any of the keys tried"), "{e}");
        assert!(e.contains("keyPath") && e.contains("ECDSA P-256"), "names the keys tried: {e}");

        let other = Digest::sha256_of(b"other");
        let e =
            eval(&p, "h.io/app:v1", &d, vec![sig("cosign.key", "h.io/app", &other)]).unwrap_err().said_once();
        assert!(e.contains(&format!("signs manifest {other}, but the manifest pulled is {d}")), "{e}");

        // Omitted signedIdentity = matchRepository: a signature for app-a never admits app-b.
        let p = Policy::parse(
            br#"{"default":[{"type":"sigstoreSigned","keyPath":"cosign.pub"}]}"#,
            Path::new(TD),
        )
        .unwrap();
        let e =
            eval(&p, "h.io/app-b:v1", &d, vec![sig("cosign.key", "h.io/app-a", &d)]).unwrap_err().said_once();
        assert!(e.contains("claims identity h.io/app-a") && e.contains("matchRepository"), "{e}");
        assert!(e.contains("default requirement 1"), "names scope and requirement: {e}");
    }

    #[test]
    fn one_good_signature_among_bad_ones_is_enough() {
        let d = Digest::sha256_of(b"m");
        let sigs = vec![sig("rsa.key", "h.io/app", &d), sig("cosign.key", "h.io/app", &d)];
        assert!(eval(&policy(COSIGN), "h.io/app:v1", &d, sigs).is_ok());
    }

    #[test]
    fn every_requirement_must_hold() {
        let d = Digest::sha256_of(b"m");
        let both = policy(
            r#"[{"type":"sigstoreSigned","keyPath":"cosign.pub"},{"type":"sigstoreSigned","keyPath":"ed25519.pub"}]"#,
        );
        let e = eval(&both, "h.io/app:v1", &d, vec![sig("cosign.key", "h.io/app", &d)]).unwrap_err();
        assert_eq!(e.number, 2, "{e}");
        let ok = eval(
            &both,
            "h.io/app:v1",
            &d,
            vec![sig("cosign.key", "h.io/app", &d), sig("ed25519.key", "h.io/app", &d)],
        );
        assert_eq!(ok.unwrap().accepted.len(), 2);
        let e = eval(
            &policy(r#"[{"type":"insecureAcceptAnything"},{"type":"reject"}]"#),
            "h.io/app:v1",
            &d,
            vec![],
        )
        .unwrap_err();
        assert!(matches!(*e.reason, RefusalReason::Reject));
    }

    #[test]
    fn key_data_kbs_keys_and_every_key_type() {
        let d = Digest::sha256_of(b"m");
        let pem = std::fs::read(format!("{TD}/rsa.pub")).unwrap();
        let data = base64::engine::general_purpose::STANDARD.encode(pem);
        let p = policy(&format!(r#"[{{"type":"sigstoreSigned","keyData":"{data}"}}]"#));
        assert!(eval(&p, "h.io/app:v1", &d, vec![sig("rsa.key", "h.io/app", &d)]).is_ok());
        let kbs = policy(r#"[{"type":"sigstoreSigned","keyPath":"kbs:///default/cosign-public-key/test"}]"#);
        assert!(eval(&kbs, "h.io/app:v1", &d, vec![sig("cosign.key", "h.io/app", &d)]).is_ok());
        let missing =
            policy(r#"[{"type":"sigstoreSigned","keyPath":"kbs:///default/cosign-public-key/nope"}]"#);
        let e = eval(&missing, "h.io/app:v1", &d, vec![sig("cosign.key", "h.io/app", &d)])
            .unwrap_err()
            .said_once();
        assert!(e.contains("kbs:///default/cosign-public-key/nope"), "{e}");
        let paths = policy(r#"[{"type":"sigstoreSigned","keyPaths":["p384.pub","ed25519.pub"]}]"#);
        assert!(eval(&paths, "h.io/app:v1", &d, vec![sig("ed25519.key", "h.io/app", &d)]).is_ok());
        assert!(eval(&paths, "h.io/app:v1", &d, vec![sig("p384.key", "h.io/app", &d)]).is_ok());
        assert!(eval(&paths, "h.io/app:v1", &d, vec![sig("rsa.key", "h.io/app", &d)]).is_err());
    }

    #[test]
    fn a_layout_has_no_identity_unless_the_policy_names_one() {
        let d = Digest::sha256_of(b"m");
        let p = |id: &str| {
            Policy::parse(
                format!(r#"{{"default":[{{"type":"sigstoreSigned","keyPath":"cosign.pub"{id}}}]}}"#)
                    .as_bytes(),
                Path::new(TD),
            )
            .unwrap()
        };
        let layout = ImageIdentity::Layout { dir: "/l".into(), tag: Some("v1".into()) };
        let run = |pol: &Policy| {
            futures::executor::block_on(evaluate(
                pol,
                &layout,
                &d,
                &Mem(vec![sig("cosign.key", "h.io/app", &d)]),
                &StandardKeys::default(),
            ))
        };
        assert!(run(&p("")).is_err());
        assert!(
            run(&p(r#","signedIdentity":{"type":"exactRepository","dockerRepository":"h.io/app"}"#)).is_ok()
        );
    }

    #[test]
    fn signed_by_without_lookaside_is_unsigned() {
        let d = Digest::sha256_of(b"m");
        let p = policy(r#"[{"type":"signedBy","keyType":"GPGKeys","keyPath":"cosign.pub"}]"#);
        let e = eval(&p, "h.io/app:v1", &d, vec![]).unwrap_err();
        assert!(matches!(*e.reason, RefusalReason::Unsigned { .. }), "{e}");
    }
}
