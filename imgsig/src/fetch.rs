//! Signatures from where the image lives: cosign's `sha256-<hex>.sig` tag in
//! the same registry repository or OCI layout (through the `oci` crate, digests
//! verified, sizes capped), and GPG signatures from a `file://` lookaside store
//! (`<base>/<repo>@sha256=<hex>/signature-<n>`, as registries.d configures it).

use futures::future::BoxFuture;
use oci::{Digest, ImageRef, ImageSource, LayoutRef, OciError, RegistryError, RegistryRef, SourceOptions};

use crate::cosign::{parse_signature_manifest, signature_tag, MAX_SIGNATURE_MANIFEST_SIZE};
use crate::gpg::MAX_GPG_SIGNATURE_SIZE;
use crate::payload::MAX_PAYLOAD_SIZE;
use crate::verify::{FetchError, FetchedSignature, Found, SignatureSource};

/// Most GPG signatures read from a lookaside directory.
const MAX_GPG_SIGNATURES: usize = 16;

/// The reference of `image`'s cosign signature manifest.
pub fn signature_ref(image: &ImageRef, digest: &Digest) -> ImageRef {
    let tag = Some(signature_tag(digest));
    match image {
        ImageRef::Registry(r) => ImageRef::Registry(RegistryRef {
            registry: r.registry.clone(),
            repository: r.repository.clone(),
            tag,
            digest: None,
        }),
        ImageRef::Layout(l) => ImageRef::Layout(LayoutRef { dir: l.dir.clone(), tag, digest: None }),
    }
}

fn is_not_found(e: &OciError) -> bool {
    matches!(
        e,
        OciError::Registry(RegistryError::NotFound { .. })
            | OciError::Layout(oci::LayoutError::TagNotFound { .. })
    )
}

/// Signatures for an image in a registry or layout.
pub struct ImageSignatures {
    pub image: ImageRef,
    pub options: SourceOptions,
    /// Lookaside base URL for GPG signatures (`file:///…`), if configured.
    pub lookaside: Option<String>,
}

impl ImageSignatures {
    /// Reads the existing signature manifest, if any (`None` when there is none).
    pub async fn signature_manifest(&self, digest: &Digest) -> Result<Option<oci::RawManifest>, FetchError> {
        let r = signature_ref(&self.image, digest);
        let location = r.to_string();
        let src = match ImageSource::open(&r, &self.options).await {
            Ok(s) => s,
            Err(e) => return Err(FetchError::Source { location, source: Box::new(e) }),
        };
        match src.manifest().await {
            Ok(m) => Ok(Some(m)),
            Err(e) if is_not_found(&e) => Ok(None),
            Err(e) => Err(FetchError::Source { location, source: Box::new(e) }),
        }
    }

    async fn fetch_cosign(&self, digest: &Digest) -> Result<Found<FetchedSignature>, FetchError> {
        let r = signature_ref(&self.image, digest);
        let location = r.to_string();
        let Some(m) = self.signature_manifest(digest).await? else {
            return Ok(Found { location, signatures: Vec::new() });
        };
        if m.bytes.len() as u64 > MAX_SIGNATURE_MANIFEST_SIZE {
            return Err(FetchError::Manifest {
                location,
                source: crate::cosign::SignatureManifestError::TooLarge { size: m.bytes.len() },
            });
        }
        let layers = parse_signature_manifest(&m.bytes)
            .map_err(|source| FetchError::Manifest { location: location.clone(), source })?;
        let src = ImageSource::open(&r, &self.options)
            .await
            .map_err(|source| FetchError::Source { location: location.clone(), source: Box::new(source) })?;
        let mut signatures = Vec::new();
        for l in layers {
            let payload = src
                .blob_bytes(&l.payload_digest, (MAX_PAYLOAD_SIZE as u64).min(l.payload_size))
                .await
                .map_err(|source| FetchError::Source {
                    location: location.clone(),
                    source: Box::new(source),
                })?;
            signatures.push(FetchedSignature { index: l.index, payload, signature: l.signature });
        }
        Ok(Found { location, signatures })
    }

    fn fetch_gpg(&self, digest: &Digest) -> Result<Found<Vec<u8>>, FetchError> {
        let ImageRef::Registry(r) = &self.image else {
            return Ok(Found {
                location: "(GPG signatures need a docker:// image and a lookaside)".into(),
                signatures: vec![],
            });
        };
        let Some(base) = &self.lookaside else {
            return Ok(Found {
                location: "(no lookaside configured for this registry in registries.d)".into(),
                signatures: vec![],
            });
        };
        let location = format!(
            "{}/{}@{}={}",
            base.trim_end_matches('/'),
            r.repository,
            digest.algorithm().as_str(),
            digest.hex()
        );
        let Some(dir) = base.strip_prefix("file://") else {
            return Err(FetchError::Other {
                location,
                reason: "only file:// lookaside stores are supported".into(),
            });
        };
        if r.repository.split('/').any(|c| c == ".." || c == ".") {
            return Err(FetchError::Other {
                location,
                reason: "repository path has . or .. components".into(),
            });
        }
        let dir = std::path::Path::new(dir).join(format!(
            "{}@{}={}",
            r.repository,
            digest.algorithm().as_str(),
            digest.hex()
        ));
        let mut signatures = Vec::new();
        for n in 1..=MAX_GPG_SIGNATURES {
            let p = dir.join(format!("signature-{n}"));
            match std::fs::metadata(&p) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                Err(e) => {
                    return Err(FetchError::Other { location, reason: format!("{}: {e}", p.display()) })
                }
                Ok(m) if m.len() > MAX_GPG_SIGNATURE_SIZE as u64 => {
                    return Err(FetchError::Other {
                        location,
                        reason: format!("{} is too large", p.display()),
                    })
                }
                Ok(_) => {
                    signatures.push(std::fs::read(&p).map_err(|e| FetchError::Other {
                        location: location.clone(),
                        reason: e.to_string(),
                    })?)
                }
            }
        }
        Ok(Found { location, signatures })
    }
}

impl SignatureSource for ImageSignatures {
    fn cosign<'a>(
        &'a self,
        digest: &'a Digest,
    ) -> BoxFuture<'a, Result<Found<FetchedSignature>, FetchError>> {
        Box::pin(self.fetch_cosign(digest))
    }
    fn gpg<'a>(&'a self, digest: &'a Digest) -> BoxFuture<'a, Result<Found<Vec<u8>>, FetchError>> {
        Box::pin(async move { self.fetch_gpg(digest) })
    }
}
