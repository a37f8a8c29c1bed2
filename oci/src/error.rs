//! The crate-level error returned by the transport-neutral API ([`crate::ImageSource`],
//! [`crate::ImageDest`]); it wraps the per-module errors so callers can still match
//! on the stage that failed.

use crate::digest::Digest;

/// Any failure of an image source or destination.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OciError {
    #[error(transparent)]
    Reference(#[from] crate::reference::RefError),
    #[error(transparent)]
    Layout(#[from] crate::layout::LayoutError),
    #[error(transparent)]
    Registry(#[from] crate::registry::RegistryError),
    #[error(transparent)]
    Auth(#[from] crate::auth::AuthError),
    #[error(transparent)]
    Manifest(#[from] crate::manifest::ManifestError),
    #[error(transparent)]
    RegistriesConf(#[from] crate::registries_conf::RegistriesConfError),
    /// A mirror answered a digest-pinned reference with another manifest: the
    /// pull stops (the mirror is not trusted to serve anything else either).
    /// Boxed: it would make every `Result<_, OciError>` larger.
    #[error(
        "the mirror {} served another manifest for {}: pinned to {}, its manifest hashes to {}; refusing it",
        .0.mirror, .0.reference, .0.expected, .0.actual
    )]
    MirrorManifestMismatch(Box<MirrorMismatch>),
    #[error(
        "manifest digest mismatch: {reference} is pinned to {expected} but the manifest hashes to {actual}"
    )]
    ManifestDigestMismatch { reference: String, expected: Digest, actual: Digest },
    #[error("blob digest mismatch: expected {expected}, content hashes to {actual}")]
    BlobDigestMismatch { expected: Digest, actual: Digest },
    #[error("blob {digest} is larger than the {max}-byte limit for this read")]
    TooLarge { digest: Digest, max: u64 },
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// What [`OciError::MirrorManifestMismatch`] says.
#[derive(Debug)]
pub struct MirrorMismatch {
    /// `host/repository` of the mirror.
    pub mirror: String,
    /// `host/repository` as the caller named it.
    pub reference: String,
    pub expected: Digest,
    pub actual: Digest,
}
