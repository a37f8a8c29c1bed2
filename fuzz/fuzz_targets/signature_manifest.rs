//! Fuzz cosign signature manifest parsing (served by the registry under the
//! `sha256-<hex>.sig` tag): never a panic, never more signatures than the cap,
//! and appending a signature to a parsed manifest keeps it parseable.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cloak_fuzz_lib::targets::signature_manifest(data));
