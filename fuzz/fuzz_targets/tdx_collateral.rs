//! Fuzzes the TDX collateral JSON (QuoteCollateralV3, as read from --collateral, the
//! offline directory or the cache) through validity checks and verification of the
//! genuine sample quote. None may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

const QUOTE: &[u8] = include_bytes!("../../testdata/attestation/tdx/tdx_quote");

fuzz_target!(|data: &[u8]| {
    use kbs_server::verifier::{collateral, tdx};
    if let Ok(c) = collateral::parse_collateral_json(data) {
        let _ = tdx::collateral_next_update(&c);
        let _ = tdx::check_collateral_window(&c, 1_751_000_000);
        let _ = tdx::verify_quote(QUOTE, &c, tdx::INTEL_SGX_ROOT_CA_DER, 1_751_000_000);
    }
});
