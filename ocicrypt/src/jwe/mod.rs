//! The `jwe` key-wrap scheme: the private options JSON as a JWE (RFC 7516).
//!
//! Wrapping mirrors Go ocicrypt (go-jose): ONE JWE for all recipients, content
//! A256GCM, RSA -> RSA-OAEP, EC -> ECDH-ES+A256KW (or a JWK's own `alg`);
//! flattened JSON for one recipient, general JSON for several. Unwrapping
//! accepts compact, flattened and general forms, ignores go-jose's stray
//! top-level `encrypted_key`, and tries every recipient with every key, so a
//! layer opens whichever recipient our key belongs to.
//!
//! The JOSE structure is built here; the primitives (RSA-OAEP, ECDH, AES key
//! wrap, AES-GCM, AES-CBC) come from OpenSSL.

mod keys;

pub use keys::{load_private_key, load_public_key, KeyAlg, KeyError, PrivateKey, PublicKey, MIN_RSA_BITS};

use std::fmt::Write as _;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64U;
use base64::Engine as _;
use hmac::{Hmac, Mac as _};
use openssl::aes::{unwrap_key, wrap_key, AesKey};
use openssl::derive::Deriver;
use openssl::ec::EcKey;
use openssl::encrypt::{Decrypter, Encrypter};
use openssl::hash::MessageDigest;
use openssl::pkey::{HasPublic, Id, PKey, PKeyRef, Private};
use openssl::rsa::Padding;
use openssl::symm::{self, Cipher};
use rand::RngCore as _;
use serde_json::{Map, Value};
use sha2::{Digest as _, Sha256, Sha384, Sha512};
use subtle::ConstantTimeEq as _;
use zeroize::Zeroizing;

use crate::keywrap::{BoxFuture, KeyUnwrapper, KeyWrapper, WrapError};

/// The scheme name (annotation suffix) of JWE.
pub const SCHEME: &str = "jwe";

/// Refuse JWE inputs larger than this: wrapped private options are a few KiB.
pub const MAX_JWE_LEN: usize = 1 << 20;

/// Why a JWE could not be made or opened. Never contains key material.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JweError {
    /// The bytes are not a well-formed JWE.
    #[error("malformed JWE: {0}")]
    Malformed(String),
    /// No recipient could be opened with any key; lists every attempt.
    #[error("no key opened the JWE: {0}")]
    NoKey(String),
    /// Producing the JWE failed.
    #[error("JWE encryption failed: {0}")]
    Encrypt(String),
    /// A key could not be used.
    #[error(transparent)]
    Key(#[from] KeyError),
}

impl From<JweError> for WrapError {
    fn from(e: JweError) -> Self {
        match e {
            JweError::Malformed(reason) => WrapError::Malformed { what: "JWE".into(), source: reason.into() },
            JweError::NoKey(reason) => WrapError::NoKey(reason.into()),
            other => WrapError::Other(Box::new(other)),
        }
    }
}

fn ssl(e: openssl::error::ErrorStack) -> String {
    // OpenSSL's stack text names the failing function and reason, never data.
    e.to_string()
}

/// One recipient as `cloak inspect` and the guest see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecipientInfo {
    /// The key-management algorithm (`RSA-OAEP`, `ECDH-ES+A256KW`, ...).
    pub alg: String,
    /// The key id, e.g. a `kbs:///` resource URI, if the producer set one.
    pub kid: Option<String>,
}

// ---------------------------------------------------------------- primitives

fn rsa_encrypt(pkey: &PKeyRef<impl HasPublic>, alg: KeyAlg, cek: &[u8]) -> Result<Vec<u8>, String> {
    let mut enc = Encrypter::new(pkey).map_err(ssl)?;
    enc.set_rsa_padding(Padding::PKCS1_OAEP).map_err(ssl)?;
    if alg == KeyAlg::RsaOaep256 {
        enc.set_rsa_oaep_md(MessageDigest::sha256()).map_err(ssl)?;
        enc.set_rsa_mgf1_md(MessageDigest::sha256()).map_err(ssl)?;
    }
    let mut out = vec![0u8; enc.encrypt_len(cek).map_err(ssl)?];
    let n = enc.encrypt(cek, &mut out).map_err(ssl)?;
    out.truncate(n);
    Ok(out)
}

