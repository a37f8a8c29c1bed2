//! The broker against hostile peers and a real Trustee peer (issue 21, findings 1, 5,
//! 8, 9 and 10): unauthenticated requests cannot grow the metrics, half-open and slow
//! connections are dropped within the configured deadlines, over-long resource names
//! are a 400 that names no file of the broker, admin tokens cannot be valid for years,
//! and the admin token cloak signs is accepted by the JWT validation Trustee runs.

#![allow(clippy::unwrap_used)]

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Generous against the 1 s deadlines the tests configure: a loaded 2-core machine
/// still closes well within it, and a broker without deadlines never does.
const CLOSE_BOUND: Duration = Duration::from_secs(15);

/// Reads until the server closes the connection: what it sent, or None if it was
/// still open after `CLOSE_BOUND`.
async fn read_until_closed(s: &mut TcpStream) -> Option<Vec<u8>> {
    let mut got = Vec::new();
    let read = async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    };
    tokio::time::timeout(CLOSE_BOUND, read).await.ok().map(|()| got)
}

fn addr(b: &Broker) -> String {
    b.url.trim_start_matches("http://").to_string()
}

fn series(m: &str, name: &str) -> usize {
    m.lines().filter(|l| l.starts_with(&format!("{name}{{"))).count()
}

fn short_deadlines(cfg: &mut kbs_server::ServeConfig, _: &std::path::Path) {
    cfg.request_header_timeout_secs = 1;
    cfg.request_body_timeout_secs = 1;
}

// ---- finding 1: metrics ---------------------------------------------------------

/// Every token-less request for a new name made a `coco_kbs_resource_denials_total`
/// series named after it (1,500 requests with 60 KB names: /metrics at 103 MB).
#[tokio::test]
async fn unauthenticated_resource_requests_do_not_add_metric_series() {
    let b = start(SAMPLE_POLICY, |_, _| {}).await;
    let http = reqwest::Client::new();
    for i in 0..300 {
        let name = format!("r{i}/t/{}", "n".repeat(200));
        let r = http.get(format!("{}/kbs/v0/resource/{name}", b.url)).send().await.unwrap();
        assert_eq!(r.status(), 401);
    }
    let m = b.metrics().await;
    assert!(!m.contains("nnnnnnnn"), "a requested name became a label");
    assert_eq!(series(&m, "coco_kbs_resource_denials_total"), 1, "{m}");
    assert_eq!(
        metric(&m, "coco_kbs_resource_denials_total", &["resource=\"other\"", "reason=\"token_invalid\""]),
        300
    );
    assert!(m.len() < 16 * 1024, "/metrics is {} bytes", m.len());
}

/// An attested guest asking for many names gets series for the first
/// `metrics_max_resources` only; the rest share resource="other".
#[tokio::test]
async fn resource_series_stop_at_the_cap() {
    let b = start(SAMPLE_POLICY, |cfg, _| cfg.metrics_max_resources = 3).await;
    let r = auth(&b.url, "sample", json!({})).await;
    let (s, v) = r.attest(sample_evidence(&r.report_data())).await;
    assert_eq!(s, 200, "{v}");
    let token = v["token"].as_str().unwrap().to_string();
    for i in 0..20 {
        assert_eq!(r.get(Some(&token), &format!("default/key/missing-{i}")).await.0, 404);
    }
    let m = b.metrics().await;
    assert_eq!(series(&m, "coco_kbs_resource_denials_total"), 4, "{m}");
    assert_eq!(metric(&m, "coco_kbs_resource_denials_total", &["resource=\"other\""]), 17);
    assert_eq!(metric(&m, "cloak_kbs_metric_label_overflow_total", &["label=\"resource\""]), 17);
}

