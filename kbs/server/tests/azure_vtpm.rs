//! Azure confidential VMs (az-snp-vtpm, az-tdx-vtpm): genuine Azure evidence offline
//! (every evidence version attestation-agent has emitted), each link of the chain
//! tampered, and the broker's online path with evidence this test builds (a synthetic
//! SNP report signed by a test VCEK chain, a TPM quote signed by a test AK), since
//! genuine evidence cannot carry this session's nonce.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::PathBuf;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use common::*;
use kbs_server::claims::Claims;
use kbs_server::verifier::offline::{self, OfflineInputs, OfflineTee};
use openssl::hash::MessageDigest;
use openssl::pkey::{PKey, Private};
use openssl::rsa::Rsa;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

/// Inside every genuine sample's VCEK window (and the ARKs').
const AT: u64 = 1_767_225_600; // 2026-01-01T00:00:00Z

fn data(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/attestation/azure").join(name)
}

fn read_json(name: &str) -> Value {
    serde_json::from_slice(&std::fs::read(data(name)).unwrap()).unwrap()
}

fn verify(tee: OfflineTee, evidence: &Value) -> Result<Claims, kbs_server::policy::Denial> {
    offline::verify(
        tee,
        &OfflineInputs { evidence: evidence.to_string().into_bytes(), at: AT, ..Default::default() },
    )
}

fn snp_claims(evidence: &Value) -> kbs_server::verifier::azure::AzSnpClaims {
    match verify(OfflineTee::AzSnpVtpm, evidence) {
        Ok(Claims::AzSnpVtpm(c)) => c,
        other => panic!("{other:?}"),
    }
}

fn b64u(b: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(b)
}

fn unb64u(v: &Value) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(v.as_str().unwrap().trim_end_matches('=')).unwrap()
}

/// v1 evidence from the raw files (HCL report, TPM quote JSON, the VCEK PEM's first cert).
fn raw_snp_v1() -> Value {
    let chain =
        openssl::x509::X509::stack_from_pem(&std::fs::read(data("snp-vcek-chain.pem")).unwrap()).unwrap();
    json!({
        "version": 1,
        "tpm_quote": read_json("snp-tpm-quote-v1.json"),
        "hcl_report": b64u(&std::fs::read(data("snp-hcl-report.bin")).unwrap()),
        "vcek": b64u(&chain[0].to_der().unwrap()),
    })
}

#[test]
fn genuine_azure_snp_evidence_of_every_version_verifies_with_its_claims() {
    // v0 (byte arrays, PEM VCEK) and v1 (hex and base64url) of one VM.
    for name in ["snp-evidence-v0.json", "snp-evidence-v1.json"] {
        let c = snp_claims(&read_json(name));
        assert_eq!(c.vtpm.report_data, hex::encode("challenge"), "{name}");
        assert_eq!(c.vtpm.pcrs["0"], "e15c44796beabf46abcec7c57e590942041e47497e4ec27571c8b7664f48dced");
        assert_eq!(c.vtpm.pcrs.len(), 24);
        assert!(c.sev_snp.measurement.starts_with("6a063be9"), "{}", c.sev_snp.measurement);
        assert_eq!(c.sev_snp.vmpl, 0);
        assert_eq!(c.sev_snp.generation, "milan");
        assert_eq!(c.vtpm.vm_configuration.secure_boot, Some(true));
    }
    // The raw files of another VM, assembled as v1.
    let c = snp_claims(&raw_snp_v1());
    assert_eq!(
        c.sev_snp.measurement,
        "9ac48fcac8a2d88aeeff8d427ad4f2be0e3917c748a18bdf52cc317e7fe20308b459d5ef1a12e0c22944eb386d17c315"
    );
    assert_eq!(c.vtpm.pcrs["0"], "f3a7e99a5f819a034386bce753a48a73cfdaa0bea0ecfc124bedbf5a8c4799be");
    // v2: the runtime-data hash also in the HCL's user-data.
    let c = snp_claims(&read_json("snp-evidence-v2.json"));
    assert_eq!(c.vtpm.evidence_version, 2);
    assert_eq!(
        c.vtpm.report_data,
        "982f5c6e45df0ed3f10b6f60b02f0c8390e281300f3805e2279c16168cd6ae9aa398f647caa2338748cd0fd9f5f819ef"
    );
    assert_eq!(c.vtpm.pcrs["0"], "84275b2f4312cd4fc6cbe6b152ad3c3683e513d9f1e23c34fca160c8cca7a6a7");
    // A Genoa VM (v0 form, 48-byte nonce).
    let c = snp_claims(&read_json("snp-evidence-genoa.json"));
    assert_eq!(c.sev_snp.generation, "genoa");
    assert!(c.vtpm.report_data.starts_with("0218488bae25d250"), "{}", c.vtpm.report_data);
}