fn rsa_decrypt(pkey: &PKeyRef<Private>, alg: KeyAlg, ek: &[u8]) -> Result<Zeroizing<Vec<u8>>, String> {
    let mut dec = Decrypter::new(pkey).map_err(ssl)?;
    dec.set_rsa_padding(Padding::PKCS1_OAEP).map_err(ssl)?;
    if alg == KeyAlg::RsaOaep256 {
        dec.set_rsa_oaep_md(MessageDigest::sha256()).map_err(ssl)?;
        dec.set_rsa_mgf1_md(MessageDigest::sha256()).map_err(ssl)?;
    }
    let mut out = Zeroizing::new(vec![0u8; dec.decrypt_len(ek).map_err(ssl)?]);
    // The reason OpenSSL gives for a wrong key is not informative and, for
    // OAEP, should not be distinguishable anyway.
    let n = dec.decrypt(ek, &mut out).map_err(|_| "RSA-OAEP decryption failed (not this key)".to_owned())?;
    out.truncate(n);
    Ok(out)
}

/// Concat KDF (NIST SP 800-56A, RFC 7518 section 4.6.2) with SHA-256.
fn concat_kdf(z: &[u8], alg: &str, apu: &[u8], apv: &[u8], key_len: usize) -> Zeroizing<Vec<u8>> {
    let mut out = Zeroizing::new(Vec::with_capacity(key_len + 32));
    let mut counter: u32 = 1;
    while out.len() < key_len {
        let mut h = Sha256::new();
        h.update(counter.to_be_bytes());
        h.update(z);
        for part in [alg.as_bytes(), apu, apv] {
            h.update((part.len() as u32).to_be_bytes());
            h.update(part);
        }
        h.update(((key_len * 8) as u32).to_be_bytes());
        out.extend_from_slice(&h.finalize());
        counter += 1;
    }
    out.truncate(key_len);
    out
}

fn ecdh(private: &PKeyRef<Private>, peer: &PKeyRef<impl HasPublic>) -> Result<Zeroizing<Vec<u8>>, String> {
    let mut d = Deriver::new(private).map_err(ssl)?;
    d.set_peer(peer).map_err(ssl)?;
    d.derive_to_vec().map(Zeroizing::new).map_err(ssl)
}

fn aes_kw_wrap(kek: &[u8], cek: &[u8]) -> Result<Vec<u8>, String> {
    let key = AesKey::new_encrypt(kek).map_err(|_| "bad key-wrap key length".to_owned())?;
    let mut out = vec![0u8; cek.len() + 8];
    wrap_key(&key, None, &mut out, cek).map_err(|_| "AES key wrap failed".to_owned())?;
    Ok(out)
}

fn aes_kw_unwrap(kek: &[u8], wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>, String> {
    if wrapped.len() < 24 || wrapped.len() & 7 != 0 {
        return Err(format!("wrapped key has {} bytes, not a multiple of 8 >= 24", wrapped.len()));
    }
    let key = AesKey::new_decrypt(kek).map_err(|_| "bad key-wrap key length".to_owned())?;
    let mut out = Zeroizing::new(vec![0u8; wrapped.len() - 8]);
    unwrap_key(&key, None, &mut out, wrapped)
        .map_err(|_| "AES key unwrap failed (not this key)".to_owned())?;
    Ok(out)
}

fn b64u_field(m: &Map<String, Value>, name: &str) -> Result<Option<Vec<u8>>, String> {
    match m.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => B64U
            .decode(s.trim_end_matches('=').as_bytes())
            .map(Some)
            .map_err(|_| format!("{name:?} is not base64url")),
        Some(_) => Err(format!("{name:?} is not a string")),
    }
}

// ---------------------------------------------------------------- wrapping

/// Wraps private options as one JWE for a set of recipients (scheme `jwe`).
#[derive(Debug, Clone)]
pub struct JweWrapper {
    recipients: Vec<PublicKey>,
}

impl JweWrapper {
    /// A wrapper for these recipients. With none, `wrap` produces nothing.
    pub fn new(recipients: Vec<PublicKey>) -> Self {
        JweWrapper { recipients }
    }

