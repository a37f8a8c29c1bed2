//! The layer cipher's options: the secret [`PrivateOptions`] (key, nonce, digest)
//! that key-wrap schemes wrap, and the public [`PublicOptions`] (cipher name,
//! HMAC) stored in the `pubopts` annotation.
//!
//! Serialization is byte-exact to Go ocicrypt (compact, Go field order, std
//! base64); parsing is liberal (any order, `null`/missing `digest` and
//! `cipheroptions`, byte fields as base64 or number arrays) but validates every
//! length, because these bytes come from untrusted annotations.

use std::collections::BTreeMap;
use std::fmt;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use rand::RngCore as _;
use serde::Deserialize;
use zeroize::{Zeroize as _, Zeroizing};

/// The only layer cipher defined by ocicrypt.
pub const AES_256_CTR_HMAC_SHA256: &str = "AES_256_CTR_HMAC_SHA256";
/// Length of the AES-256 layer key.
pub const KEY_LEN: usize = 32;
/// Length of the CTR initial counter block.
pub const NONCE_LEN: usize = 16;
/// Length of the HMAC-SHA256 tag.
pub const HMAC_LEN: usize = 32;

/// Why private or public options could not be parsed.
/// Messages never contain key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OptionsError {
    /// Not valid JSON, or a field has the wrong JSON type. Only the position is
    /// reported, because the input may hold a key.
    #[error("{which} options are not valid JSON ({category} at line {line}, column {column})")]
    Json { which: &'static str, category: &'static str, line: usize, column: usize },
    /// A required field is missing or `null`.
    #[error("{which} options lack the {field:?} field")]
    Missing { which: &'static str, field: &'static str },
    /// A byte field is not valid padded standard base64 (or a number array).
    #[error("{which} options field {field:?} is not valid base64")]
    Base64 { which: &'static str, field: &'static str },
    /// The cipher is not `AES_256_CTR_HMAC_SHA256`.
    #[error("unsupported layer cipher {0:?} (only AES_256_CTR_HMAC_SHA256 is defined)")]
    UnsupportedCipher(String),
    /// The cipher name is empty or missing.
    #[error("public options name no cipher")]
    MissingCipher,
    /// The symmetric key does not have 32 bytes.
    #[error("layer key has {0} bytes, need 32")]
    KeyLength(usize),
    /// The nonce does not have 16 bytes.
    #[error("layer nonce has {0} bytes, need 16")]
    NonceLength(usize),
    /// The HMAC does not have 32 bytes (an empty HMAC means none was provided).
    #[error("layer HMAC has {0} bytes, need 32")]
    HmacLength(usize),
}

/// The secret per-layer options: what every key-wrap scheme wraps.
#[derive(Clone, PartialEq, Eq)]
pub struct PrivateOptions {
    /// The AES-256 key, also the HMAC key (ocicrypt uses one key for both).
    pub symkey: Zeroizing<[u8; KEY_LEN]>,
    /// Digest of the plaintext blob as recorded by the encryptor. Advisory only:
    /// it is not authenticated and skopeo may record a pre-recompression digest.
    pub digest: String,
    /// The initial 128-bit counter block.
    pub nonce: [u8; NONCE_LEN],
}

impl fmt::Debug for PrivateOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateOptions")
            .field("symkey", &"<redacted>")
            .field("digest", &self.digest)
            .field("nonce", &"<redacted>")
            .finish()
    }
}

/// The public per-layer options, stored base64'ed in the `pubopts` annotation.
#[derive(Clone, PartialEq, Eq)]
pub struct PublicOptions {
    /// Cipher name; always [`AES_256_CTR_HMAC_SHA256`] once validated.
    pub cipher: String,
    /// HMAC-SHA256 over the ciphertext.
    pub hmac: [u8; HMAC_LEN],
    /// A nonce found in the *public* `cipheroptions`. Go looks there first, so for
    /// parity it overrides the private nonce. Producers never set it.
    pub public_nonce: Option<[u8; NONCE_LEN]>,
}

impl fmt::Debug for PublicOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicOptions")
            .field("cipher", &self.cipher)
            .field("hmac", &B64.encode(self.hmac))
            .field("public_nonce", &self.public_nonce.map(|n| B64.encode(n)))
            .finish()
    }
}

/// A `[]byte` as Go's encoding/json accepts it: base64 text or an array of numbers.
#[derive(Deserialize)]
#[serde(untagged)]
enum GoBytes {
    Text(String),
    Array(Vec<u8>),
}

