//! The pull policy (`--policy FILE`, YAML), checked before any layer is fetched.
//!
//! ```yaml
//! require_digest: true              # IMAGE must be pinned by @sha256:...
//! require_encrypted_layers: true    # every layer must be +encrypted
//! allowed_registries: ["127.0.0.1:5000"]   # docker:// hosts; empty or absent = any
//! allowed_key_schemes: ["jwe", "provider.attestation-agent"]  # absent = any
//! ```
//! Unknown keys are an error, so a typo cannot silently weaken the policy.

use std::collections::BTreeMap;
use std::path::Path;

use oci::Digest;
use ocicrypt::annotations::KEYS_PREFIX;
use serde::Deserialize;

/// A parsed pull policy (what images and layer keys a pull accepts; not the
/// broker's key-release policy). The default allows everything.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PullPolicy {
    /// The image must be referenced by digest.
    #[serde(default)]
    pub require_digest: bool,
    /// Every layer must be encrypted.
    #[serde(default)]
    pub require_encrypted_layers: bool,
    /// Registries (host[:port]) images may come from; `None` = any. Local
    /// layouts (`oci:`) have no registry and are refused when this is set.
    #[serde(default)]
    pub allowed_registries: Option<Vec<String>>,
    /// Key schemes (`jwe`, `provider.<name>`, or `provider.*`) that may unwrap layer keys.
    #[serde(default)]
    pub allowed_key_schemes: Option<Vec<String>>,
}

/// A policy refusal or a bad policy file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    #[error("reading policy {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("parsing policy {path}")]
    Parse {
        path: String,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("policy refused {image}: the reference must be pinned by digest (use @sha256:...)")]
    NotPinned { image: String },
    #[error("policy refused {image}: registry {registry} is not in allowed_registries")]
    Registry { image: String, registry: String },
    #[error(
        "policy refused layer {index} ({digest}): it is not encrypted and require_encrypted_layers is set"
    )]
    Unencrypted { index: usize, digest: Digest },
    #[error("policy refused layer {index} ({digest}): none of its key schemes [{found}] is in allowed_key_schemes")]
    KeyScheme { index: usize, digest: Digest, found: String },
}

/// What the policy needs to know about a layer.
#[derive(Debug, Clone)]
pub struct LayerFacts<'a> {
    /// Descriptor digest.
    pub digest: &'a Digest,
    /// Descriptor media type.
    pub media_type: &'a str,
    /// Descriptor annotations.
    pub annotations: &'a BTreeMap<String, String>,
}

impl PullPolicy {
    /// Loads a policy file.
    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| PolicyError::Read { path: path.display().to_string(), source })?;
        Self::parse(&text).map_err(|source| PolicyError::Parse { path: path.display().to_string(), source })
    }

    /// Parses policy YAML; an empty document is the permissive default.
    pub fn parse(text: &str) -> Result<Self, serde_yaml::Error> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        serde_yaml::from_str(text)
    }

    /// Checks a parsed reference ([`check_reference`](Self::check_reference) with its facts).
    pub fn check_image(&self, image: &oci::ImageRef) -> Result<(), PolicyError> {
        let registry = match image {
            oci::ImageRef::Registry(r) => Some(r.registry.as_str()),
            oci::ImageRef::Layout(_) => None,
        };
        self.check_reference(&image.to_string(), registry, image.digest().is_some())
    }

    /// Checks the reference: `registry` is the host of a `docker://` image (None for layouts).
    pub fn check_reference(
        &self,
        image: &str,
        registry: Option<&str>,
        pinned: bool,
    ) -> Result<(), PolicyError> {
        if self.require_digest && !pinned {
            return Err(PolicyError::NotPinned { image: image.to_string() });
        }
        if let Some(allowed) = &self.allowed_registries {
            let reg = registry.unwrap_or("(local layout)");
            if !allowed.iter().any(|a| registry == Some(a.as_str())) {
                return Err(PolicyError::Registry { image: image.to_string(), registry: reg.to_string() });
            }
        }
        Ok(())
    }

    /// Whether `scheme` (an annotation suffix) may be used to unwrap keys.
    pub fn scheme_allowed(&self, scheme: &str) -> bool {
        match &self.allowed_key_schemes {
            None => true,
            Some(list) => {
                list.iter().any(|a| a == scheme || (a == "provider.*" && scheme.starts_with("provider.")))
            }
        }
    }

    /// Checks the layers of the selected manifest.
    pub fn check_layers(&self, layers: &[LayerFacts<'_>]) -> Result<(), PolicyError> {
        for (index, l) in layers.iter().enumerate() {
            let encrypted = ocicrypt::is_encrypted(l.media_type);
            if !encrypted {
                if self.require_encrypted_layers {
                    return Err(PolicyError::Unencrypted { index, digest: l.digest.clone() });
                }
                continue;
            }
            let schemes = key_schemes(l.annotations);
            if !schemes.iter().any(|s| self.scheme_allowed(s)) {
                return Err(PolicyError::KeyScheme {
                    index,
                    digest: l.digest.clone(),
                    found: schemes.join(", "),
                });
            }
        }
        Ok(())
    }
}

