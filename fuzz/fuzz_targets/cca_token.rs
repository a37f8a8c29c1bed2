//! Fuzzes the Arm CCA token parser (CBOR collection, COSE_Sign1, claims), the whole
//! verification against the published test CPAK, the evidence JSON and the trust-anchor
//! store reader. None may panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cloak_fuzz_lib::targets::cca_token(data));