    /// Build the JWE JSON for `payload` (empty if there are no recipients).
    pub fn wrap_jwe(&self, payload: &[u8]) -> Result<Vec<u8>, JweError> {
        if self.recipients.is_empty() {
            return Ok(Vec::new());
        }
        let mut cek = Zeroizing::new([0u8; 32]);
        let mut iv = [0u8; 12];
        rand::rngs::OsRng.fill_bytes(cek.as_mut());
        rand::rngs::OsRng.fill_bytes(&mut iv);

        let mut headers = Vec::with_capacity(self.recipients.len());
        for (i, r) in self.recipients.iter().enumerate() {
            let (header, ek) =
                wrap_cek(r, cek.as_ref()).map_err(|e| JweError::Encrypt(format!("recipient {i}: {e}")))?;
            headers.push((header, ek));
        }

        let single = headers.len() == 1;
        // go-jose puts a lone recipient's header into the protected header.
        let mut protected = Map::new();
        protected.insert("enc".into(), Value::String("A256GCM".into()));
        if single {
            if let Some((h, _)) = headers.first() {
                protected.extend(h.clone());
            }
        }
        let protected_b64 = B64U.encode(Value::Object(protected).to_string());
        let mut tag = [0u8; 16];
        let ciphertext = symm::encrypt_aead(
            Cipher::aes_256_gcm(),
            cek.as_ref(),
            Some(&iv),
            protected_b64.as_bytes(),
            payload,
            &mut tag,
        )
        .map_err(|e| JweError::Encrypt(ssl(e)))?;

        let mut out = format!("{{\"protected\":\"{protected_b64}\",");
        if single {
            if let Some((_, ek)) = headers.first() {
                let _ = write!(out, "\"encrypted_key\":\"{}\",", B64U.encode(ek));
            }
        } else {
            out.push_str("\"recipients\":[");
            for (i, (h, ek)) in headers.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                let _ = write!(
                    out,
                    "{{\"header\":{},\"encrypted_key\":\"{}\"}}",
                    Value::Object(h.clone()),
                    B64U.encode(ek)
                );
            }
            out.push_str("],");
        }
        let _ = write!(
            out,
            "\"iv\":\"{}\",\"ciphertext\":\"{}\",\"tag\":\"{}\"}}",
            B64U.encode(iv),
            B64U.encode(ciphertext),
            B64U.encode(tag)
        );
        Ok(out.into_bytes())
    }
}

/// The per-recipient header (alg, epk, kid) and encrypted key.
fn wrap_cek(r: &PublicKey, cek: &[u8]) -> Result<(Map<String, Value>, Vec<u8>), String> {
    let alg = r.key_alg();
    let mut header = Map::new();
    header.insert("alg".into(), Value::String(alg.as_str().into()));
    let ek = if alg.is_rsa() {
        if r.pkey.id() != Id::RSA {
            return Err(format!("{} needs an RSA key", alg.as_str()));
        }
        rsa_encrypt(&r.pkey, alg, cek)?
    } else {
        let peer = r.pkey.ec_key().map_err(|_| format!("{} needs an EC key", alg.as_str()))?;
        let eph = EcKey::generate(peer.group()).map_err(ssl)?;
        let (crv, x, y) = keys::ec_coordinates(&eph).map_err(|e| e.to_string())?;
        let eph = PKey::from_ec_key(eph).map_err(ssl)?;
        let z = ecdh(&eph, &r.pkey)?;
        let kek = concat_kdf(&z, alg.as_str(), &[], &[], alg.kw_len());
        let mut epk = Map::new();
        epk.insert("kty".into(), Value::String("EC".into()));
        epk.insert("crv".into(), Value::String(crv.into()));
        epk.insert("x".into(), Value::String(x));
        epk.insert("y".into(), Value::String(y));
        header.insert("epk".into(), Value::Object(epk));
        aes_kw_wrap(&kek, cek)?
    };
    if let Some(kid) = &r.kid {
        header.insert("kid".into(), Value::String(kid.clone()));
    }
    Ok((header, ek))
}

impl KeyWrapper for JweWrapper {
    fn scheme(&self) -> String {
        SCHEME.to_owned()
    }

