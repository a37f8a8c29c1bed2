//! Loading JWE recipient keys: PEM (PKCS#1, PKCS#8, SEC1, SPKI, X.509), DER and
//! JWK, RSA (>= 2048 bits) and EC P-256/P-384/P-521.
//!
//! Keys are parsed with OpenSSL into `PKey`s; a JWK keeps its `kid` (and, for a
//! public key, its `alg`) so the wrapper can label recipients with it.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64U;
use base64::Engine as _;
use openssl::bn::{BigNum, BigNumContext};
use openssl::ec::{EcGroup, EcKey};
use openssl::nid::Nid;
use openssl::pkey::{Id, PKey, Private, Public};
use openssl::rsa::{Rsa, RsaPrivateKeyBuilder};
use openssl::x509::X509;
use serde_json::Value;

/// The smallest RSA modulus we accept, in bits.
pub const MIN_RSA_BITS: u32 = 2048;

/// Why a key could not be loaded. Never contains key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// Not recognised as PEM, DER or JWK.
    #[error("not a recognised {0} key (expected PEM, DER or JWK)")]
    Unrecognized(&'static str),
    /// Password-protected PEM.
    #[error("password-protected PEM keys are not supported; remove the password first (openssl pkey -in KEY -out PLAIN)")]
    EncryptedPem,
    /// RSA modulus below 2048 bits.
    #[error("RSA key has {bits} bits; at least 2048 bits are required")]
    RsaTooSmall { bits: u32 },
    /// A key type other than RSA or EC.
    #[error("unsupported key type {0} (use RSA or EC P-256/P-384/P-521)")]
    UnsupportedKeyType(String),
    /// An EC curve other than P-256/P-384/P-521.
    #[error("unsupported EC curve {0} (use P-256, P-384 or P-521)")]
    UnsupportedCurve(String),
    /// A JWK `alg` the JWE wrapper cannot use for key wrapping.
    #[error("JWK alg {0:?} is not a supported key-management algorithm (RSA-OAEP, RSA-OAEP-256, ECDH-ES+A128KW/A192KW/A256KW)")]
    UnsupportedAlg(String),
    /// A malformed JWK.
    #[error("invalid JWK: {0}")]
    Jwk(String),
    /// OpenSSL refused the key material (inconsistent components, ...).
    #[error("invalid key: {0}")]
    Invalid(String),
}

/// A JWE key-management algorithm supported here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyAlg {
    /// RSAES-OAEP with SHA-1 (RFC 7518 default, what Go uses for RSA keys).
    RsaOaep,
    /// RSAES-OAEP with SHA-256.
    RsaOaep256,
    /// ECDH-ES with AES-128 key wrap.
    EcdhEsA128Kw,
    /// ECDH-ES with AES-192 key wrap.
    EcdhEsA192Kw,
    /// ECDH-ES with AES-256 key wrap (what Go uses for EC keys).
    EcdhEsA256Kw,
}

impl KeyAlg {
    /// The JOSE name.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlg::RsaOaep => "RSA-OAEP",
            KeyAlg::RsaOaep256 => "RSA-OAEP-256",
            KeyAlg::EcdhEsA128Kw => "ECDH-ES+A128KW",
            KeyAlg::EcdhEsA192Kw => "ECDH-ES+A192KW",
            KeyAlg::EcdhEsA256Kw => "ECDH-ES+A256KW",
        }
    }

    /// Parse a JOSE name.
    pub fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "RSA-OAEP" => KeyAlg::RsaOaep,
            "RSA-OAEP-256" => KeyAlg::RsaOaep256,
            "ECDH-ES+A128KW" => KeyAlg::EcdhEsA128Kw,
            "ECDH-ES+A192KW" => KeyAlg::EcdhEsA192Kw,
            "ECDH-ES+A256KW" => KeyAlg::EcdhEsA256Kw,
            _ => return None,
        })
    }

    /// Whether this is an RSA algorithm (else ECDH-ES).
    pub fn is_rsa(self) -> bool {
        matches!(self, KeyAlg::RsaOaep | KeyAlg::RsaOaep256)
    }

    /// AES key-wrap key length in bytes, for ECDH-ES algorithms.
    pub(crate) fn kw_len(self) -> usize {
        match self {
            KeyAlg::EcdhEsA128Kw => 16,
            KeyAlg::EcdhEsA192Kw => 24,
            _ => 32,
        }
    }
}

/// A recipient's public key.
#[derive(Clone)]
pub struct PublicKey {
    pub(crate) pkey: PKey<Public>,
    pub(crate) kid: Option<String>,
    pub(crate) alg: Option<KeyAlg>,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey")
            .field("type", &describe(self.pkey.id(), self.pkey.bits()))
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .finish()
    }
}

