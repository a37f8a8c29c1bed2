//! Manifest, index and descriptor types, and platform selection.
//!
//! These are small serde types rather than `oci-spec`'s because the encryptor must
//! read and rewrite Docker schema 2 manifests and `+encrypted` media types, and must
//! keep fields it does not know (`subject`, `artifactType`, vendor extensions): every
//! struct carries the unknown fields in `extra` and writes them back. Annotation maps
//! are `BTreeMap`s so keys serialise sorted, as Go's encoding/json does.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;
use crate::media_type;

/// Annotation naming a manifest inside an OCI layout's index.json.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";

/// Why a manifest or index could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestError {
    #[error("manifest of media type {media_type:?} is not valid JSON for that type")]
    Json {
        media_type: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("media type {0:?} is not a manifest or index type this tool can read")]
    UnknownMediaType(String),
    #[error("unsupported manifest schemaVersion {0} (expected 2)")]
    SchemaVersion(u32),
    #[error("no manifest for platform {wanted} in the index (available: {})", available.join(", "))]
    PlatformNotFound { wanted: String, available: Vec<String> },
    #[error("platform {0:?} is not of the form OS/ARCH[/VARIANT]")]
    BadPlatform(String),
}

/// A content descriptor (OCI image spec, descriptor.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Descriptor {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub urls: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Platform>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    /// Fields this crate does not model, kept for round-tripping.
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Descriptor {
    /// A descriptor with just the three required fields.
    pub fn new(media_type: impl Into<String>, digest: Digest, size: u64) -> Self {
        Descriptor {
            media_type: media_type.into(),
            digest,
            size,
            urls: None,
            annotations: None,
            platform: None,
            artifact_type: None,
            extra: serde_json::Map::new(),
        }
    }

    /// The value of one annotation, if present.
    pub fn annotation(&self, key: &str) -> Option<&str> {
        self.annotations.as_ref()?.get(key).map(String::as_str)
    }

    /// The layout tag (`org.opencontainers.image.ref.name`), if present.
    pub fn ref_name(&self) -> Option<&str> {
        self.annotation(REF_NAME_ANNOTATION)
    }
}

/// The platform a manifest in an index is for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(rename = "os.version", default, skip_serializing_if = "Option::is_none")]
    pub os_version: Option<String>,
    #[serde(rename = "os.features", default, skip_serializing_if = "Option::is_none")]
    pub os_features: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// A single-platform image manifest (OCI or Docker schema 2).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageManifest {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

/// An image index (OCI) or manifest list (Docker).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ImageIndex {
    pub schema_version: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub media_type: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact_type: Option<String>,
    pub manifests: Vec<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<Descriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub annotations: Option<BTreeMap<String, String>>,
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl ImageIndex {
    /// An empty OCI index, as written to a fresh layout's index.json.
    pub fn empty() -> Self {
        ImageIndex {
            schema_version: 2,
            media_type: Some(media_type::OCI_INDEX.to_string()),
            artifact_type: None,
            manifests: Vec::new(),
            subject: None,
            annotations: None,
            extra: serde_json::Map::new(),
        }
    }
}

/// A parsed manifest: either one image or an index of images.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // short-lived, one per manifest: boxing buys nothing
pub enum Manifest {
    Image(ImageManifest),
    Index(ImageIndex),
}

/// Peek at the `mediaType` field of a manifest, for sources that do not say it
/// out of band (a layout blob, a registry answering `application/json`).
pub fn sniff_media_type(bytes: &[u8]) -> Option<String> {
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Peek {
        media_type: Option<String>,
        manifests: Option<serde_json::Value>,
        config: Option<serde_json::Value>,
    }
    let p: Peek = serde_json::from_slice(bytes).ok()?;
    match (p.media_type, p.manifests, p.config) {
        (Some(m), _, _) => Some(m),
        // The mediaType field is optional in OCI; infer from shape.
        (None, Some(_), None) => Some(media_type::OCI_INDEX.to_string()),
        (None, None, Some(_)) => Some(media_type::OCI_MANIFEST.to_string()),
        _ => None,
    }
}

