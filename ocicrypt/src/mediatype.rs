//! Layer media types: the one table every crate uses.
//!
//! A layer type is parsed into [`LayerMediaType`] (base, compression,
//! encrypted) once; the encryptor, the puller and the keyprovider all ask it.
//! Encryption appends `+encrypted` to a layer type (after mapping Docker
//! schema2 layer types to their OCI equivalents, because only OCI manifests can
//! carry encrypted layers); decryption strips the suffix.
//!
//! Decisions where the crates used to disagree (each pinned by a test):
//! - Docker foreign layers are layers (gzip tar, so a puller can unpack one)
//!   but are never encrypted: their blobs live outside the registry. Converted
//!   to OCI they become nondistributable+gzip, as containers/image does.
//! - WASM layers are encrypted like any layer (`+wasm+encrypted`), but they are
//!   not tar archives: a puller that builds a rootfs refuses them by name.
//! - Docker `tar.zstd` (buildkit) is a zstd tar layer everywhere.
//! - An encrypted type is one whose `+`-separated suffixes include
//!   `encrypted` at the end, as Go ocicrypt writes it.

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
#[non_exhaustive]
pub enum MediaTypeError {
    /// The type is already an encrypted layer type.
    #[error("media type {0:?} is already encrypted")]
    AlreadyEncrypted(String),
    /// The type is not a layer type this implementation can encrypt
    /// (config, manifest, foreign layer, attestation, ...).
    #[error("media type {0:?} is not an encryptable layer type")]
    NotALayer(String),
    /// The type is a layer, but not a tar archive (a WASM module): it cannot
    /// be unpacked into a root filesystem.
    #[error("media type {0:?} is not a tar layer and cannot be unpacked into a root filesystem")]
    NotATar(String),
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

/// What kind of layer a media type names, compression and encryption aside.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LayerBase {
    /// `application/vnd.oci.image.layer.v1.tar…`
    OciTar,
    /// `application/vnd.oci.image.layer.nondistributable.v1.tar…`
    OciNondistributable,
    /// `application/vnd.docker.image.rootfs.diff.tar…`
    DockerTar,
    /// `application/vnd.docker.image.rootfs.foreign.diff.tar.gzip`
    DockerForeign,
    /// `application/vnd.wasm.content.layer.v1+wasm`
    Wasm,
}

/// A parsed layer media type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LayerMediaType {
    /// The kind of layer.
    pub base: LayerBase,
    /// The compression of the plaintext.
    pub compression: Compression,
    /// Whether the blob is encrypted (`+encrypted`).
    pub encrypted: bool,
}

/// The table: every plaintext layer type this implementation knows.
const TABLE: [(&str, LayerBase, Compression); 11] = [
    (OCI_LAYER_TAR, LayerBase::OciTar, Compression::None),
    (OCI_LAYER_TAR_GZIP, LayerBase::OciTar, Compression::Gzip),
    (OCI_LAYER_TAR_ZSTD, LayerBase::OciTar, Compression::Zstd),
    (OCI_LAYER_ND_TAR, LayerBase::OciNondistributable, Compression::None),
    (OCI_LAYER_ND_TAR_GZIP, LayerBase::OciNondistributable, Compression::Gzip),
    (OCI_LAYER_ND_TAR_ZSTD, LayerBase::OciNondistributable, Compression::Zstd),
    (DOCKER_LAYER_TAR, LayerBase::DockerTar, Compression::None),
    (DOCKER_LAYER_TAR_GZIP, LayerBase::DockerTar, Compression::Gzip),
    (DOCKER_LAYER_TAR_ZSTD, LayerBase::DockerTar, Compression::Zstd),
    (DOCKER_FOREIGN_LAYER, LayerBase::DockerForeign, Compression::Gzip),
    (WASM_LAYER, LayerBase::Wasm, Compression::None),
];

impl LayerMediaType {
    /// Parses a layer media type, plain or encrypted, OCI or Docker.
    pub fn parse(media_type: &str) -> Result<Self, MediaTypeError> {
        let (plain, encrypted) = match media_type.strip_suffix(ENCRYPTED_SUFFIX) {
            Some(p) => (p, true),
            None => (media_type, false),
        };
        TABLE
            .iter()
            .find(|(name, ..)| *name == plain)
            .map(|&(_, base, compression)| LayerMediaType { base, compression, encrypted })
            .ok_or_else(|| MediaTypeError::NotALayer(media_type.to_owned()))
    }

    /// The plaintext type's name.
    fn plain_str(self) -> &'static str {
        TABLE
            .iter()
            .find(|&&(_, base, compression)| base == self.base && compression == self.compression)
            .map(|(name, ..)| *name)
            // Every (base, compression) that `parse` or `to_oci` can produce is in the table.
            .unwrap_or(OCI_LAYER_TAR)
    }

    /// The OCI equivalent (Docker types mapped as containers/image maps them
    /// when it converts a manifest to OCI); OCI and WASM types unchanged.
    pub fn to_oci(self) -> Self {
        let base = match self.base {
            LayerBase::DockerTar => LayerBase::OciTar,
            LayerBase::DockerForeign => LayerBase::OciNondistributable,
            other => other,
        };
        LayerMediaType { base, ..self }
    }

    /// Whether the layer is a tar archive (everything but WASM).
    pub fn is_tar(self) -> bool {
        self.base != LayerBase::Wasm
    }

    /// The type after encryption: the OCI type plus `+encrypted`. Refused for
    /// encrypted types and Docker foreign layers (not stored in the registry).
    pub fn encrypt(self) -> Result<Self, MediaTypeError> {
        if self.encrypted {
            return Err(MediaTypeError::AlreadyEncrypted(self.to_string()));
        }
        if self.base == LayerBase::DockerForeign {
            return Err(MediaTypeError::NotALayer(self.to_string()));
        }
        Ok(LayerMediaType { encrypted: true, ..self.to_oci() })
    }

    /// The type after decryption.
    pub fn decrypt(self) -> Self {
        LayerMediaType { encrypted: false, ..self }
    }
}

