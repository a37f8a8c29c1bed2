//! The encryptor's error type: one variant per stage, each naming what failed.

/// Errors of `encrypt`, `decrypt`, `inspect` and `keygen`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A flag or argument is invalid (exit code 2 territory, but found after parsing).
    #[error("{0}")]
    Usage(String),
    /// A recipient string could not be used.
    #[error("recipient {recipient:?}: {reason}")]
    Recipient { recipient: String, reason: String },
    /// Reading or writing an image failed.
    #[error("{context}: {source}")]
    Oci {
        context: String,
        #[source]
        source: oci::OciError,
    },
    /// A manifest or index could not be understood.
    #[error("manifest {digest}: {reason}")]
    Manifest { digest: String, reason: String },
    /// The ocicrypt format layer failed (wrap, unwrap, annotations).
    #[error("layer {index} ({digest}): {source}")]
    Layer {
        index: usize,
        digest: String,
        #[source]
        source: ocicrypt::OcicryptError,
    },
    /// Streaming a layer failed (I/O, HMAC mismatch, digest mismatch).
    #[error("layer {index} ({digest}): {source}")]
    Stream {
        index: usize,
        digest: oci::Digest,
        #[source]
        source: Box<StreamError>,
    },
    /// A layer is already encrypted.
    #[error("layer {index} ({digest}) is already encrypted ({media_type}); decrypt it first or leave it out with --layer")]
    AlreadyEncrypted { index: usize, digest: String, media_type: String },
    /// A key file could not be loaded.
    #[error("key {path}: {reason}")]
    Key { path: String, reason: String },
    /// Talking to the KBS failed.
    #[error("KBS: {0}")]
    Kbs(String),
    /// Local I/O (key files, output files).
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: std::io::Error,
    },
}

/// Why streaming one layer failed; the cause is kept (an ENOSPC while
/// writing the new blob stays an `io::Error` with that code).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StreamError {
    /// Reading the source or writing the destination.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The image source or destination.
    #[error(transparent)]
    Oci(#[from] oci::OciError),
    /// The layer cipher (HMAC, digest, unsupported cipher).
    #[error(transparent)]
    Cipher(#[from] ocicrypt::CipherError),
    /// The layer's media type.
    #[error(transparent)]
    MediaType(#[from] ocicrypt::MediaTypeError),
    /// The layer is not encrypted although its annotations say it is.
    #[error("{0} is not an encrypted media type")]
    NotEncrypted(String),
    /// The stream ended before the cipher sealed the layer.
    #[error("the stream ended before the cipher finished")]
    Unsealed,
}

impl Error {
    pub(crate) fn oci(context: impl Into<String>) -> impl FnOnce(oci::OciError) -> Error {
        let context = context.into();
        move |source| Error::Oci { context, source }
    }
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
}
