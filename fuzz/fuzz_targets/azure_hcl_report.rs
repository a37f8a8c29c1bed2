//! Fuzzes Azure's HCL report parser (header, hardware report, IGVM request data, the
//! variable data JSON with the vTPM's AK) and the az-snp-vtpm / az-tdx-vtpm
//! verification over it. None may panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cloak_fuzz_lib::targets::azure_hcl_report(data));
