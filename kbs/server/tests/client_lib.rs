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
        assert!(
            std::env::var("CLOAK_REQUIRE_PEERS").as_deref() != Ok("1"),
            "python3 with cryptography is required"
        );
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

fn sample_attester() -> Arc<dyn kbs::Attester> {
    let opts = kbs::AttesterOptions { allow_sample: true, ..Default::default() };
    kbs::make_attester(kbs::AttesterKind::Sample, &opts).unwrap()
}

#[tokio::test]
async fn kbs_client_lib_one_attestation_for_many_resources() {
    let b = start(SAMPLE_POLICY, |_, _| {}).await;
    let admin = kbs::AdminClient::new(&b.url, &b.admin_key.private_key_to_pem_pkcs8().unwrap()).unwrap();
    for i in 0..3 {
        let uri: kbs::ResourceUri = format!("default/image-kek/{i}").parse().unwrap();
        admin.put_resource(&uri, format!("kek-{i}").as_bytes()).await.unwrap();
    }
    let c = kbs::KbsClient::new(&b.url, sample_attester(), kbs::ClientConfig::default()).unwrap();
    for i in 0..3 {
        let uri: kbs::ResourceUri = format!("kbs:///default/image-kek/{i}").parse().unwrap();
        assert_eq!(&c.get_resource(&uri).await.unwrap()[..], format!("kek-{i}").as_bytes());
    }
    assert_eq!(c.attestation_count(), 1);
}

#[tokio::test]
async fn kbs_client_lib_sees_rejection_reason() {
    let b = start(&SAMPLE_POLICY.replace("allow: true", "allow: false"), |_, _| {}).await;
    let c = kbs::KbsClient::new(&b.url, sample_attester(), kbs::ClientConfig::default()).unwrap();
    let uri: kbs::ResourceUri = "default/image-kek/1".parse().unwrap();
    let e = c.get_resource(&uri).await.unwrap_err().to_string();
    assert!(e.contains("sample_not_allowed"), "{e}");
    let m = b.metrics().await;
    assert!(metric(&m, "coco_attestation_failure_total", &["reason=\"sample_not_allowed\""]) >= 1);
}

#[tokio::test]
async fn kbs_admin_client_set_policy_and_delete() {
    let b = start(SAMPLE_POLICY, |_, _| {}).await;
    let admin = kbs::AdminClient::new(&b.url, &b.admin_key.private_key_to_pem_pkcs8().unwrap()).unwrap();
    let uri: kbs::ResourceUri = "default/key/x".parse().unwrap();
    admin.put_resource(&uri, b"v").await.unwrap();
    admin.delete_resource(&uri).await.unwrap();
    assert!(!b.dir.path().join("resources/default/key/x").exists());
    admin
        .set_resource_policy(&SAMPLE_POLICY.replace("allow: true", "allow: false"))
        .await
        .unwrap();
    assert!(!b.broker.policy().sample_allowed);
}
