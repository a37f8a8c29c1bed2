//! Signature policy for pulls (`--signature-policy`): a containers-policy.json
//! evaluated by `imgsig` on the manifest digest the reference resolved to,
//! before any layer is fetched or taken from the store, on every pull. A
//! refusal fails the pull, so no rootfs is published. Keys and the policy
//! itself may be `kbs:///` resources, fetched through the pull's one KBS
//! session (after attestation), in memory only.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::future::BoxFuture;
use imgsig::policy::ImageIdentity;
use imgsig::registries_d::RegistriesD;
use imgsig::{Decision, ImageSignatures, Policy, Refusal, ResourceFetcher, StandardKeys};
use oci::{Digest, ImageRef, SourceOptions};

/// A signature policy could not be loaded or refused the image.
#[derive(Debug, thiserror::Error)]
pub enum SignatureError {
    #[error("reading signature policy {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// `source`: the KBS client's error (absent, denied or unreachable).
    #[error("signature policy {uri}: fetching it from the KBS failed")]
    Kbs {
        uri: String,
        #[source]
        source: imgsig::ResourceError,
    },
    #[error("signature policy {uri} is a kbs:/// resource, which needs --kbs")]
    NoKbs { uri: String },
    #[error("signature policy {origin}")]
    Policy {
        origin: String,
        #[source]
        source: imgsig::PolicyError,
    },
    #[error(transparent)]
    RegistriesD(#[from] imgsig::registries_d::RegistriesDError),
    #[error(transparent)]
    Refused(#[from] Box<Refusal>),
}

/// KBS resources through the pull's KBS client.
pub struct KbsResources(pub kbs_client::KbsClient);

impl ResourceFetcher for KbsResources {
    fn fetch<'a>(&'a self, uri: &'a str) -> BoxFuture<'a, Result<Vec<u8>, imgsig::ResourceError>> {
        Box::pin(async move {
            let u: kbs_client::ResourceUri = uri.parse()?;
            let data = self.0.get_resource(&u).await?;
            Ok(data.to_vec())
        })
    }
}

/// The signature check a pull runs.
pub struct SignatureCheck {
    pub policy: Policy,
    pub registries_d: Option<RegistriesD>,
    pub kbs: Option<Arc<dyn ResourceFetcher>>,
}

impl SignatureCheck {
    /// Loads the policy from a file or a `kbs:///` URI, and registries.d if given.
    pub async fn load(
        policy: &str,
        registries_d: Option<&Path>,
        kbs: Option<Arc<dyn ResourceFetcher>>,
    ) -> Result<SignatureCheck, SignatureError> {
        let (bytes, base) = if policy.starts_with("kbs:///") {
            let Some(f) = &kbs else { return Err(SignatureError::NoKbs { uri: policy.to_string() }) };
            let b = f
                .fetch(policy)
                .await
                .map_err(|source| SignatureError::Kbs { uri: policy.to_string(), source })?;
            // Relative key paths in a KBS policy have no meaningful base: use /.
            (b, PathBuf::from("/"))
        } else {
            let p = Path::new(policy);
            let b = std::fs::read(p)
                .map_err(|source| SignatureError::Read { path: policy.to_string(), source })?;
            (b, p.parent().unwrap_or(Path::new(".")).to_path_buf())
        };
        let policy_parsed = Policy::parse(&bytes, &base)
            .map_err(|source| SignatureError::Policy { origin: policy.to_string(), source })?;
        let registries_d = registries_d.map(RegistriesD::load).transpose()?;
        Ok(SignatureCheck { policy: policy_parsed, registries_d, kbs })
    }

    /// Evaluates the policy for `image` at manifest `digest`.
    pub async fn check(
        &self,
        image: &ImageRef,
        digest: &Digest,
        source: &SourceOptions,
    ) -> Result<Decision, SignatureError> {
        let lookaside = match (&self.registries_d, image) {
            (Some(r), ImageRef::Registry(reg)) => r.lookaside_for(&reg.registry, &reg.repository),
            _ => None,
        };
        let sigs = ImageSignatures { image: image.clone(), options: source.clone(), lookaside };
        let keys = StandardKeys { kbs: self.kbs.clone() };
        let decision =
            imgsig::evaluate(&self.policy, &ImageIdentity::from_image_ref(image), digest, &sigs, &keys)
                .await
                .map_err(Box::new)?;
        tracing::info!(scope = %decision.scope, accepted = %decision.accepted.join("; "), "signature policy accepted the image");
        Ok(decision)
    }
}
