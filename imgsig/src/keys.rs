//! Public keys that verify signatures and private keys that make them, through
//! OpenSSL (ECDSA P-256/P-384/P-521 and RSA PKCS#1 v1.5 over SHA-256, Ed25519
//! pure), as cosign and containers/image do for key-based signatures.
//!
//! Private keys are read from plain PKCS#8 / SEC1 / PKCS#1 PEM or from cosign's
//! encrypted format: a PEM block (`ENCRYPTED SIGSTORE PRIVATE KEY`, older
//! `ENCRYPTED COSIGN PRIVATE KEY`) holding JSON with scrypt parameters and a
//! NaCl secretbox (XSalsa20-Poly1305) over the PKCS#8 DER key. scrypt is
//! OpenSSL's; the secretbox is RustCrypto's `crypto_secretbox`.

use std::fmt;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use openssl::hash::MessageDigest;
use openssl::nid::Nid;
use openssl::pkey::{Id, PKey, Private, Public};
use openssl::sign::{Signer, Verifier};
use serde::Deserialize;
use zeroize::Zeroizing;

/// PEM labels of cosign's encrypted private key.
const COSIGN_ENCRYPTED_LABELS: [&str; 2] = ["ENCRYPTED SIGSTORE PRIVATE KEY", "ENCRYPTED COSIGN PRIVATE KEY"];
/// scrypt cost limits for a key file (cosign 2.5 writes N=65536, r=8, p=1).
const MAX_SCRYPT_N: u64 = 1 << 20;
const MAX_SCRYPT_R: u64 = 32;
const MAX_SCRYPT_P: u64 = 16;

/// A key that could not be read or used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{what}: not a PEM public key (expected -----BEGIN PUBLIC KEY-----)")]
    PublicPem {
        what: String,
        #[source]
        source: openssl::error::ErrorStack,
    },
    #[error("{what}: {kind} keys are not supported (ECDSA P-256/P-384/P-521, RSA >= 2048 bits, Ed25519)")]
    Unsupported { what: String, kind: String },
    #[error("{what}: not a PEM private key (PKCS#8, SEC1, PKCS#1 or cosign's encrypted format)")]
    PrivatePem { what: String },
    #[error("{what}: cosign key needs a password (set COSIGN_PASSWORD)")]
    NeedPassword { what: String },
    #[error("{what}: cosign key envelope is malformed: {reason}")]
    Envelope { what: String, reason: String },
    #[error("{what}: wrong password for the cosign key (or the key file is corrupted)")]
    WrongPassword { what: String },
    #[error("{what}: {op} failed")]
    Crypto {
        what: String,
        op: &'static str,
        #[source]
        source: openssl::error::ErrorStack,
    },
}

/// The algorithm of a key, for error messages and choosing the hash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    EcdsaP256,
    EcdsaP384,
    EcdsaP521,
    Rsa(u32),
    Ed25519,
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyKind::EcdsaP256 => f.write_str("ECDSA P-256"),
            KeyKind::EcdsaP384 => f.write_str("ECDSA P-384"),
            KeyKind::EcdsaP521 => f.write_str("ECDSA P-521"),
            KeyKind::Rsa(bits) => write!(f, "RSA-{bits}"),
            KeyKind::Ed25519 => f.write_str("Ed25519"),
        }
    }
}

fn kind_of<T: openssl::pkey::HasPublic>(what: &str, k: &PKey<T>) -> Result<KeyKind, KeyError> {
    let unsupported = |kind: String| KeyError::Unsupported { what: what.to_string(), kind };
    match k.id() {
        Id::EC => {
            let ec = k.ec_key().map_err(|source| KeyError::Crypto {
                what: what.into(),
                op: "reading EC key",
                source,
            })?;
            match ec.group().curve_name() {
                Some(Nid::X9_62_PRIME256V1) => Ok(KeyKind::EcdsaP256),
                Some(Nid::SECP384R1) => Ok(KeyKind::EcdsaP384),
                Some(Nid::SECP521R1) => Ok(KeyKind::EcdsaP521),
                other => Err(unsupported(format!("EC curve {other:?}"))),
            }
        }
        Id::RSA if k.bits() >= 2048 => Ok(KeyKind::Rsa(k.bits())),
        Id::RSA => Err(unsupported(format!("RSA-{}", k.bits()))),
        Id::ED25519 => Ok(KeyKind::Ed25519),
        other => Err(unsupported(format!("{other:?}"))),
    }
}

