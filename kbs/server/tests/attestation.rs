//! The verifiers against genuine evidence from real hardware (`testdata/attestation/`,
//! provenance in its README), each at the instant its collateral is valid, and the same
//! evidence tampered with: a byte flipped in the signed body, the signature, the PCK
//! chain, the collateral; stale collateral; VCEKs of another chip; CoCo's evidence
//! forms; the certificate table; the VCEK directory.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use kbs_server::claims::Claims;
use kbs_server::policy::{BrokerPolicy, Reason};
use kbs_server::verifier::offline::{self, OfflineInputs, OfflineTee};
use kbs_server::verifier::snp::{self, CertIn, Generation, SnpTrust};
use kbs_server::verifier::tdx;
use serde_json::{json, Value};

fn data(rel: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/attestation").join(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// 2025-06-27T04:53:20Z: the v4 sample's collateral is valid.
const TDX_AT: u64 = 1_751_000_000;

fn collateral(name: &str) -> dcap_qvl::QuoteCollateralV3 {
    serde_json::from_slice(&data(name)).unwrap()
}

fn tdx_refusal(quote: &[u8], coll: &dcap_qvl::QuoteCollateralV3, at: u64) -> Reason {
    tdx::verify_quote(quote, coll, tdx::INTEL_SGX_ROOT_CA_DER, at).unwrap_err().reason
}

#[test]
fn tdx_v4_sample_verifies_up_to_date_at_its_instant() {
    let q = data("tdx/tdx_quote");
    let c = tdx::verify_quote(
        &q,
        &collateral("tdx/tdx_quote_collateral.json"),
        tdx::INTEL_SGX_ROOT_CA_DER,
        TDX_AT,
    )
    .unwrap();
    assert_eq!(c.tcb_status, "UpToDate");
    assert_eq!(c.quote_version, 4);
    assert_eq!(c.fmspc, "b0c06f000000");
    assert_eq!(c.mr_td.len(), 96);
    assert_eq!(c.mr_td, c.mr_td.to_ascii_lowercase());
    assert!(!c.debug);
    // The default policy accepts it; one that wants another MRTD does not.
    let p = offline::default_policy();
    p.check_claims(&Claims::Tdx(c.clone())).unwrap();
    let other = BrokerPolicy::parse(&format!(
        "default_policy: {{required_attestation: {{tdx: {{mr_td: [\"{}\"]}}}}}}",
        "00".repeat(48)
    ))
    .unwrap();
    assert_eq!(other.check_claims(&Claims::Tdx(c)).unwrap_err().reason, Reason::MeasurementMismatch);
}

#[test]
fn tdx_stale_or_future_collateral_is_refused() {
    let q = data("tdx/tdx_quote");
    let coll = collateral("tdx/tdx_quote_collateral.json");
    assert_eq!(tdx_refusal(&q, &coll, 1_790_000_000), Reason::CollateralExpired);
    // Before the TCB info was issued (2025-06-19): a future issue date.
    assert_eq!(tdx_refusal(&q, &coll, 1_750_000_000), Reason::CollateralNotYetValid);
}

#[test]
fn tdx_v5_outdated_sample_matches_no_tcb_level() {
    let q = data("tdx/tdx_quote_outdated");
    assert_eq!(tdx::quote_info(&q).unwrap().version, 5);
    assert_eq!(tdx::quote_info(&q).unwrap().fmspc, "90c06f000000");
    let coll = collateral("tdx/tdx_quote_outdated_collateral.json");
    assert_eq!(tdx_refusal(&q, &coll, 1_772_400_000), Reason::TcbLevelUnmatched);
}

#[test]
fn tdx_flipped_bytes_are_refused() {
    let q = data("tdx/tdx_quote");
    let coll = collateral("tdx/tdx_quote_collateral.json");
    // Signed body: a byte of MRTD.
    let mut b = q.clone();
    b[48 + 136] ^= 1;
    assert_eq!(tdx_refusal(&b, &coll, TDX_AT), Reason::InvalidSignature);
    // The quote signature (first bytes after the 4-byte signature length).
    let mut b = q.clone();
    b[48 + 584 + 4 + 5] ^= 1;
    assert_eq!(tdx_refusal(&b, &coll, TDX_AT), Reason::InvalidSignature);
    // The PCK certificate chain inside the quote: a base64 letter of the leaf's
    // signature, swapped for another letter.
    let pem_at = q.windows(27).position(|w| w == b"-----BEGIN CERTIFICATE-----").unwrap();
    let end_at = pem_at + q[pem_at..].windows(25).position(|w| w == b"-----END CERTIFICATE-----").unwrap();
    let mut b = q.clone();
    let i = (end_at - 20..end_at).find(|&i| b[i].is_ascii_alphabetic()).unwrap();
    b[i] = if b[i] == b'A' { b'B' } else { b'A' };
    assert_eq!(tdx_refusal(&b, &coll, TDX_AT), Reason::InvalidSignature);
    // Collateral: the TCB info text, its signature, the PCK CRL.
    let mut c = coll.clone();
    c.tcb_info = c.tcb_info.replacen("\"tcbLevels\"", "\"tcbLevels\" ", 1);
    assert_eq!(tdx_refusal(&q, &c, TDX_AT), Reason::InvalidSignature);
    let mut c = coll.clone();
    c.tcb_info_signature[3] ^= 1;
    assert_eq!(tdx_refusal(&q, &c, TDX_AT), Reason::InvalidSignature);
    let mut c = coll.clone();
    let n = c.pck_crl.len();
    c.pck_crl[n - 10] ^= 1;
    assert_eq!(tdx_refusal(&q, &c, TDX_AT), Reason::InvalidSignature);
    let mut c = coll.clone();
    c.qe_identity_signature[0] ^= 1;
    assert_eq!(tdx_refusal(&q, &c, TDX_AT), Reason::InvalidSignature);
    // Truncated and garbage quotes are malformed, not a panic.
    assert_eq!(tdx_refusal(&q[..700], &coll, TDX_AT), Reason::MalformedEvidence);
    assert_eq!(tdx_refusal(b"not a quote", &coll, TDX_AT), Reason::MalformedEvidence);
}

/// The broker's dcap-qvl configuration (ECDSA P-256 through aws-lc) and dcap-qvl's own
/// pure-Rust RustCrypto configuration give the same verdict, error text included, on the
/// genuine quote and on each tampering: a byte of the body, of the signature, of the
/// attestation key, of the QE report, and of the collateral's signatures.
#[test]
fn aws_lc_and_rustcrypto_agree() {
    let q = data("tdx/tdx_quote");
    let coll = collateral("tdx/tdx_quote_collateral.json");
    let mut cases = vec![(q.clone(), coll.clone())];
    for i in [48 + 136, 48 + 584 + 4 + 5, 48 + 584 + 4 + 70, 48 + 584 + 4 + 140, 48 + 584 + 4 + 200] {
        let mut b = q.clone();
        b[i] ^= 1;
        cases.push((b, coll.clone()));
    }
    let mut c = coll.clone();
    c.tcb_info_signature[3] ^= 1;
    cases.push((q.clone(), c));
    let mut c = coll.clone();
    c.qe_identity_signature[0] ^= 1;
    cases.push((q.clone(), c));
    let verdict = |r: Result<dcap_qvl::verify::VerifiedReport, anyhow::Error>| {
        r.map(|v| (v.status, v.advisory_ids)).map_err(|e| format!("{e:#}"))
    };
    let mut refused = 0;
    for (quote, c) in &cases {
        let root = tdx::INTEL_SGX_ROOT_CA_DER.to_vec();
        let ours = dcap_qvl::verify::QuoteVerifier::<tdx::BrokerDcap>::new_with_config(root.clone())
            .allow_debug(true)
            .verify(quote, c, TDX_AT);
        let pure =
            dcap_qvl::verify::QuoteVerifier::<dcap_qvl::configs::RustCryptoConfig>::new_with_config(root)
                .allow_debug(true)
                .verify(quote, c, TDX_AT);
        let (ours, pure) = (verdict(ours), verdict(pure));
        refused += usize::from(ours.is_err());
        assert_eq!(ours, pure);
    }
    // The genuine quote verifies; every tampered case is refused.
    assert_eq!(refused, cases.len() - 1);
}

#[test]
fn tdx_evidence_json_forms() {
    let q = data("tdx/tdx_quote");
    // CoCo attestation-agent: quote, cc_eventlog, aa_eventlog.
    let ev = tdx::parse_evidence(&json!({"quote": STANDARD.encode(&q), "cc_eventlog": STANDARD.encode(b"ccel"), "aa_eventlog": "INIT sha384/..."})).unwrap();
    assert_eq!(ev.quote, q);
    assert_eq!(ev.cc_eventlog.as_deref(), Some(&b"ccel"[..]));
    assert_eq!(ev.aa_eventlog.as_deref(), Some("INIT sha384/..."));
    let ev = tdx::parse_evidence(&json!({"quote": q, "cc_eventlog": null, "aa_eventlog": null})).unwrap();
    assert_eq!(ev.quote, q);
    assert!(tdx::parse_evidence(&json!({"cc_eventlog": null})).is_err());
    assert!(tdx::parse_evidence(&json!({"quote": "%%%"})).is_err());
    assert!(tdx::parse_evidence(&json!({"quote": STANDARD.encode(&q), "aa_eventlog": 3})).is_err());
}

#[test]
fn tdx_tcb_status_and_advisories_are_policy_inputs() {
    let q = data("tdx/tdx_quote");
    let mut c = tdx::verify_quote(
        &q,
        &collateral("tdx/tdx_quote_collateral.json"),
        tdx::INTEL_SGX_ROOT_CA_DER,
        TDX_AT,
    )
    .unwrap();
    let default = BrokerPolicy::parse("default_policy: {required_attestation: {tdx: {}}}").unwrap();
    default.check_claims(&Claims::Tdx(c.clone())).unwrap();
    c.tcb_status = "OutOfDate".into();
    c.advisory_ids = vec!["INTEL-SA-00837".into()];
    assert_eq!(
        default.check_claims(&Claims::Tdx(c.clone())).unwrap_err().reason,
        Reason::TcbStatusNotAllowed
    );
    let lax = BrokerPolicy::parse(
        "default_policy: {required_attestation: {tdx: {tcb_status: [UpToDate, OutOfDate]}}}",
    )
    .unwrap();
    lax.check_claims(&Claims::Tdx(c.clone())).unwrap();
    let deny = BrokerPolicy::parse(
        "default_policy: {required_attestation: {tdx: {tcb_status: [OutOfDate], deny_advisories: [intel-sa-00837]}}}",
    )
    .unwrap();
    assert_eq!(deny.check_claims(&Claims::Tdx(c.clone())).unwrap_err().reason, Reason::AdvisoryDenied);
    assert!(BrokerPolicy::parse("default_policy: {required_attestation: {tdx: {tcb_status: [Revoked]}}}")
        .is_err());
    // A debug TD passes the chain and is refused by the policy unless it allows debug.
    c.tcb_status = "UpToDate".into();
    c.debug = true;
    assert_eq!(default.check_claims(&Claims::Tdx(c.clone())).unwrap_err().reason, Reason::DebugNotAllowed);
    let dbg =
        BrokerPolicy::parse("default_policy: {required_attestation: {tdx: {allow_debug: true}}}").unwrap();
    dbg.check_claims(&Claims::Tdx(c)).unwrap();
}

// ---- SNP ---------------------------------------------------------------------------

fn cert(kind: &str, rel: &str) -> CertIn {
    CertIn { kind: kind.into(), data: data(rel) }
}

fn milan_hex_report() -> Vec<u8> {
    hex::decode(String::from_utf8(data("snp/virtee-report_milan.hex")).unwrap().trim()).unwrap()
}

/// 2025-06-01: inside the VLEK's validity window.
const VLEK_AT: u64 = 1_748_736_000;

fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

#[test]
fn snp_genuine_milan_reports_verify_with_bundled_anchors() {
    let trust = SnpTrust::default();
    let c = snp::verify_report(
        &data("snp/trustee-test-report.bin"),
        &[cert("vcek", "snp/trustee-test-vcek.der")],
        &trust,
        now(),
    )
    .unwrap();
    assert_eq!((c.version, c.generation.as_str(), c.signing_key.as_str()), (2, "milan", "vcek"));
    assert_eq!(c.measurement, c.measurement.to_ascii_lowercase());
    let c =
        snp::verify_report(&milan_hex_report(), &[cert("vcek", "snp/virtee-vcek_milan.der")], &trust, now())
            .unwrap();
    assert_eq!(c.generation, "milan");
}

#[test]
fn snp_vlek_report_verifies_via_the_asvk_and_dates_are_checked() {
    let trust = SnpTrust::default();
    let rep = data("snp/trustee-test-vlek-report.bin");
    let certs = [cert("vlek", "snp/trustee-test-vlek.der")];
    let c = snp::verify_report(&rep, &certs, &trust, VLEK_AT).unwrap();
    assert_eq!((c.version, c.generation.as_str(), c.signing_key.as_str()), (3, "milan", "vlek"));
    // The VLEK expired on 2025-12-10: said clearly.
    let d = snp::verify_report(&rep, &certs, &trust, now()).unwrap_err();
    assert_eq!(d.reason, Reason::CollateralExpired, "{d}");
    assert!(d.detail.contains("VLEK certificate expired"), "{d}");
}

#[test]
fn snp_tampered_report_or_foreign_vcek_is_refused() {
    let trust = SnpTrust::default();
    let mut rep = data("snp/trustee-test-report.bin");
    rep[0x90] ^= 1;
    let d =
        snp::verify_report(&rep, &[cert("vcek", "snp/trustee-test-vcek.der")], &trust, now()).unwrap_err();
    assert_eq!(d.reason, Reason::InvalidSignature, "{d}");
    // The VCEK of another chip.
    let d = snp::verify_report(
        &data("snp/trustee-test-report.bin"),
        &[cert("vcek", "snp/virtee-vcek_milan.der")],
        &trust,
        now(),
    )
    .unwrap_err();
    assert_eq!(d.reason, Reason::VcekMismatch, "{d}");
    // Another TCB: the same VCEK against a report claiming a different reported_tcb.
    let mut rep = data("snp/trustee-test-report.bin");
    rep[0x187] ^= 1;
    let d =
        snp::verify_report(&rep, &[cert("vcek", "snp/trustee-test-vcek.der")], &trust, now()).unwrap_err();
    assert_eq!(d.reason, Reason::VcekMismatch, "{d}");
    // A Turin ARK configured for a Milan VCEK: no chain.
    let turin = openssl::x509::X509::stack_from_pem(&data("snp/turin_ask_ark_asvk.pem")).unwrap();
    let t = SnpTrust { ark: Some(turin[1].clone()), ask: Some(turin[0].clone()), ..Default::default() };
    let d = snp::verify_report(
        &data("snp/trustee-test-report.bin"),
        &[cert("vcek", "snp/trustee-test-vcek.der")],
        &t,
        now(),
    )
    .unwrap_err();
    assert_eq!(d.reason, Reason::CertChainInvalid, "{d}");
}

#[test]
fn snp_invalid_vcek_files_give_clear_errors() {
    for f in ["snp/trustee-test-vcek-invalid-legacy.der", "snp/trustee-test-vcek-invalid-new.der"] {
        let r = snp::verify_report(
            &data("snp/trustee-test-report.bin"),
            &[cert("vcek", f)],
            &SnpTrust::default(),
            now(),
        );
        let d = r.unwrap_err();
        assert!(
            matches!(d.reason, Reason::CertChainInvalid | Reason::VcekMismatch | Reason::InvalidSignature),
            "{f}: {d}"
        );
        assert!(!d.detail.is_empty());
    }
    let e = snp::check_vcek_file(b"garbage").unwrap_err();
    assert!(e.contains("not a DER or PEM"), "{e}");
    let e = snp::check_vcek_file(&data("tdx/intel-sgx-root-ca.der")).unwrap_err();
    assert!(e.contains("AMD TCB extensions"), "{e}");
}

#[test]
fn snp_generations() {
    assert_eq!(Generation::from_cpuid(0x19, 0x01), Some(Generation::Milan));
    assert_eq!(Generation::from_cpuid(0x19, 0x11), Some(Generation::Genoa));
    assert_eq!(Generation::from_cpuid(0x19, 0xA0), Some(Generation::Genoa));
    assert_eq!(Generation::from_cpuid(0x1A, 0x02), Some(Generation::Turin));
    assert_eq!(Generation::from_cpuid(0x17, 0x01), None);
    assert_eq!(snp::endorsement_generation(&data("snp/virtee-vcek_turin.der")), Some(Generation::Turin));
    assert_eq!(snp::endorsement_generation(&data("snp/virtee-vcek_milan.der")), Some(Generation::Milan));
    assert_eq!(snp::endorsement_generation(&data("snp/trustee-test-vlek.der")), Some(Generation::Milan));
    let (_, ext) = snp::check_vcek_file(&data("snp/virtee-vcek_turin.der")).unwrap();
    assert!(ext.product_name.unwrap().starts_with("Turin"));
    assert!(ext.fmc.is_some());
    // Turin's TCB layout: fmc, bootloader, tee, snp, 3 reserved, microcode.
    let t = snp::tcb_from_raw([1, 2, 3, 4, 0, 0, 0, 9], Some(Generation::Turin));
    assert_eq!((t.fmc, t.bootloader, t.tee, t.snp, t.microcode), (Some(1), 2, 3, 4, 9));
    let m = snp::tcb_from_raw([2, 0, 0, 0, 0, 0, 8, 0x73], Some(Generation::Milan));
    assert_eq!((m.fmc, m.bootloader, m.snp, m.microcode), (None, 2, 8, 0x73));
}

/// The report in the sev crate's object form, written here from the ABI offsets.
fn report_object(r: &[u8]) -> Value {
    let u32a = |o: usize| u32::from_le_bytes(r[o..o + 4].try_into().unwrap());
    let u64a = |o: usize| u64::from_le_bytes(r[o..o + 8].try_into().unwrap());
    let bytes = |o: usize, n: usize| r[o..o + n].to_vec();
    let tcb = |o: usize| json!({"bootloader": r[o], "tee": r[o + 1], "snp": r[o + 6], "microcode": r[o + 7]});
    let v = u32a(0);
    json!({
        "version": v, "guest_svn": u32a(4), "policy": u64a(8),
        "family_id": bytes(0x10, 16), "image_id": bytes(0x20, 16), "vmpl": u32a(0x30), "sig_algo": u32a(0x34),
        "current_tcb": tcb(0x38), "plat_info": u64a(0x40), "key_info": u32a(0x48),
        "report_data": bytes(0x50, 64), "measurement": bytes(0x90, 48), "host_data": bytes(0xC0, 32),
        "id_key_digest": bytes(0xE0, 48), "author_key_digest": bytes(0x110, 48),
        "report_id": bytes(0x140, 32), "report_id_ma": bytes(0x160, 32), "reported_tcb": tcb(0x180),
        "cpuid_fam_id": if v >= 3 { json!(r[0x188]) } else { Value::Null },
        "cpuid_mod_id": if v >= 3 { json!(r[0x189]) } else { Value::Null },
        "cpuid_step": if v >= 3 { json!(r[0x18A]) } else { Value::Null },
        "chip_id": bytes(0x1A0, 64), "committed_tcb": tcb(0x1E0),
        "current": {"build": r[0x1E8], "minor": r[0x1E9], "major": r[0x1EA]},
        "committed": {"build": r[0x1EC], "minor": r[0x1ED], "major": r[0x1EE]},
        "launch_tcb": tcb(0x1F0), "launch_mit_vector": null, "current_mit_vector": null,
        "signature": {"r": bytes(0x2A0, 72), "s": bytes(0x2E8, 72)},
    })
}

#[test]
fn snp_coco_object_form_and_cert_chain_entries_verify() {
    for (rep, vcek, at) in [
        (data("snp/trustee-test-report.bin"), "snp/trustee-test-vcek.der", now()),
        (data("snp/trustee-test-vlek-report.bin"), "snp/trustee-test-vlek.der", VLEK_AT),
        (milan_hex_report(), "snp/virtee-vcek_milan.der", now()),
    ] {
        let cert_type = if vcek.contains("vlek") { "VLEK" } else { "VCEK" };
        let ev = json!({
            "attestation_report": report_object(&rep),
            "cert_chain": [{"cert_type": cert_type, "data": data(vcek)}],
        });
        let parsed = snp::parse_evidence(&ev).unwrap();
        assert_eq!(parsed.report, rep, "object form re-encodes to the signed bytes ({vcek})");
        snp::verify_report(&parsed.report, &parsed.certs, &SnpTrust::default(), at).unwrap();
    }
    // GUID-named entries, and a hex report_data string.
    let rep = data("snp/trustee-test-report.bin");
    let mut obj = report_object(&rep);
    obj["report_data"] = json!(hex::encode(&rep[0x50..0x90]));
    let ev = json!({"attestation_report": obj,
        "cert_chain": [{"cert_type": "63da758d-e664-4564-adc5-f4b93be8accd", "data": data("snp/trustee-test-vcek.der")}]});
    let parsed = snp::parse_evidence(&ev).unwrap();
    assert_eq!(parsed.report, rep);
    assert_eq!(parsed.certs[0].kind, "vcek");
    // Hostile object forms are malformed, not panics.
    for bad in [
        json!({"attestation_report": {"version": 2}}),
        json!({"attestation_report": {"version": 2, "signature": {"r": [1, 2], "s": []}}}),
        json!({"attestation_report": {"version": 99999999999u64, "signature": {}}}),
        json!({"attestation_report": "AAAA"}),
        json!({"attestation_report": STANDARD.encode(&rep), "cert_chain": 5}),
    ] {
        let r = snp::parse_evidence(&bad)
            .and_then(|e| snp::verify_report(&e.report, &e.certs, &SnpTrust::default(), now()));
        assert_eq!(r.unwrap_err().reason, Reason::MalformedEvidence, "{bad}");
    }
}

fn guid_bytes(text: &str) -> [u8; 16] {
    let h = hex::decode(text.replace('-', "")).unwrap();
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&[h[3], h[2], h[1], h[0]]);
    b[4..6].copy_from_slice(&[h[5], h[4]]);
    b[6..8].copy_from_slice(&[h[7], h[6]]);
    b[8..].copy_from_slice(&h[8..]);
    b
}

