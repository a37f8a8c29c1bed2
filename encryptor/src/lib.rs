//! The build side of cloak: encrypt, decrypt and inspect OCI images in the
//! ocicrypt format, and register keys in the KBS. The `cloak` binary is a thin
//! flag parser over these functions.
//!
//! Data path of `encrypt`, per selected layer and with layers in parallel
//! (bounded): source blob stream → AES-256-CTR + HMAC-SHA256 → destination
//! upload, all streaming, so no layer is ever held whole in memory and the upload
//! starts while the layer is still being encrypted. The layer key is then wrapped
//! once per recipient scheme and the descriptors rewritten; the manifest (and the
//! index) are written last, so a failure leaves no new tag at the destination.

mod config;
mod copy;
mod decrypt;
mod encrypt;
mod error;
mod initdata;
mod inspect;
mod keygen;
mod manifest;
mod progress;
mod recipients;
pub mod rotate;
pub mod sign;

pub use config::{
    CommonOptions, DecryptConfig, EncryptConfig, InspectConfig, KbsAdminOptions, KeygenConfig,
    LayerSelection, PlatformSelection,
};
pub use copy::{CopyResult, LayerResult};
pub use decrypt::decrypt;
pub use encrypt::encrypt;
pub use error::{Error, StreamError};
pub use initdata::{annotation_value, initdata_report, InitdataReport, InitdataToolError};
pub use inspect::{inspect, InspectReport};
pub use keygen::keygen;
pub use recipients::Recipient;
