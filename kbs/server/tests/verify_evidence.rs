//! `cloak-kbs verify-evidence` through the real binary, as in the Interface:
//! exit 0 only when the evidence verifies (and the policy accepts it), 1 with a clear
//! reason otherwise; `--json` prints the claims with lowercase hex.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const BIN: &str = env!("CARGO_BIN_EXE_cloak-kbs");

fn td(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/attestation").join(rel)
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN).arg("verify-evidence").args(args).output().unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn tdx_quote_verifies_at_its_instant_with_json_claims() {
    let (q, c) = (td("tdx/tdx_quote"), td("tdx/tdx_quote_collateral.json"));
    let out =
        run(&["--tee", "tdx", "--evidence", s(&q), "--collateral", s(&c), "--at", "1751000000", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["tee"], "tdx");
    assert_eq!(v["tcb_status"], "UpToDate");
    let mr_td = v["mr_td"].as_str().unwrap();
    assert_eq!(mr_td.len(), 96);
    assert!(mr_td.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)), "{mr_td}");
    // RFC 3339 works the same.
    let out =
        run(&["--tee", "tdx", "--evidence", s(&q), "--collateral", s(&c), "--at", "2025-06-27T04:53:20Z"]);
    assert!(out.status.success());
    // Expired collateral: exit 1 with the reason.
    let out = run(&["--tee", "tdx", "--evidence", s(&q), "--collateral", s(&c), "--at", "1790000000"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("collateral_expired"), "{out:?}");
    // No collateral: exit 1, named.
    let out = run(&["--tee", "tdx", "--evidence", s(&q), "--at", "1751000000"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--collateral"), "{out:?}");
}

#[test]
fn tdx_tampered_quote_and_policy_refusals_exit_1() {
    let d = tempfile::tempdir().unwrap();
    let c = td("tdx/tdx_quote_collateral.json");
    let mut q = std::fs::read(td("tdx/tdx_quote")).unwrap();
    q[48 + 200] ^= 0x80;
    let bad = d.path().join("bad-quote");
    std::fs::write(&bad, &q).unwrap();
    let out =
        run(&["--tee", "tdx", "--evidence", s(&bad), "--collateral", s(&c), "--at", "1751000000", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["reason"], "invalid_signature");
    // A policy that wants another MRTD refuses the genuine quote.
    let pol = d.path().join("policy.yaml");
    std::fs::write(
        &pol,
        format!("default_policy:\n  required_attestation:\n    tdx: {{mr_td: [\"{}\"]}}\n", "00".repeat(48)),
    )
    .unwrap();
    let out = run(&[
        "--tee",
        "tdx",
        "--evidence",
        s(&td("tdx/tdx_quote")),
        "--collateral",
        s(&c),
        "--at",
        "1751000000",
        "--policy",
        s(&pol),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("measurement_mismatch"), "{out:?}");
    // The v5 outdated sample: no TCB level matches.
    let out = run(&[
        "--tee",
        "tdx",
        "--evidence",
        s(&td("tdx/tdx_quote_outdated")),
        "--collateral",
        s(&td("tdx/tdx_quote_outdated_collateral.json")),
        "--at",
        "1772400000",
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("tcb_level_unmatched"), "{out:?}");
}

#[test]
fn snp_reports_with_vcek_file_dir_and_bad_vcek() {
    let rep = td("snp/trustee-test-report.bin");
    let out = run(&[
        "--tee",
        "snp",
        "--evidence",
        s(&rep),
        "--vcek",
        s(&td("snp/trustee-test-vcek.der")),
        "--json",
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["tee"], "snp");
    assert_eq!(v["generation"], "milan");
    let m = v["measurement"].as_str().unwrap();
    assert_eq!(m, m.to_ascii_lowercase());
    // The hex report with a VCEK directory.
    let d = tempfile::tempdir().unwrap();
    std::fs::copy(td("snp/virtee-vcek_milan.der"), d.path().join("v.der")).unwrap();
    let out = run(&[
        "--tee",
        "snp",
        "--evidence",
        s(&td("snp/virtee-report_milan.hex")),
        "--vcek-dir",
        d.path().to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The VLEK report at an instant its VLEK was valid, and today (expired).
    let vlek = td("snp/trustee-test-vlek.der");
    let vrep = td("snp/trustee-test-vlek-report.bin");
    let out =
        run(&["--tee", "snp", "--evidence", s(&vrep), "--vcek", s(&vlek), "--at", "2025-06-01T00:00:00Z"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run(&["--tee", "snp", "--evidence", s(&vrep), "--vcek", s(&vlek)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("expired"), "{out:?}");
    // Invalid VCEK files: a clear error naming the file.
    for bad in ["snp/trustee-test-vcek-invalid-legacy.der", "snp/trustee-test-vcek-invalid-new.der"] {
        let out = run(&["--tee", "snp", "--evidence", s(&rep), "--vcek", s(&td(bad))]);
        assert_eq!(out.status.code(), Some(1), "{bad}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!err.trim().is_empty(), "{bad}");
    }
    let junk = d.path().join("junk.der");
    std::fs::write(&junk, b"junk").unwrap();
    let out = run(&["--tee", "snp", "--evidence", s(&rep), "--vcek", s(&junk)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("junk.der: not a DER or PEM"), "{out:?}");
}

/// Issue 27: with `--json`, a refusal and a failure both carry `error` (the chain on one
/// line) and `chain`; stderr says each clause once.
#[test]
fn verify_evidence_json_failures_carry_the_chain_once() {
    let (vlek, vrep) = (td("snp/trustee-test-vlek.der"), td("snp/trustee-test-vlek-report.bin"));
    let out = run(&["--tee", "snp", "--evidence", s(&vrep), "--vcek", s(&vlek), "--json"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["verified"], false, "{v}");
    let (reason, detail) = (v["reason"].as_str().unwrap(), v["detail"].as_str().unwrap());
    assert_eq!(v["error"], format!("{reason}: {detail}"), "{v}");
    assert_eq!(v["chain"], serde_json::json!([format!("{reason}: {detail}")]), "{v}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(report::repeated_clause(&err), None, "{err}");

    let missing = "/nonexistent/cloak-evidence";
    let out = run(&["--tee", "snp", "--evidence", missing, "--json"]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let line = v["error"].as_str().unwrap();
    assert!(line.starts_with(&format!("cannot read {missing}: ")), "{v}");
    assert!(v["chain"].is_array(), "{v}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.trim(), format!("cloak-kbs: {line}"));
    assert_eq!(report::repeated_clause(&err), None, "{err}");
}
