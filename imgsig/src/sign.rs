//! Signing at build time: a cosign-format signature (simple-signing payload,
//! signature annotation, `sha256-<hex>.sig` tag) written next to the image in
//! its registry repository or OCI layout. Signing again appends a layer.

use oci::{Digest, ImageDest, ImageRef, ManifestRole, SourceOptions};

use crate::cosign::{append_signature, SignatureManifestError};
use crate::fetch::{signature_ref, ImageSignatures};
use crate::keys::{KeyError, SigningKey};
use crate::payload::Payload;
use crate::verify::FetchError;

/// Why signing failed.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("{image}: an OCI layout has no docker identity; give one with --identity HOST/REPO")]
    NeedIdentity { image: String },
    #[error("--identity {value:?}")]
    Identity {
        value: String,
        #[source]
        source: crate::identity::IdentityError,
    },
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("reading the existing signatures")]
    Existing(#[source] FetchError),
    #[error("the existing signature manifest is unusable")]
    Manifest(#[source] SignatureManifestError),
    #[error("writing the signature to {location}")]
    Write {
        location: String,
        #[source]
        source: Box<oci::OciError>,
    },
}

/// What was written.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Signed {
    /// The signed manifest digest.
    pub digest: String,
    /// The identity in the payload.
    pub identity: String,
    /// Where the signature manifest went.
    pub signature_ref: String,
    pub signature_manifest_digest: String,
    /// False when this exact signature was already there.
    pub appended: bool,
}

/// The identity cosign writes for an image: its repository without tag.
pub fn default_identity(image: &ImageRef) -> Option<String> {
    match image {
        ImageRef::Registry(r) => Some(format!("{}/{}", r.registry, r.repository)),
        ImageRef::Layout(_) => None,
    }
}

/// Signs manifest `digest` of `image` with `key`, claiming `identity`
/// (default: the repository, as cosign does).
pub async fn sign_image(
    image: &ImageRef,
    digest: &Digest,
    identity: Option<&str>,
    key: &SigningKey,
    options: &SourceOptions,
) -> Result<Signed, SignError> {
    let identity = match identity.map(str::to_string).or_else(|| default_identity(image)) {
        Some(i) => i,
        None => return Err(SignError::NeedIdentity { image: image.to_string() }),
    };
    crate::identity::DockerRef::parse(&identity)
        .map_err(|source| SignError::Identity { value: identity.clone(), source })?;
    let payload = Payload::cosign_bytes(&identity, digest);
    let signature = key.sign(&payload)?;
    let existing = ImageSignatures { image: image.clone(), options: options.clone(), lookaside: None }
        .signature_manifest(digest)
        .await
        .map_err(SignError::Existing)?;
    let built = append_signature(existing.as_ref().map(|m| m.bytes.as_slice()), &payload, &signature)
        .map_err(SignError::Manifest)?;
    let sref = signature_ref(image, digest);
    let location = sref.to_string();
    let werr = |source| SignError::Write { location: location.clone(), source: Box::new(source) };
    let dest = ImageDest::open(&sref, options).await.map_err(werr)?;
    dest.put_blob_bytes(&payload).await.map_err(werr)?;
    dest.put_blob_bytes(&built.config).await.map_err(werr)?;
    let d = dest
        .put_manifest(&built.manifest, oci::media_type::OCI_MANIFEST, ManifestRole::TopLevel)
        .await
        .map_err(werr)?;
    Ok(Signed {
        digest: digest.to_string(),
        identity,
        signature_ref: location,
        signature_manifest_digest: d.to_string(),
        appended: built.appended,
    })
}