impl PublicKey {
    /// The JWK `kid`, if the key was a JWK with one.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// Set or replace the `kid` put in this recipient's JWE header.
    pub fn with_kid(mut self, kid: impl Into<String>) -> Self {
        self.kid = Some(kid.into());
        self
    }

    /// The key-management algorithm used when wrapping for this key: the JWK
    /// `alg` if given, else RSA-OAEP for RSA and ECDH-ES+A256KW for EC (as Go does).
    pub fn key_alg(&self) -> KeyAlg {
        match self.alg {
            Some(a) => a,
            None if self.pkey.id() == Id::EC => KeyAlg::EcdhEsA256Kw,
            None => KeyAlg::RsaOaep,
        }
    }
}

/// A private key for unwrapping.
pub struct PrivateKey {
    pub(crate) pkey: PKey<Private>,
    pub(crate) kid: Option<String>,
}

impl fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PrivateKey")
            .field("type", &describe(self.pkey.id(), self.pkey.bits()))
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl PrivateKey {
    /// The JWK `kid`, if the key was a JWK with one.
    pub fn kid(&self) -> Option<&str> {
        self.kid.as_deref()
    }

    /// The matching public key.
    pub fn public_key(&self) -> Result<PublicKey, KeyError> {
        let der = self.pkey.public_key_to_der().map_err(|e| KeyError::Invalid(e.to_string()))?;
        let pkey = PKey::public_key_from_der(&der).map_err(|e| KeyError::Invalid(e.to_string()))?;
        Ok(PublicKey { pkey, kid: self.kid.clone(), alg: None })
    }
}

pub(crate) fn describe(id: Id, bits: u32) -> String {
    match id {
        Id::RSA => format!("RSA-{bits}"),
        Id::EC => format!("EC-{bits}"),
        other => format!("{other:?}"),
    }
}

/// The JOSE curve name of an EC key's group, if supported.
pub(crate) fn curve_name(nid: Option<Nid>) -> Option<&'static str> {
    match nid {
        Some(Nid::X9_62_PRIME256V1) => Some("P-256"),
        Some(Nid::SECP384R1) => Some("P-384"),
        Some(Nid::SECP521R1) => Some("P-521"),
        _ => None,
    }
}

pub(crate) fn curve_nid(name: &str) -> Option<Nid> {
    match name {
        "P-256" => Some(Nid::X9_62_PRIME256V1),
        "P-384" => Some(Nid::SECP384R1),
        "P-521" => Some(Nid::SECP521R1),
        _ => None,
    }
}

/// Byte length of a field element of the curve.
pub(crate) fn coord_len(nid: Nid) -> i32 {
    match nid {
        Nid::SECP384R1 => 48,
        Nid::SECP521R1 => 66,
        _ => 32,
    }
}

/// Refuse key types and sizes we will not use.
fn check<T: openssl::pkey::HasPublic>(pkey: &PKey<T>) -> Result<(), KeyError> {
    match pkey.id() {
        Id::RSA => {
            let bits = pkey.bits();
            if bits < MIN_RSA_BITS {
                return Err(KeyError::RsaTooSmall { bits });
            }
            Ok(())
        }
        Id::EC => {
            let ec = pkey.ec_key().map_err(|e| KeyError::Invalid(e.to_string()))?;
            let nid = ec.group().curve_name();
            match curve_name(nid) {
                Some(_) => Ok(()),
                None => Err(KeyError::UnsupportedCurve(
                    nid.and_then(|n| n.short_name().ok()).unwrap_or("unnamed").to_owned(),
                )),
            }
        }
        other => Err(KeyError::UnsupportedKeyType(format!("{other:?}"))),
    }
}

/// The label of the first PEM block, if `bytes` is PEM.
fn pem_label(bytes: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(bytes).ok()?;
    let start = text.find("-----BEGIN ")? + "-----BEGIN ".len();
    let rest = &text[start..];
    let end = rest.find("-----")?;
    Some(&rest[..end])
}

fn is_encrypted_pem(bytes: &[u8], label: &str) -> bool {
    label == "ENCRYPTED PRIVATE KEY"
        || std::str::from_utf8(bytes).is_ok_and(|t| t.contains("Proc-Type: 4,ENCRYPTED"))
}

fn looks_like_json(bytes: &[u8]) -> bool {
    bytes.iter().find(|b| !b.is_ascii_whitespace()) == Some(&b'{')
}

