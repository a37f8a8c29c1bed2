//! Broker CPU per verification: a full TDX DCAP verification with collateral already
//! cached (parsed, in memory), and an SNP report with its VCEK (chain, extensions,
//! signature), both with the genuine samples in `testdata/attestation/`, and an Arm CCA
//! token (platform and realm COSE_Sign1, ES384 each, the RAK binding) from the published
//! test tokens in `testdata/attestation/cca/`, and genuine Azure SNP evidence (the
//! TPM quote by the vTPM's AK, the variable-data binding, the SNP report and chain).
//! `ci/bench.sh kbs` runs this; the goal is at most 2 ms each.

use criterion::{criterion_group, criterion_main, Criterion};
use kbs_server::verifier::snp::{self, CertIn, SnpTrust};
use kbs_server::verifier::tdx;
use kbs_server::verifier::{azure, cca};

fn data(rel: &str) -> Vec<u8> {
    let p = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/attestation").join(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn bench(c: &mut Criterion) {
    let quote = data("tdx/tdx_quote");
    let coll: dcap_qvl::QuoteCollateralV3 =
        serde_json::from_slice(&data("tdx/tdx_quote_collateral.json")).expect("collateral");
    tdx::verify_quote(&quote, &coll, tdx::INTEL_SGX_ROOT_CA_DER, 1_751_000_000).expect("sample verifies");
    c.bench_function("tdx_verify_quote_cached_collateral", |b| {
        b.iter(|| tdx::verify_quote(&quote, &coll, tdx::INTEL_SGX_ROOT_CA_DER, 1_751_000_000))
    });

    let report = data("snp/trustee-test-report.bin");
    let certs = [CertIn { kind: "vcek".into(), data: data("snp/trustee-test-vcek.der") }];
    let trust = SnpTrust::default();
    let now = 1_751_000_000;
    snp::verify_report(&report, &certs, &trust, now).expect("sample verifies");
    c.bench_function("snp_verify_report_vcek_in_evidence", |b| {
        b.iter(|| snp::verify_report(&report, &certs, &trust, now))
    });

    let token = data("cca/trustee__cca-example-token.cbor");
    let anchors = cca::CcaTrust::parse(&data("cca/trustee__tastore.json")).expect("trust anchors");
    cca::verify_token(&token, &anchors).expect("sample verifies");
    c.bench_function("cca_verify_token", |b| b.iter(|| cca::verify_token(&token, &anchors)));

    let ev: serde_json::Value =
        serde_json::from_slice(&data("azure/snp-evidence-v1.json")).expect("Azure evidence JSON");
    let az_at = 1_767_225_600;
    let parse_and_verify = || {
        let ev = azure::parse_evidence(&ev, azure::AzureKind::Snp)?;
        let certs = ev.certs();
        azure::verify_snp(&ev, &certs, &trust, az_at)
    };
    parse_and_verify().expect("sample verifies");
    c.bench_function("az_snp_vtpm_verify_evidence", |b| b.iter(parse_and_verify));
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(20).warm_up_time(std::time::Duration::from_millis(500)).measurement_time(std::time::Duration::from_secs(3));
    targets = bench
}
criterion_main!(benches);
