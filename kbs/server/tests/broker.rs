//! Loopback tests of the broker through the wire protocol: sample, SNP and TDX
//! evidence; every policy failure with its metric reason; hot reload; admin auth;
//! malformed and oversized input.

#![allow(clippy::unwrap_used)]

mod common;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use common::*;
use serde_json::json;

/// A guest bound to init-data naming pod web-1 in shop: the labels come from there,
/// not from the `/auth` extra-params (which say otherwise here).
async fn attest_sample(b: &Broker) -> (Rcar, String) {
    let r = auth(&b.url, "sample", json!({"pod":"claimed","namespace":"claimed"})).await;
    let (doc, digest) = initdata_for("web-1", "shop");
    let (s, v) = r.attest_with(sample_evidence_bound(&r.report_data(), &digest), Some(&doc)).await;
    assert_eq!(s, 200, "{v}");
    let t = v["token"].as_str().unwrap().to_string();
    (r, t)
}

#[tokio::test]
async fn sample_rcar_releases_resource_with_bearer_and_cookie() {
    let b = start(SAMPLE_POLICY, |_, _| {}).await;
    assert_eq!(b.put("default/image-kek/1", b"0123456789abcdef0123456789abcdef").await.status(), 200);
    let (r, token) = attest_sample(&b).await;
    let (s, v) = r.get(Some(&token), "default/image-kek/1").await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(r.tee_key.decrypt(&v), b"0123456789abcdef0123456789abcdef");
    let (s, v) = r.get(None, "default/image-kek/1").await;
    assert_eq!(s, 200, "cookie path: {v}");
    assert_eq!(r.tee_key.decrypt(&v), b"0123456789abcdef0123456789abcdef");
    // Unknown resource: 404; outside released_resources: 403.
    assert_eq!(r.get(Some(&token), "default/image-kek/2").await.0, 404);
    assert_eq!(b.put("other/key/1", b"x").await.status(), 200);
    assert_eq!(r.get(Some(&token), "other/key/1").await.0, 403);
    let m = b.metrics().await;
    assert_eq!(metric(&m, "coco_attestation_attempts_total", &["pod=\"web-1\"", "namespace=\"shop\""]), 1);
    assert_eq!(metric(&m, "coco_attestation_success_total", &["pod=\"web-1\""]), 1);
    assert_eq!(metric(&m, "coco_kbs_resource_releases_total", &["resource=\"default/image-kek/1\""]), 2);
    assert_eq!(metric(&m, "coco_kbs_resource_denials_total", &["other/key/1", "reason=\"not_released\""]), 1);
    assert_eq!(metric(&m, "coco_kbs_resource_denials_total", &["reason=\"not_found\""]), 1);
}

#[tokio::test]
async fn sample_denied_when_allow_false_and_reason_in_metrics() {
    let b = start(
        "default_policy: {required_attestation: {sample: {allow: false}}, released_resources: [\"default/*\"]}",
        |_, _| {},
    )
    .await;
    let r = auth(&b.url, "sample", json!({})).await;
    let (s, v) = r.attest(sample_evidence(&r.report_data())).await;
    assert_eq!(s, 401);
    assert!(v["detail"].as_str().unwrap().starts_with("sample_not_allowed"), "{v}");
    let m = b.metrics().await;
    assert_eq!(
        metric(&m, "coco_attestation_failure_total", &["reason=\"sample_not_allowed\"", "pod=\"unknown\""]),
        1
    );
}

#[tokio::test]
async fn wrong_report_data_and_nonce_are_rejected() {
    let b = start(SAMPLE_POLICY, |_, _| {}).await;
    let r = auth(&b.url, "sample", json!({})).await;
    let (s, _) = r.attest(sample_evidence(&[0u8; 48])).await;
    assert_eq!(s, 401);
    let mut r2 = auth(&b.url, "sample", json!({})).await;
    r2.nonce = "AAAA".into();
    let (s, _) = r2.attest(sample_evidence(&r2.report_data())).await;
    assert_eq!(s, 401);
    let m = b.metrics().await;
    assert_eq!(metric(&m, "coco_attestation_failure_total", &["reason=\"report_data_mismatch\""]), 1);
    assert_eq!(metric(&m, "coco_attestation_failure_total", &["reason=\"nonce_mismatch\""]), 1);
}