#[test]
fn snp_certificate_table_and_vcek_directory_fallbacks() {
    let rep = data("snp/trustee-test-report.bin");
    let vcek = data("snp/trustee-test-vcek.der");
    let mut table = Vec::new();
    table.extend_from_slice(&guid_bytes("63da758d-e664-4564-adc5-f4b93be8accd"));
    table.extend_from_slice(&48u32.to_le_bytes());
    table.extend_from_slice(&(vcek.len() as u32).to_le_bytes());
    table.extend_from_slice(&[0u8; 24]);
    table.extend_from_slice(&vcek);
    let ev = json!({"attestation_report": STANDARD.encode(&rep), "cert_table": STANDARD.encode(&table)});
    let p = snp::parse_evidence(&ev).unwrap();
    snp::verify_report(&p.report, &p.certs, &SnpTrust::default(), now()).unwrap();
    // A hostile table (certificate outside it) fails cleanly.
    let mut bad = table.clone();
    bad[16..20].copy_from_slice(&u32::MAX.to_le_bytes());
    let ev = json!({"attestation_report": STANDARD.encode(&rep), "cert_table": STANDARD.encode(&bad)});
    assert_eq!(snp::parse_evidence(&ev).unwrap_err().reason, Reason::MalformedEvidence);
    // An empty table (terminator only): no VCEK from the guest, none configured.
    let ev = json!({"attestation_report": STANDARD.encode(&rep), "cert_table": STANDARD.encode([0u8; 24])});
    let p = snp::parse_evidence(&ev).unwrap();
    assert!(p.certs.is_empty());
    let d = snp::verify_report(&p.report, &p.certs, &SnpTrust::default(), now()).unwrap_err();
    assert_eq!(d.reason, Reason::CollateralUnavailable, "{d}");
    // ... falls back to a VCEK directory holding several chips' VCEKs and junk.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.der"), data("snp/virtee-vcek_milan.der")).unwrap();
    std::fs::write(dir.path().join("b.der"), &vcek).unwrap();
    std::fs::write(dir.path().join("junk.txt"), b"not a cert").unwrap();
    let t = SnpTrust { vcek_dir: Some(dir.path().into()), ..Default::default() };
    let c = snp::verify_report(&p.report, &p.certs, &t, now()).unwrap();
    assert_eq!(c.generation, "milan");
    std::fs::remove_file(dir.path().join("b.der")).unwrap();
    let d = snp::verify_report(&p.report, &p.certs, &t, now()).unwrap_err();
    assert_eq!(d.reason, Reason::CollateralUnavailable, "{d}");
}