    fn wrap<'a>(&'a self, private_opts: &'a [u8]) -> BoxFuture<'a, Result<Vec<u8>, WrapError>> {
        Box::pin(async move { self.wrap_jwe(private_opts).map_err(WrapError::from) })
    }
}

// ---------------------------------------------------------------- parsing

struct Recipient {
    header: Map<String, Value>,
    encrypted_key: Vec<u8>,
}

struct ParsedJwe {
    /// The protected header exactly as encoded: it is the GCM/CBC-HMAC AAD.
    protected_b64: String,
    aad_b64: Option<String>,
    iv: Vec<u8>,
    ciphertext: Vec<u8>,
    tag: Vec<u8>,
    recipients: Vec<Result<Recipient, String>>,
}

fn malformed(s: impl Into<String>) -> JweError {
    JweError::Malformed(s.into())
}

fn decode_protected(b64: &str) -> Result<Map<String, Value>, JweError> {
    if b64.is_empty() {
        return Ok(Map::new());
    }
    let raw = B64U.decode(b64.as_bytes()).map_err(|_| malformed("protected header is not base64url"))?;
    match serde_json::from_slice(&raw) {
        Ok(Value::Object(m)) => Ok(m),
        _ => Err(malformed("protected header is not a JSON object")),
    }
}

/// Join the header layers of one recipient; a name in two layers is an error (RFC 7516 7.2.1).
fn merge_headers(layers: &[&Map<String, Value>]) -> Result<Map<String, Value>, String> {
    let mut out = Map::new();
    for layer in layers {
        for (k, v) in layer.iter() {
            if out.insert(k.clone(), v.clone()).is_some() {
                return Err(format!("header parameter {k:?} appears in more than one header"));
            }
        }
    }
    Ok(out)
}

fn parse_jwe(input: &[u8]) -> Result<ParsedJwe, JweError> {
    if input.len() > MAX_JWE_LEN {
        return Err(malformed(format!("{} bytes, more than the {MAX_JWE_LEN} allowed", input.len())));
    }
    let text = std::str::from_utf8(input).map_err(|_| malformed("not UTF-8"))?;
    let text = text.trim();
    if text.starts_with('{') {
        parse_json(text)
    } else {
        parse_compact(text)
    }
}

fn parse_compact(text: &str) -> Result<ParsedJwe, JweError> {
    let parts: Vec<&str> = text.split('.').collect();
    let [protected_b64, ek, iv, ct, tag] = parts.as_slice() else {
        return Err(malformed(format!("compact form has {} parts, need 5", parts.len())));
    };
    let dec = |name: &str, s: &str| {
        B64U.decode(s.as_bytes()).map_err(|_| malformed(format!("{name} is not base64url")))
    };
    let header = decode_protected(protected_b64)?;
    Ok(ParsedJwe {
        protected_b64: (*protected_b64).to_owned(),
        aad_b64: None,
        iv: dec("iv", iv)?,
        ciphertext: dec("ciphertext", ct)?,
        tag: dec("tag", tag)?,
        recipients: vec![Ok(Recipient { header, encrypted_key: dec("encrypted_key", ek)? })],
    })
}

