//! helpers for e2e tests