#[tokio::test]
async fn policy_hot_reload_applies_to_cached_tokens_and_invalid_policy_keeps_old() {
    let b = start(SAMPLE_POLICY, |_, _| {}).await;
    assert_eq!(b.put("default/key/1", b"k").await.status(), 200);
    let (r, token) = attest_sample(&b).await;
    assert_eq!(r.get(Some(&token), "default/key/1").await.0, 200);
    // allow -> deny, without restart: the already issued token stops working.
    std::fs::write(&b.policy_path, SAMPLE_POLICY.replace("allow: true", "allow: false")).unwrap();
    wait_for(|| !b.broker.policy().sample_allowed).await;
    let (s, v) = r.get(Some(&token), "default/key/1").await;
    assert_eq!(s, 401, "{v}");
    assert!(v["detail"].as_str().unwrap().contains("sample_not_allowed"), "{v}");
    // An invalid file is refused; the deny policy stays.
    std::fs::write(&b.policy_path, "default_policy: {required_attestation: {sample: {allow: tru").unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(400)).await;
    assert!(!b.broker.policy().sample_allowed);
    assert_eq!(b.broker.policy().released, vec!["default/*".to_string()]);
    // deny -> allow again.
    std::fs::write(&b.policy_path, SAMPLE_POLICY).unwrap();
    wait_for(|| b.broker.policy().sample_allowed).await;
    assert_eq!(r.get(Some(&token), "default/key/1").await.0, 200);
    let m = b.metrics().await;
    assert_eq!(metric(&m, "coco_kbs_resource_denials_total", &["reason=\"sample_not_allowed\""]), 1);
}

