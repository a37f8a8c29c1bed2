//! The JSON documents of the ocicrypt keyprovider protocol, shaped exactly as Go
//! ocicrypt (skopeo 1.18) sends and expects them. The same bytes travel in the one
//! `bytes` field of the gRPC messages and on stdin/stdout of a `cmd` provider.
//!
//! Go has no JSON tags on its config structs, so the keys are literally
//! `Parameters` and `DecryptConfig`. Go `[]byte` is standard base64 (padded); Go's
//! decoder also accepts a JSON array of numbers, which CoCo's Rust providers send,
//! and `null` for nil. We emit base64 and accept all three.

use std::collections::BTreeMap;
use std::fmt;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::de::{self, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use zeroize::Zeroizing;

/// Why a protocol document could not be read or built. Names the field.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// Not valid JSON, or a field of the wrong shape.
    #[error("malformed keyprovider JSON: {0}")]
    Json(String),
    /// `op` was neither `keywrap` nor `keyunwrap`.
    #[error("unknown op {0:?}: expected \"keywrap\" or \"keyunwrap\"")]
    UnknownOp(String),
    /// A field the operation needs was missing or null.
    #[error("missing field {0}")]
    Missing(&'static str),
}

/// Bytes that travel as a standard-base64 string. Zeroized on drop, because the
/// same type carries the layer's private options; `Debug` shows only the length.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct B64Bytes(pub Zeroizing<Vec<u8>>);

impl B64Bytes {
    /// Wraps owned bytes.
    pub fn new(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }
    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl From<&[u8]> for B64Bytes {
    fn from(b: &[u8]) -> Self {
        Self::new(b.to_vec())
    }
}

impl fmt::Debug for B64Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "B64Bytes({} bytes)", self.0.len())
    }
}

impl Serialize for B64Bytes {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(self.0.as_slice()))
    }
}

impl<'de> Deserialize<'de> for B64Bytes {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = B64Bytes;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a standard base64 string or an array of byte values")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<B64Bytes, E> {
                STANDARD.decode(v).map(B64Bytes::new).map_err(|e| E::custom(format!("invalid base64: {e}")))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<B64Bytes, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1 << 20));
                while let Some(b) = seq.next_element::<u8>()? {
                    out.push(b);
                }
                Ok(B64Bytes::new(out))
            }
        }
        d.deserialize_any(V)
    }
}

/// A parameter map (`map[string][][]byte` in Go). Keys sorted, as Go emits them.
pub type Parameters = BTreeMap<String, Vec<B64Bytes>>;

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// Go `config.DecryptConfig`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct DecryptConfig {
    /// Go emits `{}` for an empty map and `null` for a nil one; we accept both.
    #[serde(rename = "Parameters", default, deserialize_with = "null_as_default")]
    pub parameters: Parameters,
}

/// Go `config.EncryptConfig`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct EncryptConfig {
    /// Recipient parameters of every scheme, by scheme / provider name.
    #[serde(rename = "Parameters", default, deserialize_with = "null_as_default")]
    pub parameters: Parameters,
    /// Go always emits an object here, never `null`.
    #[serde(rename = "DecryptConfig", default, deserialize_with = "null_as_default")]
    pub decrypt_config: DecryptConfig,
}

/// `keywrapparams`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyWrapParams {
    /// The whole encrypt config (all schemes).
    #[serde(default)]
    pub ec: Option<EncryptConfig>,
    /// The layer's private options JSON.
    #[serde(default)]
    pub optsdata: Option<B64Bytes>,
}

/// `keyunwrapparams`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyUnwrapParams {
    /// The whole decrypt config (all schemes).
    #[serde(default)]
    pub dc: Option<DecryptConfig>,
    /// The raw bytes this provider returned when wrapping.
    #[serde(default)]
    pub annotation: Option<B64Bytes>,
}

/// The operation of a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Wrap `optsdata`.
    KeyWrap,
    /// Unwrap `annotation`.
    KeyUnwrap,
}

impl Op {
    /// The wire spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Op::KeyWrap => "keywrap",
            Op::KeyUnwrap => "keyunwrap",
        }
    }
}

/// `KeyProviderKeyWrapProtocolInput`. Go always emits all three members, with
/// `null`s in the half that the operation does not use; so do we.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyProviderInput {
    /// `keywrap` or `keyunwrap`; kept as text so an unknown op is reported by name.
    #[serde(default)]
    pub op: String,
    /// Used by `keywrap`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub keywrapparams: KeyWrapParams,
    /// Used by `keyunwrap`.
    #[serde(default, deserialize_with = "null_as_default")]
    pub keyunwrapparams: KeyUnwrapParams,
}

/// A validated request.
#[derive(Debug)]
pub enum Request {
    /// Wrap `optsdata` for the recipients in `ec`.
    Wrap {
        /// The encrypt config.
        ec: EncryptConfig,
        /// The private options to wrap.
        optsdata: B64Bytes,
    },
    /// Unwrap `annotation` with the keys in `dc`.
    Unwrap {
        /// The decrypt config (empty when `null`).
        dc: DecryptConfig,
        /// The wrapped bytes.
        annotation: B64Bytes,
    },
}

