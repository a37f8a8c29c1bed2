//! Fuzzes the safe tar extractor with arbitrary bytes, in both whiteout modes,
//! into a fresh root inside a sandbox directory. Beyond "no panic", it checks
//! that nothing was created next to the root (the escape property).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cloak_fuzz_lib::targets::extract_tar(data));
