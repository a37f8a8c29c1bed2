//! The broker against the independent Python client and against cloak's own `kbs`
//! client library (the one linked into the guest).

#![allow(clippy::unwrap_used)]

mod common;

use std::sync::Arc;

use common::*;

#[tokio::test]
async fn independent_python_client_fetches_resource() {
    let ok = std::process::Command::new("python3")
        .args(["-c", "import cryptography"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        assert!(!test_support::peers_required(), "python3 with cryptography is required");
        eprintln!("SKIP: python3-cryptography is not installed");
        return;
    }
    let b = start(SAMPLE_POLICY, |_, _| {}).await;
    assert_eq!(b.put("default/image-kek/py", b"python-sees-this").await.status(), 200);
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/independent_client.py");
    let url = b.url.clone();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("python3")
            .args([script, &url, "default/image-kek/py", &hex::encode(b"python-sees-this")])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "python client failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok");
}

fn sample_attester() -> Arc<dyn kbs_client::Attester> {
    let opts = kbs_client::AttesterOptions { allow_sample: true, ..Default::default() };
    kbs_client::make_attester(kbs_client::AttesterKind::Sample, &opts).unwrap()
}

#[tokio::test]
async fn kbs_client_lib_one_attestation_for_many_resources() {
    let b = start(SAMPLE_POLICY, |_, _| {}).await;
    let admin =
        kbs_client::AdminClient::new(&b.url, &b.admin_key.private_key_to_pem_pkcs8().unwrap()).unwrap();
    for i in 0..3 {
        let uri: kbs_client::ResourceUri = format!("default/image-kek/{i}").parse().unwrap();
        admin.put_resource(&uri, format!("kek-{i}").as_bytes()).await.unwrap();
    }
    let c =
        kbs_client::KbsClient::new(&b.url, sample_attester(), kbs_client::ClientConfig::default()).unwrap();
    for i in 0..3 {
        let uri: kbs_client::ResourceUri = format!("kbs:///default/image-kek/{i}").parse().unwrap();
        assert_eq!(&c.get_resource(&uri).await.unwrap()[..], format!("kek-{i}").as_bytes());
    }
    assert_eq!(c.attestation_count(), 1);
}

#[tokio::test]
async fn kbs_client_lib_sees_rejection_reason() {
    let b = start(&SAMPLE_POLICY.replace("allow: true", "allow: false"), |_, _| {}).await;
    let c =
        kbs_client::KbsClient::new(&b.url, sample_attester(), kbs_client::ClientConfig::default()).unwrap();
    let uri: kbs_client::ResourceUri = "default/image-kek/1".parse().unwrap();
    let err = c.get_resource(&uri).await.unwrap_err();
    let e = report::line(&err);
    assert!(e.contains("sample_not_allowed"), "{e}");
    // Issue 27: the broker, its reason and what to check, each said once.
    assert!(
        e.starts_with(&format!("attestation rejected: the broker at {} answered HTTP 401", b.url)),
        "{e}"
    );
    assert_eq!(e.matches("sample_not_allowed").count(), 1, "{e}");
    assert!(e.contains("check the broker's attestation policy"), "{e}");
    assert_eq!(report::repeated_clause(&e), None, "{e}");
    let m = b.metrics().await;
    assert!(metric(&m, "coco_attestation_failure_total", &["reason=\"sample_not_allowed\""]) >= 1);
}

/// Issue 27: a resource the policy does not release. The client's error names the
/// broker, the resource and the broker's reason once each, and says what to check;
/// the broker's detail no longer repeats "resource ... denied" under the client's.
#[tokio::test]
async fn denying_broker_error_names_broker_resource_and_reason_once() {
    let b = start(SAMPLE_POLICY, |_, _| {}).await;
    assert_eq!(b.put("other/key/1", b"v").await.status(), 200);
    let c =
        kbs_client::KbsClient::new(&b.url, sample_attester(), kbs_client::ClientConfig::default()).unwrap();
    let uri: kbs_client::ResourceUri = "other/key/1".parse().unwrap();
    let err = c.get_resource(&uri).await.unwrap_err();
    assert!(matches!(err, kbs_client::KbsError::Rejected { status: 403, .. }), "{err}");
    let e = report::line(&err);
    assert_eq!(
        e,
        format!(
            "resource kbs:///other/key/1 denied: the broker at {} answered HTTP 403 Forbidden: not_released: \
             the resource is not listed in released_resources; check that the broker's resource policy \
             releases it to this guest (released_resources) and that its attestation policy still accepts \
             this TEE",
            b.url
        )
    );
    assert_eq!(report::repeated_clause(&e), None, "{e}");
    assert_eq!(report::repeated_source(&err), None, "{e}");
}

