//! Fuzzes SNP evidence JSON: the report object form CoCo's attestation-agent sends
//! and the cert_chain entries, then verification with the bundled anchors. None may
//! panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    use kbs_server::verifier::snp;
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    if let Some(o) = v.as_object() {
        let _ = snp::report_from_object(o);
    }
    if let Ok(ev) = snp::parse_evidence(&v) {
        let _ = snp::verify_report(&ev.report, &ev.certs, &snp::SnpTrust::default(), 1_751_000_000);
    }
});
