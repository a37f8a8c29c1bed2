//! Fuzzes the SNP extended-report certificate table (configfs-tsm auxblob) parser and
//! the VCEK certificate checks of each entry. None may panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cloak_fuzz_lib::targets::snp_cert_table(data));
