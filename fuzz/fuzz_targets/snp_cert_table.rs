//! Fuzzes the SNP extended-report certificate table (configfs-tsm auxblob) parser and
//! the VCEK certificate checks of each entry. None may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(entries) = kbs_client::attester::parse_cert_table(data) {
        for e in entries {
            let _ = kbs_server::verifier::snp::check_vcek_file(&e.data);
            let _ = kbs_server::verifier::snp::vcek_extensions(&e.data);
        }
    }
    let _ = kbs_server::verifier::snp::check_vcek_file(data);
});
