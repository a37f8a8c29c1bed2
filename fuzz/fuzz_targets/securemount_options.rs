//! Fuzz cloak-cdh's SecureMount block-device options parser (kata-agent's request):
//! requests that parse are safe to act on; a pasted passphrase is never quoted.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cloak_fuzz_lib::targets::securemount_options(data));