#[test]
fn offline_inputs_accept_raw_hex_and_json() {
    let inp = OfflineInputs {
        evidence: data("snp/virtee-report_milan.hex"),
        snp: SnpTrust {
            vcek: Some(openssl::x509::X509::from_der(&data("snp/virtee-vcek_milan.der")).unwrap()),
            ..Default::default()
        },
        at: now(),
        ..Default::default()
    };
    assert!(matches!(offline::verify(OfflineTee::Snp, &inp).unwrap(), Claims::Snp(_)));
    let inp = OfflineInputs {
        evidence: data("tdx/tdx_quote"),
        collateral: Some(data("tdx/tdx_quote_collateral.json")),
        at: TDX_AT,
        ..Default::default()
    };
    assert!(matches!(offline::verify(OfflineTee::Tdx, &inp).unwrap(), Claims::Tdx(_)));
    let d = offline::verify(OfflineTee::Tdx, &OfflineInputs { collateral: None, ..inp }).unwrap_err();
    assert_eq!(d.reason, Reason::CollateralUnavailable);
    assert_eq!(offline::parse_instant("2025-06-27T04:53:20Z").unwrap(), TDX_AT);
    assert_eq!(offline::parse_instant("1751000000").unwrap(), TDX_AT);
    assert!(offline::parse_instant("yesterday").is_err());
}

