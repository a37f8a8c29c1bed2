//! `cloak-kbs`: a Key Broker Service that speaks Trustee's KBS protocol 0.4.0.
//!
//! The broker runs the RCAR handshake (`/kbs/v0/auth`, `/kbs/v0/attest`), verifies
//! sample, SEV-SNP and TDX evidence against a YAML policy, issues a short-lived token,
//! and releases resources as JWEs to the TEE key bound in the evidence. Admins manage
//! resources and the policy with an Ed25519-signed JWT.
//!
//! The wire layer (`server`) is thin; the decisions live in `policy`, `verifier`,
//! `token`, `jwe` and `admin`, which are plain functions over bytes. Where state lives
//! (local files, or etcd shared by replicas) is behind the `storage` trait.

pub mod admin;
pub mod claims;
pub mod config;
pub mod initdata;
pub mod jwe;
pub mod metrics;
pub mod policy;
pub mod seal;
pub mod server;
pub mod session;
pub mod storage;
pub mod tls;
pub mod token;
pub mod verifier;

pub use config::ServeConfig;
pub use server::{serve, Broker};

/// Seconds since the Unix epoch; a clock before 1970 reads as 0 so expiry checks fail closed.
pub(crate) fn now_secs() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
