//! CoCo's AnnotationPacket: the bytes `coco_keyprovider` returns as its wrap result
//! and CoCo guests (CDH) unwrap. The layer's private options are sealed with
//! AES-256-GCM under a 32-byte key-encryption key (KEK) held in the KBS under `kid`.
//!
//! v1 (emitted, what every CoCo release reads):
//! `{"kid","wrapped_data","iv","wrap_type":"A256GCM"}`, standard base64, 12-byte IV,
//! ciphertext followed by the 16-byte tag, no AAD.
//! The newer versioned form adds `version`, `provider` ("kbs"), `provider_settings`
//! and `annotations`; we parse it and accept only the `kbs` provider.

use std::fmt;

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use rand::RngCore;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// Length of a KEK (AES-256).
pub const KEK_LEN: usize = 32;
const GCM_IV_LEN: usize = 12;
const GCM_TAG_LEN: usize = 16;

/// What was wrong with a packet or a seal/open attempt.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PacketError {
    /// Not a JSON AnnotationPacket.
    #[error("malformed AnnotationPacket: {0}")]
    Malformed(String),
    /// A wrap type we do not implement.
    #[error("unsupported AnnotationPacket wrap_type {0:?} (supported: A256GCM)")]
    UnsupportedWrapType(String),
    /// A KMS provider other than the KBS.
    #[error("unsupported AnnotationPacket provider {0:?} (supported: kbs)")]
    UnsupportedProvider(String),
    /// The KEK has the wrong length.
    #[error("KEK must be {KEK_LEN} bytes, got {0}")]
    KekLength(usize),
    /// GCM tag mismatch: wrong KEK or tampered packet.
    #[error("AES-256-GCM authentication failed for kid {0}: wrong KEK or tampered packet")]
    Auth(String),
}

/// A 32-byte key-encryption key. Zeroized on drop; `Debug` is redacted.
#[derive(Clone)]
pub struct Kek(Zeroizing<[u8; KEK_LEN]>);

impl Kek {
    /// A fresh random KEK from the OS RNG.
    pub fn generate() -> Self {
        let mut k = Zeroizing::new([0u8; KEK_LEN]);
        rand::rngs::OsRng.fill_bytes(k.as_mut());
        Self(k)
    }

    /// Takes exactly [`KEK_LEN`] bytes.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, PacketError> {
        let arr: [u8; KEK_LEN] = bytes.try_into().map_err(|_| PacketError::KekLength(bytes.len()))?;
        Ok(Self(Zeroizing::new(arr)))
    }

    /// The key bytes (for registration in the KBS).
    pub fn as_bytes(&self) -> &[u8] {
        self.0.as_ref()
    }
}

impl fmt::Debug for Kek {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Kek(<redacted>)")
    }
}

/// The packet, either version. Byte fields are already base64-decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnotationPacket {
    /// Where the KEK lives: `kbs:///repo/type/tag` (other forms accepted on parse).
    pub kid: String,
    /// AES-GCM ciphertext followed by the tag.
    pub wrapped_data: Vec<u8>,
    /// The GCM nonce.
    pub iv: Vec<u8>,
    /// `A256GCM`.
    pub wrap_type: String,
}

#[derive(Serialize)]
struct WireV1<'a> {
    kid: &'a str,
    wrapped_data: String,
    iv: String,
    wrap_type: &'a str,
}

#[derive(Deserialize)]
struct WireAny {
    #[serde(default)]
    version: Option<String>,
    kid: String,
    wrapped_data: String,
    #[serde(default)]
    provider: Option<String>,
    #[serde(default)]
    iv: Option<String>,
    #[serde(default)]
    wrap_type: Option<String>,
}

fn b64(field: &str, v: &str) -> Result<Vec<u8>, PacketError> {
    STANDARD.decode(v).map_err(|e| PacketError::Malformed(format!("{field}: invalid base64: {e}")))
}

impl AnnotationPacket {
    /// Parses v1 or the versioned form.
    pub fn parse(bytes: &[u8]) -> Result<Self, PacketError> {
        let w: WireAny = serde_json::from_slice(bytes).map_err(|e| PacketError::Malformed(e.to_string()))?;
        if let Some(p) = w.provider.as_deref() {
            if p != "kbs" {
                return Err(PacketError::UnsupportedProvider(p.chars().take(64).collect()));
            }
        }
        if let Some(v) = w.version.as_deref() {
            if !v.starts_with("0.") {
                return Err(PacketError::Malformed(format!(
                    "unknown version {:?}",
                    v.chars().take(32).collect::<String>()
                )));
            }
        }
        let iv = w.iv.ok_or_else(|| PacketError::Malformed("missing field iv".into()))?;
        let wrap_type =
            w.wrap_type.ok_or_else(|| PacketError::Malformed("missing field wrap_type".into()))?;
        if w.kid.is_empty() {
            return Err(PacketError::Malformed("empty kid".into()));
        }
        Ok(Self {
            kid: w.kid,
            wrapped_data: b64("wrapped_data", &w.wrapped_data)?,
            iv: b64("iv", &iv)?,
            wrap_type,
        })
    }

    /// The v1 JSON bytes (field order as coco_keyprovider emits them).
    pub fn to_v1_json(&self) -> Vec<u8> {
        let w = WireV1 {
            kid: &self.kid,
            wrapped_data: STANDARD.encode(&self.wrapped_data),
            iv: STANDARD.encode(&self.iv),
            wrap_type: &self.wrap_type,
        };
        // Serializing a struct of strings cannot fail.
        serde_json::to_vec(&w).unwrap_or_default()
    }

