//! Fuzzes the guest's TPM 2.0 response parsers (header, size and response code, then
//! the NV_ReadPublic, NV_Read, Quote and PCR_Read bodies) and the HCL report layout
//! the Azure vTPM attester reads from NV, and its IMDS answers (VCEK, TD quote). None
//! may panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cloak_fuzz_lib::targets::tpm_response(data));
