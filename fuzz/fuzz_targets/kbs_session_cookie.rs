//! Fuzz the sealed session cookie the broker opens on `/attest` and `/resource`
//! (sent by any client): a refusal or the sealed ticket, never a panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cloak_fuzz_lib::targets::kbs_session_cookie(data));
