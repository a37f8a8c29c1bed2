//! One status mapping for the broker's errors (issue 16): the same store error answers
//! the same status from every handler, with a Trustee error kind and the causes in
//! `detail`.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use serde_json::{json, Value};

#[tokio::test]
async fn an_invalid_resource_path_is_400_from_every_handler() {
    let b = start(SAMPLE_POLICY, |_, _| {}).await;
    let http = reqwest::Client::new();
    let rc = auth(&b.url, "sample", json!({})).await;
    let (st, v) = rc.attest(sample_evidence(&rc.report_data())).await;
    assert_eq!(st, 200, "{v}");
    let token = v["token"].as_str().unwrap().to_string();
    let bad = "default/.hidden/x";
    let admin = admin_jwt(&b.admin_key, good_admin_claims());
    let answers = [
        http.get(format!("{}/kbs/v0/resource/{bad}", b.url)).bearer_auth(&token).send().await.unwrap(),
        http.post(format!("{}/kbs/v0/resource/{bad}", b.url))
            .bearer_auth(&admin)
            .body("x")
            .send()
            .await
            .unwrap(),
        http.delete(format!("{}/kbs/v0/resource/{bad}", b.url)).bearer_auth(&admin).send().await.unwrap(),
        http.get(format!("{}/kbs/v0/admin/resource/{bad}", b.url)).bearer_auth(&admin).send().await.unwrap(),
    ];
    for r in answers {
        assert_eq!(r.status(), 400);
        let v: Value = r.json().await.unwrap();
        assert!(v["type"].as_str().unwrap().ends_with("/BadRequest"), "{v}");
        assert!(v["detail"].as_str().unwrap().contains("invalid resource path"), "{v}");
    }
    // A missing resource is 404 ResourceNotFound for the guest and the admin alike.
    let r = http
        .get(format!("{}/kbs/v0/resource/default/key/none", b.url))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert!(v["type"].as_str().unwrap().ends_with("/ResourceNotFound"), "{v}");
    let r = http
        .delete(format!("{}/kbs/v0/resource/default/key/none", b.url))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = http
        .get(format!("{}/kbs/v0/admin/resource/default/image-kek/none", b.url))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    // The local backend's operations are measured per operation.
    let m = b.metrics().await;
    assert!(m.contains(r#"cloak_kbs_store_op_seconds_count{backend="local",op="session_create"} 1"#), "{m}");
    assert!(m.contains(r#"cloak_kbs_store_op_seconds_count{backend="local",op="resource_get"} 1"#), "{m}");
    // A missing resource is an answer, not a backend failure.
    assert!(!m.contains(r#"cloak_kbs_store_op_errors_total{backend="local",op="resource_get"}"#), "{m}");
}
