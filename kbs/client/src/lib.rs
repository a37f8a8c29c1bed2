//! cloak's KBS client: Trustee's KBS protocol 0.4.0 from the guest side (RCAR
//! handshake, token reuse, JWE-wrapped resources), the attesters that produce
//! TEE evidence (SEV-SNP, TDX, sample), and the admin client that registers
//! resources and policy. No server code is linked here, so the guest binary
//! carries none.
#![deny(unsafe_code)]

pub mod admin;
pub mod attester;
mod choice;
pub mod client;
pub mod error;
pub mod initdata;
pub mod protocol;
pub mod tls;
pub mod uri;

pub use admin::{AdminClient, Created};
pub use attester::{make_attester, Attester, AttesterKind, AttesterOptions};
pub use client::{ClientConfig, KbsClient};
pub use error::{AttesterError, KbsError, KbsErrorKind, LastFailure, Step};
pub use protocol::{TeeKeyKind, TeeKeyPair, Token};
pub use report::tls::CertVerdict;
pub use tls::{CaBundle, CaBundleError, CertProblem};
pub use uri::ResourceUri;
