//! The `org.opencontainers.image.enc.*` layer annotations.
//!
//! `keys.<scheme>` holds comma-separated, padded standard base64 items (one
//! wrapped copy of the private options each); `pubopts` holds the base64 public
//! options. Schemes this crate cannot unwrap (pkcs7, pgp, pkcs11, ...) are kept
//! by name so errors can say why a layer could not be opened.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;

use crate::options::{OptionsError, PublicOptions};

/// Prefix of every encryption annotation.
pub const ENC_PREFIX: &str = "org.opencontainers.image.enc.";
/// Prefix of the wrapped-key annotations.
pub const KEYS_PREFIX: &str = "org.opencontainers.image.enc.keys.";
/// JWE wrapped keys.
pub const KEYS_JWE: &str = "org.opencontainers.image.enc.keys.jwe";
/// Prefix of keyprovider wrapped keys (`...provider.<name>`).
pub const KEYS_PROVIDER_PREFIX: &str = "org.opencontainers.image.enc.keys.provider.";
/// Public cipher options.
pub const PUBOPTS: &str = "org.opencontainers.image.enc.pubopts";
/// Scheme name of JWE.
pub const SCHEME_JWE: &str = "jwe";
/// Scheme-name prefix of keyproviders.
pub const SCHEME_PROVIDER_PREFIX: &str = "provider.";

/// The scheme name (annotation key suffix) of keyprovider `name`.
pub fn provider_scheme(name: &str) -> String {
    format!("{SCHEME_PROVIDER_PREFIX}{name}")
}

/// The annotation key of a scheme (`jwe` -> `org.opencontainers.image.enc.keys.jwe`).
pub fn keys_annotation(scheme: &str) -> String {
    format!("{KEYS_PREFIX}{scheme}")
}

/// Why a layer's encryption annotations could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AnnotationError {
    /// The layer has no `pubopts` annotation.
    #[error("layer has no {PUBOPTS} annotation")]
    MissingPubopts,
    /// An item is not padded standard base64.
    #[error("annotation {key} item {index} is not valid base64")]
    Base64 { key: String, index: usize },
    /// The public options are invalid.
    #[error("annotation {PUBOPTS}")]
    Pubopts(#[source] OptionsError),
}

/// The parsed encryption annotations of one layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncAnnotations {
    /// Wrapped keys by scheme (`jwe`, `provider.<name>`), base64-decoded, in
    /// annotation order.
    pub wrapped: BTreeMap<String, Vec<Vec<u8>>>,
    /// The public cipher options.
    pub pubopts: PublicOptions,
    /// `keys.*` schemes present but not supported here (`pkcs7`, `pgp`, `pkcs11`, ...).
    pub unknown_schemes: Vec<String>,
}

/// Whether this crate's scheme model covers `scheme` (JWE and keyproviders).
fn is_known_scheme(scheme: &str) -> bool {
    scheme == SCHEME_JWE || scheme.strip_prefix(SCHEME_PROVIDER_PREFIX).is_some_and(|n| !n.is_empty())
}

/// Split a `keys.*` value into base64-decoded items.
fn decode_items(key: &str, value: &str) -> Result<Vec<Vec<u8>>, AnnotationError> {
    value
        .split(',')
        .enumerate()
        .filter(|(_, item)| !item.trim().is_empty())
        .map(|(index, item)| {
            B64.decode(item.trim().as_bytes())
                .map_err(|_| AnnotationError::Base64 { key: key.to_owned(), index })
        })
        .collect()
}

impl EncAnnotations {
    /// Parse the annotations of a layer descriptor (a `HashMap` or `BTreeMap`).
    pub fn parse<'a, I>(annotations: I) -> Result<Self, AnnotationError>
    where
        I: IntoIterator<Item = (&'a String, &'a String)>,
    {
        let mut wrapped = BTreeMap::new();
        let mut unknown_schemes = Vec::new();
        let mut pubopts = None;
        for (key, value) in annotations {
            if key == PUBOPTS {
                let json = B64
                    .decode(value.trim().as_bytes())
                    .map_err(|_| AnnotationError::Base64 { key: key.clone(), index: 0 })?;
                pubopts = Some(PublicOptions::from_json(&json).map_err(AnnotationError::Pubopts)?);
            } else if let Some(scheme) = key.strip_prefix(KEYS_PREFIX) {
                if is_known_scheme(scheme) {
                    let items = decode_items(key, value)?;
                    if !items.is_empty() {
                        wrapped.insert(scheme.to_owned(), items);
                    }
                } else {
                    unknown_schemes.push(scheme.to_owned());
                }
            }
        }
        unknown_schemes.sort();
        Ok(EncAnnotations {
            wrapped,
            pubopts: pubopts.ok_or(AnnotationError::MissingPubopts)?,
            unknown_schemes,
        })
    }

    /// The annotations these values encode (`keys.*` and `pubopts`). Unknown
    /// schemes are not re-emitted: their items were not kept.
    pub fn to_annotations(&self) -> BTreeMap<String, String> {
        let mut out: BTreeMap<String, String> = self
            .wrapped
            .iter()
            .filter(|(_, items)| !items.is_empty())
            .map(|(scheme, items)| {
                let joined: Vec<String> = items.iter().map(|i| B64.encode(i)).collect();
                (keys_annotation(scheme), joined.join(","))
            })
            .collect();
        out.insert(PUBOPTS.to_owned(), B64.encode(self.pubopts.to_json()));
        out
    }
}

