//! Keyprovider request/answer JSON (untrusted: from skopeo/containerd or from a
//! provider process): parsing and validating must never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cloak_fuzz_lib::targets::keyprovider_protocol(data));
