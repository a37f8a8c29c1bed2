//! Opening the KBS resource answer: a flattened-JSON JWE (kbs-types `Response`)
//! whose CEK is wrapped to the TEE key with `ECDH-ES+A256KW`, `RSA-OAEP-256` or
//! legacy `RSA1_5`, and whose payload is `A256GCM`.
//!
//! The AAD is what Trustee's guest computes, not the `protected` string as
//! received: the header is decoded and re-serialised compactly with `alg` and
//! `enc` first and the other fields sorted by key (serde_json without
//! `preserve_order`). We build that form by hand so it does not depend on which
//! serde_json features other crates switch on.

use base64::prelude::{Engine, BASE64_URL_SAFE_NO_PAD};
use kbs_types::{ProtectedHeader, Response};
use openssl::aes::{unwrap_key, AesKey};
use openssl::encrypt::Decrypter;
use openssl::hash::MessageDigest;
use openssl::rsa::Padding;
use openssl::symm::{decrypt_aead, Cipher};
use serde_json::Value;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::ecdh::Curve;
use super::keys::{TeeKeyKind, TeeKeyPair};
use super::{malformed, ProtocolError, MAX_BODY};

const CEK_LEN: usize = 32;
const GCM_IV_LEN: usize = 12;
const GCM_TAG_LEN: usize = 16;

/// Parses the answer body of `GET /kbs/v0/resource/...`.
pub fn parse_response(body: &[u8]) -> Result<Response, ProtocolError> {
    if body.len() > MAX_BODY {
        return Err(malformed("resource answer", "larger than 16 MiB"));
    }
    serde_json::from_slice(body).map_err(|e| malformed("resource answer (JWE)", e))
}

fn write_sorted(v: &Value, out: &mut String) -> Result<(), ProtocolError> {
    match v {
        Value::Object(m) => {
            let mut keys: Vec<&String> = m.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&json_scalar(&Value::String((*k).clone()))?);
                out.push(':');
                if let Some(val) = m.get(*k) {
                    write_sorted(val, out)?;
                }
            }
            out.push('}');
        }
        Value::Array(a) => {
            out.push('[');
            for (i, x) in a.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_sorted(x, out)?;
            }
            out.push(']');
        }
        scalar => out.push_str(&json_scalar(scalar)?),
    }
    Ok(())
}

fn json_scalar(v: &Value) -> Result<String, ProtocolError> {
    serde_json::to_string(v).map_err(|e| ProtocolError::Crypto(format!("cannot serialise header: {e}")))
}

/// The AAD Trustee uses: base64url (no padding) of the re-serialised header.
pub fn trustee_aad(h: &ProtectedHeader) -> Result<Vec<u8>, ProtocolError> {
    let mut s = String::from("{\"alg\":");
    s.push_str(&json_scalar(&Value::String(h.alg.clone()))?);
    s.push_str(",\"enc\":");
    s.push_str(&json_scalar(&Value::String(h.enc.clone()))?);
    let mut keys: Vec<&String> = h.other_fields.keys().collect();
    keys.sort();
    for k in keys {
        s.push(',');
        s.push_str(&json_scalar(&Value::String(k.clone()))?);
        s.push(':');
        if let Some(v) = h.other_fields.get(k) {
            write_sorted(v, &mut s)?;
        }
    }
    s.push('}');
    Ok(BASE64_URL_SAFE_NO_PAD.encode(s).into_bytes())
}

fn crypto(e: impl std::fmt::Display) -> ProtocolError {
    ProtocolError::Crypto(e.to_string())
}