fn refused(tee: OfflineTee, ev: &Value, reason: &str, words: &str) {
    let d = verify(tee, ev).expect_err("tampered evidence verified");
    assert_eq!(d.reason.as_str(), reason, "{d}");
    assert!(d.detail.contains(words), "{d}");
}

#[test]
fn each_link_of_the_azure_chain_tampered_is_refused_naming_it() {
    let good = raw_snp_v1();
    // The quote's extraData (the nonce) changed: the AK signature no longer holds.
    let mut ev = good.clone();
    let mut msg = hex::decode(ev["tpm_quote"]["message"].as_str().unwrap()).unwrap();
    let last = msg.len() - 40;
    msg[last] ^= 1;
    ev["tpm_quote"]["message"] = json!(hex::encode(&msg));
    refused(OfflineTee::AzSnpVtpm, &ev, "invalid_signature", "attestation key");
    // A PCR value the TPM did not quote.
    let mut ev = good.clone();
    ev["tpm_quote"]["pcrs"][11] = json!("ff".repeat(32));
    refused(OfflineTee::AzSnpVtpm, &ev, "measurement_mismatch", "PCR digest");
    // The variable data (another AK could be slipped in): not the hash in the SNP report.
    let mut ev = good.clone();
    let mut hcl = unb64u(&ev["hcl_report"]);
    let at = hcl.windows(10).position(|w| w == b"vmUniqueId").unwrap();
    hcl[at + 14] ^= 1;
    ev["hcl_report"] = json!(b64u(&hcl));
    refused(OfflineTee::AzSnpVtpm, &ev, "report_data_mismatch", "HCL variable data");
    // The SNP report itself: the VCEK signature.
    let mut ev = good.clone();
    let mut hcl = unb64u(&ev["hcl_report"]);
    hcl[32 + 0x90] ^= 1;
    ev["hcl_report"] = json!(b64u(&hcl));
    refused(OfflineTee::AzSnpVtpm, &ev, "invalid_signature", "SNP report signature");
    // A signature of another quote.
    let mut ev = good.clone();
    ev["tpm_quote"]["signature"] = read_json("snp-evidence-v1.json")["tpm_quote"]["signature"].clone();
    refused(OfflineTee::AzSnpVtpm, &ev, "invalid_signature", "HCLAkPub");
    // The TDX VM's HCL report under the SNP verifier, and the reverse.
    let mut ev = good.clone();
    ev["hcl_report"] = json!(b64u(&std::fs::read(data("tdx-hcl-report.bin")).unwrap()));
    refused(OfflineTee::AzSnpVtpm, &ev, "malformed_evidence", "use az-tdx-vtpm");
    let mut ev = read_json("tdx-evidence-v1.json");
    ev["hcl_report"] = good["hcl_report"].clone();
    refused(OfflineTee::AzTdxVtpm, &ev, "malformed_evidence", "use az-snp-vtpm");
    // Shapes: an unknown version, a missing part, 23 PCRs, an oversized report.
    for (k, v, words) in [
        ("version", json!(3), "version 3"),
        ("tpm_quote", Value::Null, "tpm_quote is not an object"),
        ("hcl_report", json!(b64u(&[0u8; 9000])), "at most 8192"),
    ] {
        let mut ev = good.clone();
        ev[k] = v;
        refused(OfflineTee::AzSnpVtpm, &ev, "malformed_evidence", words);
    }
    let mut ev = good.clone();
    ev["tpm_quote"]["pcrs"].as_array_mut().unwrap().pop();
    refused(OfflineTee::AzSnpVtpm, &ev, "malformed_evidence", "23 entries");
}

