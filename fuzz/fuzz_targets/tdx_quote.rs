//! Fuzzes TDX quote parsing and the whole DCAP verification of arbitrary quote bytes
//! against the genuine sample collateral at its valid instant. None may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn collateral() -> &'static dcap_qvl::QuoteCollateralV3 {
    static C: OnceLock<dcap_qvl::QuoteCollateralV3> = OnceLock::new();
    C.get_or_init(|| {
        serde_json::from_slice(include_bytes!("../../testdata/attestation/tdx/tdx_quote_collateral.json"))
            .expect("sample collateral")
    })
}

fuzz_target!(|data: &[u8]| {
    use kbs_server::verifier::tdx;
    let _ = tdx::quote_info(data);
    let _ = tdx::verify_quote(data, collateral(), tdx::INTEL_SGX_ROOT_CA_DER, 1_751_000_000);
});