impl GoBytes {
    /// Decode, wiping the intermediate text (it may be a key).
    fn decode(self, which: &'static str, field: &'static str) -> Result<Zeroizing<Vec<u8>>, OptionsError> {
        match self {
            GoBytes::Text(mut s) => {
                let out = B64.decode(s.as_bytes()).map_err(|_| OptionsError::Base64 { which, field });
                s.zeroize();
                out.map(Zeroizing::new)
            }
            GoBytes::Array(v) => Ok(Zeroizing::new(v)),
        }
    }
}

#[derive(Deserialize)]
struct RawPrivate {
    symkey: Option<GoBytes>,
    digest: Option<String>,
    cipheroptions: Option<BTreeMap<String, Option<GoBytes>>>,
}

#[derive(Deserialize)]
struct RawPublic {
    cipher: Option<String>,
    hmac: Option<GoBytes>,
    cipheroptions: Option<BTreeMap<String, Option<GoBytes>>>,
}

fn json_error(which: &'static str, e: &serde_json::Error) -> OptionsError {
    let category = match e.classify() {
        serde_json::error::Category::Io => "I/O error",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "wrong field type",
        serde_json::error::Category::Eof => "unexpected end",
    };
    OptionsError::Json { which, category, line: e.line(), column: e.column() }
}