/// 10,000 `/auth` calls with distinct `pod` names, each followed by a failing
/// `/attest`, made 10,005 `coco_attestation_attempts_total` series. Since issue 25 the
/// labels come only from init-data bound to verified evidence: claimed names never make
/// a series, and bound ones are capped.
#[tokio::test]
async fn distinct_pod_names_do_not_grow_attestation_series_past_the_cap() {
    let b = start(SAMPLE_POLICY, |cfg, _| cfg.metrics_max_pods = 5).await;
    for i in 0..20 {
        // A wrong nonce: nothing shown yet, counted under "other" only.
        let mut r = auth(&b.url, "sample", json!({"pod": format!("nonce-{i}"), "namespace": "x"})).await;
        r.nonce = "AAAA".into();
        assert_eq!(r.attest(sample_evidence(&r.report_data())).await.0, 401);
        // The right nonce, evidence for another: its init-data is not bound, "unknown".
        let r = auth(&b.url, "sample", json!({"pod": format!("evidence-{i}"), "namespace": "x"})).await;
        let (doc, digest) = initdata_for(&format!("evidence-{i}"), "x");
        assert_eq!(r.attest_with(sample_evidence_bound(&[0u8; 48], &digest), Some(&doc)).await.0, 401);
        // Bound init-data: its own series within the cap, then "other".
        let r = auth(&b.url, "sample", json!({})).await;
        let (doc, digest) = initdata_for(&format!("bound-{i}"), "x");
        assert_eq!(r.attest_with(sample_evidence_bound(&r.report_data(), &digest), Some(&doc)).await.0, 200);
    }
    let m = b.metrics().await;
    assert!(!m.contains("nonce-"), "a pod that failed its nonce got a series");
    assert!(!m.contains("evidence-"), "a pod whose evidence failed got a series");
    // unknown, bound-0..3, other.
    assert_eq!(series(&m, "coco_attestation_attempts_total"), 6, "{m}");
    assert_eq!(metric(&m, "coco_attestation_attempts_total", &["pod=\"unknown\""]), 20);
    assert_eq!(metric(&m, "coco_attestation_attempts_total", &["pod=\"other\""]), 16);
    assert_eq!(metric(&m, "coco_attestation_failure_total", &["pod=\"other\"", "nonce_mismatch"]), 20);
    assert_eq!(
        metric(&m, "coco_attestation_failure_total", &["pod=\"unknown\"", "report_data_mismatch"]),
        20
    );
    assert_eq!(series(&m, "coco_attestation_failure_total"), 2, "{m}");
    assert_eq!(metric(&m, "coco_attestation_success_total", &["pod=\"other\""]), 16);
    // Pods that got a series keep it.
    let r = auth(&b.url, "sample", json!({})).await;
    let (doc, digest) = initdata_for("bound-0", "x");
    assert_eq!(r.attest_with(sample_evidence_bound(&r.report_data(), &digest), Some(&doc)).await.0, 200);
    let m = b.metrics().await;
    assert_eq!(metric(&m, "coco_attestation_success_total", &["pod=\"bound-0\""]), 2);
}

// ---- finding 5: deadlines --------------------------------------------------------

/// 300 half-open connections against an fd limit of 256 locked every guest out of
/// `/auth` for as long as they were held: the broker had no header deadline.
#[tokio::test]
async fn half_open_connections_are_closed_and_guests_get_through() {
    let b = start(SAMPLE_POLICY, short_deadlines).await;
    let mut held = Vec::new();
    for _ in 0..64 {
        let mut s = TcpStream::connect(addr(&b)).await.unwrap();
        s.write_all(b"POST /kbs/v0/auth HTTP/1.1\r\nHost: kbs\r\nContent-Le").await.unwrap();
        held.push(s);
    }
    // A silent connection (not a byte sent) too.
    held.push(TcpStream::connect(addr(&b)).await.unwrap());
    // A guest gets through while they are held.
    let r = auth(&b.url, "sample", json!({})).await;
    assert_eq!(r.attest(sample_evidence(&r.report_data())).await.0, 200);
    for (i, s) in held.iter_mut().enumerate() {
        assert!(read_until_closed(s).await.is_some(), "half-open connection {i} still open");
    }
}

