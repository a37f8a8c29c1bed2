//! The encryptor's error type: one variant per stage, each naming what failed.

/// Errors of `encrypt`, `decrypt`, `inspect` and `keygen`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A flag or argument is invalid (exit code 2 territory, but found after parsing).
    #[error("{0}")]
    Usage(String),
    /// A recipient string is malformed.
    #[error("recipient {recipient:?}: {reason}")]
    Recipient { recipient: String, reason: String },
    /// A well-formed recipient could not be used (its key, provider or KEK file).
    #[error("recipient {recipient:?}")]
    RecipientUnusable {
        recipient: String,
        #[source]
        source: Cause,
    },
    /// Reading or writing an image failed.
    #[error("{context}")]
    Oci {
        context: String,
        #[source]
        source: oci::OciError,
    },
    /// A manifest or index could not be understood.
    #[error("manifest {digest}: {reason}")]
    Manifest { digest: String, reason: String },
    /// The ocicrypt format layer failed (wrap, unwrap, annotations).
    #[error("layer {index} ({digest})")]
    Layer {
        index: usize,
        digest: String,
        #[source]
        source: ocicrypt::OcicryptError,
    },
    /// Streaming a layer failed (I/O, HMAC mismatch, digest mismatch).
    #[error("layer {index} ({digest})")]
    Stream {
        index: usize,
        digest: oci::Digest,
        #[source]
        source: Box<StreamError>,
    },
    /// A layer is already encrypted.
    #[error(
        "layer {index} ({digest}) is already encrypted ({media_type}); decrypt it first or leave it out of the layer selection"
    )]
    AlreadyEncrypted { index: usize, digest: String, media_type: String },
    /// A layer index of the selection is outside the image.
    #[error(
        "layer index {index} is out of range: the image has {count} layer(s), valid are 0..{} and -{count}..-1",
        count.saturating_sub(1)
    )]
    LayerOutOfRange { index: i64, count: usize },
    /// A key file could not be loaded.
    #[error("key {path}")]
    Key {
        path: String,
        #[source]
        source: ocicrypt::KeyError,
    },
    /// Talking to the KBS failed (the admin client, KEK registration, key generation).
    /// The KBS client's errors name the broker and the step themselves.
    #[error(transparent)]
    Kbs { source: Cause },
    /// Local I/O (key files, output files).
    #[error("{context}")]
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

/// The typed cause of an error whose source comes from one of several crates.
pub type Cause = Box<dyn std::error::Error + Send + Sync + 'static>;

impl Error {
    /// A KBS failure, keeping its cause.
    pub(crate) fn kbs(source: impl Into<Cause>) -> Error {
        Error::Kbs { source: source.into() }
    }

    pub(crate) fn oci(context: impl Into<String>) -> impl FnOnce(oci::OciError) -> Error {
        let context = context.into();
        move |source| Error::Oci { context, source }
    }
    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn said_once(e: &Error) -> String {
        let line = report::line(e);
        assert_eq!(report::repeated_source(e), None, "{line}");
        assert_eq!(report::repeated_clause(&line), None, "{line}");
        line
    }

    #[test]
    fn display_does_not_repeat_its_source() {
        let missing = || std::io::Error::new(std::io::ErrorKind::NotFound, "No such file or directory");
        let layout = oci::OciLayout::open("/nonexistent/layout").err().unwrap();
        let line = said_once(&Error::oci("opening oci:/nonexistent/layout:tag")(layout.into()));
        assert_eq!(
            line,
            "opening oci:/nonexistent/layout:tag: /nonexistent/layout is not an OCI image layout: \
             cannot read oci-layout: No such file or directory (os error 2)"
        );
        let key = ocicrypt::load_private_key(b"junk").unwrap_err();
        assert!(said_once(&Error::Key { path: "k.pem".into(), source: key }).starts_with("key k.pem: "));
        said_once(&Error::io("reading k.pem")(missing()));
        said_once(&Error::kbs(std::io::Error::other("connection refused")));
        said_once(&Error::RecipientUnusable { recipient: "jwe:x.pem".into(), source: Box::new(missing()) });
        let stream = Error::Stream {
            index: 0,
            digest: oci::Digest::sha256_of(b"x"),
            source: Box::new(StreamError::Cipher(ocicrypt::CipherError::HmacMismatch)),
        };
        assert_eq!(said_once(&stream).matches("HMAC mismatch").count(), 1);
    }
}
