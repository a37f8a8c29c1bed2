//! Manifests and indexes come from registries the guest does not trust:
//! parsing any bytes under any media type must return, never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cloak_fuzz_lib::targets::oci_manifest(data));