/// A public key trusted by a policy requirement, with where it came from.
#[derive(Clone)]
pub struct PublicKey {
    key: PKey<Public>,
    kind: KeyKind,
    /// Where the key came from (`keyPath /keys/a.pub`), for error messages.
    pub origin: String,
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PublicKey({} from {}, {})", self.kind, self.origin, self.fingerprint())
    }
}

impl PublicKey {
    /// Reads a PEM `PUBLIC KEY` (SubjectPublicKeyInfo) or `RSA PUBLIC KEY`.
    pub fn from_pem(pem: &[u8], origin: impl Into<String>) -> Result<PublicKey, KeyError> {
        let origin = origin.into();
        let key = match PKey::public_key_from_pem(pem) {
            Ok(k) => k,
            Err(source) => match openssl::rsa::Rsa::public_key_from_pem_pkcs1(pem).and_then(PKey::from_rsa) {
                Ok(k) => k,
                Err(_) => return Err(KeyError::PublicPem { what: origin, source }),
            },
        };
        let kind = kind_of(&origin, &key)?;
        Ok(PublicKey { key, kind, origin })
    }

    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// `sha256:<first 16 hex>` of the SubjectPublicKeyInfo DER, to tell keys apart in messages.
    pub fn fingerprint(&self) -> String {
        match self.key.public_key_to_der() {
            Ok(der) => format!("sha256:{}", &hex::encode(openssl::sha::sha256(&der))[..16]),
            Err(_) => "sha256:?".into(),
        }
    }

    /// Whether `sig` (DER ECDSA, RSA PKCS#1 v1.5, or raw Ed25519) signs `payload`.
    /// A malformed signature is simply "not verified".
    pub fn verify(&self, payload: &[u8], sig: &[u8]) -> bool {
        let v = match self.kind {
            KeyKind::Ed25519 => Verifier::new_without_digest(&self.key),
            _ => Verifier::new(MessageDigest::sha256(), &self.key),
        };
        match v {
            Ok(mut v) => v.verify_oneshot(sig, payload).unwrap_or(false),
            Err(_) => false,
        }
    }
}

#[derive(Deserialize)]
struct Envelope {
    kdf: Kdf,
    cipher: Cipher,
    ciphertext: String,
}

#[derive(Deserialize)]
struct Kdf {
    name: String,
    params: ScryptParams,
    salt: String,
}

#[derive(Deserialize)]
#[allow(non_snake_case)]
struct ScryptParams {
    N: u64,
    r: u64,
    p: u64,
}

#[derive(Deserialize)]
struct Cipher {
    name: String,
    nonce: String,
}

/// A signing key. Debug is redacted; the key lives in OpenSSL memory only.
pub struct SigningKey {
    key: PKey<Private>,
    kind: KeyKind,
}

impl fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SigningKey({}, [redacted])", self.kind)
    }
}

/// First PEM block's label and base64 body.
fn pem_block(text: &str) -> Option<(&str, String)> {
    let start = text.find("-----BEGIN ")?;
    let rest = &text[start + 11..];
    let label_end = rest.find("-----")?;
    let label = &rest[..label_end];
    let body_start = &rest[label_end + 5..];
    let end = body_start.find(&format!("-----END {label}-----"))?;
    let body: String = body_start[..end].chars().filter(|c| !c.is_whitespace()).collect();
    Some((label, body))
}