async fn wait_for(mut f: impl FnMut() -> bool) {
    for _ in 0..100 {
        if f() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("condition not reached within 5 s");
}

#[tokio::test]
async fn admin_api_refuses_bad_expired_missing_jwt_and_writes_nothing() {
    let b = start(SAMPLE_POLICY, |_, _| {}).await;
    let http = reqwest::Client::new();
    let url = format!("{}/kbs/v0/resource/default/key/9", b.url);
    let other = openssl::pkey::PKey::generate_ed25519().unwrap();
    let mut expired = good_admin_claims();
    expired["exp"] = json!(now() - 10);
    let mut no_role = good_admin_claims();
    no_role.as_object_mut().unwrap().remove("role");
    let mut no_exp = good_admin_claims();
    no_exp.as_object_mut().unwrap().remove("exp");
    let tokens = [
        None,
        Some("garbage".to_string()),
        Some(admin_jwt(&other, good_admin_claims())),
        Some(admin_jwt(&b.admin_key, expired)),
        Some(admin_jwt(&b.admin_key, no_role)),
        Some(admin_jwt(&b.admin_key, no_exp)),
    ];
    for t in &tokens {
        let mut req = http.post(&url).body("secret");
        if let Some(t) = t {
            req = req.bearer_auth(t);
        }
        assert_eq!(req.send().await.unwrap().status(), 401, "{t:?}");
        let mut req = http
            .post(format!("{}/kbs/v0/resource-policy", b.url))
            .json(&json!({"policy": "ZGVmYXVsdF9wb2xpY3k6IHt9"}));
        if let Some(t) = t {
            req = req.bearer_auth(t);
        }
        assert_eq!(req.send().await.unwrap().status(), 401);
    }
    assert!(!b.dir.path().join("resources/default/key/9").exists());
    assert!(b.broker.policy().sample_allowed);
    // A good token works, and DELETE removes.
    assert_eq!(b.put("default/key/9", b"v").await.status(), 200);
    assert_eq!(std::fs::read(b.dir.path().join("resources/default/key/9")).unwrap(), b"v");
    let d = http.delete(&url).bearer_auth(admin_jwt(&b.admin_key, good_admin_claims())).send().await.unwrap();
    assert_eq!(d.status(), 200);
    assert!(!b.dir.path().join("resources/default/key/9").exists());
    // Bad segment names are refused.
    assert_eq!(b.put("default/..%2F/x", b"v").await.status(), 400);
}

#[tokio::test]
async fn admin_sets_policy_and_it_is_persisted() {
    use base64::Engine;
    let b = start(SAMPLE_POLICY, |_, _| {}).await;
    let deny = SAMPLE_POLICY.replace("allow: true", "allow: false");
    let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&deny);
    let r = reqwest::Client::new()
        .post(format!("{}/kbs/v0/resource-policy", b.url))
        .bearer_auth(admin_jwt(&b.admin_key, good_admin_claims()))
        .json(&json!({ "policy": enc }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(!b.broker.policy().sample_allowed);
    assert_eq!(std::fs::read_to_string(&b.policy_path).unwrap(), deny);
    // An invalid policy through the API: 400, old one stays.
    let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode("default_policy: {nope: 1}");
    let r = reqwest::Client::new()
        .post(format!("{}/kbs/v0/resource-policy", b.url))
        .bearer_auth(admin_jwt(&b.admin_key, good_admin_claims()))
        .json(&json!({ "policy": enc }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(std::fs::read_to_string(&b.policy_path).unwrap(), deny);
}

#[tokio::test]
async fn malformed_and_oversized_requests_are_4xx() {
    let b = start(SAMPLE_POLICY, |c, _| c.body_limit_bytes = 4096).await;
    let http = reqwest::Client::new();
    let r = http.post(format!("{}/kbs/v0/auth", b.url)).body("{not json").send().await.unwrap();
    assert_eq!(r.status(), 400);
    let r = http
        .post(format!("{}/kbs/v0/auth", b.url))
        .json(&json!({"version":"0.1.0","tee":"sample","extra-params":""}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let rc = auth(&b.url, "sample", json!({})).await;
    let r = http
        .post(format!("{}/kbs/v0/attest", b.url))
        .header("cookie", &rc.cookie)
        .body("[1,2")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let big = vec![b'a'; 8192];
    let r = http.post(format!("{}/kbs/v0/auth", b.url)).body(big.clone()).send().await.unwrap();
    assert_eq!(r.status(), 413);
    let r = http
        .post(format!("{}/kbs/v0/resource/default/key/1", b.url))
        .bearer_auth(admin_jwt(&b.admin_key, good_admin_claims()))
        .body(big)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 413);
    // Attest without a session, resource without a token, tampered token.
    let r = http.post(format!("{}/kbs/v0/attest", b.url)).body("{}").send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = http.get(format!("{}/kbs/v0/resource/default/key/1", b.url)).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let r = http
        .get(format!("{}/kbs/v0/resource/default/key/1", b.url))
        .bearer_auth("a.b.c")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(http.get(format!("{}/healthz", b.url)).send().await.unwrap().status(), 200);
    assert_eq!(http.get(format!("{}/readyz", b.url)).send().await.unwrap().status(), 200);
}

fn snp_policy(extra: &str) -> String {
    format!(
        "default_policy:\n  required_attestation:\n    sev_snp:\n      measurement: [\"{}\"]\n      tcb_min: {{bootloader: 0x06, tee: 0x02, snp: 0x14, microcode: 0x73}}\n      family_id: \"{}\"\n      image_id: \"{}\"\n{extra}  released_resources: [\"default/*\"]\n",
        "ab".repeat(48),
        "11".repeat(16),
        "22".repeat(16)
    )
}

#[tokio::test]
async fn snp_evidence_verified_and_each_failure_has_its_reason() {
    let chain_dir = tempfile::tempdir().unwrap();
    let chain = snp_chain(chain_dir.path());
    let (ark, ask) = (chain.ark.clone(), chain.ask.clone());
    let b = start(&snp_policy(""), move |c, _| {
        c.snp.ark = Some(ark);
        c.snp.ask = Some(ask);
    })
    .await;
    assert_eq!(b.put("default/image-kek/snp", b"snp-secret").await.status(), 200);

    // Good report.
    let r = auth(&b.url, "snp", json!({"pod":"p","namespace":"n"})).await;
    let rep = snp_report(&SnpFields::default(), &r.report_data(), &chain.vcek_key);
    let (s, v) = r.attest(snp_evidence(&rep, &chain.vcek_pem)).await;
    assert_eq!(s, 200, "{v}");
    let (s, v) = r.get(v["token"].as_str(), "default/image-kek/snp").await;
    assert_eq!(s, 200);
    assert_eq!(r.tee_key.decrypt(&v), b"snp-secret");

    type Tweak = Box<dyn Fn(&mut SnpFields)>;
    let cases: Vec<(&str, Tweak)> = vec![
        ("measurement_mismatch", Box::new(|f: &mut SnpFields| f.measurement = [0xAC; 48])),
        ("tcb_too_low", Box::new(|f: &mut SnpFields| f.tcb[6] = 0x13)),
        ("tcb_too_low", Box::new(|f: &mut SnpFields| f.tcb[7] = 0x72)),
        ("debug_not_allowed", Box::new(|f: &mut SnpFields| f.policy |= 1 << 19)),
        ("family_id_mismatch", Box::new(|f: &mut SnpFields| f.family_id = [0; 16])),
        ("image_id_mismatch", Box::new(|f: &mut SnpFields| f.image_id = [0; 16])),
        ("vmpl_not_allowed", Box::new(|f: &mut SnpFields| f.vmpl = 1)),
        ("malformed_evidence", Box::new(|f: &mut SnpFields| f.version = 1)),
    ];
    for (reason, tweak) in &cases {
        let r = auth(&b.url, "snp", json!({})).await;
        let mut f = SnpFields::default();
        tweak(&mut f);
        let rep = snp_report(&f, &r.report_data(), &chain.vcek_key);
        // A real VCEK is issued for the TCB it signs with.
        let vcek = if f.tcb == SnpFields::default().tcb {
            chain.vcek_pem.clone()
        } else {
            issue_vcek(&chain.dir, &f.tcb, "vcek-tcb.pem")
        };
        let (s, v) = r.attest(snp_evidence(&rep, &vcek)).await;
        assert_eq!(s, 401, "{reason}: {v}");
        assert!(v["detail"].as_str().unwrap().starts_with(reason), "{reason}: {v}");
    }
    // Tampered report (signature), wrong report_data, a VCEK from another chain.
    let r = auth(&b.url, "snp", json!({})).await;
    let mut rep = snp_report(&SnpFields::default(), &r.report_data(), &chain.vcek_key);
    rep[0x90] ^= 1;
    assert_eq!(r.attest(snp_evidence(&rep, &chain.vcek_pem)).await.0, 401);
    let r = auth(&b.url, "snp", json!({})).await;
    let rep = snp_report(&SnpFields::default(), &[7u8; 48], &chain.vcek_key);
    assert_eq!(r.attest(snp_evidence(&rep, &chain.vcek_pem)).await.0, 401);
    let other_dir = tempfile::tempdir().unwrap();
    let other = snp_chain(other_dir.path());
    let r = auth(&b.url, "snp", json!({})).await;
    let rep = snp_report(&SnpFields::default(), &r.report_data(), &other.vcek_key);
    assert_eq!(r.attest(snp_evidence(&rep, &other.vcek_pem)).await.0, 401);
    let r = auth(&b.url, "snp", json!({})).await;
    assert_eq!(r.attest(json!({"attestation_report": "AAAA"})).await.0, 401);
    // The VCEK of the right chain but for another TCB than the report's.
    let r = auth(&b.url, "snp", json!({})).await;
    let rep = snp_report(&SnpFields::default(), &r.report_data(), &chain.vcek_key);
    let other_tcb = issue_vcek(&chain.dir, &[0x06, 0x02, 0, 0, 0, 0, 0x15, 0x73], "vcek-other.pem");
    let (s, v) = r.attest(snp_evidence(&rep, &other_tcb)).await;
    assert_eq!(s, 401);
    assert!(v["detail"].as_str().unwrap().starts_with("vcek_mismatch"), "{v}");

    let m = b.metrics().await;
    for reason in [
        "measurement_mismatch",
        "debug_not_allowed",
        "family_id_mismatch",
        "image_id_mismatch",
        "vmpl_not_allowed",
        "invalid_signature",
        "report_data_mismatch",
        "cert_chain_invalid",
        "vcek_mismatch",
    ] {
        assert_eq!(
            metric(&m, "coco_attestation_failure_total", &[&format!("reason=\"{reason}\"")]),
            1,
            "{reason}\n{m}"
        );
    }
    assert_eq!(metric(&m, "coco_attestation_failure_total", &["reason=\"tcb_too_low\""]), 2);
    assert_eq!(metric(&m, "coco_attestation_failure_total", &["reason=\"malformed_evidence\""]), 2);
    // No init-data: the extra-params' pod "p" is not a label.
    assert_eq!(
        metric(&m, "coco_attestation_success_total", &["measurement_match=\"true\"", "pod=\"unknown\""]),
        1
    );
}

fn genuine(rel: &str) -> Vec<u8> {
    std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/attestation").join(rel),
    )
    .unwrap()
}

/// TDX through the broker, with the genuine sample quote and its collateral from an
/// offline directory, verified at the collateral's instant: the chain verifies (and the
/// hardware's report_data is not this session's); a flipped byte is `invalid_signature`.
#[tokio::test]
async fn tdx_evidence_is_dcap_verified_and_a_broken_chain_is_invalid_signature() {
    let policy =
        "default_policy:\n  required_attestation:\n    tdx: {}\n  released_resources: [\"default/*\"]\n";
    let coll = tempfile::tempdir().unwrap();
    std::fs::write(coll.path().join("b0c06f000000.json"), genuine("tdx/tdx_quote_collateral.json")).unwrap();
    let dir = coll.path().to_owned();
    let b = start(policy, move |c, _| {
        c.tdx.collateral_dir = Some(dir);
        c.tdx.verify_at = Some(1_751_000_000);
    })
    .await;
    let q = genuine("tdx/tdx_quote");
    // The genuine quote passes DCAP; only the session binding fails. CoCo's form too.
    let r = auth(&b.url, "tdx", json!({})).await;
    let (s, v) = r.attest(tdx_evidence(&q)).await;
    assert_eq!(s, 401);
    assert!(v["detail"].as_str().unwrap().starts_with("report_data_mismatch"), "{v}");
    let r = auth(&b.url, "tdx", json!({})).await;
    let coco = json!({"quote": STANDARD.encode(&q), "cc_eventlog": null, "aa_eventlog": "INIT sha384/00"});
    let (s, v) = r.attest(coco).await;
    assert_eq!(s, 401);
    assert!(v["detail"].as_str().unwrap().starts_with("report_data_mismatch"), "{v}");
    // One flipped byte in the signed TD report: the chain fails.
    let mut bad = q.clone();
    bad[48 + 136] ^= 1;
    let r = auth(&b.url, "tdx", json!({})).await;
    let (s, v) = r.attest(tdx_evidence(&bad)).await;
    assert_eq!(s, 401);
    assert!(v["detail"].as_str().unwrap().starts_with("invalid_signature"), "{v}");
    // A quote that merely claims the right report_data, unsigned, is refused.
    let r = auth(&b.url, "tdx", json!({})).await;
    assert_eq!(r.attest(tdx_evidence(&tdx_quote(&TdxFields::default(), &r.report_data()))).await.0, 401);
    let r = auth(&b.url, "tdx", json!({})).await;
    assert_eq!(r.attest(tdx_evidence(&q[..300])).await.0, 401);
    // A TEE the policy has no section for, and one without a verifier.
    let r = auth(&b.url, "snp", json!({})).await;
    assert_eq!(r.attest(json!({})).await.0, 401);
    let r = auth(&b.url, "sgx", json!({})).await;
    assert_eq!(r.attest(json!({})).await.0, 401);
    let text = b.metrics().await;
    assert_eq!(
        metric(&text, "coco_attestation_failure_total", &["reason=\"invalid_signature\""]),
        1,
        "{text}"
    );
    assert_eq!(
        metric(&text, "coco_attestation_failure_total", &["reason=\"report_data_mismatch\""]),
        2,
        "{text}"
    );
    for reason in ["malformed_evidence", "unsupported_tee"] {
        assert!(
            metric(&text, "coco_attestation_failure_total", &[&format!("reason=\"{reason}\"")]) >= 1,
            "{reason}\n{text}"
        );
    }

    // Without any collateral source: collateral_unavailable; with the sample's
    // collateral at today's date: collateral_expired. Both fail closed.
    let b2 = start(policy, |_, _| {}).await;
    let r = auth(&b2.url, "tdx", json!({})).await;
    let (_, v) = r.attest(tdx_evidence(&q)).await;
    assert!(v["detail"].as_str().unwrap().starts_with("collateral_unavailable"), "{v}");
    let dir = coll.path().to_owned();
    let b3 = start(policy, move |c, _| c.tdx.collateral_dir = Some(dir)).await;
    let r = auth(&b3.url, "tdx", json!({})).await;
    let (_, v) = r.attest(tdx_evidence(&q)).await;
    assert!(v["detail"].as_str().unwrap().starts_with("collateral_expired"), "{v}");
    let text = b3.metrics().await;
    assert_eq!(metric(&text, "coco_attestation_failure_total", &["reason=\"collateral_expired\""]), 1);
}

#[tokio::test]
async fn repeated_attest_returns_same_token_and_expired_session_is_refused() {
    // Expiry has whole-second resolution: a 2 s session lives at least 1 s, which the
    // handshake below never needs, and is surely over 2.2 s later.
    let b = start(SAMPLE_POLICY, |c, _| c.session_ttl_secs = 2).await;
    let r = auth(&b.url, "sample", json!({})).await;
    let (_, v1) = r.attest(sample_evidence(&r.report_data())).await;
    let (_, v2) = r.attest(sample_evidence(&r.report_data())).await;
    assert_eq!(v1["token"], v2["token"]);
    let r = auth(&b.url, "sample", json!({})).await;
    tokio::time::sleep(std::time::Duration::from_millis(2200)).await;
    assert_eq!(r.attest(sample_evidence(&r.report_data())).await.0, 401);
}

/// The session travels sealed in the cookie (no state at `/auth`): an altered cookie,
/// an expired one and one sealed by a broker with another token key are each refused
/// with a 401 `InvalidCookie` whose detail says which, before any evidence is looked at.
#[tokio::test]
async fn sealed_session_cookie_tampered_expired_or_foreign_is_refused() {
    let b = start(SAMPLE_POLICY, |_, _| {}).await;
    // Another broker (another token key), whose sessions last 1 s.
    let other = start(SAMPLE_POLICY, |c, _| c.session_ttl_secs = 1).await;
    let refused = |v: &serde_json::Value, why: &str| {
        assert!(v["type"].as_str().unwrap().ends_with("/InvalidCookie"), "{v}");
        let d = v["detail"].as_str().unwrap();
        assert!(d.contains(why), "{v}");
    };

    // A flipped character of the sealed value.
    let mut r = auth(&b.url, "sample", json!({})).await;
    let good = r.cookie.clone();
    let (name, value) = good.split_once('=').unwrap();
    assert!(value.starts_with("c1.") && value.len() > 40, "{value}");
    let mut bytes = value.as_bytes().to_vec();
    let i = bytes.len() / 2;
    bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
    r.cookie = format!("{name}={}", String::from_utf8(bytes).unwrap());
    let (st, v) = r.attest(sample_evidence(&r.report_data())).await;
    assert_eq!(st, 401, "{v}");
    refused(&v, "does not open");
    // Not a sealed value at all (e.g. an old plain session id).
    r.cookie = format!("{name}=0123456789abcdef0123456789abcdef");
    let (st, v) = r.attest(sample_evidence(&r.report_data())).await;
    assert_eq!(st, 401, "{v}");
    refused(&v, "not one this broker issues");
    // The untouched cookie still works.
    r.cookie = good;
    assert_eq!(r.attest(sample_evidence(&r.report_data())).await.0, 200);

    // A cookie from a broker with another token key.
    let mut f = auth(&other.url, "sample", json!({})).await;
    f.url = b.url.clone();
    let (st, v) = f.attest(sample_evidence(&f.report_data())).await;
    assert_eq!(st, 401, "{v}");
    refused(&v, "another token key");
    // ... and on the resource path (cookie instead of a token).
    let (st, v) = f.get(None, "default/key/x").await;
    assert_eq!(st, 401, "{v}");
    refused(&v, "another token key");

    // Expired (session_ttl_secs = 1): the sealed expiry is enforced.
    let r = auth(&other.url, "sample", json!({})).await;
    tokio::time::sleep(std::time::Duration::from_millis(2100)).await;
    let (st, v) = r.attest(sample_evidence(&r.report_data())).await;
    assert_eq!(st, 401, "{v}");
    refused(&v, "session expired");
}

/// Once a session has its token, replaying `/attest` answers that same token (Trustee's
/// behaviour) and makes no second one; the replay is verified like the first (a
/// replay whose evidence does not match the session's nonce is refused).
#[tokio::test]
async fn replayed_attest_after_success_answers_the_same_token() {
    let b = start(SAMPLE_POLICY, |_, _| {}).await;
    b.put("default/key/r", b"replay-kek").await;
    let r = auth(&b.url, "sample", json!({})).await;
    let (st, v1) = r.attest(sample_evidence(&r.report_data())).await;
    assert_eq!(st, 200, "{v1}");
    let (st, v2) = r.attest(sample_evidence(&r.report_data())).await;
    assert_eq!(st, 200, "{v2}");
    assert_eq!(v1["token"], v2["token"]);
    // The cookie alone reads the resource with the recorded token.
    let (st, v) = r.get(None, "default/key/r").await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(r.tee_key.decrypt(&v), b"replay-kek");
    // Evidence bound to another nonce is refused even on an attested session.
    let (st, v) = r.attest(sample_evidence(&[0u8; 48])).await;
    assert_eq!(st, 401, "{v}");
    let m = b.metrics().await;
    assert!(m.contains(r#"cloak_kbs_store_op_seconds_count{backend="local",op="session_create"} 2"#), "{m}");
}