/// A body trickled slower than the deadline allows is answered 408 and the connection
/// is closed (progress does not extend the deadline).
#[tokio::test]
async fn slow_request_body_is_answered_408_and_the_connection_closed() {
    let b = start(SAMPLE_POLICY, short_deadlines).await;
    let mut s = TcpStream::connect(addr(&b)).await.unwrap();
    s.write_all(
        b"POST /kbs/v0/auth HTTP/1.1\r\nHost: kbs\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
    )
    .await
    .unwrap();
    // One more byte after the deadline's start, so a reset-on-progress timer would still be running.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = s.write_all(b" ").await;
    let got = read_until_closed(&mut s).await.expect("connection with a stalled body still open");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("request_body_timeout_secs"), "{text}");
}

/// Idle keep-alive connections are closed too.
#[tokio::test]
async fn idle_keep_alive_connection_is_closed() {
    let b = start(SAMPLE_POLICY, short_deadlines).await;
    let mut s = TcpStream::connect(addr(&b)).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: kbs\r\n\r\n").await.unwrap();
    let got = read_until_closed(&mut s).await.expect("idle keep-alive connection still open");
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200") && text.ends_with("ok"), "{text}");
}

// ---- finding 8: resource names ---------------------------------------------------

/// A 300-byte tag answered 500 with the broker's absolute resource directory in the
/// message, and counted as a backend failure.
#[tokio::test]
async fn resource_tag_of_300_bytes_is_400_without_broker_paths() {
    let b = start(SAMPLE_POLICY, |_, _| {}).await;
    let dir = b.dir.path().to_str().unwrap().to_string();
    let long = format!("default/key/{}", "t".repeat(300));
    let r = b.put(&long, b"v").await;
    assert_eq!(r.status(), 400);
    let v: Value = r.json().await.unwrap();
    let detail = v["detail"].as_str().unwrap();
    assert!(v["type"].as_str().unwrap().ends_with("/BadRequest"), "{v}");
    assert!(detail.contains("longer than the 255 bytes allowed"), "{v}");
    assert!(!detail.contains(&dir), "{v}");
    let rc = auth(&b.url, "sample", json!({})).await;
    let (st, v) = rc.attest(sample_evidence(&rc.report_data())).await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = rc.get(Some(v["token"].as_str().unwrap()), &long).await;
    assert_eq!(st, 400, "{v}");
    assert!(!v.to_string().contains(&dir), "{v}");
    let m = b.metrics().await;
    assert!(!m.contains("cloak_kbs_store_op_errors_total{"), "{m}");
    // The longest tag allowed is stored and served.
    let max = format!("default/key/{}", "t".repeat(255));
    assert_eq!(b.put(&max, b"v").await.status(), 200);
    let (st, v) = rc.get(None, &max).await;
    assert_eq!(st, 200, "{v}");
}

/// A failure of the store itself answers 500 whose body names no file of the broker.
#[tokio::test]
async fn store_failure_answers_500_without_the_broker_directory() {
    let b = start(SAMPLE_POLICY, |_, _| {}).await;
    // A file where the repository's directory would go.
    std::fs::write(b.dir.path().join("resources/blocked"), b"").unwrap();
    let r = b.put("blocked/key/1", b"v").await;
    assert_eq!(r.status(), 500);
    let v: Value = r.json().await.unwrap();
    let dir = b.dir.path().to_str().unwrap();
    assert!(!v.to_string().contains(dir), "{v}");
    assert!(v["detail"].as_str().unwrap().starts_with("resource store"), "{v}");
}

// ---- finding 9: admin token lifetime ---------------------------------------------