/// Load a recipient public key from PEM, DER or JWK. A private key is accepted
/// too (its public half is used).
pub fn load_public_key(bytes: &[u8]) -> Result<PublicKey, KeyError> {
    if looks_like_json(bytes) {
        return public_from_jwk(bytes);
    }
    let pkey = if let Some(label) = pem_label(bytes) {
        match label {
            "PUBLIC KEY" => PKey::public_key_from_pem(bytes).ok(),
            "RSA PUBLIC KEY" => {
                Rsa::public_key_from_pem_pkcs1(bytes).ok().and_then(|r| PKey::from_rsa(r).ok())
            }
            "CERTIFICATE" | "TRUSTED CERTIFICATE" | "X509 CERTIFICATE" => {
                X509::from_pem(bytes).ok().and_then(|c| c.public_key().ok())
            }
            l if l.ends_with("PRIVATE KEY") => {
                return load_private_key(bytes)?.public_key();
            }
            _ => None,
        }
    } else {
        PKey::public_key_from_der(bytes)
            .ok()
            .or_else(|| Rsa::public_key_from_der_pkcs1(bytes).ok().and_then(|r| PKey::from_rsa(r).ok()))
            .or_else(|| X509::from_der(bytes).ok().and_then(|c| c.public_key().ok()))
    };
    match pkey {
        Some(pkey) => {
            check(&pkey)?;
            Ok(PublicKey { pkey, kid: None, alg: None })
        }
        None if pem_label(bytes).is_none() => match PKey::private_key_from_der(bytes) {
            Ok(_) => load_private_key(bytes)?.public_key(),
            Err(_) => Err(KeyError::Unrecognized("public")),
        },
        None => Err(KeyError::Unrecognized("public")),
    }
}

/// Load a private key from PEM (PKCS#1, PKCS#8, SEC1), DER or JWK.
pub fn load_private_key(bytes: &[u8]) -> Result<PrivateKey, KeyError> {
    if looks_like_json(bytes) {
        return private_from_jwk(bytes);
    }
    let pkey = match pem_label(bytes) {
        Some(label) => {
            if is_encrypted_pem(bytes, label) {
                return Err(KeyError::EncryptedPem);
            }
            if !label.ends_with("PRIVATE KEY") {
                return Err(KeyError::Unrecognized("private"));
            }
            // The passphrase variant never prompts on a terminal; unencrypted
            // keys ignore it.
            PKey::private_key_from_pem_passphrase(bytes, b"")
        }
        None => PKey::private_key_from_der(bytes),
    }
    .map_err(|_| KeyError::Unrecognized("private"))?;
    check(&pkey)?;
    Ok(PrivateKey { pkey, kid: None })
}

fn jwk_object(bytes: &[u8]) -> Result<serde_json::Map<String, Value>, KeyError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(KeyError::Jwk("not a JSON object".into())),
        Err(e) => Err(KeyError::Jwk(format!("not valid JSON (line {}, column {})", e.line(), e.column()))),
    }
}

fn jwk_str<'a>(m: &'a serde_json::Map<String, Value>, name: &str) -> Result<Option<&'a str>, KeyError> {
    match m.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(_) => Err(KeyError::Jwk(format!("member {name:?} is not a string"))),
    }
}

fn jwk_bn(m: &serde_json::Map<String, Value>, name: &str) -> Result<Option<BigNum>, KeyError> {
    let Some(s) = jwk_str(m, name)? else { return Ok(None) };
    let bytes = zeroize::Zeroizing::new(
        B64U.decode(s.trim_end_matches('=').as_bytes())
            .map_err(|_| KeyError::Jwk(format!("member {name:?} is not base64url")))?,
    );
    BigNum::from_slice(&bytes).map(Some).map_err(|e| KeyError::Invalid(e.to_string()))
}

fn jwk_req(m: &serde_json::Map<String, Value>, name: &str) -> Result<BigNum, KeyError> {
    jwk_bn(m, name)?.ok_or_else(|| KeyError::Jwk(format!("missing member {name:?}")))
}

fn ssl(e: openssl::error::ErrorStack) -> KeyError {
    KeyError::Invalid(e.to_string())
}

fn jwk_ec_public(m: &serde_json::Map<String, Value>) -> Result<(EcGroup, EcKey<Public>), KeyError> {
    let crv = jwk_str(m, "crv")?.ok_or_else(|| KeyError::Jwk("missing member \"crv\"".into()))?;
    let nid = curve_nid(crv).ok_or_else(|| KeyError::UnsupportedCurve(crv.to_owned()))?;
    let group = EcGroup::from_curve_name(nid).map_err(ssl)?;
    let x = jwk_req(m, "x")?;
    let y = jwk_req(m, "y")?;
    let key = EcKey::from_public_key_affine_coordinates(&group, &x, &y).map_err(ssl)?;
    key.check_key().map_err(ssl)?;
    Ok((group, key))
}

