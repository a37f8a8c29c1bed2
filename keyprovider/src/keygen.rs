//! `cloak keygen`: make a JWE key pair whose private half lives only in the KBS.
//! The public JWK's `kid` is the KBS resource URI, so images encrypted to it tell
//! a guest where to fetch the private key after attestation.

use josekit::jwk::alg::ec::{EcCurve, EcKeyPair};
use josekit::jwk::alg::rsa::RsaKeyPair;
use josekit::jwk::Jwk;
use kbs_client::{AdminClient, Created, KbsError, ResourceUri};
use zeroize::Zeroizing;

/// Why a key could not be made or registered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeygenError {
    /// Key generation failed.
    #[error("key generation failed: {0}")]
    Generate(String),
    /// The KBS refused or could not be reached; nothing was written.
    #[error("registering the private key at {uri} failed")]
    Register {
        /// Where.
        uri: String,
        /// Why.
        #[source]
        source: KbsError,
    },
    /// The id already holds a key: replacing it would lock out every image wrapped for it.
    #[error(
        "{0} already exists in the KBS and was left unchanged: choose a new key id (a key is never replaced)"
    )]
    Exists(String),
}

/// A generated key pair, as JWK JSON.
pub struct GeneratedKey {
    /// Public JWK with `"kid"` = the `kbs:///` URI.
    pub public_jwk: String,
    /// Private JWK (same `kid`); zeroized on drop.
    pub private_jwk: Zeroizing<String>,
}

impl std::fmt::Debug for GeneratedKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GeneratedKey").field("public_jwk", &self.public_jwk).finish_non_exhaustive()
    }
}

fn gen_err(e: impl std::fmt::Display) -> KeygenError {
    KeygenError::Generate(e.to_string())
}

/// Generates the pair (EC P-256, or RSA-3072 when `rsa`) without registering it.
pub fn generate(uri: &ResourceUri, rsa: bool) -> Result<GeneratedKey, KeygenError> {
    let kid = uri.to_string();
    let (mut private, mut public): (Jwk, Jwk) = if rsa {
        let kp = RsaKeyPair::generate(3072).map_err(gen_err)?;
        (kp.to_jwk_key_pair(), kp.to_jwk_public_key())
    } else {
        let kp = EcKeyPair::generate(EcCurve::P256).map_err(gen_err)?;
        (kp.to_jwk_key_pair(), kp.to_jwk_public_key())
    };
    private.set_key_id(&kid);
    public.set_key_id(&kid);
    Ok(GeneratedKey { public_jwk: public.to_string(), private_jwk: Zeroizing::new(private.to_string()) })
}

/// Generates a pair and registers the private JWK at `uri` in the KBS, create-only:
/// an id that already holds a key is refused, never overwritten.
pub async fn keygen(admin: &AdminClient, uri: &ResourceUri, rsa: bool) -> Result<GeneratedKey, KeygenError> {
    let key = generate(uri, rsa)?;
    let created = admin
        .create_resource(uri, key.private_jwk.as_bytes())
        .await
        .map_err(|source| KeygenError::Register { uri: uri.to_string(), source })?;
    match created {
        Created::New => Ok(key),
        Created::Exists => Err(KeygenError::Exists(uri.to_string())),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn generated_keys_carry_the_kbs_uri_and_load_in_ocicrypt() {
        let uri = ResourceUri::new("default", "image-key", "app").unwrap();
        for rsa in [false, true] {
            let k = generate(&uri, rsa).unwrap();
            let public: serde_json::Value = serde_json::from_str(&k.public_jwk).unwrap();
            assert_eq!(public["kid"], "kbs:///default/image-key/app");
            assert!(public.get("d").is_none(), "public JWK must not hold the private part");
            let private: serde_json::Value = serde_json::from_str(&k.private_jwk).unwrap();
            assert!(private.get("d").is_some());
            let pk = ocicrypt::jwe::load_public_key(k.public_jwk.as_bytes()).unwrap();
            assert_eq!(pk.kid(), Some("kbs:///default/image-key/app"));
            let sk = ocicrypt::jwe::load_private_key(k.private_jwk.as_bytes()).unwrap();
            let wrapped = ocicrypt::jwe::JweWrapper::new(vec![pk]).wrap_jwe(b"opts").unwrap();
            let opened = ocicrypt::jwe::JweUnwrapper::new(vec![sk]).unwrap_jwe(&wrapped).unwrap();
            assert_eq!(opened.as_slice(), b"opts");
        }
    }
}
