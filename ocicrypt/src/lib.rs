//! The OCI image-encryption format (ocicrypt), wire-compatible with Go
//! containers/ocicrypt (skopeo, imgcrypt) and ocicrypt-rs.
//!
//! Pure format, no network or filesystem: media types ([`mediatype`]),
//! annotations ([`annotations`]), cipher options ([`options`]), the
//! AES-256-CTR + HMAC-SHA256 layer cipher as a sans-IO state machine
//! ([`cipher`]) with `Read`/`AsyncRead` adapters ([`stream`]), and key wrapping
//! behind the [`keywrap`] traits, with the JWE scheme in [`jwe`].
//!
//! [`wrap_keys`] and [`unwrap_keys`] tie these together for the encryptor and
//! the puller.

#![cfg_attr(test, allow(clippy::unwrap_used))]

pub mod annotations;
pub mod cipher;
pub mod jwe;
pub mod keywrap;
pub mod mediatype;
pub mod options;
pub mod stream;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

pub use annotations::{AnnotationError, EncAnnotations};
pub use cipher::{CipherError, LayerDecryptor, LayerEncryptor, Sha256Digest};
pub use jwe::{
    jwe_recipients, load_private_key, load_public_key, JweError, JweUnwrapper, JweWrapper, KeyError,
    PrivateKey, PublicKey, RecipientInfo,
};
pub use keywrap::{BoxFuture, KeyUnwrapper, KeyWrapper, WrapError};
pub use mediatype::{
    decrypted_media_type, encrypted_media_type, is_encrypted, layer_compression, oci_media_type, Compression,
    LayerBase, LayerMediaType, MediaTypeError,
};
pub use options::{OptionsError, PrivateOptions, PublicOptions};
#[cfg(feature = "tokio")]
pub use stream::{AsyncDecryptReader, AsyncEncryptReader};
pub use stream::{BufReadMut, DecryptBufReader, DecryptReader, EncryptReader};

/// Why one attempt to unwrap a layer key failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UnwrapFailure {
    /// No configured unwrapper handles the scheme.
    #[error("no unwrapper configured for this scheme")]
    NoUnwrapper,
    /// The unwrapper failed.
    #[error(transparent)]
    Wrap(WrapError),
    /// The unwrapped bytes are not valid private options.
    #[error("unwrapped, but the private options are invalid: {0}")]
    Options(#[source] OptionsError),
}

/// One failed attempt to unwrap a layer key.
#[derive(Debug)]
pub struct UnwrapAttempt {
    /// The scheme (`jwe`, `provider.<name>`).
    pub scheme: String,
    /// The unwrapper's name (`jwe (2 keys)`), or `-` if none handled the scheme.
    pub unwrapper: String,
    /// Index of the comma-separated item in the annotation.
    pub item: usize,
    /// Why it failed.
    pub reason: UnwrapFailure,
}

/// Every failed attempt, for the error message.
#[derive(Debug)]
pub struct UnwrapReport {
    /// The attempts in the order they were made.
    pub attempts: Vec<UnwrapAttempt>,
    /// `keys.*` schemes present on the layer but not supported (pkcs7, pgp, ...).
    pub unsupported: Vec<String>,
}

impl fmt::Display for UnwrapReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.attempts.is_empty() {
            write!(f, "the layer has no wrapped key for any supported scheme")?;
        }
        for (i, a) in self.attempts.iter().enumerate() {
            if i > 0 {
                write!(f, "; ")?;
            }
            write!(f, "[{} item {} via {}] {}", a.scheme, a.item, a.unwrapper, a.reason)?;
        }
        if !self.unsupported.is_empty() {
            write!(f, "; unsupported schemes present: {}", self.unsupported.join(", "))?;
        }
        Ok(())
    }
}