/// Parse raw manifest bytes according to `media_type`.
pub fn parse_manifest(bytes: &[u8], media_type: &str) -> Result<Manifest, ManifestError> {
    let json = |source| ManifestError::Json { media_type: media_type.to_string(), source };
    if media_type::is_index(media_type) {
        let idx: ImageIndex = serde_json::from_slice(bytes).map_err(json)?;
        if idx.schema_version != 2 {
            return Err(ManifestError::SchemaVersion(idx.schema_version));
        }
        Ok(Manifest::Index(idx))
    } else if media_type::is_image_manifest(media_type) {
        let m: ImageManifest = serde_json::from_slice(bytes).map_err(json)?;
        if m.schema_version != 2 {
            return Err(ManifestError::SchemaVersion(m.schema_version));
        }
        Ok(Manifest::Image(m))
    } else {
        Err(ManifestError::UnknownMediaType(media_type.to_string()))
    }
}

/// A wanted platform, `OS/ARCH[/VARIANT]` (e.g. `linux/amd64`, `linux/arm64/v8`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformSpec {
    pub os: String,
    pub architecture: String,
    pub variant: Option<String>,
}

impl PlatformSpec {
    /// The platform this process runs on, in OCI's names.
    pub fn current() -> Self {
        let arch = match std::env::consts::ARCH {
            "x86_64" => "amd64",
            "aarch64" => "arm64",
            "x86" => "386",
            "powerpc64" => "ppc64le",
            "loongarch64" => "loong64",
            other => other,
        };
        PlatformSpec { os: std::env::consts::OS.to_string(), architecture: arch.to_string(), variant: None }
    }

    fn matches(&self, p: &Platform) -> bool {
        if p.os != self.os || p.architecture != self.architecture {
            return false;
        }
        match (&self.variant, &p.variant) {
            (None, _) => true,
            (Some(w), Some(h)) => w == h,
            // arm64 images often omit the implied v8 variant.
            (Some(w), None) => self.architecture == "arm64" && w == "v8",
        }
    }
}

impl std::str::FromStr for PlatformSpec {
    type Err = ManifestError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let parts: Vec<&str> = s.split('/').collect();
        let ok = |p: &&str| !p.is_empty();
        match parts.as_slice() {
            [os, arch] if ok(os) && ok(arch) => {
                Ok(PlatformSpec { os: os.to_string(), architecture: arch.to_string(), variant: None })
            }
            [os, arch, v] if ok(os) && ok(arch) && ok(v) => Ok(PlatformSpec {
                os: os.to_string(),
                architecture: arch.to_string(),
                variant: Some(v.to_string()),
            }),
            _ => Err(ManifestError::BadPlatform(s.to_string())),
        }
    }
}

