//! Fuzzes the TPM quote parser (TPMS_ATTEST), the Azure evidence JSON of every version,
//! and the quote's verification (AK signature, PCR digest). None may panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cloak_fuzz_lib::targets::azure_tpm_quote(data));
