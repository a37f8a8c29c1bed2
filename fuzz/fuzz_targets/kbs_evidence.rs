//! Fuzzes the broker's parsers of untrusted guest input: raw SNP reports and TDX
//! quotes, evidence JSON through each verifier, and the policy YAML. None may panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cloak_fuzz_lib::targets::kbs_evidence(data));
