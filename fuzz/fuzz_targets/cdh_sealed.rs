//! Fuzz the sealed-secret parser (`sealed.<header>.<payload>.<signature>`) and
//! its payload reader. A parsed secret's signing input must be what was sent.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cloak_fuzz_lib::targets::cdh_sealed(data));
