//! cosign's key-based signature format: an OCI manifest tagged
//! `sha256-<hex>.sig` in the image's repository, one layer per signature
//! (media type `application/vnd.dev.cosign.simplesigning.v1+json`, the layer
//! blob is the payload, the annotation `dev.cosignproject.cosign/signature` is
//! the base64 signature over the payload bytes).
//!
//! This module only parses and builds these documents; fetching is the
//! caller's (see [`crate::fetch`]).

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use oci::Digest;
use serde::{Deserialize, Serialize};

/// Media type of a signature layer (the payload blob).
pub const SIMPLESIGNING_MEDIA_TYPE: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
/// The annotation holding the base64 signature.
pub const SIGNATURE_ANNOTATION: &str = "dev.cosignproject.cosign/signature";
/// Largest signature manifest read (a real one is ~1 KiB per signature).
pub const MAX_SIGNATURE_MANIFEST_SIZE: u64 = 1 << 20;
/// Most signatures considered on one image.
pub const MAX_SIGNATURES: usize = 64;
/// Largest decoded signature (RSA-8192 is 1 KiB).
const MAX_SIGNATURE_BYTES: usize = 4096;

/// The tag cosign stores an image's signatures under.
pub fn signature_tag(manifest_digest: &Digest) -> String {
    format!("{}-{}.sig", manifest_digest.algorithm().as_str(), manifest_digest.hex())
}

