//! Fuzzes TDX quote parsing and the whole DCAP verification of arbitrary quote bytes
//! against the genuine sample collateral at its valid instant. None may panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cloak_fuzz_lib::targets::tdx_quote(data));
