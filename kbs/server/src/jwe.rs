//! Resource answers: a JWE (flattened JSON, kbs-types `Response`) to the TEE public key
//! from the token, exactly as Trustee builds it: `enc` A256GCM with a random 32-byte CEK
//! and 12-byte IV; the CEK wrapped with ECDH-ES+A256KW (P-256, P-384, P-521),
//! RSA-OAEP-256 or legacy RSA1_5; AAD = ASCII(BASE64URL(serde_json of the protected
//! header)), i.e. `ProtectedHeader::generate_aad`, which is what the guest recomputes.

use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use kbs_client::protocol::ecdh::{Curve, EcdhError};
use kbs_types::{ProtectedHeader, Response, TeePubKey};
use openssl::bn::BigNum;
use openssl::ec::EcPoint;
use openssl::pkey::PKey;
use openssl::rsa::{Padding, Rsa};
use serde_json::{Map, Value};
use zeroize::Zeroizing;

#[derive(Debug, thiserror::Error)]
pub enum JweError {
    #[error("TEE key algorithm {0:?} is not supported (ECDH-ES+A256KW, RSA-OAEP-256, RSA1_5)")]
    UnsupportedAlg(String),
    #[error("TEE key curve {0:?} is not supported (P-256, P-384, P-521)")]
    UnsupportedCurve(String),
    #[error("TEE public key is malformed: {0}")]
    BadKey(&'static str),
    #[error("crypto backend failed")]
    Crypto(#[from] openssl::error::ErrorStack),
    #[error("cannot build the protected header: {0}")]
    Header(String),
}

const ECDH_ALG: &str = "ECDH-ES+A256KW";

fn b64(s: &str, what: &'static str) -> Result<Vec<u8>, JweError> {
    URL_SAFE_NO_PAD.decode(s.trim_end_matches('=')).map_err(|_| JweError::BadKey(what))
}

/// NIST SP 800-56A Concat KDF with SHA-256 for a 256-bit key, apu/apv empty: one round.
pub fn concat_kdf_a256kw(z: &[u8]) -> Zeroizing<[u8; 32]> {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(1u32.to_be_bytes());
    h.update(z);
    h.update((ECDH_ALG.len() as u32).to_be_bytes());
    h.update(ECDH_ALG.as_bytes());
    h.update(0u32.to_be_bytes());
    h.update(0u32.to_be_bytes());
    h.update(256u32.to_be_bytes());
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(&h.finalize());
    out
}

fn wrap_cek(key: &[u8; 32], cek: &[u8; 32]) -> Result<Vec<u8>, JweError> {
    let kek = openssl::aes::AesKey::new_encrypt(key).map_err(|_| JweError::BadKey("AES-KW key"))?;
    let mut out = vec![0u8; 40];
    openssl::aes::wrap_key(&kek, None, &mut out, cek).map_err(|_| JweError::BadKey("AES-KW wrap"))?;
    Ok(out)
}

/// The TEE's public point, fully validated (see `kbs_client::protocol::ecdh`).
fn ec_public(crv: &str, x: &str, y: &str) -> Result<(Curve, EcPoint), JweError> {
    let curve = Curve::from_jwk(crv).ok_or_else(|| JweError::UnsupportedCurve(crv.into()))?;
    let (x, y) = (b64(x, "EC x")?, b64(y, "EC y")?);
    let point = curve.peer_point(&x, &y).map_err(ecdh_error)?;
    Ok((curve, point))
}

fn ecdh_error(e: EcdhError) -> JweError {
    match e {
        EcdhError::InvalidPoint(why) => JweError::BadKey(why),
        EcdhError::Crypto(e) => JweError::Crypto(e),
    }
}

/// Encrypts `plaintext` to `tee_key`.
pub fn encrypt(tee_key: &TeePubKey, plaintext: &[u8]) -> Result<Response, JweError> {
    let mut cek = Zeroizing::new([0u8; 32]);
    openssl::rand::rand_bytes(&mut cek[..])?;
    let (alg, encrypted_key, other) = match tee_key {
        TeePubKey::EC { crv, alg, x, y } => {
            if alg != ECDH_ALG {
                return Err(JweError::UnsupportedAlg(alg.clone()));
            }
            let (curve, peer) = ec_public(crv, x, y)?;
            let eph = curve.generate().map_err(ecdh_error)?;
            let z = curve.shared_secret(&eph, &peer).map_err(ecdh_error)?;
            let kek = concat_kdf_a256kw(&z);
            let wrapped = wrap_cek(&kek, &cek)?;
            let (ex, ey) = curve.public_coordinates(&eph).map_err(ecdh_error)?;
            // Keys inserted in sorted order, so the serialisation is the same whether or
            // not serde_json keeps insertion order: the guest re-serialises this header.
            let mut epk = Map::new();
            epk.insert("crv".into(), Value::String(crv.clone()));
            epk.insert("kty".into(), Value::String("EC".into()));
            epk.insert("x".into(), Value::String(URL_SAFE_NO_PAD.encode(ex)));
            epk.insert("y".into(), Value::String(URL_SAFE_NO_PAD.encode(ey)));
            let mut other = Map::new();
            other.insert("epk".into(), Value::Object(epk));
            (ECDH_ALG.to_string(), wrapped, other)
        }
        TeePubKey::RSA { alg, k_mod, k_exp } => {
            let rsa = Rsa::from_public_components(
                BigNum::from_slice(&b64(k_mod, "RSA n")?)?,
                BigNum::from_slice(&b64(k_exp, "RSA e")?)?,
            )?;
            if rsa.size() < 256 {
                return Err(JweError::BadKey("RSA key shorter than 2048 bits"));
            }
            let wrapped = match alg.as_str() {
                "RSA-OAEP-256" => {
                    let pkey = PKey::from_rsa(rsa)?;
                    let mut ctx = openssl::pkey_ctx::PkeyCtx::new(&pkey)?;
                    ctx.encrypt_init()?;
                    ctx.set_rsa_padding(Padding::PKCS1_OAEP)?;
                    ctx.set_rsa_oaep_md(openssl::md::Md::sha256())?;
                    ctx.set_rsa_mgf1_md(openssl::md::Md::sha256())?;
                    let mut out = Vec::new();
                    ctx.encrypt_to_vec(&cek[..], &mut out)?;
                    out
                }
                "RSA1_5" => {
                    tracing::warn!("releasing a resource with deprecated RSA1_5 key wrapping");
                    let mut out = vec![0u8; rsa.size() as usize];
                    let n = rsa.public_encrypt(&cek[..], &mut out, Padding::PKCS1)?;
                    out.truncate(n);
                    out
                }
                other => return Err(JweError::UnsupportedAlg(other.into())),
            };
            (alg.clone(), wrapped, Map::new())
        }
        TeePubKey::AKP { alg, .. } => return Err(JweError::UnsupportedAlg(alg.clone())),
    };
    let protected = ProtectedHeader { alg, enc: "A256GCM".into(), other_fields: other };
    let aad = protected.generate_aad().map_err(|e| JweError::Header(e.to_string()))?;
    let mut iv = [0u8; 12];
    openssl::rand::rand_bytes(&mut iv)?;
    let mut tag = vec![0u8; 16];
    let ciphertext = openssl::symm::encrypt_aead(
        openssl::symm::Cipher::aes_256_gcm(),
        &cek[..],
        Some(&iv),
        &aad,
        plaintext,
        &mut tag,
    )?;
    Ok(Response { protected, encrypted_key, aad: None, iv: iv.to_vec(), ciphertext, tag })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use openssl::bn::BigNumContext;
    use openssl::derive::Deriver;
    use openssl::ec::{EcGroup, EcKey};
    use openssl::nid::Nid;
    use openssl::pkey::Private;

    fn ec_tee_key(k: &EcKey<Private>) -> TeePubKey {
        let g = k.group();
        let mut ctx = BigNumContext::new().unwrap();
        let (mut x, mut y) = (BigNum::new().unwrap(), BigNum::new().unwrap());
        k.public_key().affine_coordinates(g, &mut x, &mut y, &mut ctx).unwrap();
        TeePubKey::EC {
            crv: "P-256".into(),
            alg: ECDH_ALG.into(),
            x: URL_SAFE_NO_PAD.encode(x.to_vec_padded(32).unwrap()),
            y: URL_SAFE_NO_PAD.encode(y.to_vec_padded(32).unwrap()),
        }
    }

    #[test]
    fn ecdh_round_trip_with_trustee_aad() {
        let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).unwrap();
        let k = EcKey::generate(&group).unwrap();
        let resp = encrypt(&ec_tee_key(&k), b"secret kek").unwrap();
        // Decrypt as the guest does: epk from the header, ECDH, Concat KDF, AES-KW unwrap.
        let wire = serde_json::to_string(&resp).unwrap();
        let back: Response = serde_json::from_str(&wire).unwrap();
        let epk = back.protected.other_fields.get("epk").unwrap();
        // Independently of `kbs_client::protocol::ecdh`: OpenSSL's EVP derive.
        let peer = EcKey::from_public_key_affine_coordinates(
            &group,
            &BigNum::from_slice(&URL_SAFE_NO_PAD.decode(epk["x"].as_str().unwrap()).unwrap()).unwrap(),
            &BigNum::from_slice(&URL_SAFE_NO_PAD.decode(epk["y"].as_str().unwrap()).unwrap()).unwrap(),
        )
        .unwrap();
        assert_eq!(epk["crv"], "P-256");
        let mine = PKey::from_ec_key(k).unwrap();
        let peer_pk = PKey::from_ec_key(peer).unwrap();
        let mut d = Deriver::new(&mine).unwrap();
        d.set_peer(&peer_pk).unwrap();
        let kek = concat_kdf_a256kw(&d.derive_to_vec().unwrap());
        let aes = openssl::aes::AesKey::new_decrypt(&kek[..]).unwrap();
        let mut cek = [0u8; 32];
        openssl::aes::unwrap_key(&aes, None, &mut cek, &back.encrypted_key).unwrap();
        let pt = openssl::symm::decrypt_aead(
            openssl::symm::Cipher::aes_256_gcm(),
            &cek,
            Some(&back.iv),
            &back.protected.generate_aad().unwrap(),
            &back.ciphertext,
            &back.tag,
        )
        .unwrap();
        assert_eq!(pt, b"secret kek");
        assert!(wire.contains("\"protected\""));
    }

    #[test]
    fn rsa_oaep_round_trip() {
        let rsa = Rsa::generate(2048).unwrap();
        let key = TeePubKey::RSA {
            alg: "RSA-OAEP-256".into(),
            k_mod: URL_SAFE_NO_PAD.encode(rsa.n().to_vec()),
            k_exp: URL_SAFE_NO_PAD.encode(rsa.e().to_vec()),
        };
        let resp = encrypt(&key, b"abc").unwrap();
        let pkey = PKey::from_rsa(rsa).unwrap();
        let mut ctx = openssl::pkey_ctx::PkeyCtx::new(&pkey).unwrap();
        ctx.decrypt_init().unwrap();
        ctx.set_rsa_padding(Padding::PKCS1_OAEP).unwrap();
        ctx.set_rsa_oaep_md(openssl::md::Md::sha256()).unwrap();
        ctx.set_rsa_mgf1_md(openssl::md::Md::sha256()).unwrap();
        let mut cek = Vec::new();
        ctx.decrypt_to_vec(&resp.encrypted_key, &mut cek).unwrap();
        assert_eq!(cek.len(), 32);
        assert_eq!(resp.protected.alg, "RSA-OAEP-256");
    }

    #[test]
    fn bad_keys_are_errors_not_panics() {
        let key =
            TeePubKey::EC { crv: "P-256".into(), alg: ECDH_ALG.into(), x: "AAAA".into(), y: "!!".into() };
        assert!(encrypt(&key, b"x").is_err());
        let key = TeePubKey::EC { crv: "P-999".into(), alg: ECDH_ALG.into(), x: "".into(), y: "".into() };
        assert!(matches!(encrypt(&key, b"x"), Err(JweError::UnsupportedCurve(_))));
    }
}