impl SigningKey {
    /// Reads a private key. `password` is used only for encrypted formats.
    pub fn from_pem(pem: &[u8], password: Option<&[u8]>, what: &str) -> Result<SigningKey, KeyError> {
        let text = std::str::from_utf8(pem).map_err(|_| KeyError::PrivatePem { what: what.into() })?;
        let (label, body) = pem_block(text).ok_or_else(|| KeyError::PrivatePem { what: what.into() })?;
        let key = if COSIGN_ENCRYPTED_LABELS.contains(&label) {
            let pw = password.ok_or_else(|| KeyError::NeedPassword { what: what.into() })?;
            let der = decrypt_cosign(&body, pw, what)?;
            PKey::private_key_from_der(&der).map_err(|_| KeyError::PrivatePem { what: what.into() })?
        } else if label == "ENCRYPTED PRIVATE KEY" {
            let pw = password.ok_or_else(|| KeyError::NeedPassword { what: what.into() })?;
            PKey::private_key_from_pem_passphrase(pem, pw)
                .map_err(|_| KeyError::WrongPassword { what: what.into() })?
        } else {
            PKey::private_key_from_pem(pem).map_err(|_| KeyError::PrivatePem { what: what.into() })?
        };
        let kind = kind_of(what, &key)?;
        Ok(SigningKey { key, kind })
    }

    pub fn kind(&self) -> KeyKind {
        self.kind
    }

    /// Signs `payload` the way cosign does (SHA-256; Ed25519 pure); DER for ECDSA.
    pub fn sign(&self, payload: &[u8]) -> Result<Vec<u8>, KeyError> {
        let err = |source| KeyError::Crypto { what: "signing key".into(), op: "signing", source };
        let mut s = match self.kind {
            KeyKind::Ed25519 => Signer::new_without_digest(&self.key),
            _ => Signer::new(MessageDigest::sha256(), &self.key),
        }
        .map_err(err)?;
        s.sign_oneshot_to_vec(payload).map_err(err)
    }

    /// The matching public key, as PEM (`cosign.pub` form).
    pub fn public_key_pem(&self) -> Result<Vec<u8>, KeyError> {
        self.key.public_key_to_pem().map_err(|source| KeyError::Crypto {
            what: "signing key".into(),
            op: "exporting public key",
            source,
        })
    }

    /// The matching public key.
    pub fn public_key(&self) -> Result<PublicKey, KeyError> {
        PublicKey::from_pem(&self.public_key_pem()?, "the signing key")
    }
}

