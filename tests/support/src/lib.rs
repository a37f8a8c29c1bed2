//! What the tests of every cloak crate share, so each exists once: a free loopback
//! port and a wait for a listener ([`net`]), child processes that are killed when
//! dropped or when they run too long ([`process`]), the real peers and the rule for a
//! missing one ([`peers`]), a private docker-registry ([`registry`]), a real HTTP proxy ([`proxy`]), OCI layout
//! helpers ([`layout`]), a throwaway CA for TLS peers ([`pki`]), a real TPM (swtpm) with
//! an Azure-like paravisor in front of it ([`swtpm`]), and cloak's own built binaries, the
//! broker among them ([`workspace`], [`broker`]).
//!
//! This crate depends on no cloak crate, so any crate's tests may use it (`oci`'s
//! too). The end-to-end tests themselves are the `cloak-e2e` package beside it in
//! `tests/`.
//!
//! A missing peer skips a test with a printed reason, unless `CLOAK_REQUIRE_PEERS=1`
//! (set by `ci/test.sh`), where it fails: CI must never pass by skipping.

pub mod broker;
pub mod layout;
pub mod net;
pub mod netns;
pub mod peers;
pub mod pki;
pub mod process;
pub mod proxy;
pub mod registry;
pub mod swtpm;
pub mod workspace;

pub use broker::{BrokerTls, LocalBroker, ALLOW_SAMPLE};
pub use layout::{blob_json, blob_path, copy_tree, layer_digests, layout_manifest, list_tree, sha256_digest};
pub use net::{free_port, http_get, wait_for_port, HttpAnswer};
pub use netns::{rest_codes_from_far_and_near, PeerCodes};
pub use peers::{peers_required, skopeo_118, skopeo_193};
pub use pki::{ServerCert, TestCa};
pub use process::{run, run_bounded, run_bounded_ok, run_ok, Daemon, Ran, CMD_LIMIT};
pub use proxy::Proxy;
pub use registry::Registry;
pub use swtpm::{Paravisor, Swtpm};
pub use workspace::{bin, target_dir, workspace_root};
