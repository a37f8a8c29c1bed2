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
    #[error("unwrapped, but the private options are invalid")]
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

/// What one wrapped-key scheme of a layer carries, read from the annotation without
/// unwrapping anything: enough to say which key, or which flag, would open it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CarriedKey {
    /// `jwe` or `provider.<name>`.
    pub scheme: String,
    /// For `jwe`: every recipient (`alg`, `kid`) of every item. Empty for other
    /// schemes, or when the JWE's headers cannot be read.
    pub recipients: Vec<RecipientInfo>,
    /// For `provider.*`: the key ids (`kbs:///…`) the items name. Keyprovider items
    /// are opaque in general; CoCo's annotation packet (`{"kid": …, "wrapped_data": …}`)
    /// shows its id, other formats show nothing here.
    pub kids: Vec<String>,
}

/// The flag of cloak's tools that opens a JWE with a local private key.
pub const FLAG_KEY: &str = "--key FILE";
/// The flag that fetches keys from a KBS after attestation (cloak-pull, in a guest).
pub const FLAG_KBS: &str = "--kbs URL";
/// The flag that names ocicrypt keyproviders (cloak-pull).
pub const FLAG_KEYPROVIDER: &str = "--keyprovider-config FILE";

/// A flag as the hint says it: the tool is named where `cloak decrypt` has no such flag.
fn flag_text(flag: &str) -> String {
    match flag {
        FLAG_KBS => format!("{flag} (cloak-pull, in an attested guest)"),
        FLAG_KEYPROVIDER => format!("{flag} (cloak-pull)"),
        _ => flag.to_owned(),
    }
}

fn is_kbs_id(kid: &str) -> bool {
    kid.starts_with("kbs://")
}

impl CarriedKey {
    /// Read what a scheme's items show. Never fails: what cannot be read is left out.
    pub fn read(scheme: &str, items: &[Vec<u8>]) -> CarriedKey {
        let mut recipients = Vec::new();
        let mut kids = Vec::new();
        for item in items {
            if scheme == annotations::SCHEME_JWE {
                recipients.extend(jwe_recipients(item).unwrap_or_default());
            } else if let Ok(serde_json::Value::Object(m)) = serde_json::from_slice(item) {
                if let Some(serde_json::Value::String(kid)) = m.get("kid") {
                    if !kids.contains(kid) {
                        kids.push(kid.clone());
                    }
                }
            }
        }
        CarriedKey { scheme: scheme.to_owned(), recipients, kids }
    }

    /// The flags that would open it, most direct first: `--key FILE` for JWE (and
    /// `--kbs URL` when a recipient's `kid` is a `kbs:///` id), `--kbs URL` for
    /// `provider.attestation-agent` or a KBS id, `--keyprovider-config FILE` for
    /// other keyproviders.
    pub fn flags(&self) -> Vec<&'static str> {
        if self.scheme == annotations::SCHEME_JWE {
            let mut flags = vec![FLAG_KEY];
            if self.recipients.iter().any(|r| r.kid.as_deref().is_some_and(is_kbs_id)) {
                flags.push(FLAG_KBS);
            }
            return flags;
        }
        let provider = self.scheme.strip_prefix(annotations::SCHEME_PROVIDER_PREFIX).unwrap_or_default();
        if provider == "attestation-agent" || self.kids.iter().any(|k| is_kbs_id(k)) {
            vec![FLAG_KBS]
        } else {
            vec![FLAG_KEYPROVIDER]
        }
    }

    /// What the scheme carries, for a message: `jwe (recipients RSA-OAEP kid kbs:///a/b/c,
    /// ECDH-ES+A256KW)`, `provider.attestation-agent (kid kbs:///default/kek/app)`.
    pub fn describe(&self) -> String {
        let mut parts: Vec<String> = Vec::new();
        for r in &self.recipients {
            let text = match &r.kid {
                Some(kid) => format!("{} kid {kid}", r.alg),
                None => r.alg.clone(),
            };
            if !parts.contains(&text) {
                parts.push(text);
            }
        }
        if !parts.is_empty() {
            let noun = if parts.len() == 1 { "recipient" } else { "recipients" };
            return format!("{} ({noun} {})", self.scheme, parts.join(", "));
        }
        if !self.kids.is_empty() {
            return format!("{} (kid {})", self.scheme, self.kids.join(", "));
        }
        self.scheme.clone()
    }
}