fn decrypt_cosign(body_b64: &str, password: &[u8], what: &str) -> Result<Zeroizing<Vec<u8>>, KeyError> {
    use crypto_secretbox::aead::{Aead, KeyInit};
    let bad = |reason: &str| KeyError::Envelope { what: what.into(), reason: reason.into() };
    let json = B64.decode(body_b64).map_err(|_| bad("PEM body is not base64"))?;
    let env: Envelope = serde_json::from_slice(&json).map_err(|e| bad(&e.to_string()))?;
    if env.kdf.name != "scrypt" {
        return Err(bad(&format!("kdf {:?} (only scrypt)", env.kdf.name)));
    }
    if env.cipher.name != "nacl/secretbox" {
        return Err(bad(&format!("cipher {:?} (only nacl/secretbox)", env.cipher.name)));
    }
    let ScryptParams { N: n, r, p } = env.kdf.params;
    let in_range = n.is_power_of_two()
        && (2..=MAX_SCRYPT_N).contains(&n)
        && (1..=MAX_SCRYPT_R).contains(&r)
        && (1..=MAX_SCRYPT_P).contains(&p);
    if !in_range {
        return Err(bad(&format!("scrypt parameters N={n} r={r} p={p} out of range")));
    }
    let salt = B64.decode(&env.kdf.salt).map_err(|_| bad("salt is not base64"))?;
    let nonce = B64.decode(&env.cipher.nonce).map_err(|_| bad("nonce is not base64"))?;
    if nonce.len() != 24 {
        return Err(bad("nonce is not 24 bytes"));
    }
    let ct = B64.decode(&env.ciphertext).map_err(|_| bad("ciphertext is not base64"))?;
    let mut k = Zeroizing::new([0u8; 32]);
    let maxmem = 128 * n * r * p + 128 * r * 2 + (1 << 20);
    openssl::pkcs5::scrypt(password, &salt, n, r, p, maxmem, k.as_mut())
        .map_err(|source| KeyError::Crypto { what: what.into(), op: "scrypt", source })?;
    let cipher = crypto_secretbox::XSalsa20Poly1305::new(crypto_secretbox::Key::from_slice(k.as_ref()));
    let der = cipher
        .decrypt(crypto_secretbox::Nonce::from_slice(&nonce), ct.as_slice())
        .map_err(|_| KeyError::WrongPassword { what: what.into() })?;
    Ok(Zeroizing::new(der))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const TD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata");

    fn read(name: &str) -> Vec<u8> {
        std::fs::read(format!("{TD}/{name}")).unwrap()
    }

    #[test]
    fn cosign_encrypted_key_made_by_cosign_decrypts_and_matches_its_pub() {
        let k = SigningKey::from_pem(&read("cosign.key"), Some(b"cloak-test"), "cosign.key").unwrap();
        assert_eq!(k.kind(), KeyKind::EcdsaP256);
        let public = PublicKey::from_pem(&read("cosign.pub"), "cosign.pub").unwrap();
        let sig = k.sign(b"payload").unwrap();
        assert!(public.verify(b"payload", &sig));
        assert!(!public.verify(b"payload2", &sig));
        let e = SigningKey::from_pem(&read("cosign.key"), Some(b"wrong"), "cosign.key").unwrap_err();
        assert!(matches!(e, KeyError::WrongPassword { .. }), "{e}");
        let e = SigningKey::from_pem(&read("cosign.key"), None, "cosign.key").unwrap_err();
        assert!(e.to_string().contains("COSIGN_PASSWORD"), "{e}");
    }

    #[test]
    fn every_key_type_signs_and_verifies() {
        for (private, public, kind) in [
            ("ed25519.key", "ed25519.pub", "Ed25519"),
            ("rsa.key", "rsa.pub", "RSA-2048"),
            ("p384.key", "p384.pub", "ECDSA P-384"),
        ] {
            let k = SigningKey::from_pem(&read(private), None, private).unwrap();
            assert_eq!(k.kind().to_string(), kind);
            let p = PublicKey::from_pem(&read(public), public).unwrap();
            let sig = k.sign(b"hello").unwrap();
            assert!(p.verify(b"hello", &sig), "{kind}");
            assert!(!p.verify(b"hellp", &sig), "{kind}");
            assert!(!p.verify(b"hello", &sig[1..]), "{kind}");
        }
        // A signature by one key does not verify under another.
        let ed = SigningKey::from_pem(&read("ed25519.key"), None, "ed").unwrap();
        let p384 = PublicKey::from_pem(&read("p384.pub"), "p384").unwrap();
        assert!(!p384.verify(b"x", &ed.sign(b"x").unwrap()));
    }

    #[test]
    fn bad_keys_name_what_is_wrong() {
        let e = PublicKey::from_pem(b"not a key", "keyPath /k.pub").unwrap_err();
        assert!(e.to_string().contains("keyPath /k.pub"), "{e}");
        let small = openssl::rsa::Rsa::generate(1024).unwrap();
        let pem = PKey::from_rsa(small).unwrap().public_key_to_pem().unwrap();
        let e = PublicKey::from_pem(&pem, "small").unwrap_err();
        assert!(e.to_string().contains("RSA-1024"), "{e}");
        let e = SigningKey::from_pem(b"-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\nbm90IGpzb24=\n-----END ENCRYPTED SIGSTORE PRIVATE KEY-----\n", Some(b"x"), "k").unwrap_err();
        assert!(matches!(e, KeyError::Envelope { .. }), "{e}");
        assert_eq!(
            format!("{:?}", SigningKey::from_pem(&read("ed25519.key"), None, "k").unwrap()),
            "SigningKey(Ed25519, [redacted])"
        );
    }
}