#[test]
fn genuine_azure_tdx_evidence_passes_the_vtpm_links_and_then_needs_dcap_collateral() {
    // No public collateral covers this Sapphire Rapids FMSPC (00806f050000) inside the
    // PCK's window (see testdata/attestation/azure/README.md): every vTPM link verifies,
    // then DCAP needs collateral, and collateral for another platform is refused.
    for name in ["tdx-evidence-v0.json", "tdx-evidence-v1.json"] {
        let ev = read_json(name);
        // Without collateral: the quote's signature, QE report and PCK chain to Intel's
        // root are verified, and the refusal says so, with the README's MRTD, and what a
        // TCB status needs.
        refused(
            OfflineTee::AzTdxVtpm,
            &ev,
            "collateral_unavailable",
            "PCK chain to Intel's root verify (MRTD 024a32b070383331181619fa387cb4d55d1e38879f989933055ccad5bc2db795d1737b66205949d15469dc8c1ba7ab7b); its TCB status needs Intel's collateral for FMSPC 00806f050000",
        );
        let inp = OfflineInputs {
            evidence: ev.to_string().into_bytes(),
            collateral: Some(
                std::fs::read(
                    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                        .join("../../testdata/attestation/tdx/tdx_quote_collateral.json"),
                )
                .unwrap(),
            ),
            at: AT,
            ..Default::default()
        };
        let d = offline::verify(OfflineTee::AzTdxVtpm, &inp).expect_err("foreign collateral accepted");
        assert_ne!(d.reason.as_str(), "malformed_evidence", "{d}");
        // Tampered vTPM links are refused before any collateral is asked for.
        let mut bad = ev.clone();
        bad["tpm_quote"]["pcrs"][0] =
            if name.ends_with("v0.json") { json!(vec![0u8; 32]) } else { json!("00".repeat(32)) };
        refused(OfflineTee::AzTdxVtpm, &bad, "measurement_mismatch", "PCR digest");
        let mut bad = ev.clone();
        let mut hcl = match &ev["hcl_report"] {
            Value::Array(a) => a.iter().map(|x| x.as_u64().unwrap() as u8).collect(),
            v => unb64u(v),
        };
        let at = hcl.windows(10).position(|w| w == b"vmUniqueId").unwrap();
        hcl[at + 14] ^= 1;
        bad["hcl_report"] = json!(b64u(&hcl));
        refused(OfflineTee::AzTdxVtpm, &bad, "report_data_mismatch", "TD quote report_data");
    }
    // The TD quote's own links, without collateral: its body, its QE report, its time.
    let quote = std::fs::read(data("tdx-td-quote.bin")).unwrap();
    let with_quote = |q: &[u8]| {
        let mut ev = read_json("tdx-evidence-v1.json");
        ev["td_quote"] = json!(b64u(q));
        ev
    };
    let mut q = quote.clone();
    q[48 + 136] ^= 1; // a byte of MRTD
    refused(OfflineTee::AzTdxVtpm, &with_quote(&q), "invalid_signature", "header and TD report");
    let mut q = quote.clone();
    q[632 + 4 + 128 + 6 + 10] ^= 1; // a byte inside the QE report
    refused(OfflineTee::AzTdxVtpm, &with_quote(&q), "invalid_signature", "QE report");
    let inp = OfflineInputs {
        evidence: with_quote(&quote).to_string().into_bytes(),
        at: 1_600_000_000,
        ..Default::default()
    };
    let d = offline::verify(OfflineTee::AzTdxVtpm, &inp).unwrap_err();
    assert_eq!(d.reason.as_str(), "cert_chain_invalid", "{d}");
    assert!(d.detail.contains("not valid at the verification time"), "{d}");
}

