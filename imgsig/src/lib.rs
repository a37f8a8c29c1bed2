//! Image signatures for cloak: cosign's key-based format and GPG simple
//! signing, checked against a containers-policy.json before any layer of an
//! image is fetched or reused.
//!
//! ```text
//! let policy = Policy::parse(bytes, base_dir)?;                    // validated; refuses what it cannot enforce
//! let image = ImageIdentity::from_image_ref(&image_ref);
//! let sigs = ImageSignatures { image: image_ref, options, lookaside };   // registry / layout / file:// lookaside
//! let decision = evaluate(&policy, &image, &manifest_digest, &sigs, &StandardKeys { kbs })?;  // or a Refusal
//! sign_image(&image_ref, &digest, identity, &SigningKey::from_pem(pem, password, "cosign.key")?, &opts)
//! ```
//!
//! The pieces without I/O ([`payload`], [`cosign`] manifests, [`policy`],
//! [`identity`], [`keys`]) are what the fuzz targets and benchmarks drive;
//! [`fetch`] and [`gpg`] are the adapters to registries, layouts and GnuPG.

pub mod cosign;
pub mod fetch;
pub mod gpg;
pub mod identity;
pub mod keys;
pub mod payload;
pub mod policy;
pub mod registries_d;
pub mod sign;
pub mod verify;

pub use fetch::ImageSignatures;
pub use identity::{DockerRef, SignedIdentity};
pub use keys::{PublicKey, SigningKey};
pub use payload::Payload;
pub use policy::{ImageIdentity, Policy, PolicyError};
pub use sign::{sign_image, SignError, Signed};
pub use verify::{
    evaluate, Decision, Refusal, ResourceError, ResourceFetcher, SignatureSource, StandardKeys,
};
