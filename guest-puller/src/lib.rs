//! cloak-pull: a streaming, fail-closed image pull for the inside of a TEE.
//!
//! The pipeline per layer is fetch → blob digest → decrypt (AES-CTR + HMAC) →
//! decompress → diff_id → safe extraction into a private staging directory,
//! committed only when every check has passed. Layers are cached by diff_id in
//! a [`store`] and applied in order into `BUNDLE/rootfs` by [`assemble`], or
//! mounted there as overlayfs layers by [`overlay`].

pub mod assemble;
pub mod cdh;
pub mod decode;
pub mod extract;
mod fsutil;
pub mod keys;
pub mod overlay;
pub mod policy;
pub mod progress;
pub mod pull;
pub mod registry_access;
pub mod signatures;
pub mod store;
