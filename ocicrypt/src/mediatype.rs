//! Layer media types and their `+encrypted` variants.
//!
//! Encryption appends `+encrypted` to a layer type (after mapping Docker schema2
//! layer types to their OCI equivalents, because only OCI manifests can carry
//! encrypted layers); decryption strips the suffix. The compression of the
//! plaintext is read from the type so the puller knows how to decode it.

/// OCI uncompressed tar layer.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";
/// OCI gzip tar layer.
pub const OCI_LAYER_TAR_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI zstd tar layer.
pub const OCI_LAYER_TAR_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// OCI nondistributable uncompressed tar layer.
pub const OCI_LAYER_ND_TAR: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar";
/// OCI nondistributable gzip tar layer.
pub const OCI_LAYER_ND_TAR_GZIP: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip";
/// OCI nondistributable zstd tar layer.
pub const OCI_LAYER_ND_TAR_ZSTD: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd";
/// WebAssembly module layer (passed through with `+encrypted`).
pub const WASM_LAYER: &str = "application/vnd.wasm.content.layer.v1+wasm";
/// Docker schema2 uncompressed layer.
pub const DOCKER_LAYER_TAR: &str = "application/vnd.docker.image.rootfs.diff.tar";
/// Docker schema2 gzip layer.
pub const DOCKER_LAYER_TAR_GZIP: &str = "application/vnd.docker.image.rootfs.diff.tar.gzip";
/// Docker schema2 zstd layer (rare, produced by some buildkit versions).
pub const DOCKER_LAYER_TAR_ZSTD: &str = "application/vnd.docker.image.rootfs.diff.tar.zstd";
/// Docker foreign layer: never encrypted (it is not stored in the registry).
pub const DOCKER_FOREIGN_LAYER: &str = "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip";

/// The suffix that marks an encrypted layer.
pub const ENCRYPTED_SUFFIX: &str = "+encrypted";

/// `application/vnd.oci.image.layer.v1.tar+encrypted`
pub const OCI_LAYER_TAR_ENC: &str = "application/vnd.oci.image.layer.v1.tar+encrypted";
/// `application/vnd.oci.image.layer.v1.tar+gzip+encrypted`
pub const OCI_LAYER_TAR_GZIP_ENC: &str = "application/vnd.oci.image.layer.v1.tar+gzip+encrypted";
/// `application/vnd.oci.image.layer.v1.tar+zstd+encrypted`
pub const OCI_LAYER_TAR_ZSTD_ENC: &str = "application/vnd.oci.image.layer.v1.tar+zstd+encrypted";
/// Nondistributable tar, encrypted.
pub const OCI_LAYER_ND_TAR_ENC: &str = "application/vnd.oci.image.layer.nondistributable.v1.tar+encrypted";
/// Nondistributable tar+gzip, encrypted.
pub const OCI_LAYER_ND_TAR_GZIP_ENC: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip+encrypted";
/// Nondistributable tar+zstd, encrypted.
pub const OCI_LAYER_ND_TAR_ZSTD_ENC: &str =
    "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd+encrypted";
/// WebAssembly layer, encrypted.
pub const WASM_LAYER_ENC: &str = "application/vnd.wasm.content.layer.v1+wasm+encrypted";

/// Why a media type cannot be encrypted or interpreted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaTypeError {
    /// The type is already an encrypted layer type.
    #[error("media type {0:?} is already encrypted")]
    AlreadyEncrypted(String),
    /// The type is not a layer type this implementation can encrypt
    /// (config, manifest, foreign layer, attestation, ...).
    #[error("media type {0:?} is not an encryptable layer type")]
    NotALayer(String),
}

/// Compression of the plaintext layer blob.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Compression {
    /// Plain tar (or an opaque payload such as WASM).
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
}

/// Whether `media_type` is an encrypted layer type (anything ending in `+encrypted`,
/// as containers/image decides).
pub fn is_encrypted(media_type: &str) -> bool {
    media_type.ends_with(ENCRYPTED_SUFFIX)
}

/// Map a Docker layer type to its OCI equivalent; OCI types pass unchanged.
fn to_oci_layer(media_type: &str) -> Option<&'static str> {
    Some(match media_type {
        OCI_LAYER_TAR | DOCKER_LAYER_TAR => OCI_LAYER_TAR,
        OCI_LAYER_TAR_GZIP | DOCKER_LAYER_TAR_GZIP => OCI_LAYER_TAR_GZIP,
        OCI_LAYER_TAR_ZSTD | DOCKER_LAYER_TAR_ZSTD => OCI_LAYER_TAR_ZSTD,
        OCI_LAYER_ND_TAR => OCI_LAYER_ND_TAR,
        OCI_LAYER_ND_TAR_GZIP => OCI_LAYER_ND_TAR_GZIP,
        OCI_LAYER_ND_TAR_ZSTD => OCI_LAYER_ND_TAR_ZSTD,
        WASM_LAYER => WASM_LAYER,
        _ => return None,
    })
}

