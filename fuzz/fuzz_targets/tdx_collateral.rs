//! Fuzzes the TDX collateral JSON (QuoteCollateralV3, as read from --collateral, the
//! offline directory or the cache) through validity checks and verification of the
//! genuine sample quote. None may panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cloak_fuzz_lib::targets::tdx_collateral(data));