/// Decrypts a resource answer with the TEE key it was encrypted to.
pub fn decrypt_response(key: &TeeKeyPair, resp: &Response) -> Result<Zeroizing<Vec<u8>>, ProtocolError> {
    let h = &resp.protected;
    if h.enc != "A256GCM" {
        return Err(ProtocolError::Unsupported { what: "JWE enc", value: h.enc.clone() });
    }
    let cek = match (h.alg.as_str(), key.kind()) {
        ("ECDH-ES+A256KW", TeeKeyKind::EcP256) => unwrap_ecdh_es_a256kw(key, h, &resp.encrypted_key)?,
        ("RSA-OAEP-256", TeeKeyKind::Rsa) => unwrap_rsa(key, &resp.encrypted_key, true)?,
        ("RSA1_5", TeeKeyKind::Rsa) => unwrap_rsa(key, &resp.encrypted_key, false)?,
        (alg, kind) => {
            return Err(ProtocolError::Unsupported {
                what: "JWE alg for this TEE key",
                value: format!("{alg} with a {kind:?} key"),
            })
        }
    };
    if cek.len() != CEK_LEN {
        return Err(ProtocolError::Decrypt(format!(
            "content key is {} bytes, expected {CEK_LEN}",
            cek.len()
        )));
    }
    if resp.iv.len() != GCM_IV_LEN {
        return Err(malformed("JWE iv", format!("{} bytes, expected {GCM_IV_LEN}", resp.iv.len())));
    }
    if resp.tag.len() != GCM_TAG_LEN {
        return Err(malformed("JWE tag", format!("{} bytes, expected {GCM_TAG_LEN}", resp.tag.len())));
    }
    let aad = trustee_aad(h)?;
    let plain = decrypt_aead(Cipher::aes_256_gcm(), &cek, Some(&resp.iv), &aad, &resp.ciphertext, &resp.tag)
        .map_err(|_| {
            ProtocolError::Decrypt("AES-256-GCM tag mismatch (tampered answer or wrong key)".into())
        })?;
    Ok(Zeroizing::new(plain))
}

fn unwrap_rsa(key: &TeeKeyPair, wrapped: &[u8], oaep256: bool) -> Result<Zeroizing<Vec<u8>>, ProtocolError> {
    let pkey = key.rsa_pkey().ok_or_else(|| crypto("RSA unwrap with a non-RSA TEE key"))?;
    let mut d = Decrypter::new(pkey).map_err(crypto)?;
    if oaep256 {
        d.set_rsa_padding(Padding::PKCS1_OAEP).map_err(crypto)?;
        d.set_rsa_oaep_md(MessageDigest::sha256()).map_err(crypto)?;
        d.set_rsa_mgf1_md(MessageDigest::sha256()).map_err(crypto)?;
    } else {
        d.set_rsa_padding(Padding::PKCS1).map_err(crypto)?;
    }
    let len = d.decrypt_len(wrapped).map_err(crypto)?;
    let mut out = Zeroizing::new(vec![0u8; len]);
    let n =
        d.decrypt(wrapped, &mut out).map_err(|_| ProtocolError::Decrypt("RSA key unwrap failed".into()))?;
    out.truncate(n);
    Ok(out)
}

fn b64_field(v: Option<&Value>, what: &'static str) -> Result<Vec<u8>, ProtocolError> {
    let s = v.and_then(Value::as_str).ok_or_else(|| malformed(what, "missing or not a string"))?;
    BASE64_URL_SAFE_NO_PAD.decode(s).map_err(|e| malformed(what, e))
}

fn unwrap_ecdh_es_a256kw(
    key: &TeeKeyPair,
    h: &ProtectedHeader,
    wrapped: &[u8],
) -> Result<Zeroizing<Vec<u8>>, ProtocolError> {
    let epk = h.other_fields.get("epk").ok_or_else(|| malformed("JWE header", "ECDH-ES without epk"))?;
    if epk.get("kty").and_then(Value::as_str) != Some("EC") {
        return Err(malformed("JWE epk", "kty is not EC"));
    }
    let crv = epk.get("crv").and_then(Value::as_str).unwrap_or_default();
    if crv != "P-256" {
        return Err(ProtocolError::Unsupported {
            what: "JWE epk curve (the TEE key is P-256)",
            value: crv.to_owned(),
        });
    }
    let x = b64_field(epk.get("x"), "JWE epk x")?;
    let y = b64_field(epk.get("y"), "JWE epk y")?;
    if x.len() != 32 || y.len() != 32 {
        return Err(malformed("JWE epk", "P-256 coordinates must be 32 bytes"));
    }
    // Rejects points not on the curve (invalid-curve attacks on our private key).
    let peer = Curve::P256.peer_point(&x, &y).map_err(|e| malformed("JWE epk", e))?;
    let own = key.ec_key().ok_or_else(|| crypto("ECDH with a non-EC TEE key"))?;
    let z = Curve::P256.shared_secret(own, &peer).map_err(crypto)?;

    let kek = concat_kdf_a256kw(&z);
    if wrapped.len() != CEK_LEN + 8 {
        return Err(malformed(
            "JWE encrypted_key",
            format!("{} bytes, expected {} for A256KW", wrapped.len(), CEK_LEN + 8),
        ));
    }
    let aes = AesKey::new_decrypt(&kek[..]).map_err(|_| crypto("bad AES-KW key"))?;
    let mut cek = Zeroizing::new(vec![0u8; CEK_LEN]);
    unwrap_key(&aes, None, &mut cek, wrapped)
        .map_err(|_| ProtocolError::Decrypt("AES key unwrap failed (integrity check)".into()))?;
    Ok(cek)
}

