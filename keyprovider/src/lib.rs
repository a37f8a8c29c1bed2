//! cloak-keyprovider: the ocicrypt keyprovider protocol (gRPC and cmd) and
//! CoCo-compatible key wrapping with key-encryption keys held in a KBS.
//!
//! - [`protocol`]: the JSON documents exactly as Go ocicrypt sends them.
//! - [`packet`]: CoCo's AnnotationPacket and its AES-256-GCM seal/open.
//! - [`client`]: the ocicrypt keyprovider config and client-side wrappers.
//! - [`kek`]: `provider.attestation-agent` wrap/unwrap with KBS-held KEKs.
//! - [`jwe_kbs`]: JWE recipients whose private key is fetched from the KBS.
//! - [`keygen`]: key pairs whose private half is registered in the KBS.
//! - [`server`]: the provider side (gRPC service and cmd handler).
//! - [`session`]: the guest session (KBS client, attester, key unwrappers) that
//!   `cloak-pull`, `cloak-cdh` and `cloak-keyprovider` build from typed config.

pub mod client;
pub mod jwe_kbs;
pub mod kek;
pub mod keygen;
pub mod packet;
pub mod protocol;
pub mod server;
pub mod session;

pub use client::{KeyProviderConfig, ProviderClient, ProviderUnwrapper, ProviderWrapper};
pub use jwe_kbs::KbsJweKeyUnwrapper;
pub use kek::{KbsKekUnwrapper, KbsKekWrapper, KekFetcher, KeyPathRule, WrapParams};
pub use keygen::{keygen, GeneratedKey};
pub use packet::{AnnotationPacket, Kek};
pub use session::{GuestSession, KbsConfig, SessionConfig, SessionError};

/// Generated gRPC code for `keyprovider.KeyProviderService`.
#[allow(missing_docs, clippy::all, clippy::pedantic, clippy::unwrap_used)]
pub mod pb {
    tonic::include_proto!("keyprovider");
}