impl KeyProviderInput {
    /// A Go-shaped wrap request.
    pub fn wrap(ec: EncryptConfig, optsdata: &[u8]) -> Self {
        Self {
            op: Op::KeyWrap.as_str().into(),
            keywrapparams: KeyWrapParams { ec: Some(ec), optsdata: Some(optsdata.into()) },
            keyunwrapparams: KeyUnwrapParams::default(),
        }
    }

    /// A Go-shaped unwrap request.
    pub fn unwrap(dc: DecryptConfig, annotation: &[u8]) -> Self {
        Self {
            op: Op::KeyUnwrap.as_str().into(),
            keywrapparams: KeyWrapParams::default(),
            keyunwrapparams: KeyUnwrapParams { dc: Some(dc), annotation: Some(annotation.into()) },
        }
    }

    /// Parses request bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, ProtocolError> {
        serde_json::from_slice(bytes).map_err(|e| ProtocolError::Json(e.to_string()))
    }

    /// The compact JSON bytes.
    pub fn to_vec(&self) -> Result<Vec<u8>, ProtocolError> {
        serde_json::to_vec(self).map_err(|e| ProtocolError::Json(e.to_string()))
    }

    /// Checks `op` and the fields it needs.
    pub fn into_request(self) -> Result<Request, ProtocolError> {
        match self.op.as_str() {
            "keywrap" => {
                let ec = self.keywrapparams.ec.ok_or(ProtocolError::Missing("keywrapparams.ec"))?;
                let optsdata =
                    self.keywrapparams.optsdata.ok_or(ProtocolError::Missing("keywrapparams.optsdata"))?;
                Ok(Request::Wrap { ec, optsdata })
            }
            "keyunwrap" => {
                let annotation = self
                    .keyunwrapparams
                    .annotation
                    .ok_or(ProtocolError::Missing("keyunwrapparams.annotation"))?;
                Ok(Request::Unwrap { dc: self.keyunwrapparams.dc.unwrap_or_default(), annotation })
            }
            "" => Err(ProtocolError::Missing("op")),
            other => Err(ProtocolError::UnknownOp(other.chars().take(64).collect())),
        }
    }
}

/// `keywrapresults`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyWrapResults {
    /// The wrapped bytes (opaque to ocicrypt).
    #[serde(default)]
    pub annotation: Option<B64Bytes>,
}

/// `keyunwrapresults`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyUnwrapResults {
    /// The private options JSON.
    #[serde(default)]
    pub optsdata: Option<B64Bytes>,
}

/// `KeyProviderKeyWrapProtocolOutput`. Go emits both halves, the unused one with a
/// `null` inside; so do we.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct KeyProviderOutput {
    /// Set by a wrap.
    #[serde(default, deserialize_with = "null_as_default")]
    pub keywrapresults: KeyWrapResults,
    /// Set by an unwrap.
    #[serde(default, deserialize_with = "null_as_default")]
    pub keyunwrapresults: KeyUnwrapResults,
}

impl KeyProviderOutput {
    /// The answer to a wrap.
    pub fn wrapped(annotation: Vec<u8>) -> Self {
        Self {
            keywrapresults: KeyWrapResults { annotation: Some(B64Bytes::new(annotation)) },
            keyunwrapresults: KeyUnwrapResults::default(),
        }
    }

    /// The answer to an unwrap.
    pub fn unwrapped(optsdata: Zeroizing<Vec<u8>>) -> Self {
        Self {
            keywrapresults: KeyWrapResults::default(),
            keyunwrapresults: KeyUnwrapResults { optsdata: Some(B64Bytes(optsdata)) },
        }
    }

