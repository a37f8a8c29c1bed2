//! Fuzz containers-policy.json parsing (the policy may come from the KBS or a
//! config map) and scope lookup: never a panic; every scope found for a parsed
//! image reference belongs to the policy.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cloak_fuzz_lib::targets::signature_policy(data));