/// Whether a layer's annotations carry any wrapped key (of any scheme).
pub fn has_wrapped_keys<'a, I>(annotations: I) -> bool
where
    I: IntoIterator<Item = (&'a String, &'a String)>,
{
    annotations.into_iter().any(|(k, _)| k.starts_with(KEYS_PREFIX))
}

/// The annotations with every `org.opencontainers.image.enc.` entry removed, as
/// skopeo and imgcrypt do on decryption. Other annotations are kept.
pub fn strip_enc_annotations<'a, I>(annotations: I) -> BTreeMap<String, String>
where
    I: IntoIterator<Item = (&'a String, &'a String)>,
{
    annotations
        .into_iter()
        .filter(|(k, _)| !k.starts_with(ENC_PREFIX))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect()
}

/// Fresh encryption: the existing non-`enc` annotations plus `new_enc` (stale
/// `enc.*` entries are dropped first, as imgcrypt does).
pub fn merge_enc_annotations<'a, I>(
    existing: I,
    new_enc: &BTreeMap<String, String>,
) -> BTreeMap<String, String>
where
    I: IntoIterator<Item = (&'a String, &'a String)>,
{
    let mut out = strip_enc_annotations(existing);
    out.extend(new_enc.iter().map(|(k, v)| (k.clone(), v.clone())));
    out
}

/// Add recipients to an already-encrypted layer: `keys.*` values in `new_enc`
/// are appended as further comma-separated items (Go's `old + "," + new`); the
/// existing `pubopts` is kept, since the blob is unchanged.
pub fn append_wrapped_keys<'a, I>(existing: I, new_enc: &BTreeMap<String, String>) -> BTreeMap<String, String>
where
    I: IntoIterator<Item = (&'a String, &'a String)>,
{
    let mut out: BTreeMap<String, String> =
        existing.into_iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    for (k, v) in new_enc {
        if !k.starts_with(KEYS_PREFIX) {
            continue;
        }
        match out.get_mut(k) {
            Some(old) if !old.is_empty() => {
                old.push(',');
                old.push_str(v);
            }
            _ => {
                out.insert(k.clone(), v.clone());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const PUB_B64: &str = "eyJjaXBoZXIiOiJBRVNfMjU2X0NUUl9ITUFDX1NIQTI1NiIsImhtYWMiOiIyd0JoZ0VTZzVhOHBXSHJ1b3FPaUhsODgybERHMktpcVNlcTdkVE83K2w0PSIsImNpcGhlcm9wdGlvbnMiOnt9fQ==";

    fn map(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn parses_items_and_schemes() {
        let a = map(&[
            (KEYS_JWE, "YQ==,Yg=="),
            ("org.opencontainers.image.enc.keys.provider.attestation-agent", "Yw=="),
            ("org.opencontainers.image.enc.keys.pkcs7", "ZA=="),
            ("org.opencontainers.image.enc.keys.pgp", "ZA=="),
            (PUBOPTS, PUB_B64),
            ("org.example.other", "x"),
        ]);
        let e = EncAnnotations::parse(&a).unwrap();
        assert_eq!(e.wrapped["jwe"], vec![b"a".to_vec(), b"b".to_vec()]);
        assert_eq!(e.wrapped["provider.attestation-agent"], vec![b"c".to_vec()]);
        assert_eq!(e.unknown_schemes, vec!["pgp".to_string(), "pkcs7".to_string()]);
        let back = e.to_annotations();
        assert_eq!(back[KEYS_JWE], "YQ==,Yg==");
        assert_eq!(back[PUBOPTS], PUB_B64);
        assert_eq!(EncAnnotations::parse(&back).unwrap().wrapped, e.wrapped);
    }

    #[test]
    fn errors_are_clean() {
        assert_eq!(EncAnnotations::parse(&map(&[(KEYS_JWE, "YQ==")])), Err(AnnotationError::MissingPubopts));
        assert_eq!(
            EncAnnotations::parse(&map(&[(KEYS_JWE, "YQ==,***"), (PUBOPTS, PUB_B64)])),
            Err(AnnotationError::Base64 { key: KEYS_JWE.into(), index: 1 })
        );
        // Unpadded base64 is refused (Go uses StdEncoding).
        assert!(EncAnnotations::parse(&map(&[(KEYS_JWE, "YQ"), (PUBOPTS, PUB_B64)])).is_err());
        assert!(matches!(
            EncAnnotations::parse(&map(&[(PUBOPTS, "e30=")])),
            Err(AnnotationError::Pubopts(OptionsError::MissingCipher))
        ));
    }

    #[test]
    fn strip_merge_append() {
        let existing = map(&[("keep", "1"), (KEYS_JWE, "YQ=="), (PUBOPTS, PUB_B64)]);
        let stripped = strip_enc_annotations(&existing);
        assert_eq!(stripped.len(), 1);
        assert_eq!(stripped["keep"], "1");
        let new: BTreeMap<String, String> =
            [(KEYS_JWE.to_string(), "Yg==".to_string()), (PUBOPTS.to_string(), "new".to_string())].into();
        let merged = merge_enc_annotations(&existing, &new);
        assert_eq!(merged[KEYS_JWE], "Yg==");
        assert_eq!(merged[PUBOPTS], "new");
        assert_eq!(merged["keep"], "1");
        let appended = append_wrapped_keys(&existing, &new);
        assert_eq!(appended[KEYS_JWE], "YQ==,Yg==");
        assert_eq!(appended[PUBOPTS], PUB_B64);
        assert!(has_wrapped_keys(&existing));
        assert!(!has_wrapped_keys(&stripped));
    }
}