impl std::fmt::Display for LayerMediaType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.plain_str())?;
        if self.encrypted {
            f.write_str(ENCRYPTED_SUFFIX)?;
        }
        Ok(())
    }
}

impl std::str::FromStr for LayerMediaType {
    type Err = MediaTypeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

/// Whether `media_type` is an encrypted layer type (anything ending in `+encrypted`,
/// as containers/image decides).
pub fn is_encrypted(media_type: &str) -> bool {
    media_type.ends_with(ENCRYPTED_SUFFIX)
}

/// The media type of a layer after encryption: the OCI type plus `+encrypted`.
///
/// Docker schema2 layer types become OCI types, because the encrypted image is
/// always written as an OCI manifest.
pub fn encrypted_media_type(media_type: &str) -> Result<String, MediaTypeError> {
    if is_encrypted(media_type) {
        return Err(MediaTypeError::AlreadyEncrypted(media_type.to_owned()));
    }
    LayerMediaType::parse(media_type)?.encrypt().map(|t| t.to_string())
}

/// The media type after decryption (the `+encrypted` suffix removed), or `None`
/// if `media_type` is not encrypted.
pub fn decrypted_media_type(media_type: &str) -> Option<String> {
    media_type.strip_suffix(ENCRYPTED_SUFFIX).map(str::to_owned)
}

/// The OCI equivalent of a layer type (Docker types mapped), or the type
/// unchanged when it is not a layer type this table knows.
pub fn oci_media_type(media_type: &str) -> String {
    match LayerMediaType::parse(media_type) {
        Ok(t) => t.to_oci().to_string(),
        Err(_) => media_type.to_owned(),
    }
}

/// The compression of a layer's plaintext, for plain or encrypted, OCI or Docker types.
pub fn layer_compression(media_type: &str) -> Result<Compression, MediaTypeError> {
    LayerMediaType::parse(media_type).map(|t| t.compression)
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

    #[test]
    fn every_table_type_round_trips_plain_and_encrypted() {
        for (name, base, compression) in TABLE {
            let t = LayerMediaType::parse(name).unwrap();
            assert_eq!((t.base, t.compression, t.encrypted), (base, compression, false));
            assert_eq!(t.to_string(), name);
            let enc = format!("{name}{ENCRYPTED_SUFFIX}");
            let e: LayerMediaType = enc.parse().unwrap();
            assert!(e.encrypted);
            assert_eq!(e.to_string(), enc);
            assert_eq!(e.decrypt(), t);
        }
    }

    /// Decision: a Docker foreign layer is a gzip tar layer (a puller unpacks
    /// it), is never encrypted, and becomes nondistributable+gzip in OCI.
    #[test]
    fn decision_docker_foreign_layer() {
        let t = LayerMediaType::parse(DOCKER_FOREIGN_LAYER).unwrap();
        assert_eq!(t.compression, Compression::Gzip);
        assert!(t.is_tar());
        assert_eq!(t.encrypt(), Err(MediaTypeError::NotALayer(DOCKER_FOREIGN_LAYER.into())));
        assert_eq!(oci_media_type(DOCKER_FOREIGN_LAYER), OCI_LAYER_ND_TAR_GZIP);
    }

    /// Decision: a WASM layer encrypts like any layer and is uncompressed, but
    /// it is not a tar: unpacking it is refused.
    #[test]
    fn decision_wasm_layer() {
        let t = LayerMediaType::parse(WASM_LAYER).unwrap();
        assert_eq!(t.compression, Compression::None);
        assert!(!t.is_tar());
        assert_eq!(t.encrypt().unwrap().to_string(), WASM_LAYER_ENC);
        assert!(!LayerMediaType::parse(WASM_LAYER_ENC).unwrap().is_tar());
    }

    /// Decision: Docker zstd layers are zstd tar layers and map to OCI zstd.
    #[test]
    fn decision_docker_zstd() {
        assert_eq!(layer_compression(DOCKER_LAYER_TAR_ZSTD).unwrap(), Compression::Zstd);
        assert_eq!(encrypted_media_type(DOCKER_LAYER_TAR_ZSTD).unwrap(), OCI_LAYER_TAR_ZSTD_ENC);
        assert_eq!(oci_media_type(DOCKER_LAYER_TAR_ZSTD), OCI_LAYER_TAR_ZSTD);
    }

    /// Decision: config and manifest types are not layers; unknown types pass
    /// through the OCI mapping unchanged.
    #[test]
    fn decision_configs_are_not_layers() {
        for t in [
            "application/vnd.oci.image.config.v1+json",
            "application/vnd.docker.container.image.v1+json",
            "application/vnd.oci.image.manifest.v1+json",
        ] {
            assert_eq!(LayerMediaType::parse(t), Err(MediaTypeError::NotALayer(t.into())));
            assert_eq!(oci_media_type(t), t);
        }
    }
}