/// Errors of the top-level wrap/unwrap API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OcicryptError {
    /// A key wrapper failed.
    #[error("wrapping the layer key with scheme {scheme:?} failed: {source}")]
    Wrap {
        scheme: String,
        #[source]
        source: WrapError,
    },
    /// No wrapper produced a wrapped key (no recipients).
    #[error("no wrapped keys produced: give at least one recipient")]
    NoRecipients,
    /// The layer annotations are malformed.
    #[error(transparent)]
    Annotations(#[from] AnnotationError),
    /// No unwrapper could recover the layer key.
    #[error("could not unwrap the layer key: {0}")]
    NoKey(UnwrapReport),
}

/// Wrap a layer's private options with every wrapper and return the annotations
/// to add (`keys.<scheme>` for each wrapper that produced something, and `pubopts`).
pub async fn wrap_keys(
    wrappers: &[Arc<dyn KeyWrapper>],
    opts: &PrivateOptions,
    pubopts: &PublicOptions,
) -> Result<BTreeMap<String, String>, OcicryptError> {
    let json = opts.to_json();
    let mut out: BTreeMap<String, String> = BTreeMap::new();
    for w in wrappers {
        let scheme = w.scheme();
        let wrapped =
            w.wrap(&json).await.map_err(|source| OcicryptError::Wrap { scheme: scheme.clone(), source })?;
        // An empty result means "no recipients for this scheme", as in Go.
        if wrapped.is_empty() {
            continue;
        }
        let item = B64.encode(&wrapped);
        out.entry(annotations::keys_annotation(&scheme))
            .and_modify(|v| {
                v.push(',');
                v.push_str(&item);
            })
            .or_insert(item);
    }
    if out.is_empty() {
        return Err(OcicryptError::NoRecipients);
    }
    out.insert(annotations::PUBOPTS.to_owned(), B64.encode(pubopts.to_json()));
    Ok(out)
}

/// Recover a layer's options from its annotations.
///
/// Schemes are tried in a fixed order: `jwe` first, then keyproviders by exact
/// name (alphabetical); within a scheme every item with every unwrapper that
/// handles it. The first success wins; otherwise the error lists every attempt
/// and any unsupported schemes by name.
pub async fn unwrap_keys(
    unwrappers: &[Arc<dyn KeyUnwrapper>],
    annotations: &HashMap<String, String>,
) -> Result<(PrivateOptions, PublicOptions), OcicryptError> {
    let enc = EncAnnotations::parse(annotations)?;
    let mut schemes: Vec<&String> = enc.wrapped.keys().collect();
    // jwe first (local keys, no network), then the rest in BTreeMap order.
    schemes.sort_by_key(|s| (s.as_str() != annotations::SCHEME_JWE, s.as_str()));
    let mut attempts = Vec::new();
    for scheme in schemes {
        let items = enc.wrapped.get(scheme).map(Vec::as_slice).unwrap_or_default();
        let handlers: Vec<&Arc<dyn KeyUnwrapper>> = unwrappers.iter().filter(|u| u.handles(scheme)).collect();
        if handlers.is_empty() {
            attempts.push(UnwrapAttempt {
                scheme: scheme.clone(),
                unwrapper: "-".into(),
                item: 0,
                reason: UnwrapFailure::NoUnwrapper,
            });
            continue;
        }
        for u in handlers {
            for (item, wrapped) in items.iter().enumerate() {
                let reason = match u.unwrap(scheme, wrapped).await {
                    Ok(json) => match PrivateOptions::from_json_with_public(&json, &enc.pubopts) {
                        Ok(opts) => return Ok((opts, enc.pubopts)),
                        Err(e) => UnwrapFailure::Options(e),
                    },
                    Err(e) => UnwrapFailure::Wrap(e),
                };
                attempts.push(UnwrapAttempt { scheme: scheme.clone(), unwrapper: u.name(), item, reason });
            }
        }
    }
    Err(OcicryptError::NoKey(UnwrapReport { attempts, unsupported: enc.unknown_schemes }))
}
