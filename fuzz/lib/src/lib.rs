//! The bodies of the fuzz targets, as plain functions.
//!
//! Each `fuzz/fuzz_targets/NAME.rs` is a one-line `fuzz_target!` that calls
//! [`targets::NAME`]; the regression replay (`tests/replay.rs`, part of the
//! ordinary workspace `cargo test`) feeds every file of `fuzz/regressions/NAME/`
//! and `fuzz/seeds/NAME/` to the same function through [`entry`], so a crash
//! the fuzzer once found stays covered without the fuzzer. This crate is a
//! workspace member (the cargo-fuzz crate in `fuzz/` is not), so the replay
//! reuses the workspace build. A target body panics exactly when it found a bug.

pub mod targets;

/// A target body: arbitrary bytes in, a panic when a property is broken.
pub type Entry = fn(&[u8]);

/// Every target that has a library body, by its `cargo fuzz` name.
pub const ENTRIES: &[(&str, Entry)] = &[
    ("annotations", targets::annotations),
    ("auth_json", targets::auth_json),
    ("cdh_frame", targets::cdh_frame),
    ("cdh_sealed", targets::cdh_sealed),
    ("decrypt_stream", targets::decrypt_stream),
    ("extract_tar", targets::extract_tar),
    ("initdata", targets::initdata),
    ("jwe", targets::jwe),
    ("kbs_challenge", targets::kbs_challenge),
    ("kbs_evidence", targets::kbs_evidence),
    ("kbs_resource_response", targets::kbs_resource_response),
    ("kbs_session_cookie", targets::kbs_session_cookie),
    ("kbs_store_values", targets::kbs_store_values),
    ("keyprovider_packet", targets::keyprovider_packet),
    ("keyprovider_protocol", targets::keyprovider_protocol),
    ("oci_manifest", targets::oci_manifest),
    ("registries_conf", targets::registries_conf),
    ("securemount_options", targets::securemount_options),
    ("signature_manifest", targets::signature_manifest),
    ("signature_payload", targets::signature_payload),
    ("signature_policy", targets::signature_policy),
    ("snp_cert_table", targets::snp_cert_table),
    ("snp_report_object", targets::snp_report_object),
    ("tdx_collateral", targets::tdx_collateral),
    ("tdx_quote", targets::tdx_quote),
    ("cca_token", targets::cca_token),
    ("azure_hcl_report", targets::azure_hcl_report),
    ("azure_tpm_quote", targets::azure_tpm_quote),
    ("tpm_response", targets::tpm_response),
];

/// The body of the target called `name`, if it has one here.
pub fn entry(name: &str) -> Option<Entry> {
    ENTRIES.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}