    /// Parses answer bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, ProtocolError> {
        serde_json::from_slice(bytes).map_err(|e| ProtocolError::Json(e.to_string()))
    }

    /// The compact JSON bytes.
    pub fn to_vec(&self) -> Result<Vec<u8>, ProtocolError> {
        serde_json::to_vec(self).map_err(|e| ProtocolError::Json(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const EXEC_WRAP: &[u8] = include_bytes!("../testdata/keyprovider-exec/keywrap.request.json");
    const EXEC_UNWRAP: &[u8] = include_bytes!("../testdata/keyprovider-exec/keyunwrap.request.json");
    const GRPC_WRAP: &[u8] = include_bytes!("../testdata/keyprovider-grpc/wrap-in.json");
    const GRPC_UNWRAP: &[u8] = include_bytes!("../testdata/keyprovider-grpc/unwrap-in.json");
    const MULTI_WRAP: &[u8] = include_bytes!("../testdata/multi-recipient/keywrap.request.json");

    fn trim(b: &[u8]) -> &[u8] {
        let end = b.iter().rposition(|c| !c.is_ascii_whitespace()).map_or(0, |i| i + 1);
        &b[..end]
    }

    #[test]
    fn skopeo_requests_round_trip_byte_for_byte() {
        for fixture in [EXEC_WRAP, EXEC_UNWRAP, GRPC_WRAP, GRPC_UNWRAP, MULTI_WRAP] {
            let parsed = KeyProviderInput::from_slice(fixture).unwrap();
            assert_eq!(parsed.to_vec().unwrap(), trim(fixture));
        }
    }

    #[test]
    fn skopeo_wrap_request_carries_enabled_and_privopts() {
        let req = KeyProviderInput::from_slice(EXEC_WRAP).unwrap().into_request().unwrap();
        let Request::Wrap { ec, optsdata } = req else { panic!("not a wrap") };
        assert_eq!(ec.parameters["mykp"][0].as_bytes(), b"Enabled");
        assert!(ec.decrypt_config.parameters.is_empty());
        let opts: serde_json::Value = serde_json::from_slice(optsdata.as_bytes()).unwrap();
        assert_eq!(opts["digest"], "sha256:3c4b0491ad42ed94682815ca7a46e4a5595792d857cec1410833a9d226bb948e");
    }

    #[test]
    fn multi_recipient_request_shows_every_scheme() {
        let req = KeyProviderInput::from_slice(MULTI_WRAP).unwrap().into_request().unwrap();
        let Request::Wrap { ec, .. } = req else { panic!("not a wrap") };
        assert_eq!(ec.parameters["mykp"][0].as_bytes(), b"kid-123");
        assert!(ec.parameters["pubkeys"][0].as_bytes().starts_with(b"-----BEGIN PUBLIC KEY"));
    }

    #[test]
    fn we_build_the_same_bytes_skopeo_sent() {
        let orig = KeyProviderInput::from_slice(GRPC_UNWRAP).unwrap();
        let mut dc = DecryptConfig::default();
        dc.parameters.insert("grpckp".into(), vec![B64Bytes::from(&b"Enabled"[..])]);
        let ann = orig.keyunwrapparams.annotation.clone().unwrap();
        let ours = KeyProviderInput::unwrap(dc, ann.as_bytes());
        assert_eq!(ours.to_vec().unwrap(), trim(GRPC_UNWRAP));
    }

    #[test]
    fn python_provider_answers_parse_and_go_shape_is_emitted() {
        for (resp, wrap) in [
            (&include_bytes!("../testdata/keyprovider-exec/keywrap.response.json")[..], true),
            (&include_bytes!("../testdata/keyprovider-exec/keyunwrap.response.json")[..], false),
            (&include_bytes!("../testdata/keyprovider-grpc/wrap-out.json")[..], true),
            (&include_bytes!("../testdata/keyprovider-grpc/unwrap-out.json")[..], false),
        ] {
            let out = KeyProviderOutput::from_slice(resp).unwrap();
            assert_eq!(out.keywrapresults.annotation.is_some(), wrap);
            assert_eq!(out.keyunwrapresults.optsdata.is_some(), !wrap);
        }
        let out = KeyProviderOutput::wrapped(b"{}".to_vec()).to_vec().unwrap();
        assert_eq!(out, br#"{"keywrapresults":{"annotation":"e30="},"keyunwrapresults":{"optsdata":null}}"#);
    }

    #[test]
    fn number_arrays_and_nulls_are_accepted() {
        let out = KeyProviderOutput::from_slice(
            br#"{"keyunwrapresults":{"optsdata":[123,125]},"keywrapresults":null}"#,
        )
        .unwrap();
        assert_eq!(out.keyunwrapresults.optsdata.unwrap().as_bytes(), b"{}");
        let input = KeyProviderInput::from_slice(
            br#"{"op":"keyunwrap","keywrapparams":null,"keyunwrapparams":{"dc":{"Parameters":null},"annotation":[1,2]}}"#,
        )
        .unwrap();
        assert!(matches!(input.into_request().unwrap(), Request::Unwrap { .. }));
    }

    #[test]
    fn errors_name_the_field() {
        let e = KeyProviderInput::from_slice(
            br#"{"op":"keywrap","keywrapparams":{"ec":null,"optsdata":"e30="}}"#,
        )
        .unwrap()
        .into_request()
        .unwrap_err();
        assert_eq!(e.to_string(), "missing field keywrapparams.ec");
        let e = KeyProviderInput::from_slice(br#"{"op":"frobnicate"}"#).unwrap().into_request().unwrap_err();
        assert!(e.to_string().contains("frobnicate"));
        let e = KeyProviderInput::from_slice(br#"{"op":"keyunwrap","keyunwrapparams":{"annotation":"%%%"}}"#)
            .unwrap_err();
        assert!(e.to_string().contains("base64"), "{e}");
        assert!(KeyProviderInput::from_slice(b"{not json").is_err());
    }
}
