//! Fuzzes the broker's parsers of untrusted guest input: raw SNP reports and TDX
//! quotes, evidence JSON through each verifier, and the policy YAML. None may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = kbs_server::verifier::snp::Report::parse(data);
    let _ = kbs_server::verifier::tdx::quote_info(data);
    let trust = kbs_server::verifier::Trust::default();
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(data) {
        let rt = tokio::runtime::Builder::new_current_thread().build().expect("runtime");
        for tee in [kbs_types_tee("sample"), kbs_types_tee("snp"), kbs_types_tee("tdx")] {
            let _ = rt.block_on(kbs_server::verifier::verify(tee, &v, &[0u8; 48], &trust));
        }
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = kbs_server::policy::BrokerPolicy::parse(s);
    }
});

fn kbs_types_tee(name: &str) -> kbs_server::verifier::Tee {
    serde_json::from_value(serde_json::Value::String(name.into()))
        .unwrap_or(kbs_server::verifier::Tee::Sample)
}
