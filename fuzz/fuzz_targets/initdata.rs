//! Fuzzes the init-data parser (the TOML a Pod's annotation carries, which the
//! guest sends the broker in the RCAR attestation) and its digests. None may panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cloak_fuzz_lib::targets::initdata(data));
