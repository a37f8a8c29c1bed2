//! Signing into an OCI layout and verifying from it, through the real `oci`
//! crate (no registry needed): `sign_image` writes the `sha256-<hex>.sig` tag
//! into index.json, `ImageSignatures` reads it back, `evaluate` accepts only
//! with the right key and identity; signing twice appends, identically only once.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use imgsig::policy::ImageIdentity;
use imgsig::{evaluate, sign_image, ImageSignatures, Policy, SigningKey, StandardKeys};
use oci::{ImageRef, ImageSource, SourceOptions};

const TD: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata");

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), to).unwrap();
        }
    }
}

fn layout() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("img");
    copy_dir(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/golden/three-layers/plain-oci"), &dir);
    (tmp, dir)
}

fn key(name: &str) -> SigningKey {
    let pw: Option<&[u8]> = (name == "cosign.key").then_some(b"cloak-test");
    SigningKey::from_pem(&std::fs::read(format!("{TD}/{name}")).unwrap(), pw, name).unwrap()
}

fn policy(key: &str) -> Policy {
    Policy::parse(
        format!(
            r#"{{"default":[{{"type":"sigstoreSigned","keyPath":"{key}","signedIdentity":{{"type":"exactRepository","dockerRepository":"registry.example/app"}}}}]}}"#
        )
        .as_bytes(),
        Path::new(TD),
    )
    .unwrap()
}

#[tokio::test]
async fn sign_into_a_layout_then_verify_from_it() {
    let (_tmp, dir) = layout();
    let image: ImageRef = format!("oci:{}:v1", dir.display()).parse().unwrap();
    let opts = SourceOptions::default();
    let digest = ImageSource::open(&image, &opts).await.unwrap().manifest().await.unwrap().digest;
    let sigs = ImageSignatures { image: image.clone(), options: opts.clone(), lookaside: None };
    let id = ImageIdentity::from_image_ref(&image);

    // Unsigned: refused.
    let e = evaluate(&policy("cosign.pub"), &id, &digest, &sigs, &StandardKeys::default()).await.unwrap_err();
    // Issue 27: the refusal and its reason, each said once.
    let line = report::line(&e);
    assert!(line.contains("not signed"), "{line}");
    assert_eq!(report::repeated_source(&e), None, "{line}");
    assert_eq!(report::repeated_clause(&line), None, "{line}");

    // A layout has no identity of its own: signing needs one.
    let e = sign_image(&image, &digest, None, &key("cosign.key"), &opts).await.unwrap_err();
    assert!(e.to_string().contains("--identity"), "{e}");

    let s =
        sign_image(&image, &digest, Some("registry.example/app"), &key("cosign.key"), &opts).await.unwrap();
    assert!(s.appended);
    assert!(s.signature_ref.ends_with(&format!("{}-{}.sig", "sha256", digest.hex())), "{}", s.signature_ref);
    evaluate(&policy("cosign.pub"), &id, &digest, &sigs, &StandardKeys::default()).await.unwrap();
    let e =
        evaluate(&policy("ed25519.pub"), &id, &digest, &sigs, &StandardKeys::default()).await.unwrap_err();
    assert!(report::line(&e).contains("Ed25519"), "{e}");

    // A second key appends a layer; the same ECDSA key again makes a new (randomised)
    // signature, Ed25519 is deterministic and is not duplicated.
    let s2 =
        sign_image(&image, &digest, Some("registry.example/app"), &key("ed25519.key"), &opts).await.unwrap();
    assert!(s2.appended);
    let s3 =
        sign_image(&image, &digest, Some("registry.example/app"), &key("ed25519.key"), &opts).await.unwrap();
    assert!(!s3.appended);
    evaluate(&policy("ed25519.pub"), &id, &digest, &sigs, &StandardKeys::default()).await.unwrap();
    let m = sigs.signature_manifest(&digest).await.unwrap().unwrap();
    assert_eq!(imgsig::cosign::parse_signature_manifest(&m.bytes).unwrap().len(), 2);
    // The image's own tag still resolves to the image.
    let again = ImageSource::open(&image, &opts).await.unwrap().manifest().await.unwrap().digest;
    assert_eq!(again, digest);
}
