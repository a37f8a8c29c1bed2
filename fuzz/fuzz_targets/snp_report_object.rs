//! Fuzzes SNP evidence JSON: the report object form CoCo's attestation-agent sends
//! and the cert_chain entries, then verification with the bundled anchors. None may
//! panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cloak_fuzz_lib::targets::snp_report_object(data));
