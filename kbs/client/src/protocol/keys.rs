//! The ephemeral TEE key pair: generated per attestation, its public half goes
//! into the runtime data (and so into the evidence), and the KBS encrypts every
//! resource to it. The private half leaves memory only through
//! [`TeeKeyPair::private_pem`] (cloak-cdh's attestation-agent `GetToken`, on its
//! root-only socket); OpenSSL clears private key material when the key is freed.

use std::fmt;

use base64::prelude::{Engine, BASE64_URL_SAFE_NO_PAD};
use kbs_types::TeePubKey;
use openssl::ec::{EcKey, EcKeyRef};
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;

use super::ecdh::Curve;
use super::ProtocolError;

/// Which kind of TEE key to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TeeKeyKind {
    /// EC P-256 for `ECDH-ES+A256KW` (Trustee's guest default).
    #[default]
    EcP256,
    /// RSA-2048 for `RSA-OAEP-256`.
    Rsa,
}

/// Size of the generated RSA modulus, as Trustee's guest uses.
const RSA_BITS: u32 = 2048;

/// An ephemeral TEE key pair. `Debug` never shows the key.
pub struct TeeKeyPair {
    kind: TeeKeyKind,
    secret: Secret,
}

/// The private half, in the form its operations use: ECDH works on the `EcKey`
/// directly (see `ecdh`), RSA decryption goes through EVP.
enum Secret {
    Ec(EcKey<Private>),
    Rsa(PKey<Private>),
}

impl fmt::Debug for TeeKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TeeKeyPair({:?}, <redacted>)", self.kind)
    }
}

fn crypto(e: impl fmt::Display) -> ProtocolError {
    ProtocolError::Crypto(e.to_string())
}

impl TeeKeyPair {
    /// Generates a fresh key pair. An EC key takes tens of microseconds; an RSA key
    /// tens to hundreds of milliseconds (keep it off an async executor thread).
    pub fn generate(kind: TeeKeyKind) -> Result<Self, ProtocolError> {
        let secret = match kind {
            TeeKeyKind::EcP256 => Secret::Ec(Curve::P256.generate().map_err(crypto)?),
            TeeKeyKind::Rsa => {
                Secret::Rsa(PKey::from_rsa(Rsa::generate(RSA_BITS).map_err(crypto)?).map_err(crypto)?)
            }
        };
        Ok(TeeKeyPair { kind, secret })
    }

    pub fn kind(&self) -> TeeKeyKind {
        self.kind
    }

    /// The EC private key (P-256), for ECDH; None for an RSA key.
    pub(crate) fn ec_key(&self) -> Option<&EcKeyRef<Private>> {
        match &self.secret {
            Secret::Ec(k) => Some(k),
            Secret::Rsa(_) => None,
        }
    }

    /// The RSA private key, for RSA-OAEP / RSA1_5; None for an EC key.
    pub(crate) fn rsa_pkey(&self) -> Option<&PKey<Private>> {
        match &self.secret {
            Secret::Rsa(k) => Some(k),
            Secret::Ec(_) => None,
        }
    }

    /// The public key as the JWK the runtime data carries (base64url, no padding).
    pub fn public_jwk(&self) -> Result<TeePubKey, ProtocolError> {
        match &self.secret {
            Secret::Ec(ec) => {
                // JWK coordinates are fixed-width (RFC 7518 §6.2.1.2): 32 bytes on P-256.
                let (x, y) = Curve::P256.public_coordinates(ec).map_err(crypto)?;
                Ok(TeePubKey::EC {
                    crv: Curve::P256.jwk_name().to_owned(),
                    alg: "ECDH-ES+A256KW".to_owned(),
                    x: BASE64_URL_SAFE_NO_PAD.encode(x),
                    y: BASE64_URL_SAFE_NO_PAD.encode(y),
                })
            }
            Secret::Rsa(pkey) => {
                let rsa = pkey.rsa().map_err(crypto)?;
                Ok(TeePubKey::RSA {
                    alg: "RSA-OAEP-256".to_owned(),
                    k_mod: BASE64_URL_SAFE_NO_PAD.encode(rsa.n().to_vec()),
                    k_exp: BASE64_URL_SAFE_NO_PAD.encode(rsa.e().to_vec()),
                })
            }
        }
    }

    /// The private key as PEM, the form attestation-agent's `GetToken("kbs")` hands
    /// to CDH as `tee_keypair`: PKCS#8 for EC, PKCS#1 for RSA. Only for a caller
    /// that decrypts KBS answers itself; never log it.
    pub fn private_pem(&self) -> Result<zeroize::Zeroizing<String>, ProtocolError> {
        let pem = match &self.secret {
            Secret::Ec(ec) => {
                PKey::from_ec_key(ec.clone()).and_then(|k| k.private_key_to_pem_pkcs8()).map_err(crypto)?
            }
            Secret::Rsa(pkey) => pkey.rsa().and_then(|r| r.private_key_to_pem()).map_err(crypto)?,
        };
        let pem = zeroize::Zeroizing::new(pem);
        String::from_utf8(pem.to_vec()).map(zeroize::Zeroizing::new).map_err(crypto)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// Callers keep keys in statics and share them across tasks (the fuzz targets do).
    #[test]
    fn key_pair_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<TeeKeyPair>();
    }

    #[test]
    fn private_pem_is_pkcs8_for_ec_and_pkcs1_for_rsa_as_attestation_agent_hands_them_out() {
        let ec = TeeKeyPair::generate(TeeKeyKind::EcP256).unwrap().private_pem().unwrap();
        assert!(ec.starts_with("-----BEGIN PRIVATE KEY-----"));
        assert!(PKey::private_key_from_pem(ec.as_bytes()).unwrap().ec_key().is_ok());
        let rsa = TeeKeyPair::generate(TeeKeyKind::Rsa).unwrap().private_pem().unwrap();
        assert!(rsa.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    }

    #[test]
    fn jwks_have_the_expected_shape() {
        let ec = TeeKeyPair::generate(TeeKeyKind::EcP256).unwrap();
        match ec.public_jwk().unwrap() {
            TeePubKey::EC { crv, alg, x, y } => {
                assert_eq!(crv, "P-256");
                assert_eq!(alg, "ECDH-ES+A256KW");
                assert_eq!(BASE64_URL_SAFE_NO_PAD.decode(x).unwrap().len(), 32);
                assert_eq!(BASE64_URL_SAFE_NO_PAD.decode(y).unwrap().len(), 32);
            }
            other => panic!("not EC: {other:?}"),
        }
        let rsa = TeeKeyPair::generate(TeeKeyKind::Rsa).unwrap();
        match rsa.public_jwk().unwrap() {
            TeePubKey::RSA { alg, k_mod, k_exp } => {
                assert_eq!(alg, "RSA-OAEP-256");
                assert_eq!(BASE64_URL_SAFE_NO_PAD.decode(k_mod).unwrap().len(), 256);
                assert_eq!(k_exp, "AQAB");
            }
            other => panic!("not RSA: {other:?}"),
        }
        assert!(!format!("{rsa:?}").contains("BEGIN"));
    }
}