/// JSON-encode a string as Go's encoding/json does (it escapes `<`, `>`, `&`,
/// U+2028 and U+2029), so our bytes match Go's for any digest text.
fn go_json_string(s: &str) -> String {
    let plain = serde_json::Value::String(s.to_owned()).to_string();
    let mut out = String::with_capacity(plain.len());
    for c in plain.chars() {
        match c {
            '<' => out.push_str("\\u003c"),
            '>' => out.push_str("\\u003e"),
            '&' => out.push_str("\\u0026"),
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out
}

fn nonce_from(bytes: &[u8]) -> Result<[u8; NONCE_LEN], OptionsError> {
    bytes.try_into().map_err(|_| OptionsError::NonceLength(bytes.len()))
}

impl PrivateOptions {
    /// Fresh options for one layer: a random key and nonce from the OS CSPRNG.
    /// `digest` is the plaintext blob digest (`sha256:<hex>`), or `""`.
    pub fn generate(digest: impl Into<String>) -> Self {
        let mut symkey = Zeroizing::new([0u8; KEY_LEN]);
        let mut nonce = [0u8; NONCE_LEN];
        rand::rngs::OsRng.fill_bytes(symkey.as_mut());
        rand::rngs::OsRng.fill_bytes(&mut nonce);
        PrivateOptions { symkey, digest: digest.into(), nonce }
    }

    /// Go's exact JSON: `{"symkey":"..","digest":"..","cipheroptions":{"nonce":".."}}`.
    /// Zeroized on drop, since it holds the key.
    pub fn to_json(&self) -> Zeroizing<Vec<u8>> {
        let key_b64 = Zeroizing::new(B64.encode(self.symkey.as_ref()));
        let mut out = Zeroizing::new(String::with_capacity(160 + self.digest.len()));
        out.push_str("{\"symkey\":\"");
        out.push_str(&key_b64);
        out.push_str("\",\"digest\":");
        out.push_str(&go_json_string(&self.digest));
        out.push_str(",\"cipheroptions\":{\"nonce\":\"");
        out.push_str(&B64.encode(self.nonce));
        out.push_str("\"}}");
        Zeroizing::new(out.as_bytes().to_vec())
    }

    /// Parse private options JSON (any field order; `digest` and `cipheroptions`
    /// may be missing or `null`). The nonce must be in `cipheroptions` unless the
    /// public options carry one; use [`PrivateOptions::from_json_with_public`] then.
    pub fn from_json(json: &[u8]) -> Result<Self, OptionsError> {
        Self::parse(json, None)
    }

    /// Parse private options, taking the nonce from the public options first
    /// (Go's lookup order) and from the private `cipheroptions` otherwise.
    pub fn from_json_with_public(json: &[u8], public: &PublicOptions) -> Result<Self, OptionsError> {
        Self::parse(json, public.public_nonce)
    }

    fn parse(json: &[u8], public_nonce: Option<[u8; NONCE_LEN]>) -> Result<Self, OptionsError> {
        const W: &str = "private";
        let raw: RawPrivate = serde_json::from_slice(json).map_err(|e| json_error(W, &e))?;
        let key =
            raw.symkey.ok_or(OptionsError::Missing { which: W, field: "symkey" })?.decode(W, "symkey")?;
        let mut symkey = Zeroizing::new([0u8; KEY_LEN]);
        if key.len() != KEY_LEN {
            return Err(OptionsError::KeyLength(key.len()));
        }
        symkey.copy_from_slice(&key);
        let private_nonce = match raw.cipheroptions.and_then(|mut m| m.remove("nonce")).flatten() {
            Some(b) => Some(nonce_from(&b.decode(W, "cipheroptions.nonce")?)?),
            None => None,
        };
        let nonce = public_nonce
            .or(private_nonce)
            .ok_or(OptionsError::Missing { which: W, field: "cipheroptions.nonce" })?;
        Ok(PrivateOptions { symkey, digest: raw.digest.unwrap_or_default(), nonce })
    }
}

impl PublicOptions {
    /// Public options for a finished encryption.
    pub fn new(hmac: [u8; HMAC_LEN]) -> Self {
        PublicOptions { cipher: AES_256_CTR_HMAC_SHA256.to_owned(), hmac, public_nonce: None }
    }

    /// Go's exact JSON: `{"cipher":"AES_256_CTR_HMAC_SHA256","hmac":"..","cipheroptions":{}}`.
    pub fn to_json(&self) -> Vec<u8> {
        let opts = match self.public_nonce {
            Some(n) => format!("{{\"nonce\":\"{}\"}}", B64.encode(n)),
            None => "{}".to_owned(),
        };
        format!(
            "{{\"cipher\":{},\"hmac\":\"{}\",\"cipheroptions\":{}}}",
            go_json_string(&self.cipher),
            B64.encode(self.hmac),
            opts
        )
        .into_bytes()
    }

    /// Parse and validate public options JSON.
    pub fn from_json(json: &[u8]) -> Result<Self, OptionsError> {
        const W: &str = "public";
        let raw: RawPublic = serde_json::from_slice(json).map_err(|e| json_error(W, &e))?;
        let cipher = raw.cipher.unwrap_or_default();
        if cipher.is_empty() {
            return Err(OptionsError::MissingCipher);
        }
        if cipher != AES_256_CTR_HMAC_SHA256 {
            return Err(OptionsError::UnsupportedCipher(cipher));
        }
        let hmac = match raw.hmac {
            Some(b) => b.decode(W, "hmac")?,
            None => return Err(OptionsError::Missing { which: W, field: "hmac" }),
        };
        let hmac: [u8; HMAC_LEN] =
            hmac.as_slice().try_into().map_err(|_| OptionsError::HmacLength(hmac.len()))?;
        let public_nonce = match raw.cipheroptions.and_then(|mut m| m.remove("nonce")).flatten() {
            Some(b) => Some(nonce_from(&b.decode(W, "cipheroptions.nonce")?)?),
            None => None,
        };
        Ok(PublicOptions { cipher, hmac, public_nonce })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kat_private() -> PrivateOptions {
        let mut key = [0u8; 32];
        for (i, b) in key.iter_mut().enumerate() {
            *b = i as u8;
        }
        let mut nonce = [0u8; 16];
        for (i, b) in nonce.iter_mut().enumerate() {
            *b = i as u8;
        }
        PrivateOptions {
            symkey: Zeroizing::new(key),
            digest: "sha256:c042019eb661695df218d05006eb384ff769af56f348a624d18ba08b724ade05".into(),
            nonce,
        }
    }

    const KAT1_PRIV: &str = r#"{"symkey":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=","digest":"sha256:c042019eb661695df218d05006eb384ff769af56f348a624d18ba08b724ade05","cipheroptions":{"nonce":"AAECAwQFBgcICQoLDA0ODw=="}}"#;

    #[test]
    fn private_json_is_go_exact() {
        assert_eq!(kat_private().to_json().as_slice(), KAT1_PRIV.as_bytes());
        assert_eq!(PrivateOptions::from_json(KAT1_PRIV.as_bytes()).unwrap(), kat_private());
    }

    #[test]
    fn private_parse_is_liberal() {
        // Rust ocicrypt-rs order, null digest.
        let j = r#"{"symkey":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=","cipheroptions":{"nonce":"AAECAwQFBgcICQoLDA0ODw=="},"digest":null,"extra":1}"#;
        let p = PrivateOptions::from_json(j.as_bytes()).unwrap();
        assert_eq!(p.digest, "");
        assert_eq!(p.nonce, kat_private().nonce);
        // Number-array bytes.
        let arr: Vec<String> = (0..32).map(|i| i.to_string()).collect();
        let j = format!(
            r#"{{"symkey":[{}],"cipheroptions":{{"nonce":"AAECAwQFBgcICQoLDA0ODw=="}}}}"#,
            arr.join(",")
        );
        assert_eq!(PrivateOptions::from_json(j.as_bytes()).unwrap().symkey, kat_private().symkey);
    }

    #[test]
    fn private_parse_validates() {
        let short_key = r#"{"symkey":"AAEC","cipheroptions":{"nonce":"AAECAwQFBgcICQoLDA0ODw=="}}"#;
        assert_eq!(PrivateOptions::from_json(short_key.as_bytes()), Err(OptionsError::KeyLength(3)));
        let short_nonce =
            r#"{"symkey":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=","cipheroptions":{"nonce":"AAEC"}}"#;
        assert_eq!(PrivateOptions::from_json(short_nonce.as_bytes()), Err(OptionsError::NonceLength(3)));
        let no_nonce = r#"{"symkey":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=","cipheroptions":null}"#;
        assert!(matches!(
            PrivateOptions::from_json(no_nonce.as_bytes()),
            Err(OptionsError::Missing { field: "cipheroptions.nonce", .. })
        ));
        let bad_b64 = r#"{"symkey":"!!!!","cipheroptions":{"nonce":"AAECAwQFBgcICQoLDA0ODw=="}}"#;
        assert!(matches!(PrivateOptions::from_json(bad_b64.as_bytes()), Err(OptionsError::Base64 { .. })));
        let err = PrivateOptions::from_json(br#"{"symkey":"c2VjcmV0","#).unwrap_err();
        assert!(!err.to_string().contains("c2VjcmV0"), "{err}");
    }

    #[test]
    fn public_json_is_go_exact() {
        let mut hmac = [0u8; 32];
        hmac.copy_from_slice(&B64.decode("2wBhgESg5a8pWHruoqOiHl882lDG2KiqSeq7dTO7+l4=").unwrap());
        let p = PublicOptions::new(hmac);
        let want = r#"{"cipher":"AES_256_CTR_HMAC_SHA256","hmac":"2wBhgESg5a8pWHruoqOiHl882lDG2KiqSeq7dTO7+l4=","cipheroptions":{}}"#;
        assert_eq!(p.to_json(), want.as_bytes());
        assert_eq!(PublicOptions::from_json(want.as_bytes()).unwrap(), p);
    }

    #[test]
    fn public_parse_validates() {
        let unknown = r#"{"cipher":"AES_128_GCM","hmac":"2wBhgESg5a8pWHruoqOiHl882lDG2KiqSeq7dTO7+l4="}"#;
        assert_eq!(
            PublicOptions::from_json(unknown.as_bytes()),
            Err(OptionsError::UnsupportedCipher("AES_128_GCM".into()))
        );
        assert_eq!(PublicOptions::from_json(b"{}"), Err(OptionsError::MissingCipher));
        let empty_hmac = r#"{"cipher":"AES_256_CTR_HMAC_SHA256","hmac":""}"#;
        assert_eq!(PublicOptions::from_json(empty_hmac.as_bytes()), Err(OptionsError::HmacLength(0)));
        let no_hmac = r#"{"cipher":"AES_256_CTR_HMAC_SHA256","hmac":null,"cipheroptions":null}"#;
        assert!(matches!(PublicOptions::from_json(no_hmac.as_bytes()), Err(OptionsError::Missing { .. })));
    }

    #[test]
    fn public_nonce_overrides_private() {
        let pubj = r#"{"cipheroptions":{"nonce":"/////////////////////w=="},"hmac":"2wBhgESg5a8pWHruoqOiHl882lDG2KiqSeq7dTO7+l4=","cipher":"AES_256_CTR_HMAC_SHA256"}"#;
        let public = PublicOptions::from_json(pubj.as_bytes()).unwrap();
        let p = PrivateOptions::from_json_with_public(KAT1_PRIV.as_bytes(), &public).unwrap();
        assert_eq!(p.nonce, [0xff; 16]);
    }

    #[test]
    fn generate_is_random_and_debug_redacts() {
        let a = PrivateOptions::generate("sha256:x");
        let b = PrivateOptions::generate("sha256:x");
        assert_ne!(a.symkey, b.symkey);
        assert_ne!(a.nonce, b.nonce);
        let dbg = format!("{a:?}");
        assert!(dbg.contains("redacted"));
        assert!(!dbg.contains(&B64.encode(a.symkey.as_ref())));
    }

    #[test]
    fn digest_escaped_like_go() {
        let mut p = kat_private();
        p.digest = "a<b>&\"c".into();
        let j = String::from_utf8(p.to_json().to_vec()).unwrap();
        assert!(j.contains(r#""digest":"a\u003cb\u003e\u0026\"c""#), "{j}");
        assert_eq!(PrivateOptions::from_json(j.as_bytes()).unwrap().digest, "a<b>&\"c");
    }
}
