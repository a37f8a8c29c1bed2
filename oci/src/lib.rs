//! Image references, OCI image layouts and a streaming registry client for cloak.
//!
//! The encryptor and the guest puller use the transport-neutral seam and do not care
//! whether an image is a layout directory or lives in a registry:
//!
//! ```text
//! let r: ImageRef = "oci:img:v1".parse()?;            // or docker://HOST[:PORT]/REPO[:TAG|@DIGEST]
//! let opts = SourceOptions { creds, auth_file, insecure_plain_http, timeouts };
//! let src = ImageSource::open(&r, &opts).await?;
//! src.manifest().await?                -> RawManifest { bytes, media_type, digest }  // pinned refs verified
//! src.manifest_by_digest(&d).await?    -> RawManifest                              // verified against d
//! src.blob(&d, size).await?            -> BlobReader: AsyncRead, capped at size, InvalidData on digest mismatch
//! src.blob_bytes(&d, max).await?       -> Vec<u8> (small blobs, verified)
//!
//! let dst = ImageDest::open(&r, &opts).await?;        // creates a layout if needed
//! let mut w = dst.begin_blob().await?;                // registry: POST + one streaming PATCH
//! w.write_all(&chunk).await?; ...                      // uploads while you produce
//! let (digest, size) = w.finish(None | Some(&d)).await?;  // commit (PUT ?digest=) / rename into place
//!                                                       // dropping `w` leaves nothing behind
//! dst.has_blob(&d).await?; dst.put_blob_bytes(&bytes).await? -> Digest;
//! dst.copy_blob_from(&src, &d, size).await?;          // streaming, verified, skips present blobs, mounts
//! dst.put_manifest(&bytes, media_type, ManifestRole::TopLevel | Child).await? -> Digest
//! dst.copy_image_from(&src).await?                   // whole image (index + children) unchanged
//! ```
//!
//! Helpers: [`manifest::parse_manifest`] (OCI and Docker schema 2, `+encrypted` media
//! types, unknown fields kept), [`manifest::select_platform`] with
//! [`manifest::PlatformSpec::current`] as the default, [`media_type`] constants,
//! [`Digest`] (`sha256_of`, `FromStr`, serde). Lower layers are public too:
//! [`OciLayout`] and [`RegistryClient`] (Range GET for resume:
//! [`RegistryClient::get_blob_stream`]).
//!
//! The registry client is built on `reqwest` directly rather than `oci-client`:
//! `oci-client` has no upload whose digest is given only at the end, and mixing the
//! two would mean authenticating twice. Errors are typed per module and wrapped in
//! [`OciError`]; no error or `Debug` output contains a password or token.

pub mod auth;
pub mod blob;
pub mod bounded;
pub mod config;
pub mod digest;
pub mod error;
pub mod image;
pub mod layout;
pub mod manifest;
pub mod media_type;
pub mod reference;
pub mod registries_conf;
pub mod registry;
pub mod transport;

pub use auth::AuthJson;
pub use blob::BlobReader;
pub use bounded::{Deadline, RegistryTimeouts};
pub use config::{ConfigError, ImageConfig};
pub use digest::{Algorithm, Digest, DigestError};
pub use error::OciError;
pub use image::{
    BlobWriter, DestOptions, ImageDest, ImageSource, ManifestRole, RawManifest, RegistryImage, SourceOptions,
    MAX_MANIFEST_SIZE,
};
pub use layout::{LayoutError, OciLayout};
pub use manifest::{
    parse_manifest, select_platform, Descriptor, ImageIndex, ImageManifest, Manifest, ManifestError,
    Platform, PlatformSpec,
};
pub use reference::{ImageRef, LayoutRef, RefError, RegistryRef};
pub use registries_conf::{RegistriesConf, RegistriesConfError};
pub use registry::{RegistryClient, RegistryConfig, RegistryError, MAX_TOKEN_ANSWER};
pub use report::tls::CertVerdict;
pub use transport::{CertProblem, ProxyConfig, TlsRoots};