// ---- init-data bound to the report (issue 25) --------------------------------------

fn sent_initdata() -> kbs_types::InitData {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/initdata/initdata.toml");
    kbs_types::InitData { format: "toml".into(), body: std::fs::read_to_string(p).unwrap() }
}

/// The genuine reports were launched without init-data: their HOST_DATA / MRCONFIGID
/// is all zeros. A guest that sends init-data with them is refused; without it, it
/// passes only while the policy accepts unbound guests.
fn zero_field_refuses_initdata_and_unbound_needs_the_policy(claims: Claims, field: &str) {
    assert!(field.chars().all(|c| c == '0'), "the sample's field is not all zeros: {field}");
    let d = kbs_server::initdata::bind(&claims, Some(&sent_initdata())).unwrap_err();
    assert_eq!(d.reason, Reason::InitdataMismatch, "{d}");
    assert!(d.detail.contains(field), "the detail names the report's value: {d}");
    assert_eq!(kbs_server::initdata::bind(&claims, None).unwrap(), None);
    let default = BrokerPolicy::parse("default_policy: {released_resources: []}").unwrap();
    default.initdata.check(None).unwrap();
    let required = BrokerPolicy::parse("default_policy: {initdata: {required: true}}").unwrap();
    assert_eq!(required.initdata.check(None).unwrap_err().reason, Reason::InitdataMissing);
}