/// NIST SP 800-56A Concat KDF with SHA-256, one round, as RFC 7518 §4.6.2 uses it
/// for `ECDH-ES+A256KW` with empty `apu`/`apv`.
pub(crate) fn concat_kdf_a256kw(z: &[u8]) -> Zeroizing<[u8; 32]> {
    const ALG: &[u8] = b"ECDH-ES+A256KW";
    let mut h = Sha256::new();
    h.update(1u32.to_be_bytes());
    h.update(z);
    h.update((ALG.len() as u32).to_be_bytes());
    h.update(ALG);
    h.update(0u32.to_be_bytes()); // apu length
    h.update(0u32.to_be_bytes()); // apv length
    h.update(256u32.to_be_bytes()); // key data length in bits
    Zeroizing::new(h.finalize().into())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    //! Each test builds the answer the way a KBS does (with OpenSSL, or with
    //! josekit as an independent JWE implementation) and opens it with the client.
    use super::*;
    use kbs_types::TeePubKey;
    use openssl::aes::wrap_key;
    use openssl::bn::{BigNum, BigNumContext};
    use openssl::derive::Deriver;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::encrypt::Encrypter;
    use openssl::nid::Nid;
    use openssl::pkey::PKey;
    use openssl::pkey::Public;
    use openssl::rsa::Rsa;
    use openssl::symm::encrypt_aead;
    use serde_json::json;

    const SECRET: &[u8] = b"the 32-byte key-encryption key!!";

    fn b64(b: &[u8]) -> String {
        BASE64_URL_SAFE_NO_PAD.encode(b)
    }

    fn unb64(s: &str) -> Vec<u8> {
        BASE64_URL_SAFE_NO_PAD.decode(s).unwrap()
    }

    fn header(alg: &str, other: serde_json::Map<String, Value>) -> ProtectedHeader {
        ProtectedHeader { alg: alg.into(), enc: "A256GCM".into(), other_fields: other }
    }

    fn seal(h: ProtectedHeader, encrypted_key: Vec<u8>, cek: &[u8], plain: &[u8]) -> Response {
        let iv: [u8; 12] = rand::random();
        let aad = trustee_aad(&h).unwrap();
        let mut tag = [0u8; 16];
        let ct = encrypt_aead(Cipher::aes_256_gcm(), cek, Some(&iv), &aad, plain, &mut tag).unwrap();
        Response {
            protected: h,
            encrypted_key,
            aad: None,
            iv: iv.to_vec(),
            ciphertext: ct,
            tag: tag.to_vec(),
        }
    }

    fn ec_public(jwk: &TeePubKey) -> PKey<Public> {
        let TeePubKey::EC { x, y, .. } = jwk else { panic!("not EC") };
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let k = EcKey::from_public_key_affine_coordinates(
            &group,
            &BigNum::from_slice(&unb64(x)).unwrap(),
            &BigNum::from_slice(&unb64(y)).unwrap(),
        )
        .unwrap();
        PKey::from_ec_key(k).unwrap()
    }

    fn rsa_public(jwk: &TeePubKey) -> PKey<Public> {
        let TeePubKey::RSA { k_mod, k_exp, .. } = jwk else { panic!("not RSA") };
        let rsa = Rsa::from_public_components(
            BigNum::from_slice(&unb64(k_mod)).unwrap(),
            BigNum::from_slice(&unb64(k_exp)).unwrap(),
        )
        .unwrap();
        PKey::from_rsa(rsa).unwrap()
    }

    /// What Trustee's KBS does for an EC TEE key.
    fn server_ecdh(jwk: &TeePubKey, plain: &[u8]) -> Response {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let eph = PKey::from_ec_key(EcKey::generate(&group).unwrap()).unwrap();
        let peer = ec_public(jwk);
        let z = {
            let mut d = Deriver::new(&eph).unwrap();
            d.set_peer(&peer).unwrap();
            d.derive_to_vec().unwrap()
        };
        let kek = concat_kdf_a256kw(&z);
        let cek: [u8; 32] = rand::random();
        let mut wrapped = vec![0u8; 40];
        wrap_key(&AesKey::new_encrypt(&kek[..]).unwrap(), None, &mut wrapped, &cek).unwrap();
        let ec = eph.ec_key().unwrap();
        let (mut x, mut y) = (BigNum::new().unwrap(), BigNum::new().unwrap());
        ec.public_key()
            .affine_coordinates(&group, &mut x, &mut y, &mut BigNumContext::new().unwrap())
            .unwrap();
        let mut other = serde_json::Map::new();
        other.insert(
            "epk".into(),
            json!({"crv":"P-256","kty":"EC",
                   "x": b64(&x.to_vec_padded(32).unwrap()), "y": b64(&y.to_vec_padded(32).unwrap())}),
        );
        seal(header("ECDH-ES+A256KW", other), wrapped, &cek, plain)
    }

    fn server_rsa(jwk: &TeePubKey, alg: &str, plain: &[u8]) -> Response {
        let pk = rsa_public(jwk);
        let mut e = Encrypter::new(&pk).unwrap();
        if alg == "RSA-OAEP-256" {
            e.set_rsa_padding(Padding::PKCS1_OAEP).unwrap();
            e.set_rsa_oaep_md(MessageDigest::sha256()).unwrap();
            e.set_rsa_mgf1_md(MessageDigest::sha256()).unwrap();
        } else {
            e.set_rsa_padding(Padding::PKCS1).unwrap();
        }
        let cek: [u8; 32] = rand::random();
        let mut wrapped = vec![0u8; e.encrypt_len(&cek).unwrap()];
        let n = e.encrypt(&cek, &mut wrapped).unwrap();
        wrapped.truncate(n);
        seal(header(alg, serde_json::Map::new()), wrapped, &cek, plain)
    }

    /// Through the wire form, as the client receives it.
    fn over_the_wire(r: &Response) -> Response {
        parse_response(&serde_json::to_vec(r).unwrap()).unwrap()
    }

    #[test]
    fn ecdh_es_a256kw_round_trip() {
        let key = TeeKeyPair::generate(TeeKeyKind::EcP256).unwrap();
        let r = over_the_wire(&server_ecdh(&key.public_jwk().unwrap(), SECRET));
        assert_eq!(&decrypt_response(&key, &r).unwrap()[..], SECRET);
    }

    #[test]
    fn rsa_oaep_256_round_trip() {
        let key = TeeKeyPair::generate(TeeKeyKind::Rsa).unwrap();
        let r = over_the_wire(&server_rsa(&key.public_jwk().unwrap(), "RSA-OAEP-256", SECRET));
        assert_eq!(&decrypt_response(&key, &r).unwrap()[..], SECRET);
    }

    #[test]
    fn legacy_rsa1_5_round_trip() {
        let key = TeeKeyPair::generate(TeeKeyKind::Rsa).unwrap();
        let r = over_the_wire(&server_rsa(&key.public_jwk().unwrap(), "RSA1_5", SECRET));
        assert_eq!(&decrypt_response(&key, &r).unwrap()[..], SECRET);
    }

    /// josekit is an independent JOSE implementation that uses the received
    /// `protected` string as AAD (plain RFC 7516). Its key unwrap (ECDH-ES Concat
    /// KDF + AES-KW) must agree with ours; the GCM step then opens exactly when
    /// josekit's header text happens to equal Trustee's re-serialised form —
    /// the trap a non-Rust KBS must avoid.
    #[test]
    fn josekit_ecdh_es_jwe_opens_iff_header_is_in_trustee_form() {
        use josekit::jwe::{JweHeader, ECDH_ES_A256KW};
        use josekit::jwk::Jwk;
        let key = TeeKeyPair::generate(TeeKeyKind::EcP256).unwrap();
        let jwk_json = serde_json::to_value(key.public_jwk().unwrap()).unwrap();
        let jwk = Jwk::from_map(jwk_json.as_object().unwrap().clone()).unwrap();
        let enc = ECDH_ES_A256KW.encrypter_from_jwk(&jwk).unwrap();
        let mut h = JweHeader::new();
        h.set_content_encryption("A256GCM");
        let compact = josekit::jwe::serialize_compact(SECRET, &h, &enc).unwrap();
        let p: Vec<&str> = compact.split('.').collect();
        assert_eq!(p.len(), 5);
        let flattened = json!({"protected": p[0], "encrypted_key": p[1], "iv": p[2],
                               "ciphertext": p[3], "tag": p[4]});
        let resp = parse_response(flattened.to_string().as_bytes()).unwrap();
        let trustee_form = trustee_aad(&resp.protected).unwrap() == p[0].as_bytes();
        match decrypt_response(&key, &resp) {
            Ok(plain) => {
                assert!(trustee_form);
                assert_eq!(&plain[..], SECRET);
            }
            // The CEK unwrapped (else the error would be the AES-KW integrity
            // check); only the AAD differs.
            Err(ProtocolError::Decrypt(m)) => {
                assert!(!trustee_form);
                assert!(m.contains("GCM"), "{m}");
            }
            Err(e) => panic!("unexpected error: {e}"),
        }
    }

    #[test]
    fn aad_is_trustees_reserialised_header() {
        let mut other = serde_json::Map::new();
        other.insert("zip".into(), json!("DEF"));
        other.insert("epk".into(), json!({"y":"Y","x":"X","kty":"EC","crv":"P-256"}));
        let h = header("ECDH-ES+A256KW", other);
        let want = r#"{"alg":"ECDH-ES+A256KW","enc":"A256GCM","epk":{"crv":"P-256","kty":"EC","x":"X","y":"Y"},"zip":"DEF"}"#;
        assert_eq!(trustee_aad(&h).unwrap(), b64(want.as_bytes()).into_bytes());
        // A header received in another key order still yields the same AAD.
        let wire = format!(
            r#"{{"protected":"{}","encrypted_key":"","iv":"","ciphertext":"","tag":""}}"#,
            b64(br#"{"zip":"DEF","epk":{"x":"X","y":"Y","crv":"P-256","kty":"EC"},"enc":"A256GCM","alg":"ECDH-ES+A256KW"}"#)
        );
        let r = parse_response(wire.as_bytes()).unwrap();
        assert_eq!(trustee_aad(&r.protected).unwrap(), b64(want.as_bytes()).into_bytes());
    }

    #[test]
    fn tampering_and_mismatches_fail_closed() {
        let key = TeeKeyPair::generate(TeeKeyKind::EcP256).unwrap();
        let jwk = key.public_jwk().unwrap();
        let good = server_ecdh(&jwk, SECRET);

        let mut r = good.clone();
        r.tag[0] ^= 1;
        assert!(matches!(decrypt_response(&key, &r), Err(ProtocolError::Decrypt(_))));
        let mut r = good.clone();
        r.ciphertext[0] ^= 1;
        assert!(matches!(decrypt_response(&key, &r), Err(ProtocolError::Decrypt(_))));
        let mut r = good.clone();
        r.encrypted_key[3] ^= 1;
        assert!(matches!(decrypt_response(&key, &r), Err(ProtocolError::Decrypt(_))));
        // A header changed after sealing changes the AAD.
        let mut r = good.clone();
        r.protected.other_fields.insert("kid".into(), json!("x"));
        assert!(matches!(decrypt_response(&key, &r), Err(ProtocolError::Decrypt(_))));
        let mut r = good.clone();
        r.iv.pop();
        assert!(matches!(decrypt_response(&key, &r), Err(ProtocolError::Malformed { .. })));
        let mut r = good.clone();
        r.protected.enc = "A128GCM".into();
        assert!(matches!(decrypt_response(&key, &r), Err(ProtocolError::Unsupported { .. })));
        let mut r = good.clone();
        r.protected
            .other_fields
            .insert("epk".into(), json!({"kty":"EC","crv":"P-256","x":b64(&[1u8;32]),"y":b64(&[2u8;32])}));
        assert!(matches!(decrypt_response(&key, &r), Err(ProtocolError::Malformed { .. })));

        // Someone else's key cannot open it.
        let other = TeeKeyPair::generate(TeeKeyKind::EcP256).unwrap();
        assert!(decrypt_response(&other, &good).is_err());
        // An RSA answer to an EC key is refused, not attempted.
        let rsa = TeeKeyPair::generate(TeeKeyKind::Rsa).unwrap();
        let r = server_rsa(&rsa.public_jwk().unwrap(), "RSA-OAEP-256", SECRET);
        assert!(matches!(decrypt_response(&key, &r), Err(ProtocolError::Unsupported { .. })));
        // Plain RSA-OAEP (SHA-1) is not accepted.
        let mut r = r;
        r.protected.alg = "RSA-OAEP".into();
        assert!(matches!(decrypt_response(&rsa, &r), Err(ProtocolError::Unsupported { .. })));
    }

    #[test]
    fn malformed_answers_are_errors() {
        for body in [
            &b""[..],
            b"{}",
            b"[]",
            br#"{"protected":"!!","encrypted_key":"","iv":"","ciphertext":"","tag":""}"#,
            br#"{"protected":"e30","encrypted_key":"","iv":"","ciphertext":"","tag":""}"#,
        ] {
            assert!(parse_response(body).is_err(), "{}", String::from_utf8_lossy(body));
        }
    }
}