    /// Seals `plaintext` under `kek` with a fresh random IV.
    pub fn seal(kid: &str, kek: &Kek, plaintext: &[u8]) -> Result<Self, PacketError> {
        let mut iv = [0u8; GCM_IV_LEN];
        rand::rngs::OsRng.fill_bytes(&mut iv);
        let cipher =
            Aes256Gcm::new_from_slice(kek.as_bytes()).map_err(|_| PacketError::KekLength(KEK_LEN))?;
        let wrapped_data = cipher
            .encrypt(Nonce::from_slice(&iv), plaintext)
            .map_err(|_| PacketError::Malformed("AES-GCM encryption failed".into()))?;
        Ok(Self { kid: kid.to_owned(), wrapped_data, iv: iv.to_vec(), wrap_type: "A256GCM".into() })
    }

    /// Opens the packet with `kek`; fails on a wrong key or any tampering.
    pub fn open(&self, kek: &Kek) -> Result<Zeroizing<Vec<u8>>, PacketError> {
        if self.wrap_type != "A256GCM" {
            return Err(PacketError::UnsupportedWrapType(self.wrap_type.chars().take(32).collect()));
        }
        if self.iv.len() != GCM_IV_LEN {
            return Err(PacketError::Malformed(format!(
                "iv must be {GCM_IV_LEN} bytes, got {}",
                self.iv.len()
            )));
        }
        if self.wrapped_data.len() < GCM_TAG_LEN {
            return Err(PacketError::Malformed("wrapped_data shorter than the GCM tag".into()));
        }
        let cipher =
            Aes256Gcm::new_from_slice(kek.as_bytes()).map_err(|_| PacketError::KekLength(KEK_LEN))?;
        cipher
            .decrypt(Nonce::from_slice(&self.iv), self.wrapped_data.as_slice())
            .map(Zeroizing::new)
            .map_err(|_| PacketError::Auth(self.kid.clone()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn seal_open_round_trip_and_v1_shape() {
        let kek = Kek::generate();
        let p = AnnotationPacket::seal("kbs:///default/key/1", &kek, b"{\"symkey\":\"x\"}").unwrap();
        let json = p.to_v1_json();
        let v: serde_json::Value = serde_json::from_slice(&json).unwrap();
        let keys: Vec<_> = v.as_object().unwrap().keys().cloned().collect();
        assert_eq!(keys.len(), 4);
        assert_eq!(v["wrap_type"], "A256GCM");
        assert!(String::from_utf8(json.clone())
            .unwrap()
            .starts_with("{\"kid\":\"kbs:///default/key/1\",\"wrapped_data\":"));
        let back = AnnotationPacket::parse(&json).unwrap();
        assert_eq!(back, p);
        assert_eq!(back.open(&kek).unwrap().as_slice(), b"{\"symkey\":\"x\"}");
    }

    #[test]
    fn wrong_kek_and_tampering_fail() {
        let kek = Kek::generate();
        let mut p = AnnotationPacket::seal("kbs:///a/b/c", &kek, b"secret options").unwrap();
        assert!(matches!(p.open(&Kek::generate()), Err(PacketError::Auth(_))));
        p.wrapped_data[0] ^= 1;
        assert!(matches!(p.open(&kek), Err(PacketError::Auth(_))));
    }

    #[test]
    fn versioned_form_parses_and_foreign_providers_are_refused() {
        let kek = Kek::from_slice(&[7u8; 32]).unwrap();
        let p = AnnotationPacket::seal("kbs:///default/key/1", &kek, b"opts").unwrap();
        let v2 = serde_json::json!({
            "version": "0.1.0", "kid": p.kid, "wrapped_data": STANDARD.encode(&p.wrapped_data),
            "provider": "kbs", "iv": STANDARD.encode(&p.iv), "wrap_type": "A256GCM",
            "provider_settings": {}, "annotations": {}
        });
        let parsed = AnnotationPacket::parse(v2.to_string().as_bytes()).unwrap();
        assert_eq!(parsed.open(&kek).unwrap().as_slice(), b"opts");
        let mut other = v2.clone();
        other["provider"] = "aliyun".into();
        assert!(matches!(
            AnnotationPacket::parse(other.to_string().as_bytes()),
            Err(PacketError::UnsupportedProvider(_))
        ));
    }

    #[test]
    fn bad_input_is_a_clear_error() {
        assert!(AnnotationPacket::parse(b"not json").is_err());
        let e = AnnotationPacket::parse(br#"{"kid":"k","wrapped_data":"AAAA","wrap_type":"A256GCM"}"#)
            .unwrap_err();
        assert!(e.to_string().contains("iv"));
        let p = AnnotationPacket::parse(
            br#"{"kid":"k","wrapped_data":"AAAA","iv":"AAAA","wrap_type":"A256CTR"}"#,
        )
        .unwrap();
        assert!(matches!(p.open(&Kek::generate()), Err(PacketError::UnsupportedWrapType(_))));
        let p = AnnotationPacket::parse(
            br#"{"kid":"k","wrapped_data":"AAAA","iv":"AAAA","wrap_type":"A256GCM"}"#,
        )
        .unwrap();
        assert!(p.open(&Kek::generate()).is_err());
        assert!(Kek::from_slice(&[0u8; 16]).is_err());
    }
}
