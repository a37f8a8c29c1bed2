//! Fuzz containers auth.json parsing (credentials from the KBS or a file): never
//! a panic, and no error quotes the file's content.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cloak_fuzz_lib::targets::auth_json(data));