fn parse_json(text: &str) -> Result<ParsedJwe, JweError> {
    let top: Map<String, Value> = match serde_json::from_str(text) {
        Ok(Value::Object(m)) => m,
        Ok(_) => return Err(malformed("not a JSON object")),
        Err(e) => return Err(malformed(format!("invalid JSON at line {} column {}", e.line(), e.column()))),
    };
    let protected_b64 = match top.get("protected") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(malformed("\"protected\" is not a string")),
    };
    let protected = decode_protected(&protected_b64)?;
    let empty = Map::new();
    let unprotected = match top.get("unprotected") {
        None | Some(Value::Null) => &empty,
        Some(Value::Object(m)) => m,
        Some(_) => return Err(malformed("\"unprotected\" is not an object")),
    };
    let aad_b64 = match top.get("aad") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(malformed("\"aad\" is not a string")),
    };
    let req = |name: &str| -> Result<Vec<u8>, JweError> {
        b64u_field(&top, name).map_err(malformed)?.ok_or_else(|| malformed(format!("missing {name:?}")))
    };
    let iv = req("iv")?;
    let ciphertext = req("ciphertext")?;
    let tag = req("tag")?;

    let one = |header: Option<&Value>, ek: Result<Option<Vec<u8>>, String>| -> Result<Recipient, String> {
        let header = match header {
            None | Some(Value::Null) => &empty,
            Some(Value::Object(m)) => m,
            Some(_) => return Err("\"header\" is not an object".into()),
        };
        let merged = merge_headers(&[&protected, unprotected, header])?;
        Ok(Recipient { header: merged, encrypted_key: ek?.unwrap_or_default() })
    };
    // go-jose also writes recipient 0's key at the top level of general JSON;
    // with "recipients" present the top-level key is ignored.
    let recipients = match top.get("recipients") {
        None | Some(Value::Null) => vec![one(top.get("header"), b64u_field(&top, "encrypted_key"))],
        Some(Value::Array(list)) if !list.is_empty() => list
            .iter()
            .map(|r| match r {
                Value::Object(m) => one(m.get("header"), b64u_field(m, "encrypted_key")),
                _ => Err("recipient is not an object".into()),
            })
            .collect(),
        Some(_) => return Err(malformed("\"recipients\" is not a non-empty array")),
    };
    Ok(ParsedJwe { protected_b64, aad_b64, iv, ciphertext, tag, recipients })
}

/// The recipients of a wrapped JWE (their `alg` and `kid`), without decrypting.
pub fn jwe_recipients(wrapped: &[u8]) -> Result<Vec<RecipientInfo>, JweError> {
    let jwe = parse_jwe(wrapped)?;
    jwe.recipients
        .into_iter()
        .enumerate()
        .map(|(i, r)| {
            let r = r.map_err(|e| malformed(format!("recipient {i}: {e}")))?;
            let alg = match r.header.get("alg") {
                Some(Value::String(a)) => a.clone(),
                _ => return Err(malformed(format!("recipient {i} has no \"alg\""))),
            };
            let kid = match r.header.get("kid") {
                Some(Value::String(k)) => Some(k.clone()),
                _ => None,
            };
            Ok(RecipientInfo { alg, kid })
        })
        .collect()
}

// ---------------------------------------------------------------- unwrapping

/// Unwraps `jwe` items with a set of private keys.
#[derive(Debug)]
pub struct JweUnwrapper {
    keys: Vec<PrivateKey>,
}

fn str_header<'a>(h: &'a Map<String, Value>, name: &str) -> Option<&'a str> {
    match h.get(name) {
        Some(Value::String(s)) => Some(s),
        _ => None,
    }
}

/// Decrypt the content with a candidate CEK.
fn decrypt_content(jwe: &ParsedJwe, enc: &str, cek: &[u8]) -> Result<Zeroizing<Vec<u8>>, String> {
    let mut aad = jwe.protected_b64.clone();
    if let Some(extra) = &jwe.aad_b64 {
        aad.push('.');
        aad.push_str(extra);
    }
    let (gcm, cbc, key_len) = match enc {
        "A128GCM" => (Some(Cipher::aes_128_gcm()), None, 16),
        "A192GCM" => (Some(Cipher::aes_192_gcm()), None, 24),
        "A256GCM" => (Some(Cipher::aes_256_gcm()), None, 32),
        "A128CBC-HS256" => (None, Some(Cipher::aes_128_cbc()), 32),
        "A192CBC-HS384" => (None, Some(Cipher::aes_192_cbc()), 48),
        "A256CBC-HS512" => (None, Some(Cipher::aes_256_cbc()), 64),
        other => return Err(format!("unsupported content encryption {other:?}")),
    };
    if cek.len() != key_len {
        return Err(format!("content key has {} bytes, {enc} needs {key_len}", cek.len()));
    }
    if let Some(cipher) = gcm {
        if jwe.tag.len() != 16 || jwe.iv.is_empty() {
            return Err("bad GCM iv or tag length".into());
        }
        return symm::decrypt_aead(cipher, cek, Some(&jwe.iv), aad.as_bytes(), &jwe.ciphertext, &jwe.tag)
            .map(Zeroizing::new)
            .map_err(|_| "content authentication failed".into());
    }
    let Some(cipher) = cbc else { return Err("unreachable cipher choice".into()) };
    let half = key_len / 2;
    let (mac_key, enc_key) = cek.split_at(half);
    if jwe.iv.len() != 16 || jwe.tag.len() != half {
        return Err("bad CBC iv or tag length".into());
    }
    let al = ((aad.len() as u64) * 8).to_be_bytes();
    let parts: [&[u8]; 4] = [aad.as_bytes(), &jwe.iv, &jwe.ciphertext, &al];
    let full = hmac_parts(enc, mac_key, &parts)?;
    let expected = full.get(..half).ok_or("short HMAC")?;
    if !bool::from(expected.ct_eq(&jwe.tag)) {
        return Err("content authentication failed".into());
    }
    symm::decrypt(cipher, enc_key, Some(&jwe.iv), &jwe.ciphertext)
        .map(Zeroizing::new)
        .map_err(|_| "content decryption failed".into())
}

