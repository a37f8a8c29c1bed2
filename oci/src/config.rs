//! The image config, parsed once into the facts a pull acts on (the diff_ids
//! its layers are checked against), with its exact bytes kept for the bundle's
//! `image.json`.

use serde::Deserialize;

use crate::digest::Digest;

/// Why an image config was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The bytes do not hash to the digest the manifest names.
    #[error("the config does not hash to {expected}")]
    Digest { expected: Digest },
    /// Not JSON, `rootfs.diff_ids` missing, or a diff_id that is not a digest.
    #[error("the config is malformed")]
    Json(#[source] serde_json::Error),
    /// The config and the manifest disagree on the number of layers.
    #[error("{diff_ids} diff_ids for {layers} layers")]
    LayerCount { diff_ids: usize, layers: usize },
}

#[derive(Deserialize)]
struct RawConfig {
    rootfs: RawRootfs,
}

#[derive(Deserialize)]
struct RawRootfs {
    diff_ids: Vec<Digest>,
}

/// A verified, parsed image config.
#[derive(Debug, Clone)]
pub struct ImageConfig {
    bytes: Vec<u8>,
    diff_ids: Vec<Digest>,
}

impl ImageConfig {
    /// Checks `bytes` against the manifest's config `digest`, then parses them.
    pub fn from_blob(bytes: Vec<u8>, digest: &Digest) -> Result<Self, ConfigError> {
        if !digest.matches(&bytes) {
            return Err(ConfigError::Digest { expected: digest.clone() });
        }
        Self::parse(bytes)
    }

    /// Parses config bytes (already verified by the caller).
    pub fn parse(bytes: Vec<u8>) -> Result<Self, ConfigError> {
        let raw: RawConfig = serde_json::from_slice(&bytes).map_err(ConfigError::Json)?;
        Ok(ImageConfig { bytes, diff_ids: raw.rootfs.diff_ids })
    }

    /// The diff_ids, one per layer in manifest order.
    pub fn diff_ids(&self) -> &[Digest] {
        &self.diff_ids
    }

    /// Checks that there is one diff_id per layer.
    pub fn check_layer_count(&self, layers: usize) -> Result<(), ConfigError> {
        if self.diff_ids.len() != layers {
            return Err(ConfigError::LayerCount { diff_ids: self.diff_ids.len(), layers });
        }
        Ok(())
    }

    /// The exact bytes the digest covers.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn parses_diff_ids_and_keeps_bytes() {
        let text = format!(r#"{{"architecture":"amd64","rootfs":{{"type":"layers","diff_ids":["{D}"]}}}}"#);
        let c = ImageConfig::from_blob(text.clone().into_bytes(), &Digest::sha256_of(text.as_bytes()))
            .expect("config");
        assert_eq!(c.diff_ids(), &[D.parse::<Digest>().expect("d")]);
        assert_eq!(c.bytes(), text.as_bytes());
        c.check_layer_count(1).expect("one layer");
        assert!(matches!(c.check_layer_count(2), Err(ConfigError::LayerCount { diff_ids: 1, layers: 2 })));
    }

    #[test]
    fn refuses_wrong_digest_missing_rootfs_and_bad_diff_ids() {
        let text = br#"{"rootfs":{"diff_ids":[]}}"#.to_vec();
        assert!(matches!(
            ImageConfig::from_blob(text, &Digest::sha256_of(b"other")),
            Err(ConfigError::Digest { .. })
        ));
        let e = ImageConfig::parse(br#"{"architecture":"amd64"}"#.to_vec()).expect_err("no rootfs");
        assert!(report::line(&e).contains("rootfs"), "{e}");
        assert_eq!(report::repeated_source(&e), None);
        let e = ImageConfig::parse(br#"{"rootfs":{"diff_ids":["sha256:zz"]}}"#.to_vec()).expect_err("bad");
        assert!(matches!(e, ConfigError::Json(_)), "{e}");
        assert!(ImageConfig::parse(br#"{"rootfs":{"diff_ids":[7]}}"#.to_vec()).is_err());
    }
}