/// The media type of a layer after encryption: the OCI type plus `+encrypted`.
///
/// Docker schema2 layer types become OCI types, because the encrypted image is
/// always written as an OCI manifest.
pub fn encrypted_media_type(media_type: &str) -> Result<String, MediaTypeError> {
    if is_encrypted(media_type) {
        return Err(MediaTypeError::AlreadyEncrypted(media_type.to_owned()));
    }
    match to_oci_layer(media_type) {
        Some(oci) => Ok(format!("{oci}{ENCRYPTED_SUFFIX}")),
        None => Err(MediaTypeError::NotALayer(media_type.to_owned())),
    }
}

/// The media type after decryption (the `+encrypted` suffix removed), or `None`
/// if `media_type` is not encrypted.
pub fn decrypted_media_type(media_type: &str) -> Option<String> {
    media_type.strip_suffix(ENCRYPTED_SUFFIX).map(str::to_owned)
}

/// The compression of a layer's plaintext, for plain or encrypted, OCI or Docker types.
pub fn layer_compression(media_type: &str) -> Result<Compression, MediaTypeError> {
    let plain = media_type.strip_suffix(ENCRYPTED_SUFFIX).unwrap_or(media_type);
    match plain {
        OCI_LAYER_TAR | OCI_LAYER_ND_TAR | DOCKER_LAYER_TAR | WASM_LAYER => Ok(Compression::None),
        OCI_LAYER_TAR_GZIP | OCI_LAYER_ND_TAR_GZIP | DOCKER_LAYER_TAR_GZIP | DOCKER_FOREIGN_LAYER => {
            Ok(Compression::Gzip)
        }
        OCI_LAYER_TAR_ZSTD | OCI_LAYER_ND_TAR_ZSTD | DOCKER_LAYER_TAR_ZSTD => Ok(Compression::Zstd),
        _ => Err(MediaTypeError::NotALayer(media_type.to_owned())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn oci_types_gain_suffix() {
        assert_eq!(encrypted_media_type(OCI_LAYER_TAR_GZIP).unwrap(), OCI_LAYER_TAR_GZIP_ENC);
        assert_eq!(encrypted_media_type(OCI_LAYER_TAR).unwrap(), OCI_LAYER_TAR_ENC);
        assert_eq!(encrypted_media_type(OCI_LAYER_TAR_ZSTD).unwrap(), OCI_LAYER_TAR_ZSTD_ENC);
        assert_eq!(encrypted_media_type(OCI_LAYER_ND_TAR).unwrap(), OCI_LAYER_ND_TAR_ENC);
        assert_eq!(encrypted_media_type(OCI_LAYER_ND_TAR_GZIP).unwrap(), OCI_LAYER_ND_TAR_GZIP_ENC);
        assert_eq!(encrypted_media_type(OCI_LAYER_ND_TAR_ZSTD).unwrap(), OCI_LAYER_ND_TAR_ZSTD_ENC);
        assert_eq!(encrypted_media_type(WASM_LAYER).unwrap(), WASM_LAYER_ENC);
    }

    #[test]
    fn docker_types_map_to_oci() {
        assert_eq!(encrypted_media_type(DOCKER_LAYER_TAR_GZIP).unwrap(), OCI_LAYER_TAR_GZIP_ENC);
        assert_eq!(encrypted_media_type(DOCKER_LAYER_TAR).unwrap(), OCI_LAYER_TAR_ENC);
    }

    #[test]
    fn refuses_non_layers_and_double_encryption() {
        assert_eq!(
            encrypted_media_type(OCI_LAYER_TAR_GZIP_ENC),
            Err(MediaTypeError::AlreadyEncrypted(OCI_LAYER_TAR_GZIP_ENC.into()))
        );
        assert!(matches!(
            encrypted_media_type("application/vnd.oci.image.config.v1+json"),
            Err(MediaTypeError::NotALayer(_))
        ));
        assert!(matches!(encrypted_media_type(DOCKER_FOREIGN_LAYER), Err(MediaTypeError::NotALayer(_))));
        assert!(matches!(
            encrypted_media_type("application/vnd.in-toto+json"),
            Err(MediaTypeError::NotALayer(_))
        ));
    }

    #[test]
    fn decrypt_strips_suffix() {
        assert_eq!(decrypted_media_type(OCI_LAYER_TAR_ZSTD_ENC).as_deref(), Some(OCI_LAYER_TAR_ZSTD));
        assert_eq!(decrypted_media_type(OCI_LAYER_TAR_ZSTD), None);
        assert!(is_encrypted(WASM_LAYER_ENC));
        assert!(!is_encrypted(WASM_LAYER));
    }

    #[test]
    fn compression_of_plain_and_encrypted() {
        assert_eq!(layer_compression(OCI_LAYER_TAR_GZIP_ENC).unwrap(), Compression::Gzip);
        assert_eq!(layer_compression(DOCKER_LAYER_TAR_GZIP).unwrap(), Compression::Gzip);
        assert_eq!(layer_compression(OCI_LAYER_ND_TAR_ZSTD_ENC).unwrap(), Compression::Zstd);
        assert_eq!(layer_compression(OCI_LAYER_TAR).unwrap(), Compression::None);
        assert_eq!(layer_compression(DOCKER_LAYER_TAR).unwrap(), Compression::None);
        assert!(layer_compression("application/json").is_err());
    }
}
