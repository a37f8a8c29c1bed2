//! `cloak sign` and `cloak verify`, and the signing step of `cloak encrypt
//! --sign-by-sigstore-private-key`: thin glue over the `imgsig` library.
//! The signature always names the manifest digest that is in the destination
//! (for `encrypt`, the encrypted image's), which is what the guest pulls.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use imgsig::policy::ImageIdentity;
use imgsig::registries_d::RegistriesD;
use imgsig::{Decision, ImageSignatures, Policy, Signed, SigningKey, StandardKeys};
use oci::{Digest, ImageRef, ImageSource, SourceOptions};
use zeroize::Zeroizing;

/// Why signing or verifying could not be done (a policy refusal is [`SignCmdError::Refused`]).
#[derive(Debug, thiserror::Error)]
pub enum SignCmdError {
    #[error("image reference {image:?}")]
    Reference {
        image: String,
        #[source]
        source: oci::RefError,
    },
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is encrypted: set COSIGN_PASSWORD (no terminal to prompt on)")]
    NoPassword { path: PathBuf },
    #[error(transparent)]
    Key(#[from] imgsig::keys::KeyError),
    #[error("resolving {image}")]
    Resolve {
        image: String,
        #[source]
        source: Box<oci::OciError>,
    },
    #[error(transparent)]
    Sign(#[from] imgsig::SignError),
    #[error(transparent)]
    Policy(#[from] imgsig::PolicyError),
    #[error(transparent)]
    RegistriesD(#[from] imgsig::registries_d::RegistriesDError),
    #[error(transparent)]
    Refused(#[from] Box<imgsig::Refusal>),
}

/// Reads a signing key; the password (for cosign's encrypted format or an
/// encrypted PKCS#8) comes from `COSIGN_PASSWORD`, else a terminal prompt.
pub fn load_signing_key(path: &Path) -> Result<SigningKey, SignCmdError> {
    let pem = Zeroizing::new(
        std::fs::read(path).map_err(|source| SignCmdError::Read { path: path.to_path_buf(), source })?,
    );
    let encrypted = pem.windows(10).any(|w| w == b"ENCRYPTED ");
    let password: Option<Zeroizing<String>> = if !encrypted {
        None
    } else if let Ok(p) = std::env::var("COSIGN_PASSWORD") {
        Some(Zeroizing::new(p))
    } else if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
        let p = rpassword::prompt_password(format!("Enter password for private key {}: ", path.display()))
            .map_err(|source| SignCmdError::Read { path: path.to_path_buf(), source })?;
        Some(Zeroizing::new(p))
    } else {
        return Err(SignCmdError::NoPassword { path: path.to_path_buf() });
    };
    Ok(SigningKey::from_pem(&pem, password.as_ref().map(|p| p.as_bytes()), &path.display().to_string())?)
}

fn parse_ref(image: &str) -> Result<ImageRef, SignCmdError> {
    ImageRef::from_str(image).map_err(|source| SignCmdError::Reference { image: image.to_string(), source })
}

/// The digest `image` names: its pinned digest, else the one its tag resolves to now.
pub async fn resolve_digest(image: &ImageRef, options: &SourceOptions) -> Result<Digest, SignCmdError> {
    if let Some(d) = image.digest() {
        return Ok(d.clone());
    }
    let err = |source| SignCmdError::Resolve { image: image.to_string(), source: Box::new(source) };
    let src = ImageSource::open(image, options).await.map_err(err)?;
    Ok(src.manifest().await.map_err(err)?.digest)
}

/// `cloak sign`: signs what `image` names (the digest, or what its tag points at now).
pub async fn sign(
    image: &str,
    key: &SigningKey,
    identity: Option<&str>,
    options: &SourceOptions,
) -> Result<Signed, SignCmdError> {
    let r = parse_ref(image)?;
    let digest = resolve_digest(&r, options).await?;
    Ok(imgsig::sign_image(&r, &digest, identity, key, options).await?)
}

/// Signs manifest `digest` at `image` (the destination of `cloak encrypt`).
pub async fn sign_digest(
    image: &ImageRef,
    digest: &str,
    key: &SigningKey,
    options: &SourceOptions,
) -> Result<Signed, SignCmdError> {
    let digest = Digest::from_str(digest).map_err(|e| SignCmdError::Reference {
        image: image.to_string(),
        source: oci::RefError::BadDigest { reference: image.to_string(), source: e },
    })?;
    Ok(imgsig::sign_image(image, &digest, None, key, options).await?)
}

/// `cloak verify`: evaluates the policy for `image` as `cloak-pull` would.
pub async fn verify(
    image: &str,
    policy_path: &Path,
    registries_d: Option<&Path>,
    options: &SourceOptions,
) -> Result<(Digest, Decision), SignCmdError> {
    let r = parse_ref(image)?;
    let bytes = std::fs::read(policy_path)
        .map_err(|source| SignCmdError::Read { path: policy_path.to_path_buf(), source })?;
    let policy = Policy::parse(&bytes, policy_path.parent().unwrap_or(Path::new(".")))?;
    let lookaside = match (registries_d, &r) {
        (Some(dir), ImageRef::Registry(reg)) => {
            RegistriesD::load(dir)?.lookaside_for(&reg.registry, &reg.repository)
        }
        _ => None,
    };
    let digest = resolve_digest(&r, options).await?;
    let sigs = ImageSignatures { image: r.clone(), options: options.clone(), lookaside };
    let decision = imgsig::evaluate(
        &policy,
        &ImageIdentity::from_image_ref(&r),
        &digest,
        &sigs,
        &StandardKeys::default(),
    )
    .await
    .map_err(Box::new)?;
    Ok((digest, decision))
}
