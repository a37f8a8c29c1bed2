//! The key-wrap seam: how a layer's private options are wrapped for recipients
//! and unwrapped on the way back. `jwe` lives in this crate; keyprovider and KBS
//! schemes live in their own crates and plug in through these traits.

use std::future::Future;
use std::pin::Pin;

use zeroize::Zeroizing;

/// A boxed, sendable future, so the traits stay object-safe (`Arc<dyn KeyWrapper>`).
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The cause of a [`WrapError`]: the underlying error, kept for its chain
/// (a plain message converts too: `"text".into()`).
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Why a wrap or unwrap attempt failed: a kind (which the keyprovider maps to
/// a gRPC code) and the cause. The message names what was wrong and never
/// contains key material.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WrapError {
    /// The input was malformed (bad base64, bad JSON, bad JWE, ...).
    #[error("malformed {what}")]
    Malformed {
        what: String,
        #[source]
        source: BoxError,
    },
    /// None of this unwrapper's keys could open the wrapped blob.
    #[error("no usable key")]
    NoKey(#[source] BoxError),
    /// The peer (keyprovider, KBS) refused: policy, attestation.
    #[error("refused")]
    Refused(#[source] BoxError),
    /// The peer could not be reached after retries.
    #[error("unavailable")]
    Unavailable(#[source] BoxError),
    /// Anything else (the cause says it all, so it adds no step of its own).
    #[error(transparent)]
    Other(BoxError),
}

/// Wraps the private options JSON of a layer for one scheme.
pub trait KeyWrapper: Send + Sync {
    /// The annotation key suffix after `org.opencontainers.image.enc.keys.`:
    /// `jwe`, or `provider.<name>`.
    fn scheme(&self) -> String;
    /// Wrap `private_opts` (the JSON bytes of [`crate::PrivateOptions`]).
    /// Returns the raw wrapped bytes (before the annotation's base64).
    fn wrap<'a>(&'a self, private_opts: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, WrapError>>;
}

/// Unwraps a wrapped blob back into the private options JSON bytes.
pub trait KeyUnwrapper: Send + Sync {
    /// A short name for error reports, e.g. `jwe (2 keys)` or `provider attestation-agent`.
    fn name(&self) -> String;
    /// Whether this unwrapper can try annotation key suffix `scheme`
    /// (`jwe`, `provider.attestation-agent`, ...).
    fn handles(&self, scheme: &str) -> bool;
    /// Unwrap one item of the annotation (already base64-decoded).
    fn unwrap<'a>(
        &'a self,
        scheme: &'a str,
        wrapped: &'a [u8],
    ) -> BoxFuture<'a, Result<Zeroizing<Vec<u8>>, WrapError>>;
}