/// HMAC over the concatenated parts with the SHA-2 variant the `enc` names.
fn hmac_parts(enc: &str, key: &[u8], parts: &[&[u8]]) -> Result<Vec<u8>, String> {
    macro_rules! run {
        ($d:ty) => {{
            let mut mac = Hmac::<$d>::new_from_slice(key).map_err(|_| "bad HMAC key".to_owned())?;
            for p in parts {
                mac.update(p);
            }
            mac.finalize().into_bytes().to_vec()
        }};
    }
    Ok(match enc {
        "A128CBC-HS256" => run!(Sha256),
        "A192CBC-HS384" => run!(Sha384),
        _ => run!(Sha512),
    })
}

impl JweUnwrapper {
    /// An unwrapper trying these keys in order.
    pub fn new(keys: Vec<PrivateKey>) -> Self {
        JweUnwrapper { keys }
    }

    /// Number of keys held.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no keys are held.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Recover the CEK of one recipient with one key.
    fn unwrap_cek(
        &self,
        key: &PrivateKey,
        header: &Map<String, Value>,
        ek: &[u8],
    ) -> Result<Zeroizing<Vec<u8>>, String> {
        let alg_name = str_header(header, "alg").ok_or("no \"alg\" header")?;
        let alg = KeyAlg::parse(alg_name).ok_or_else(|| format!("unsupported alg {alg_name:?}"))?;
        if alg.is_rsa() {
            if key.pkey.id() != Id::RSA {
                return Err(format!("{alg_name} needs an RSA key, this key is EC"));
            }
            return rsa_decrypt(&key.pkey, alg, ek);
        }
        let ours = key.pkey.ec_key().map_err(|_| format!("{alg_name} needs an EC key, this key is RSA"))?;
        let epk = match header.get("epk") {
            Some(Value::Object(m)) => {
                keys::ec_public_from_jwk_value(m).map_err(|e| format!("bad \"epk\": {e}"))?
            }
            _ => return Err("no \"epk\" header".into()),
        };
        let theirs = epk.ec_key().map_err(ssl)?;
        if ours.group().curve_name() != theirs.group().curve_name() {
            return Err("key is on a different curve than the recipient".into());
        }
        let z = ecdh(&key.pkey, &epk)?;
        let apu = b64u_field(header, "apu")?.unwrap_or_default();
        let apv = b64u_field(header, "apv")?.unwrap_or_default();
        let kek = concat_kdf(&z, alg_name, &apu, &apv, alg.kw_len());
        aes_kw_unwrap(&kek, ek)
    }

