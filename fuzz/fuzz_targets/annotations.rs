//! Fuzz the annotation and cipher-options parsers: they read untrusted
//! manifest bytes. Parsed values must survive a serialize/parse round trip.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cloak_fuzz_lib::targets::annotations(data));
