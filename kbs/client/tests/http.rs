//! The client against a tiny hand-written HTTP/1.1 KBS stand-in on loopback:
//! token reuse, retries on 503 and refused connections, re-attesting once on
//! 401, and failing closed with errors that name the step.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::prelude::{Engine, BASE64_URL_SAFE_NO_PAD};
use kbs_client::{
    make_attester, AttesterKind, AttesterOptions, ClientConfig, KbsClient, KbsError, ResourceUri, Step,
    TeeKeyKind,
};
use openssl::bn::BigNum;
use openssl::encrypt::Encrypter;
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::rsa::{Padding, Rsa};
use openssl::symm::{encrypt_aead, Cipher};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Default)]
struct Script {
    auth_503_first: usize,
    attest_reject: bool,
    resource_401: usize,
    resource_503_always: bool,
}

#[derive(Default)]
struct State {
    script: Script,
    auth: AtomicUsize,
    attest: AtomicUsize,
    resource: AtomicUsize,
    tee_pubkey: Mutex<Option<Value>>,
    auth_bodies: Mutex<Vec<Value>>,
}

struct Req {
    method: String,
    path: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

async fn read_req(s: &mut tokio::net::TcpStream) -> Option<Req> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    let head_end = loop {
        let n = s.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let method = first.next()?.to_owned();
    let path = first.next()?.to_owned();
    let headers: HashMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers.get("content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < len {
        let n = s.read(&mut tmp).await.ok()?;
        if n == 0 {
            break;
        }
        body.extend_from_slice(&tmp[..n]);
    }
    Some(Req { method, path, headers, body })
}

fn b64(b: &[u8]) -> String {
    BASE64_URL_SAFE_NO_PAD.encode(b)
}

fn token() -> String {
    let exp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() + 3600;
    format!("{}.{}.c2ln", b64(br#"{"alg":"ES256"}"#), b64(json!({"exp": exp}).to_string().as_bytes()))
}

/// RSA-OAEP-256 + A256GCM to the TEE key, with Trustee's AAD.
fn seal(jwk: &Value, plain: &[u8]) -> Value {
    let n = BASE64_URL_SAFE_NO_PAD.decode(jwk["n"].as_str().unwrap()).unwrap();
    let e = BASE64_URL_SAFE_NO_PAD.decode(jwk["e"].as_str().unwrap()).unwrap();
    let pk = PKey::from_rsa(
        Rsa::from_public_components(BigNum::from_slice(&n).unwrap(), BigNum::from_slice(&e).unwrap())
            .unwrap(),
    )
    .unwrap();
    let mut enc = Encrypter::new(&pk).unwrap();
    enc.set_rsa_padding(Padding::PKCS1_OAEP).unwrap();
    enc.set_rsa_oaep_md(MessageDigest::sha256()).unwrap();
    enc.set_rsa_mgf1_md(MessageDigest::sha256()).unwrap();
    let cek: [u8; 32] = rand::random();
    let mut wrapped = vec![0u8; enc.encrypt_len(&cek).unwrap()];
    let l = enc.encrypt(&cek, &mut wrapped).unwrap();
    wrapped.truncate(l);
    let protected = b64(br#"{"alg":"RSA-OAEP-256","enc":"A256GCM"}"#);
    let iv: [u8; 12] = rand::random();
    let mut tag = [0u8; 16];
    let ct =
        encrypt_aead(Cipher::aes_256_gcm(), &cek, Some(&iv), protected.as_bytes(), plain, &mut tag).unwrap();
    json!({"protected": protected, "encrypted_key": b64(&wrapped), "iv": b64(&iv),
           "ciphertext": b64(&ct), "tag": b64(&tag)})
}

fn respond(st: &State, r: &Req) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let json_err = |code: u16, detail: &str| {
        (code, vec![], json!({"type": "x", "detail": detail}).to_string().into_bytes())
    };
    match (r.method.as_str(), r.path.as_str()) {
        ("POST", "/kbs/v0/auth") => {
            let n = st.auth.fetch_add(1, Ordering::SeqCst);
            if n < st.script.auth_503_first {
                return json_err(503, "warming up");
            }
            st.auth_bodies.lock().unwrap().push(serde_json::from_slice(&r.body).unwrap());
            (
                200,
                vec![("Set-Cookie".into(), "kbs-session-id=s3ss10n; Path=/; HttpOnly".into())],
                br#"{"nonce":"bm9uY2U=","extra-params":""}"#.to_vec(),
            )
        }
        ("POST", "/kbs/v0/attest") => {
            st.attest.fetch_add(1, Ordering::SeqCst);
            if r.headers.get("cookie").map(String::as_str) != Some("kbs-session-id=s3ss10n") {
                return json_err(401, "missing cookie");
            }
            if st.script.attest_reject {
                return json_err(401, "measurement mismatch");
            }
            let att: Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(att["runtime-data"]["nonce"], "bm9uY2U=");
            assert!(att["tee-evidence"]["primary_evidence"]["report_data"].is_string());
            *st.tee_pubkey.lock().unwrap() = Some(att["runtime-data"]["tee-pubkey"].clone());
            (200, vec![], json!({"token": token()}).to_string().into_bytes())
        }
        ("GET", p) if p.starts_with("/kbs/v0/resource/") => {
            let n = st.resource.fetch_add(1, Ordering::SeqCst);
            if st.script.resource_503_always {
                return json_err(503, "backend down");
            }
            if !r.headers.get("authorization").is_some_and(|a| a.starts_with("Bearer ")) {
                return json_err(401, "no token");
            }
            if n < st.script.resource_401 {
                return json_err(401, "policy denied");
            }
            let jwk = st.tee_pubkey.lock().unwrap().clone().unwrap();
            (200, vec![], seal(&jwk, p.as_bytes()).to_string().into_bytes())
        }
        _ => json_err(404, "no such endpoint"),
    }
}

async fn serve(script: Script) -> (String, Arc<State>) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let st = Arc::new(State { script, ..Default::default() });
    let st2 = Arc::clone(&st);
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = l.accept().await else {
                return;
            };
            let st = Arc::clone(&st2);
            tokio::spawn(async move {
                while let Some(r) = read_req(&mut s).await {
                    let (code, hdrs, body) = respond(&st, &r);
                    let mut out = format!(
                        "HTTP/1.1 {code} X\r\nContent-Length: {}\r\nContent-Type: application/json\r\n",
                        body.len()
                    );
                    for (k, v) in hdrs {
                        out.push_str(&format!("{k}: {v}\r\n"));
                    }
                    out.push_str("\r\n");
                    let mut bytes = out.into_bytes();
                    bytes.extend_from_slice(&body);
                    if s.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (url, st)
}

fn client(url: &str, deadline: Duration) -> KbsClient {
    client_with_key(url, deadline, TeeKeyKind::Rsa)
}

fn client_with_key(url: &str, deadline: Duration, tee_key: TeeKeyKind) -> KbsClient {
    let opts = AttesterOptions { allow_sample: true, ..Default::default() };
    let att = make_attester(AttesterKind::Sample, &opts).unwrap();
    let cfg = ClientConfig {
        deadline,
        tee_key,
        extra_params: json!({"pod": "p1", "namespace": "ns1"}),
        ..Default::default()
    };
    KbsClient::new(url, att, cfg).unwrap()
}

fn uri(s: &str) -> ResourceUri {
    s.parse().unwrap()
}

#[tokio::test]
async fn one_attestation_serves_every_resource() {
    let (url, st) = serve(Script::default()).await;
    let c = client(&url, Duration::from_secs(20));
    let a = c.get_resource(&uri("kbs:///default/key/1")).await.unwrap();
    assert_eq!(&a[..], b"/kbs/v0/resource/default/key/1");
    let b = c.clone().get_resource(&uri("default/key/2")).await.unwrap();
    assert_eq!(&b[..], b"/kbs/v0/resource/default/key/2");
    assert_eq!(c.attestation_count(), 1);
    assert_eq!(st.attest.load(Ordering::SeqCst), 1);
    let req = &st.auth_bodies.lock().unwrap()[0];
    assert_eq!(req["version"], "0.4.0");
    assert_eq!(req["tee"], "sample");
    assert_eq!(req["extra-params"]["pod"], "p1");
}

#[tokio::test]
async fn retries_503_then_succeeds() {
    let (url, st) = serve(Script { auth_503_first: 2, ..Default::default() }).await;
    let c = client(&url, Duration::from_secs(20));
    c.get_resource(&uri("default/key/1")).await.unwrap();
    assert_eq!(st.auth.load(Ordering::SeqCst), 3);
    assert_eq!(c.attestation_count(), 1);
}

#[tokio::test]
async fn connection_refused_fails_closed_at_the_deadline() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let c = client(&format!("http://127.0.0.1:{port}"), Duration::from_millis(1500));
    let err = c.get_resource(&uri("default/key/1")).await.unwrap_err();
    assert!(matches!(err, KbsError::Unavailable { step: Step::Auth, .. }), "{err}");
    let msg = err.to_string();
    let broker = format!("KBS unavailable: the broker at http://127.0.0.1:{port} did not answer the auth request within 1.5 s (");
    assert!(msg.starts_with(&broker), "{msg}");
    assert!(msg.ends_with(" attempts)"), "the attempts are counted: {msg}");
    // The cause is the source, said once after the step (issue 27).
    let line = report::line(&err);
    eprintln!("{line}");
    assert!(line.starts_with(&format!("{msg}: ")), "{line}");
    assert_eq!(report::repeated_source(&err), None, "{line}");
    assert_eq!(report::repeated_clause(&line), None, "{line}");
    assert!(!line.contains("error sending request"), "reqwest's own text repeats the URL: {line}");
    assert_eq!(line.matches(&format!("127.0.0.1:{port}")).count(), 1, "the URL once: {line}");
    assert_eq!(c.attestation_count(), 0);
}

#[tokio::test]
async fn persistent_503_on_resource_is_unavailable_not_success() {
    let (url, st) = serve(Script { resource_503_always: true, ..Default::default() }).await;
    // An EC TEE key (the stand-in never seals an answer here): RSA key generation
    // alone can take more than this 1.5 s deadline on a loaded machine.
    let c = client_with_key(&url, Duration::from_millis(1500), TeeKeyKind::EcP256);
    let err = c.get_resource(&uri("default/key/1")).await.unwrap_err();
    assert!(matches!(err, KbsError::Unavailable { step: Step::Resource, .. }), "{err}");
    assert!(st.resource.load(Ordering::SeqCst) >= 2, "it retried");
    // The broker's last answer is the cause, its status and reason said once (issue 27).
    let line = report::line(&err);
    eprintln!("{line}");
    assert!(line.ends_with(" attempts): HTTP 503 Service Unavailable: backend down"), "{line}");
    assert_eq!(line.matches("503").count(), 1, "{line}");
    assert_eq!(report::repeated_clause(&line), None, "{line}");
}

#[tokio::test]
async fn reattests_once_on_401_then_succeeds() {
    let (url, _st) = serve(Script { resource_401: 1, ..Default::default() }).await;
    let c = client(&url, Duration::from_secs(20));
    c.get_resource(&uri("default/key/1")).await.unwrap();
    assert_eq!(c.attestation_count(), 2);
}

#[tokio::test]
async fn reattests_only_once_then_reports_denial() {
    let (url, st) = serve(Script { resource_401: usize::MAX, ..Default::default() }).await;
    let c = client(&url, Duration::from_secs(20));
    let err = c.get_resource(&uri("default/key/1")).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "resource kbs:///default/key/1 denied: the broker at {url} answered HTTP 401 Unauthorized: policy denied; \
             check that the broker's resource policy releases it to this guest (released_resources) and \
             that its attestation policy still accepts this TEE"
        )
    );
    assert!(matches!(err, KbsError::Rejected { step: Step::Resource, status: 401, .. }));
    assert_eq!(c.attestation_count(), 2);
    assert_eq!(st.resource.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn attestation_rejection_names_the_reason() {
    let (url, _st) = serve(Script { attest_reject: true, ..Default::default() }).await;
    let c = client(&url, Duration::from_secs(20));
    let err = c.get_resource(&uri("default/key/1")).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "attestation rejected: the broker at {url} answered HTTP 401 Unauthorized: measurement mismatch; check the \
             broker's attestation policy and its reference values (measurements, TCB) against this guest's \
             evidence"
        )
    );
    assert_eq!(c.attestation_count(), 0);
}
