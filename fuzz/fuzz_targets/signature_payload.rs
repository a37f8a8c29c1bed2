//! Fuzz the simple-signing payload parser and docker reference parser (both
//! read bytes a registry serves): never a panic; a parsed reference prints
//! to a string that parses back to the same reference.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cloak_fuzz_lib::targets::signature_payload(data));