/// The key-scheme suffixes present in a layer's annotations.
pub fn key_schemes(annotations: &BTreeMap<String, String>) -> Vec<String> {
    annotations.keys().filter_map(|k| k.strip_prefix(KEYS_PREFIX)).map(str::to_string).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d() -> Digest {
        Digest::sha256_of(b"layer")
    }

    fn ann(keys: &[&str]) -> BTreeMap<String, String> {
        keys.iter().map(|k| (format!("{KEYS_PREFIX}{k}"), "x".to_string())).collect()
    }

    #[test]
    fn empty_policy_allows_everything() {
        let p = PullPolicy::parse("").expect("parse");
        p.check_reference("docker://h/x:t", Some("h"), false).expect("ref");
        let a = BTreeMap::new();
        p.check_layers(&[LayerFacts {
            digest: &d(),
            media_type: "application/vnd.oci.image.layer.v1.tar+gzip",
            annotations: &a,
        }])
        .expect("layers");
    }

    #[test]
    fn typo_in_policy_is_an_error() {
        assert!(PullPolicy::parse("require_digets: true").is_err());
    }

    #[test]
    fn refusals_name_the_reason() {
        let p = PullPolicy::parse(
            "require_digest: true\nrequire_encrypted_layers: true\nallowed_registries: [\"127.0.0.1:5000\"]\nallowed_key_schemes: [\"provider.*\"]\n",
        )
        .expect("parse");
        let e = p
            .check_reference("docker://127.0.0.1:5000/a:t", Some("127.0.0.1:5000"), false)
            .expect_err("unpinned");
        assert!(e.to_string().contains("pinned by digest"));
        let e = p
            .check_reference("docker://evil:5000/a@sha256:00", Some("evil:5000"), true)
            .expect_err("registry");
        assert!(e.to_string().contains("registry evil:5000"));
        assert!(p.check_reference("oci:/x:t", None, true).is_err());
        p.check_reference("docker://127.0.0.1:5000/a@sha256:00", Some("127.0.0.1:5000"), true).expect("ok");
        let none = BTreeMap::new();
        let e = p
            .check_layers(&[LayerFacts {
                digest: &d(),
                media_type: "application/vnd.oci.image.layer.v1.tar+gzip",
                annotations: &none,
            }])
            .expect_err("plain");
        assert!(matches!(e, PolicyError::Unencrypted { index: 0, .. }));
        let jwe = ann(&["jwe"]);
        let mt = "application/vnd.oci.image.layer.v1.tar+gzip+encrypted";
        let e = p
            .check_layers(&[LayerFacts { digest: &d(), media_type: mt, annotations: &jwe }])
            .expect_err("scheme");
        assert!(e.to_string().contains("[jwe]"), "{e}");
        let aa = ann(&["provider.attestation-agent"]);
        p.check_layers(&[LayerFacts { digest: &d(), media_type: mt, annotations: &aa }])
            .expect("provider ok");
    }
}
