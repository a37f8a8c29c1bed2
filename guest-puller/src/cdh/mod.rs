//! `cloak-cdh`: cloak as the guest's Confidential Data Hub. kata-agent (3.18+)
//! pulls every guest image, unseals secrets, fetches KBS resources and unwraps
//! ocicrypt keys by calling CDH over ttRPC on
//! `/run/confidential-containers/cdh.sock`; this module serves that API with
//! cloak's verified, fail-closed pull and one KBS session for the daemon's life.
//!
//! - [`config`]: CDH's `cdh.toml`.
//! - [`bundle`]: guard rails on bundle paths and image references.
//! - [`hub`]: the state and the logic of every call.
//! - [`sealed`]: sealed secrets.
//! - [`spec`]: the bundle's OCI runtime spec.
//! - [`server`]: the ttRPC services; [`rest`]: the pod-facing HTTP endpoint.
//! - [`aa`]: attestation-agent's API (its ttRPC socket, `/aa/token`, `/aa/evidence`).
//! - [`kata`]: the names kata-agent launches (`attestation-agent`, …) as one daemon.
//! - [`storage`]: `SecureMount`, LUKS2 block-device volumes.

pub mod aa;
pub mod bundle;
pub mod config;
pub mod frame;
pub mod hub;
pub mod kata;
pub mod pb;
pub mod rest;
pub mod sealed;
pub mod server;
pub mod spec;
pub mod storage;

use std::sync::atomic::{AtomicBool, Ordering};

/// Set by the binary when its logs are JSON: error logs then carry `error_chain`
/// (the causes as a list) next to `error` (the same chain on one line).
static JSON_LOGS: AtomicBool = AtomicBool::new(false);

/// Whether error logs add the `error_chain` field (`--log-format json`).
pub fn set_json_logs(on: bool) {
    JSON_LOGS.store(on, Ordering::Relaxed);
}

/// The `error_chain` field of an error log: present only in JSON logs (a text log
/// line already says the chain once in `error`).
pub fn error_chain<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Option<tracing::field::DisplayValue<report::ChainJson<'a>>> {
    JSON_LOGS.load(Ordering::Relaxed).then(|| tracing::field::display(report::ChainJson(e)))
}

/// [`error_chain`] for steps already collected (a [`hub::HubError::chain`]), as
/// the same JSON list.
pub fn chain_field(steps: impl FnOnce() -> Vec<String>) -> Option<tracing::field::DisplayValue<String>> {
    JSON_LOGS
        .load(Ordering::Relaxed)
        .then(|| tracing::field::display(serde_json::Value::from(steps()).to_string()))
}