/// Every failed attempt to unwrap one layer's key, for the error message.
///
/// Its `Display` is a list, not a chain: each attempt with its whole cause, then for
/// every scheme nothing configured could try, what the layer carries and the flag that
/// would open it ([`UnwrapReport::hint`]). It has no `source()`.
#[derive(Debug)]
pub struct UnwrapReport {
    /// The attempts in the order they were made.
    pub attempts: Vec<UnwrapAttempt>,
    /// `keys.*` schemes present on the layer but not supported (pkcs7, pgp, ...).
    pub unsupported: Vec<String>,
    /// What each supported scheme on the layer carries, in the order they are tried.
    pub carried: Vec<CarriedKey>,
}

impl UnwrapReport {
    /// The schemes on the layer that no configured unwrapper handles.
    pub fn unopened(&self) -> Vec<&CarriedKey> {
        self.carried
            .iter()
            .filter(|c| {
                self.attempts
                    .iter()
                    .any(|a| a.scheme == c.scheme && matches!(a.reason, UnwrapFailure::NoUnwrapper))
            })
            .collect()
    }

    /// What to do when no configured unwrapper could try the layer: per scheme, what
    /// it carries and the flag that would open it. `None` when every scheme was tried
    /// (the attempts then say why each failed).
    ///
    /// Already part of the report's `Display`; for callers that show it apart (a JSON
    /// field, a log line).
    pub fn hint(&self) -> Option<String> {
        let unopened = self.unopened();
        if unopened.is_empty() {
            return None;
        }
        let parts: Vec<String> = unopened
            .iter()
            .map(|c| {
                let flags: Vec<String> = c.flags().iter().map(|f| flag_text(f)).collect();
                format!("nothing configured opens {}; give {}", c.describe(), flags.join(" or "))
            })
            .collect();
        Some(parts.join("; "))
    }
}

impl fmt::Display for UnwrapReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<String> = Vec::new();
        if self.attempts.is_empty() {
            parts.push("the layer has no wrapped key for any supported scheme (jwe, provider.NAME)".into());
        }
        // Identical causes (the same key failing on several items) are said once.
        let mut tried: Vec<(Vec<String>, String)> = Vec::new();
        for a in &self.attempts {
            if matches!(a.reason, UnwrapFailure::NoUnwrapper) {
                continue;
            }
            let label = format!("{} item {} via {}", a.scheme, a.item, a.unwrapper);
            let why = report::line(&a.reason);
            match tried.iter_mut().find(|(_, w)| *w == why) {
                Some((labels, _)) => labels.push(label),
                None => tried.push((vec![label], why)),
            }
        }
        for (labels, why) in tried {
            parts.push(format!("[{}] {why}", labels.join(", ")));
        }
        if let Some(hint) = self.hint() {
            parts.push(hint);
        }
        if !self.unsupported.is_empty() {
            parts.push(format!("unsupported schemes present: {}", self.unsupported.join(", ")));
        }
        f.write_str(&parts.join("; "))
    }
}

// A list of attempts, each already shown with its cause: the end of the chain.
impl std::error::Error for UnwrapReport {}

/// Errors of the top-level wrap/unwrap API.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OcicryptError {
    /// A key wrapper failed.
    #[error("wrapping the layer key with scheme {scheme:?} failed")]
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
    /// No unwrapper could recover the layer key; the report lists every attempt and,
    /// for schemes nothing could try, what would open them ([`UnwrapReport::hint`]).
    #[error("could not unwrap the layer key")]
    NoKey(#[source] UnwrapReport),
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
    let carried: Vec<CarriedKey> = schemes
        .iter()
        .map(|s| CarriedKey::read(s, enc.wrapped.get(*s).map(Vec::as_slice).unwrap_or_default()))
        .collect();
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
    Err(OcicryptError::NoKey(UnwrapReport { attempts, unsupported: enc.unknown_schemes, carried }))
}