/// Admin tokens valid for 100 years (or `exp = 1e300`) were accepted.
#[tokio::test]
async fn admin_token_valid_for_100_years_is_refused_with_the_reason() {
    let b = start(SAMPLE_POLICY, |_, _| {}).await;
    let http = reqwest::Client::new();
    let century = now() + 100 * 365 * 86_400;
    for claims in [
        json!({"iss": "test", "role": "admin", "iat": now(), "exp": century}),
        json!({"iss": "test", "role": "admin", "iat": now(), "exp": 1e300}),
    ] {
        let r = http
            .post(format!("{}/kbs/v0/resource/default/key/century", b.url))
            .bearer_auth(admin_jwt(&b.admin_key, claims.clone()))
            .body("v")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{claims}");
        let v: Value = r.json().await.unwrap();
        assert!(
            v["detail"].as_str().unwrap().contains("longer than this broker's maximum of 86400 s"),
            "{v}"
        );
    }
    assert!(!b.dir.path().join("resources/default/key/century").exists());
    // The limit is configurable.
    let b = start(SAMPLE_POLICY, |cfg, _| cfg.admin_token_max_lifetime_secs = 100 * 366 * 86_400).await;
    let claims = json!({"iss": "test", "role": "admin", "iat": now(), "exp": century});
    let r = http
        .post(format!("{}/kbs/v0/resource/default/key/century", b.url))
        .bearer_auth(admin_jwt(&b.admin_key, claims))
        .body("v")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

// ---- finding 10: Trustee accepts cloak's admin token -----------------------------

/// What Trustee's KBS runs on an admin bearer token (kbs/src/crypto/jwt.rs,
/// `decode_token_claims` with a PEM key from `decoding_key_from_public_key_pem`):
/// jsonwebtoken's `decode` with `Validation::new(<the header's alg>)` and no audience
/// check.
fn trustee_verify(token: &str, public_pem: &[u8]) -> Result<Value, jsonwebtoken::errors::Error> {
    let key = jsonwebtoken::DecodingKey::from_ed_pem(public_pem)?;
    let header = jsonwebtoken::decode_header(token)?;
    let mut validation = jsonwebtoken::Validation::new(header.alg);
    validation.validate_aud = false;
    Ok(jsonwebtoken::decode::<Value>(token, &key, &validation)?.claims)
}

/// Trustee refused cloak's admin token (401 "Cannot verify token with any of the
/// issuers"): `exp` was written with a fraction (`1796611887.2587447`). jsonwebtoken
/// rounds such a date when serde_json parses it as a float, but with serde_json's
/// `arbitrary_precision` feature on (it is in a Trustee build: integer dates passed,
/// fractional ones did not) a fraction reaches jsonwebtoken as a map, which it takes
/// for no `exp` at all. Whole seconds are read the same way in either build.
#[test]
fn trustee_accepts_the_admin_token_cloak_signs() {
    let (private, public) = kbs_server::admin::generate_admin_key().unwrap();
    let admin = kbs_client::AdminClient::new("http://127.0.0.1:1", &private).unwrap();
    let token = admin.admin_token().unwrap();
    let claims = trustee_verify(&token, &public).unwrap_or_else(|e| panic!("Trustee refuses it: {e}"));
    assert!(claims["exp"].is_u64() && claims["iat"].is_u64(), "fractional NumericDate: {claims}");
    assert_eq!(claims["role"], "admin");
    assert_eq!(claims["iss"], kbs_client::admin::ADMIN_ISSUER);
    // The call is the real check: a token signed by another key, or expired, is refused.
    let other = openssl::pkey::PKey::generate_ed25519().unwrap();
    assert!(trustee_verify(&admin_jwt(&other, claims.clone()), &public).is_err());
    let key = openssl::pkey::PKey::private_key_from_pem(&private).unwrap();
    let mut expired = claims.clone();
    expired["exp"] = json!(now() - 3600);
    assert!(trustee_verify(&admin_jwt(&key, expired), &public).is_err());
    assert!(trustee_verify(&admin_jwt(&key, claims), &public).is_ok());
}

/// Finding 5, the other half: with a soft open-files limit of 256, 300 half-open
/// connections locked every guest out. The broker raises the soft limit to the hard
/// one at start, so the descriptors run out only far later (and every half-open
/// connection is dropped after the header deadline).
#[test]
fn low_soft_open_files_limit_is_raised_to_the_hard_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    let Some(hard) = lim.maximum.filter(|&h| h > 256) else {
        eprintln!("SKIP: the hard open-files limit is not above 256");
        return;
    };
    lim.current = Some(256);
    setrlimit(Resource::Nofile, lim).unwrap();
    assert_eq!(getrlimit(Resource::Nofile).current, Some(256));
    assert_eq!(kbs_server::server::raise_fd_limit(), Some(hard));
}