/// Parse an EC public JWK (used for the `epk` header too).
pub(crate) fn ec_public_from_jwk_value(m: &serde_json::Map<String, Value>) -> Result<PKey<Public>, KeyError> {
    if jwk_str(m, "kty")? != Some("EC") {
        return Err(KeyError::Jwk("kty is not \"EC\"".into()));
    }
    let (_, key) = jwk_ec_public(m)?;
    PKey::from_ec_key(key).map_err(ssl)
}

fn public_from_jwk(bytes: &[u8]) -> Result<PublicKey, KeyError> {
    let m = jwk_object(bytes)?;
    let kty = jwk_str(&m, "kty")?.ok_or_else(|| KeyError::Jwk("missing member \"kty\"".into()))?;
    let pkey = match kty {
        "RSA" => {
            let rsa = Rsa::from_public_components(jwk_req(&m, "n")?, jwk_req(&m, "e")?).map_err(ssl)?;
            PKey::from_rsa(rsa).map_err(ssl)?
        }
        "EC" => ec_public_from_jwk_value(&m)?,
        other => return Err(KeyError::UnsupportedKeyType(other.to_owned())),
    };
    check(&pkey)?;
    let alg = match jwk_str(&m, "alg")? {
        None => None,
        Some(a) => {
            let alg = KeyAlg::parse(a).ok_or_else(|| KeyError::UnsupportedAlg(a.to_owned()))?;
            if alg.is_rsa() != (kty == "RSA") {
                return Err(KeyError::UnsupportedAlg(format!("{a} for a {kty} key")));
            }
            Some(alg)
        }
    };
    Ok(PublicKey { pkey, kid: jwk_str(&m, "kid")?.map(str::to_owned), alg })
}

fn private_from_jwk(bytes: &[u8]) -> Result<PrivateKey, KeyError> {
    let m = jwk_object(bytes)?;
    let kty = jwk_str(&m, "kty")?.ok_or_else(|| KeyError::Jwk("missing member \"kty\"".into()))?;
    if !m.contains_key("d") {
        return Err(KeyError::Jwk("no private member \"d\" (this is a public key)".into()));
    }
    let pkey = match kty {
        "RSA" => {
            let (n, e, d) = (jwk_req(&m, "n")?, jwk_req(&m, "e")?, jwk_req(&m, "d")?);
            let crt =
                (jwk_bn(&m, "p")?, jwk_bn(&m, "q")?, jwk_bn(&m, "dp")?, jwk_bn(&m, "dq")?, jwk_bn(&m, "qi")?);
            let rsa = match crt {
                (Some(p), Some(q), Some(dp), Some(dq), Some(qi)) => {
                    Rsa::from_private_components(n, e, d, p, q, dp, dq, qi).map_err(ssl)?
                }
                _ => RsaPrivateKeyBuilder::new(n, e, d).map_err(ssl)?.build(),
            };
            PKey::from_rsa(rsa).map_err(ssl)?
        }
        "EC" => {
            let (group, public) = jwk_ec_public(&m)?;
            let d = jwk_req(&m, "d")?;
            let key = EcKey::from_private_components(&group, &d, public.public_key()).map_err(ssl)?;
            key.check_key().map_err(ssl)?;
            PKey::from_ec_key(key).map_err(ssl)?
        }
        other => return Err(KeyError::UnsupportedKeyType(other.to_owned())),
    };
    check(&pkey)?;
    Ok(PrivateKey { pkey, kid: jwk_str(&m, "kid")?.map(str::to_owned) })
}

/// The base64url affine coordinates of an EC public key, padded to the field size.
pub(crate) fn ec_coordinates(
    key: &EcKey<impl openssl::pkey::HasPublic>,
) -> Result<(&'static str, String, String), KeyError> {
    let group = key.group();
    let nid = group.curve_name();
    let crv = curve_name(nid).ok_or_else(|| KeyError::UnsupportedCurve("unnamed".into()))?;
    let len = nid.map(coord_len).unwrap_or(32);
    let mut ctx = BigNumContext::new().map_err(ssl)?;
    let mut x = BigNum::new().map_err(ssl)?;
    let mut y = BigNum::new().map_err(ssl)?;
    key.public_key().affine_coordinates(group, &mut x, &mut y, &mut ctx).map_err(ssl)?;
    let x = x.to_vec_padded(len).map_err(ssl)?;
    let y = y.to_vec_padded(len).map_err(ssl)?;
    Ok((crv, B64U.encode(x), B64U.encode(y)))
}