impl fmt::Display for PlatformSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// Pick the manifest for `wanted` from an index. The first match wins, as in
/// containerd and skopeo; entries without a platform never match.
pub fn select_platform<'a>(
    index: &'a ImageIndex,
    wanted: &PlatformSpec,
) -> Result<&'a Descriptor, ManifestError> {
    index.manifests.iter().find(|d| d.platform.as_ref().is_some_and(|p| wanted.matches(p))).ok_or_else(|| {
        ManifestError::PlatformNotFound {
            wanted: wanted.to_string(),
            available: index
                .manifests
                .iter()
                .map(|d| d.platform.as_ref().map_or_else(|| "(no platform)".to_string(), Platform::to_string))
                .collect(),
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    const JWE_MANIFEST: &str = r#"{
  "schemaVersion": 2,
  "mediaType": "application/vnd.oci.image.manifest.v1+json",
  "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
    "digest": "sha256:ec1abddf73c57c716638d591657713bae8e88ef5514097113a8f806436e6f576", "size": 292},
  "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip+encrypted",
    "digest": "sha256:1c0fa4ae736579bc74cb9da67614cfe5e28bcfec12ac36c89981cb9e1889d7e4", "size": 201,
    "annotations": {"org.opencontainers.image.enc.pubopts": "e30="}, "x-vendor": 7}],
  "subject": {"mediaType": "application/vnd.oci.image.manifest.v1+json",
    "digest": "sha256:ec1abddf73c57c716638d591657713bae8e88ef5514097113a8f806436e6f576", "size": 1}
}"#;

    #[test]
    fn encrypted_manifest_parses_and_keeps_unknown_fields() {
        let m = parse_manifest(JWE_MANIFEST.as_bytes(), media_type::OCI_MANIFEST).unwrap();
        let Manifest::Image(m) = m else { panic!("not an image manifest") };
        assert_eq!(m.layers[0].media_type, "application/vnd.oci.image.layer.v1.tar+gzip+encrypted");
        assert_eq!(m.layers[0].annotation("org.opencontainers.image.enc.pubopts"), Some("e30="));
        assert!(m.subject.is_some());
        let out = serde_json::to_value(&m).unwrap();
        assert_eq!(out["layers"][0]["x-vendor"], 7);
    }

    #[test]
    fn docker_schema2_parses() {
        let doc = r#"{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",
          "config":{"mediaType":"application/vnd.docker.container.image.v1+json","size":1,"digest":"sha256:ec1abddf73c57c716638d591657713bae8e88ef5514097113a8f806436e6f576"},
          "layers":[{"mediaType":"application/vnd.docker.image.rootfs.diff.tar.gzip","size":2,"digest":"sha256:ec1abddf73c57c716638d591657713bae8e88ef5514097113a8f806436e6f576"}]}"#;
        assert!(matches!(
            parse_manifest(doc.as_bytes(), media_type::DOCKER_MANIFEST).unwrap(),
            Manifest::Image(_)
        ));
        assert_eq!(sniff_media_type(doc.as_bytes()).as_deref(), Some(media_type::DOCKER_MANIFEST));
    }

    #[test]
    fn bad_manifests_give_errors() {
        assert!(matches!(parse_manifest(b"{", media_type::OCI_MANIFEST), Err(ManifestError::Json { .. })));
        assert!(matches!(parse_manifest(b"{}", "text/plain"), Err(ManifestError::UnknownMediaType(_))));
        let v1 = br#"{"schemaVersion":1,"manifests":[]}"#;
        assert!(matches!(parse_manifest(v1, media_type::OCI_INDEX), Err(ManifestError::SchemaVersion(1))));
        // a bad digest inside a descriptor is rejected at parse time
        let bad = br#"{"schemaVersion":2,"manifests":[{"mediaType":"x","digest":"sha256:../x","size":1}]}"#;
        assert!(parse_manifest(bad, media_type::OCI_INDEX).is_err());
    }

    fn index_with(platforms: &[(&str, &str, Option<&str>)]) -> ImageIndex {
        let mut idx = ImageIndex::empty();
        for (i, (os, arch, var)) in platforms.iter().enumerate() {
            let mut d = Descriptor::new(media_type::OCI_MANIFEST, Digest::sha256_of(&[i as u8]), 10);
            d.platform = Some(Platform {
                architecture: arch.to_string(),
                os: os.to_string(),
                os_version: None,
                os_features: None,
                variant: var.map(str::to_string),
                extra: Default::default(),
            });
            idx.manifests.push(d);
        }
        idx
    }

    #[test]
    fn select_platform_picks_the_match() {
        let idx = index_with(&[
            ("linux", "arm64", Some("v8")),
            ("linux", "amd64", None),
            ("linux", "arm", Some("v7")),
        ]);
        let d = select_platform(&idx, &"linux/amd64".parse().unwrap()).unwrap();
        assert_eq!(d.digest, Digest::sha256_of(&[1]));
        let d = select_platform(&idx, &"linux/arm64".parse().unwrap()).unwrap();
        assert_eq!(d.digest, Digest::sha256_of(&[0]));
        let d = select_platform(&idx, &"linux/arm/v7".parse().unwrap()).unwrap();
        assert_eq!(d.digest, Digest::sha256_of(&[2]));
    }

    #[test]
    fn select_platform_lists_available_on_miss() {
        let idx = index_with(&[("linux", "arm64", Some("v8")), ("linux", "amd64", None)]);
        let e = select_platform(&idx, &"linux/s390x".parse().unwrap()).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("linux/s390x"), "{msg}");
        assert!(msg.contains("linux/arm64/v8, linux/amd64"), "{msg}");
    }

    #[test]
    fn platform_spec_parsing() {
        assert!("linux".parse::<PlatformSpec>().is_err());
        assert!("linux/".parse::<PlatformSpec>().is_err());
        assert!("a/b/c/d".parse::<PlatformSpec>().is_err());
        let p = PlatformSpec::current();
        assert!(!p.os.is_empty() && !p.architecture.is_empty());
        if cfg!(all(target_os = "linux", target_arch = "x86_64")) {
            assert_eq!(p.to_string(), "linux/amd64");
        }
    }
}