#[test]
fn snp_genuine_reports_with_zero_host_data_refuse_initdata() {
    let trust = SnpTrust::default();
    for (rep, vcek) in [
        (data("snp/trustee-test-report.bin"), "snp/trustee-test-vcek.der"),
        (milan_hex_report(), "snp/virtee-vcek_milan.der"),
    ] {
        let c = snp::verify_report(&rep, &[cert("vcek", vcek)], &trust, now()).unwrap();
        let field = c.host_data.clone();
        assert_eq!(field.len(), 64);
        zero_field_refuses_initdata_and_unbound_needs_the_policy(Claims::Snp(c), &field);
    }
}

#[test]
fn tdx_genuine_quote_with_zero_mrconfigid_refuses_initdata() {
    let c = tdx::verify_quote(
        &data("tdx/tdx_quote"),
        &collateral("tdx/tdx_quote_collateral.json"),
        tdx::INTEL_SGX_ROOT_CA_DER,
        TDX_AT,
    )
    .unwrap();
    let field = c.mr_config_id.clone();
    assert_eq!(field.len(), 96);
    zero_field_refuses_initdata_and_unbound_needs_the_policy(Claims::Tdx(c), &field);
}

/// The same verified claims with the field the host would have set for the vector
/// (`testdata/initdata/expected.json`, computed with hashlib) bind it.
#[test]
fn report_fields_holding_the_vector_digest_bind_the_initdata() {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/initdata/expected.json");
    let want: Value = serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap();
    let mut s = snp::verify_report(
        &data("snp/trustee-test-report.bin"),
        &[cert("vcek", "snp/trustee-test-vcek.der")],
        &SnpTrust::default(),
        now(),
    )
    .unwrap();
    s.host_data = want["snp_host_data"].as_str().unwrap().into();
    let bound = kbs_server::initdata::bind(&Claims::Snp(s), Some(&sent_initdata())).unwrap().unwrap();
    assert_eq!(bound.digest, want["digest"]);
    assert!(bound.entry("cdh.toml").unwrap().contains("[kbc]"));
    let mut t = tdx::verify_quote(
        &data("tdx/tdx_quote"),
        &collateral("tdx/tdx_quote_collateral.json"),
        tdx::INTEL_SGX_ROOT_CA_DER,
        TDX_AT,
    )
    .unwrap();
    t.mr_config_id = want["tdx_mrconfigid"].as_str().unwrap().into();
    kbs_server::initdata::bind(&Claims::Tdx(t.clone()), Some(&sent_initdata())).unwrap().unwrap();
    // SNP's 32 bytes are not TDX's 48: the SNP value in MRCONFIGID does not bind.
    t.mr_config_id = format!("{}{}", want["snp_host_data"].as_str().unwrap(), "00".repeat(16));
    let d = kbs_server::initdata::bind(&Claims::Tdx(t), Some(&sent_initdata())).unwrap_err();
    assert_eq!(d.reason, Reason::InitdataMismatch);
}

/// The guest's own pre-check (`kbs_client::attester::check_initdata`) reads MRCONFIGID
/// where DCAP's quote parser does, for v4 and v5 quotes: a digest patched in at the
/// guest's offset is the `mr_config_id` dcap-qvl reads.
#[test]
fn guest_precheck_reads_mrconfigid_where_the_quote_parser_does() {
    for rel in ["tdx/tdx_quote", "tdx/tdx_quote_outdated"] {
        let mut q = data(rel);
        let (off, len) = kbs_client::attester::initdata_field_range(kbs_types::Tee::Tdx, &q).unwrap();
        let marker: Vec<u8> = (1..=len as u8).collect();
        q[off..off + len].copy_from_slice(&marker);
        let parsed = dcap_qvl::quote::Quote::parse(&q).unwrap();
        let td = parsed.report.as_td10().unwrap();
        assert_eq!(td.mr_config_id.to_vec(), marker, "{rel}");
    }
}