#[test]
fn verify_evidence_cli_prints_azure_claims_and_exits_by_verdict() {
    let bin = env!("CARGO_BIN_EXE_cloak-kbs");
    let out = std::process::Command::new(bin)
        .args([
            "verify-evidence",
            "--tee",
            "az-snp-vtpm",
            "--at",
            "2026-01-01T00:00:00Z",
            "--json",
            "--evidence",
        ])
        .arg(data("snp-evidence-v1.json"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["tee"], "az-snp-vtpm");
    assert_eq!(v["vtpm"]["pcrs"]["0"], "e15c44796beabf46abcec7c57e590942041e47497e4ec27571c8b7664f48dced");
    // A policy pinning PCR 11 to another value refuses, naming the PCR.
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("p.yaml");
    std::fs::write(
        &policy,
        format!(
            "default_policy:\n  required_attestation:\n    az_snp_vtpm:\n      pcrs: {{\"11\": [\"{}\"]}}\n  released_resources: []\n",
            "ee".repeat(32)
        ),
    )
    .unwrap();
    let out = std::process::Command::new(bin)
        .args(["verify-evidence", "--tee", "az-snp-vtpm", "--at", "2026-01-01T00:00:00Z", "--evidence"])
        .arg(data("snp-evidence-v1.json"))
        .arg("--policy")
        .arg(&policy)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("measurement_mismatch") && err.contains("PCR 11"), "{err}");
    // TDX without collateral: exit non-zero, saying what is missing.
    let out = std::process::Command::new(bin)
        .args(["verify-evidence", "--tee", "az-tdx-vtpm", "--evidence"])
        .arg(data("tdx-evidence-v1.json"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--collateral"));
}

// ---- the broker, online, with evidence built here ----------------------------------

/// A guest on an "Azure SNP VM" whose hardware is the test VCEK chain and whose vTPM
/// is an RSA key made here.
struct AzGuest {
    ak: PKey<Private>,
    pcrs: Vec<[u8; 32]>,
}

fn extend(pcr: &[u8; 32], digest: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(pcr);
    h.update(digest);
    h.finalize().into()
}

impl AzGuest {
    fn new() -> Self {
        let ak = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
        let pcrs = (0..24u8).map(|i| if i == 8 { [0; 32] } else { [i; 32] }).collect();
        AzGuest { ak, pcrs }
    }

    /// The variable data binding the AK and `user_data` (the runtime-data hash,
    /// zero-padded to the index's 64 bytes).
    fn var_data(&self, user_data: &[u8]) -> Vec<u8> {
        let mut ud = [0u8; 64];
        ud[..user_data.len()].copy_from_slice(user_data);
        let public = PKey::public_key_from_der(&self.ak.public_key_to_der().unwrap()).unwrap();
        test_support::swtpm::hcl_var_data(&public, &ud)
    }

    fn hcl_report(hw: &[u8], var: &[u8], report_type: u32) -> Vec<u8> {
        test_support::swtpm::hcl_report(report_type, hw, var)
    }

    /// A TPMS_ATTEST quoting all 24 SHA-256 PCRs with `extra`, signed by the AK.
    fn quote(&self, extra: &[u8]) -> Value {
        let mut m = Vec::new();
        m.extend(0xff54_4347u32.to_be_bytes());
        m.extend(0x8018u16.to_be_bytes());
        m.extend(34u16.to_be_bytes());
        m.extend([0x00, 0x0b]);
        m.extend([0x5a; 32]);
        m.extend((extra.len() as u16).to_be_bytes());
        m.extend(extra);
        m.extend(1234u64.to_be_bytes());
        m.extend(7u32.to_be_bytes());
        m.extend(0u32.to_be_bytes());
        m.push(1);
        m.extend(0x2020_0312_0012_0003u64.to_be_bytes());
        m.extend(1u32.to_be_bytes());
        m.extend(0x000bu16.to_be_bytes());
        m.extend([3, 0xff, 0xff, 0xff]);
        let mut h = Sha256::new();
        for p in &self.pcrs {
            h.update(p);
        }
        m.extend(32u16.to_be_bytes());
        m.extend(h.finalize());
        let mut s = openssl::sign::Signer::new(MessageDigest::sha256(), &self.ak).unwrap();
        s.update(&m).unwrap();
        json!({"signature": hex::encode(s.sign_to_vec().unwrap()), "message": hex::encode(&m),
               "pcrs": self.pcrs.iter().map(hex::encode).collect::<Vec<_>>()})
    }

    /// v2 evidence binding `rd` (the 48-byte runtime-data hash).
    fn snp_evidence(&self, chain: &SnpChain, f: &SnpFields, rd: &[u8], vcek: bool) -> Value {
        let var = self.var_data(rd);
        let report = snp_report(f, &Sha256::digest(&var), &chain.vcek_key);
        let mut ev = json!({"version": 2, "tpm_quote": self.quote(rd),
                            "hcl_report": b64u(&Self::hcl_report(&report, &var, 2))});
        if vcek {
            let der = openssl::x509::X509::from_pem(&chain.vcek_pem).unwrap().to_der().unwrap();
            ev["vcek"] = json!(b64u(&der));
        }
        ev
    }
}

fn az_policy(pcrs: &str) -> String {
    format!(
        "default_policy:\n  required_attestation:\n    az_snp_vtpm:\n      sev_snp: {{measurement: [\"{}\"]}}\n      pcrs: {pcrs}\n  released_resources: [\"default/*\"]\n",
        "ab".repeat(48)
    )
}

#[tokio::test]
async fn broker_releases_to_an_azure_snp_guest_and_refuses_each_broken_binding() {
    let chain_dir = tempfile::tempdir().unwrap();
    let chain = snp_chain(chain_dir.path());
    let (ark, ask) = (chain.ark.clone(), chain.ask.clone());
    let guest = AzGuest::new();
    let pcr11 = hex::encode([11u8; 32]);
    let b = start(&az_policy(&format!("{{\"11\": [\"{pcr11}\"]}}")), move |c, _| {
        c.snp.ark = Some(ark);
        c.snp.ask = Some(ask);
    })
    .await;
    assert_eq!(b.put("default/key/az", b"az-secret").await.status(), 200);

    let r = auth(&b.url, "az-snp-vtpm", json!({})).await;
    let (s, v) = r.attest(guest.snp_evidence(&chain, &SnpFields::default(), &r.report_data(), true)).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = r.get(v["token"].as_str(), "default/key/az").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(r.tee_key.decrypt(&v), b"az-secret");

    // Another session's nonce in the quote.
    let r = auth(&b.url, "az-snp-vtpm", json!({})).await;
    let (s, v) = r.attest(guest.snp_evidence(&chain, &SnpFields::default(), &[7; 48], true)).await;
    assert_eq!(s, 401);
    assert!(v["detail"].as_str().unwrap().starts_with("report_data_mismatch"), "{v}");
    // The right nonce in the quote, another one in the HCL user-data (v2).
    let r = auth(&b.url, "az-snp-vtpm", json!({})).await;
    let rd = r.report_data();
    let var = guest.var_data(&[9; 48]);
    let report = snp_report(&SnpFields::default(), &Sha256::digest(&var), &chain.vcek_key);
    let mut ev = guest.snp_evidence(&chain, &SnpFields::default(), &rd, true);
    ev["hcl_report"] = json!(b64u(&AzGuest::hcl_report(&report, &var, 2)));
    let (s, v) = r.attest(ev).await;
    assert_eq!(s, 401);
    assert!(v["detail"].as_str().unwrap().contains("user-data"), "{v}");
    // The pinned PCR 11 holds something else.
    let mut other = AzGuest::new();
    other.pcrs[11] = [0xEE; 32];
    let r = auth(&b.url, "az-snp-vtpm", json!({})).await;
    let (s, v) = r.attest(other.snp_evidence(&chain, &SnpFields::default(), &r.report_data(), true)).await;
    assert_eq!(s, 401);
    assert!(v["detail"].as_str().unwrap().contains("PCR 11"), "{v}");
    // The SNP measurement is still the policy's to pin.
    let r = auth(&b.url, "az-snp-vtpm", json!({})).await;
    let f = SnpFields { measurement: [0xAC; 48], ..Default::default() };
    let (s, v) = r.attest(guest.snp_evidence(&chain, &f, &r.report_data(), true)).await;
    assert_eq!(s, 401);
    assert!(v["detail"].as_str().unwrap().starts_with("measurement_mismatch"), "{v}");
    // Genuine Azure evidence carries another session's nonce (and another chain).
    let r = auth(&b.url, "az-snp-vtpm", json!({})).await;
    assert_eq!(r.attest(read_json("snp-evidence-v2.json")).await.0, 401);
    // A policy without the az_snp_vtpm section does not admit Azure VMs.
    std::fs::write(&b.policy_path, SAMPLE_POLICY).unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    let r = auth(&b.url, "az-snp-vtpm", json!({})).await;
    let (s, v) = r.attest(guest.snp_evidence(&chain, &SnpFields::default(), &r.report_data(), true)).await;
    assert_eq!(s, 401);
    assert!(v["detail"].as_str().unwrap().contains("az_snp_vtpm"), "{v}");
}

#[tokio::test]
async fn azure_init_data_is_bound_through_pcr8_and_a_missing_vcek_comes_from_the_broker() {
    let chain_dir = tempfile::tempdir().unwrap();
    let chain = snp_chain(chain_dir.path());
    let (ark, ask, vcek) = (chain.ark.clone(), chain.ask.clone(), chain.dir.join("vcek.pem"));
    let b = start(&az_policy("{}"), move |c, _| {
        c.snp.ark = Some(ark);
        c.snp.ask = Some(ask);
        // The guest could not reach the instance metadata service: the broker's VCEK.
        c.snp.vcek = Some(vcek);
    })
    .await;
    assert_eq!(b.put("default/key/az", b"az-secret").await.status(), 200);
    let doc =
        "version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\npod = \"az-pod\"\nnamespace = \"az-ns\"\n";
    let digest = Sha256::digest(doc.as_bytes());
    let mut guest = AzGuest::new();
    guest.pcrs[8] = extend(&[0; 32], &digest);

    let r = auth(&b.url, "az-snp-vtpm", json!({})).await;
    let ev = guest.snp_evidence(&chain, &SnpFields::default(), &r.report_data(), false);
    let (s, v) = r.attest_with(ev, Some(doc)).await;
    assert_eq!(s, 200, "{v}");
    assert!(b.metrics().await.contains("pod=\"az-pod\""), "the verified init-data names the pod");

    // Another document than the one PCR 8 holds.
    let r = auth(&b.url, "az-snp-vtpm", json!({})).await;
    let ev = guest.snp_evidence(&chain, &SnpFields::default(), &r.report_data(), false);
    let (s, v) = r.attest_with(ev, Some(&doc.replace("az-pod", "other-pod"))).await;
    assert_eq!(s, 401);
    assert!(v["detail"].as_str().unwrap().starts_with("initdata_mismatch"), "{v}");
    // sha384 init-data cannot be in a SHA-256 PCR: said so.
    let r = auth(&b.url, "az-snp-vtpm", json!({})).await;
    let ev = guest.snp_evidence(&chain, &SnpFields::default(), &r.report_data(), false);
    let (s, v) = r.attest_with(ev, Some(&doc.replace("sha256", "sha384"))).await;
    assert_eq!(s, 401);
    assert!(
        v["detail"].as_str().unwrap().contains("use algorithm = \\\"sha256\\\"")
            || v["detail"].as_str().unwrap().contains("use algorithm = \"sha256\""),
        "{v}"
    );
}

/// The broker's az-tdx-vtpm path: genuine Azure TDX evidence passes the vTPM links and
/// then needs collateral the broker has no source for; a tampered quote is refused for
/// what it is before any collateral is asked for.
#[tokio::test]
async fn broker_checks_azure_tdx_vtpm_links_before_asking_for_collateral() {
    let b = start(
        "default_policy:\n  required_attestation:\n    az_tdx_vtpm: {pcrs: {}}\n  released_resources: [\"default/*\"]\n",
        |_, _| {},
    )
    .await;
    let r = auth(&b.url, "az-tdx-vtpm", json!({})).await;
    let (s, v) = r.attest(read_json("tdx-evidence-v1.json")).await;
    assert_eq!(s, 401);
    assert!(v["detail"].as_str().unwrap().starts_with("collateral_unavailable"), "{v}");
    let mut ev = read_json("tdx-evidence-v1.json");
    ev["tpm_quote"]["pcrs"][3] = json!("ff".repeat(32));
    let r = auth(&b.url, "az-tdx-vtpm", json!({})).await;
    let (s, v) = r.attest(ev).await;
    assert_eq!(s, 401);
    assert!(v["detail"].as_str().unwrap().starts_with("measurement_mismatch"), "{v}");
    let m = b.metrics().await;
    assert_eq!(
        metric(&m, "coco_attestation_failure_total", &["reason=\"collateral_unavailable\""]),
        1,
        "{m}"
    );
}
