//! The "simple signing" payload: the JSON document a cosign or GPG signature is
//! made over. It names the signed manifest digest and the identity (docker
//! reference) the signer meant; both are checked against what is pulled.
//!
//! Parsing is strict on the `critical` part (every field present, no unknown
//! key, the right `type`) and lenient on `optional` (any JSON), as in
//! containers/image. The signature covers the exact payload bytes, so the bytes
//! are never re-serialised after signing.

use std::str::FromStr;

use oci::Digest;
use serde::Deserialize;

/// `critical.type` of a cosign signature payload.
pub const COSIGN_TYPE: &str = "cosign container image signature";
/// `critical.type` of a GPG ("atomic") signature payload.
pub const ATOMIC_TYPE: &str = "atomic container signature";
/// Largest payload accepted (real ones are a few hundred bytes).
pub const MAX_PAYLOAD_SIZE: usize = 64 * 1024;

/// Why payload bytes are not a simple-signing payload.
#[derive(Debug, thiserror::Error)]
pub enum PayloadError {
    #[error("signature payload is {size} bytes, more than the {MAX_PAYLOAD_SIZE} allowed")]
    TooLarge { size: usize },
    #[error("signature payload is not a simple-signing document")]
    Json(#[source] serde_json::Error),
    #[error("signature payload has critical.type {found:?}, expected {expected:?}")]
    WrongType { found: String, expected: &'static str },
    #[error("signature payload's docker-manifest-digest {value:?} is not a digest")]
    Digest {
        value: String,
        #[source]
        source: oci::DigestError,
    },
    #[error("signature payload's docker-reference {value:?} is not a docker reference")]
    Reference {
        value: String,
        #[source]
        source: crate::identity::IdentityError,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPayload {
    critical: RawCritical,
    #[serde(default)]
    optional: Option<serde_json::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCritical {
    identity: RawIdentity,
    image: RawImage,
    #[serde(rename = "type")]
    kind: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIdentity {
    #[serde(rename = "docker-reference")]
    docker_reference: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawImage {
    #[serde(rename = "docker-manifest-digest")]
    docker_manifest_digest: String,
}

/// A parsed payload: what the signer claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Payload {
    /// The identity the signer gave the image.
    pub docker_reference: crate::identity::DockerRef,
    /// The manifest digest that was signed.
    pub manifest_digest: Digest,
}

impl Payload {
    /// Parses payload bytes whose `critical.type` must be `expected_type`.
    pub fn parse(bytes: &[u8], expected_type: &'static str) -> Result<Payload, PayloadError> {
        if bytes.len() > MAX_PAYLOAD_SIZE {
            return Err(PayloadError::TooLarge { size: bytes.len() });
        }
        let raw: RawPayload = serde_json::from_slice(bytes).map_err(PayloadError::Json)?;
        let _ = raw.optional;
        if raw.critical.kind != expected_type {
            return Err(PayloadError::WrongType { found: raw.critical.kind, expected: expected_type });
        }
        let d = raw.critical.image.docker_manifest_digest;
        let manifest_digest =
            Digest::from_str(&d).map_err(|source| PayloadError::Digest { value: d.clone(), source })?;
        let r = raw.critical.identity.docker_reference;
        let docker_reference = crate::identity::DockerRef::parse(&r)
            .map_err(|source| PayloadError::Reference { value: r.clone(), source })?;
        Ok(Payload { docker_reference, manifest_digest })
    }

    /// The payload bytes cloak signs: cosign's layout (`optional: null`), so a
    /// cloak signature is indistinguishable in form from one made by cosign.
    pub fn cosign_bytes(docker_reference: &str, manifest_digest: &Digest) -> Vec<u8> {
        let doc = serde_json::json!({
            "critical": {
                "identity": {"docker-reference": docker_reference},
                "image": {"docker-manifest-digest": manifest_digest.to_string()},
                "type": COSIGN_TYPE,
            },
            "optional": null,
        });
        // serde_json's map is ordered by key, which is cosign's order too.
        doc.to_string().into_bytes()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const D: &str = "sha256:c2c9ee5d3c7a5d2b5bd0f1f0c6f0e2f7d7a3c5a1b0e9d8c7b6a5f4e3d2c1b0a9";

    #[test]
    fn parses_what_cosign_writes() {
        let b = format!(
            r#"{{"critical":{{"identity":{{"docker-reference":"127.0.0.1:5055/app/hello"}},"image":{{"docker-manifest-digest":"{D}"}},"type":"cosign container image signature"}},"optional":null}}"#
        );
        let p = Payload::parse(b.as_bytes(), COSIGN_TYPE).unwrap();
        assert_eq!(p.manifest_digest.to_string(), D);
        assert_eq!(p.docker_reference.repository_name(), "127.0.0.1:5055/app/hello");
        assert_eq!(p.docker_reference.tag, None);
    }

    #[test]
    fn parses_what_containers_image_writes() {
        let b = format!(
            r#"{{"critical":{{"identity":{{"docker-reference":"127.0.0.1:5055/app/hello:v1"}},"image":{{"docker-manifest-digest":"{D}"}},"type":"cosign container image signature"}},"optional":{{"creator":"containers/image 5.34","timestamp":1700000000}}}}"#
        );
        let p = Payload::parse(b.as_bytes(), COSIGN_TYPE).unwrap();
        assert_eq!(p.docker_reference.tag.as_deref(), Some("v1"));
    }

    #[test]
    fn round_trip_of_own_bytes() {
        let d: Digest = D.parse().unwrap();
        let b = Payload::cosign_bytes("127.0.0.1:5055/app/hello", &d);
        assert!(String::from_utf8_lossy(&b).starts_with(r#"{"critical":{"identity":{"docker-reference":"#));
        let p = Payload::parse(&b, COSIGN_TYPE).unwrap();
        assert_eq!(p.manifest_digest, d);
    }

    #[test]
    fn refuses_wrong_type_unknown_fields_bad_digest() {
        let ok = |t: &str, extra: &str, dg: &str| {
            format!(
                r#"{{"critical":{{"identity":{{"docker-reference":"h.io/a"}},"image":{{"docker-manifest-digest":"{dg}"}},"type":"{t}"{extra}}}}}"#
            )
        };
        let e = Payload::parse(ok(ATOMIC_TYPE, "", D).as_bytes(), COSIGN_TYPE).unwrap_err();
        assert!(e.to_string().contains("atomic container signature"), "{e}");
        let e = Payload::parse(ok(COSIGN_TYPE, r#","extra":1"#, D).as_bytes(), COSIGN_TYPE).unwrap_err();
        assert!(report::line(&e).contains("extra"), "{e}");
        assert_eq!(report::repeated_source(&e), None);
        let e = Payload::parse(ok(COSIGN_TYPE, "", "sha256:zz").as_bytes(), COSIGN_TYPE).unwrap_err();
        assert!(matches!(e, PayloadError::Digest { .. }), "{e}");
        let big = vec![b' '; MAX_PAYLOAD_SIZE + 1];
        assert!(matches!(Payload::parse(&big, COSIGN_TYPE), Err(PayloadError::TooLarge { .. })));
    }
}