/// Why a signature manifest was refused.
#[derive(Debug, thiserror::Error)]
pub enum SignatureManifestError {
    #[error("signature manifest is {size} bytes, more than the {MAX_SIGNATURE_MANIFEST_SIZE} allowed")]
    TooLarge { size: usize },
    #[error("signature manifest is not an OCI manifest")]
    Json(#[source] serde_json::Error),
    #[error("signature manifest has schemaVersion {0}, expected 2")]
    SchemaVersion(u64),
    #[error("signature manifest has {count} signatures, more than the {MAX_SIGNATURES} allowed")]
    TooMany { count: usize },
    #[error("signature layer {index}: payload of {size} bytes is too large")]
    PayloadSize { index: usize, size: u64 },
    #[error("signature layer {index}: annotation {SIGNATURE_ANNOTATION} is missing")]
    MissingSignature { index: usize },
    #[error("signature layer {index}: annotation {SIGNATURE_ANNOTATION} is not base64 of at most {MAX_SIGNATURE_BYTES} bytes")]
    BadSignature { index: usize },
}

#[derive(Debug, Clone, Deserialize, Serialize)]
struct RawDescriptor {
    #[serde(rename = "mediaType")]
    media_type: String,
    digest: Digest,
    size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    annotations: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
struct RawManifest {
    #[serde(rename = "schemaVersion")]
    schema_version: u64,
    #[serde(rename = "mediaType", default, skip_serializing_if = "Option::is_none")]
    media_type: Option<String>,
    config: RawDescriptor,
    layers: Vec<RawDescriptor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    annotations: Option<BTreeMap<String, String>>,
}

/// One signature: where its payload blob is and the signature bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignatureLayer {
    /// Index of the layer in the signature manifest.
    pub index: usize,
    pub payload_digest: Digest,
    pub payload_size: u64,
    pub signature: Vec<u8>,
}

/// Parses a signature manifest into its signatures. Layers of other media
/// types are skipped (they cannot make an image acceptable).
pub fn parse_signature_manifest(bytes: &[u8]) -> Result<Vec<SignatureLayer>, SignatureManifestError> {
    if bytes.len() as u64 > MAX_SIGNATURE_MANIFEST_SIZE {
        return Err(SignatureManifestError::TooLarge { size: bytes.len() });
    }
    let m: RawManifest = serde_json::from_slice(bytes).map_err(SignatureManifestError::Json)?;
    if m.schema_version != 2 {
        return Err(SignatureManifestError::SchemaVersion(m.schema_version));
    }
    let count = m.layers.iter().filter(|l| l.media_type == SIMPLESIGNING_MEDIA_TYPE).count();
    if count > MAX_SIGNATURES {
        return Err(SignatureManifestError::TooMany { count });
    }
    let mut out = Vec::new();
    for (index, l) in m.layers.into_iter().enumerate() {
        if l.media_type != SIMPLESIGNING_MEDIA_TYPE {
            continue;
        }
        if l.size > crate::payload::MAX_PAYLOAD_SIZE as u64 {
            return Err(SignatureManifestError::PayloadSize { index, size: l.size });
        }
        let b64 = l
            .annotations
            .as_ref()
            .and_then(|a| a.get(SIGNATURE_ANNOTATION))
            .ok_or(SignatureManifestError::MissingSignature { index })?;
        if b64.len() > MAX_SIGNATURE_BYTES * 2 {
            return Err(SignatureManifestError::BadSignature { index });
        }
        let signature = B64.decode(b64).map_err(|_| SignatureManifestError::BadSignature { index })?;
        if signature.is_empty() || signature.len() > MAX_SIGNATURE_BYTES {
            return Err(SignatureManifestError::BadSignature { index });
        }
        out.push(SignatureLayer { index, payload_digest: l.digest, payload_size: l.size, signature });
    }
    Ok(out)
}

/// A signature manifest and its config, ready to upload (payload blob separately).
#[derive(Debug, Clone)]
pub struct BuiltSignatureManifest {
    pub manifest: Vec<u8>,
    pub config: Vec<u8>,
    pub config_digest: Digest,
    /// False when `existing` already held this exact signature.
    pub appended: bool,
}

/// Appends a signature layer (payload + signature) to `existing` (a previous
/// signature manifest, if any), as cosign does when an image is signed again.
pub fn append_signature(
    existing: Option<&[u8]>,
    payload: &[u8],
    signature: &[u8],
) -> Result<BuiltSignatureManifest, SignatureManifestError> {
    let mut layers = match existing {
        Some(b) => {
            let m: RawManifest = serde_json::from_slice(b).map_err(SignatureManifestError::Json)?;
            m.layers
        }
        None => Vec::new(),
    };
    let payload_digest = Digest::sha256_of(payload);
    let sig_b64 = B64.encode(signature);
    let already = layers.iter().any(|l| {
        l.digest == payload_digest
            && l.annotations.as_ref().and_then(|a| a.get(SIGNATURE_ANNOTATION)) == Some(&sig_b64)
    });
    if !already {
        let mut ann = BTreeMap::new();
        ann.insert(SIGNATURE_ANNOTATION.to_string(), sig_b64);
        layers.push(RawDescriptor {
            media_type: SIMPLESIGNING_MEDIA_TYPE.into(),
            digest: payload_digest,
            size: payload.len() as u64,
            annotations: Some(ann),
        });
    }
    if layers.len() > MAX_SIGNATURES {
        return Err(SignatureManifestError::TooMany { count: layers.len() });
    }
    // The config stub cosign writes: rootfs.diff_ids lists the payload digests.
    let diff_ids: Vec<String> = layers.iter().map(|l| l.digest.to_string()).collect();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "",
        "config": {},
        "created": "0001-01-01T00:00:00Z",
        "history": [{"created": "0001-01-01T00:00:00Z"}],
        "os": "",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }))
    .map_err(SignatureManifestError::Json)?;
    let config_digest = Digest::sha256_of(&config);
    let manifest = RawManifest {
        schema_version: 2,
        media_type: Some(oci::media_type::OCI_MANIFEST.to_string()),
        config: RawDescriptor {
            media_type: "application/vnd.oci.image.config.v1+json".into(),
            digest: config_digest.clone(),
            size: config.len() as u64,
            annotations: None,
        },
        layers,
        annotations: None,
    };
    let manifest = serde_json::to_vec(&manifest).map_err(SignatureManifestError::Json)?;
    Ok(BuiltSignatureManifest { manifest, config, config_digest, appended: !already })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn tag_is_cosigns() {
        let d: Digest =
            "sha256:3c4b0491ad42ed94682815ca7a46e4a5595792d857cec1410833a9d226bb948e".parse().unwrap();
        assert_eq!(
            signature_tag(&d),
            "sha256-3c4b0491ad42ed94682815ca7a46e4a5595792d857cec1410833a9d226bb948e.sig"
        );
    }

    #[test]
    fn append_then_parse_round_trips_and_dedupes() {
        let one = append_signature(None, b"payload-1", b"sig-1").unwrap();
        let two = append_signature(Some(&one.manifest), b"payload-2", b"sig-2").unwrap();
        assert!(two.appended);
        let again = append_signature(Some(&two.manifest), b"payload-2", b"sig-2").unwrap();
        assert!(!again.appended);
        let sigs = parse_signature_manifest(&again.manifest).unwrap();
        assert_eq!(sigs.len(), 2);
        assert_eq!(sigs[1].signature, b"sig-2");
        assert_eq!(sigs[1].payload_digest, Digest::sha256_of(b"payload-2"));
        let cfg: serde_json::Value = serde_json::from_slice(&again.config).unwrap();
        assert_eq!(cfg["rootfs"]["diff_ids"].as_array().unwrap().len(), 2);
    }

    #[test]
    fn malformed_and_oversized_manifests_are_refused() {
        assert!(matches!(
            parse_signature_manifest(&vec![b' '; MAX_SIGNATURE_MANIFEST_SIZE as usize + 1]),
            Err(SignatureManifestError::TooLarge { .. })
        ));
        assert!(matches!(parse_signature_manifest(b"{}"), Err(SignatureManifestError::Json(_))));
        let good = append_signature(None, b"p", b"s").unwrap().manifest;
        let s = String::from_utf8(good).unwrap();
        let no_sig = s.replace(SIGNATURE_ANNOTATION, "other");
        assert!(matches!(
            parse_signature_manifest(no_sig.as_bytes()),
            Err(SignatureManifestError::MissingSignature { index: 0 })
        ));
        let bad_b64 = s.replace(&B64.encode(b"s"), "!!!");
        assert!(matches!(
            parse_signature_manifest(bad_b64.as_bytes()),
            Err(SignatureManifestError::BadSignature { index: 0 })
        ));
        let big = s.replace("\"size\":1,", "\"size\":99999999,");
        assert!(matches!(
            parse_signature_manifest(big.as_bytes()),
            Err(SignatureManifestError::PayloadSize { .. })
        ));
        let v1 = s.replace("\"schemaVersion\":2", "\"schemaVersion\":1");
        assert!(matches!(
            parse_signature_manifest(v1.as_bytes()),
            Err(SignatureManifestError::SchemaVersion(1))
        ));
    }
}
