//! Image references, OCI image layouts and a streaming registry client for cloak.
//!
//! (API overview is filled in below as the crate grows.)

pub mod auth;
pub mod blob;
pub mod digest;
pub mod error;
pub mod image;
pub mod layout;
pub mod manifest;
pub mod media_type;
pub mod reference;
pub mod registry;

pub use blob::BlobReader;
pub use digest::{Algorithm, Digest, DigestError};
pub use error::OciError;
pub use image::{
    BlobWriter, DestOptions, ImageDest, ImageSource, ManifestRole, RawManifest, RegistryImage,
    SourceOptions, MAX_MANIFEST_SIZE,
};
pub use layout::{LayoutError, OciLayout};
pub use manifest::{
    parse_manifest, select_platform, Descriptor, ImageIndex, ImageManifest, Manifest,
    ManifestError, Platform, PlatformSpec,
};
pub use reference::{ImageRef, LayoutRef, RefError, RegistryRef};
pub use registry::{RegistryClient, RegistryConfig, RegistryError};
