//! Fuzz the KBS resource answer: arbitrary bytes go through the JWE parser and
//! the decryptor with fixed EC and RSA TEE keys; they must give an error, never
//! a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cloak_fuzz_lib::targets::kbs_resource_response(data));