/// Issue 27: an admin key the broker does not know: the broker's reason once, no
/// "admin request refused" said by both sides.
#[tokio::test]
async fn refused_admin_request_says_why_once() {
    let b = start(SAMPLE_POLICY, |_, _| {}).await;
    let stranger = openssl::pkey::PKey::generate_ed25519().unwrap();
    let admin = kbs_client::AdminClient::new(&b.url, &stranger.private_key_to_pem_pkcs8().unwrap()).unwrap();
    let uri: kbs_client::ResourceUri = "default/key/x".parse().unwrap();
    let err = admin.put_resource(&uri, b"v").await.unwrap_err();
    let e = report::line(&err);
    assert_eq!(
        e,
        format!(
            "admin request kbs/v0/resource/default/key/x refused: the broker at {} answered HTTP 401 \
             Unauthorized: admin token signature is invalid; check that the broker's admin public key matches \
             this admin key",
            b.url
        )
    );
    assert_eq!(report::repeated_clause(&e), None, "{e}");
}

#[tokio::test]
async fn kbs_admin_client_set_policy_and_delete() {
    let b = start(SAMPLE_POLICY, |_, _| {}).await;
    let admin =
        kbs_client::AdminClient::new(&b.url, &b.admin_key.private_key_to_pem_pkcs8().unwrap()).unwrap();
    let uri: kbs_client::ResourceUri = "default/key/x".parse().unwrap();
    admin.put_resource(&uri, b"v").await.unwrap();
    admin.delete_resource(&uri).await.unwrap();
    assert!(!b.dir.path().join("resources/default/key/x").exists());
    admin.set_resource_policy(&SAMPLE_POLICY.replace("allow: true", "allow: false")).await.unwrap();
    assert!(!b.broker.policy().sample_allowed);
}

#[tokio::test]
async fn create_only_writes_never_replace_and_admin_read_back_is_limited_to_kek_ids() {
    let b = start(SAMPLE_POLICY, |_, _| {}).await;
    let admin =
        kbs_client::AdminClient::new(&b.url, &b.admin_key.private_key_to_pem_pkcs8().unwrap()).unwrap();
    let kek: kbs_client::ResourceUri = "default/image-kek/app".parse().unwrap();
    assert!(admin.read_back(&kek).await.unwrap().is_none());
    assert_eq!(admin.create_resource(&kek, b"first").await.unwrap(), kbs_client::Created::New);
    assert_eq!(admin.create_resource(&kek, b"second").await.unwrap(), kbs_client::Created::Exists);
    assert_eq!(&admin.read_back(&kek).await.unwrap().unwrap()[..], b"first");
    assert_eq!(std::fs::read(b.dir.path().join("resources/default/image-kek/app")).unwrap(), b"first");

    // A secret outside admin_readable is never handed back to the admin key.
    let secret: kbs_client::ResourceUri = "default/app-secret/db".parse().unwrap();
    admin.put_resource(&secret, b"s3cret").await.unwrap();
    let e = admin.read_back(&secret).await.unwrap_err();
    assert!(matches!(e, kbs_client::KbsError::Rejected { status: 403, .. }), "{e}");
    assert!(e.to_string().contains("not admin-readable"), "{e}");

    // Without the admin key there is no read-back.
    let stranger = openssl::pkey::PKey::generate_ed25519().unwrap();
    let other = kbs_client::AdminClient::new(&b.url, &stranger.private_key_to_pem_pkcs8().unwrap()).unwrap();
    let e = other.read_back(&kek).await.unwrap_err();
    assert!(matches!(e, kbs_client::KbsError::Rejected { status: 401, .. }), "{e}");
}

#[tokio::test]
async fn concurrent_create_only_writes_have_exactly_one_winner() {
    let b = start(SAMPLE_POLICY, |_, _| {}).await;
    let pem = b.admin_key.private_key_to_pem_pkcs8().unwrap();
    let kid: kbs_client::ResourceUri = "default/image-kek/race".parse().unwrap();
    let mut tasks = Vec::new();
    for i in 0..8u8 {
        let admin = kbs_client::AdminClient::new(&b.url, &pem).unwrap();
        let kid = kid.clone();
        tasks.push(tokio::spawn(async move { (i, admin.create_resource(&kid, &[i; 32]).await.unwrap()) }));
    }
    let mut winners = Vec::new();
    for t in tasks {
        let (i, created) = t.await.unwrap();
        if created == kbs_client::Created::New {
            winners.push(i);
        }
    }
    assert_eq!(winners.len(), 1, "exactly one create-only write may win: {winners:?}");
    let stored = std::fs::read(b.dir.path().join("resources/default/image-kek/race")).unwrap();
    assert_eq!(stored, vec![winners[0]; 32]);
}