    /// Open a JWE: try every recipient with every key; the error lists each attempt.
    pub fn unwrap_jwe(&self, wrapped: &[u8]) -> Result<Zeroizing<Vec<u8>>, JweError> {
        let jwe = parse_jwe(wrapped)?;
        if self.keys.is_empty() {
            return Err(JweError::NoKey("no private keys were given".into()));
        }
        let mut attempts = Vec::new();
        for (ri, r) in jwe.recipients.iter().enumerate() {
            let r = match r {
                Ok(r) => r,
                Err(e) => {
                    attempts.push((format!("recipient {ri}"), e.clone()));
                    continue;
                }
            };
            if r.header.contains_key("zip") {
                attempts
                    .push((format!("recipient {ri}"), "compressed (\"zip\") JWE is not supported".into()));
                continue;
            }
            if r.header.contains_key("crit") {
                attempts
                    .push((format!("recipient {ri}"), "\"crit\" header parameters are not supported".into()));
                continue;
            }
            let Some(enc) = str_header(&r.header, "enc") else {
                attempts.push((format!("recipient {ri}"), "no \"enc\" header".into()));
                continue;
            };
            let alg = str_header(&r.header, "alg").unwrap_or("?");
            for (ki, key) in self.keys.iter().enumerate() {
                let result = self
                    .unwrap_cek(key, &r.header, &r.encrypted_key)
                    .and_then(|cek| decrypt_content(&jwe, enc, &cek));
                match result {
                    Ok(plain) => return Ok(plain),
                    Err(e) => attempts.push((format!("recipient {ri} ({alg}) with key {ki}"), e)),
                }
            }
        }
        Err(JweError::NoKey(join_attempts(attempts)))
    }
}

/// The attempts as one list, each reason said once: `recipient 0 (RSA-OAEP) with key 0,
/// recipient 1 (RSA-OAEP) with key 0: RSA-OAEP decryption failed (not this key)`.
fn join_attempts(attempts: Vec<(String, String)>) -> String {
    let mut grouped: Vec<(Vec<String>, String)> = Vec::new();
    for (label, reason) in attempts {
        match grouped.iter_mut().find(|(_, r)| *r == reason) {
            Some((labels, _)) => labels.push(label),
            None => grouped.push((vec![label], reason)),
        }
    }
    let parts: Vec<String> =
        grouped.into_iter().map(|(labels, r)| format!("{}: {r}", labels.join(", "))).collect();
    parts.join("; ")
}

impl KeyUnwrapper for JweUnwrapper {
    fn name(&self) -> String {
        format!("jwe ({} keys)", self.keys.len())
    }

    fn handles(&self, scheme: &str) -> bool {
        scheme == SCHEME
    }

    fn unwrap<'a>(
        &'a self,
        scheme: &'a str,
        wrapped: &'a [u8],
    ) -> BoxFuture<'a, Result<Zeroizing<Vec<u8>>, WrapError>> {
        Box::pin(async move {
            if scheme != SCHEME {
                return Err(WrapError::Other(
                    format!("the jwe unwrapper cannot open scheme {scheme:?}").into(),
                ));
            }
            self.unwrap_jwe(wrapped).map_err(WrapError::from)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn concat_kdf_rfc7518_appendix_c() {
        // RFC 7518 Appendix C: ECDH-ES direct, A128GCM, apu "Alice", apv "Bob".
        let z: [u8; 32] = [
            158, 86, 217, 29, 129, 113, 53, 211, 114, 131, 66, 131, 191, 132, 38, 156, 251, 49, 110, 163,
            218, 128, 106, 72, 246, 218, 167, 121, 140, 254, 144, 196,
        ];
        let k = concat_kdf(&z, "A128GCM", b"Alice", b"Bob", 16);
        assert_eq!(B64U.encode(k.as_slice()), "VqqN6vgjbSBcIijNcacQGg");
    }

    #[test]
    fn aes_kw_rfc3394_vector() {
        let kek = hex::decode("000102030405060708090A0B0C0D0E0F").unwrap();
        let data = hex::decode("00112233445566778899AABBCCDDEEFF").unwrap();
        let wrapped = aes_kw_wrap(&kek, &data).unwrap();
        assert_eq!(hex::encode_upper(&wrapped), "1FA68B0A8112B447AEF34BD8FB5A7B829D3E862371D2CFE5");
        assert_eq!(aes_kw_unwrap(&kek, &wrapped).unwrap().as_slice(), data.as_slice());
    }

    #[test]
    fn malformed_inputs_are_errors() {
        let u = JweUnwrapper::new(Vec::new());
        for bad in [&b""[..], b"{", b"[]", b"a.b.c", b"{\"iv\":\"AA\"}", b"\xff\xfe"] {
            assert!(matches!(u.unwrap_jwe(bad), Err(JweError::Malformed(_))), "{bad:?}");
        }
    }
}
