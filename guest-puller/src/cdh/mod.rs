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

pub mod bundle;
pub mod config;
pub mod frame;
pub mod hub;
pub mod pb;
pub mod rest;
pub mod sealed;
pub mod server;
pub mod spec;
