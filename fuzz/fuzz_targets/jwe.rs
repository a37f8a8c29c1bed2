//! Fuzz the JWE parser and unwrapper with fixed test keys (RSA and EC), and the
//! header-only `jwe_recipients`: arbitrary bytes must give an error, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cloak_fuzz_lib::targets::jwe(data));
