//! Fuzz the KBS handshake answers: the `/auth` challenge, the `/attest` token
//! answer and the token's claims. Arbitrary bytes must give an error, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cloak_fuzz_lib::targets::kbs_challenge(data));
