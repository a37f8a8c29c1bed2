//! Fuzz containers-registries.conf parsing (the file may come from the KBS, a
//! file or cdh.toml) and the mirror/remap resolution of a reference: never a
//! panic; the registry itself is always the last location.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cloak_fuzz_lib::targets::registries_conf(data));
