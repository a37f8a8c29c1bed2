//! Layout-to-layout tests on the skopeo-compatible fixture: reading, index handling,
//! platform selection and whole-image copies. No peers needed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use oci::manifest::{Manifest, Platform};
use oci::{
    media_type, select_platform, Descriptor, DestOptions, ImageDest, ImageIndex, ImageRef, ImageSource,
    ManifestRole, OciLayout, PlatformSpec, SourceOptions,
};

const MANIFEST: &str = "sha256:ab1a944183cb5d94bd0f02435496d7946b9cf8e624eb67d014af6cd68362ccee";

fn r(s: &str) -> ImageRef {
    s.parse().unwrap()
}

#[tokio::test]
async fn reads_the_fixture_by_tag_by_digest_and_untagged() {
    let dir = common::plain_fixture();
    for spec in [
        format!("oci:{}:v1", dir.display()),
        format!("oci:{}", dir.display()),
        format!("oci:{}@{MANIFEST}", dir.display()),
    ] {
        let src = ImageSource::open(&r(&spec), &SourceOptions::default()).await.unwrap();
        let m = src.manifest().await.unwrap();
        assert_eq!(m.digest.to_string(), MANIFEST, "{spec}");
        assert_eq!(m.media_type, media_type::OCI_MANIFEST);
        let Manifest::Image(im) = m.parse().unwrap() else { panic!("image manifest expected") };
        let cfg = src.blob_bytes(&im.config.digest, 1 << 20).await.unwrap();
        assert_eq!(cfg.len() as u64, im.config.size);
    }
    let src = ImageSource::open(&r(&format!("oci:{}:nope", dir.display())), &SourceOptions::default())
        .await
        .unwrap();
    let e = src.manifest().await.unwrap_err().to_string();
    assert!(e.contains("\"nope\"") && e.contains("v1"), "{e}");
}

#[tokio::test]
async fn index_copy_and_platform_selection() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    common::copy_tree(&common::plain_fixture(), &a);
    // Wrap the fixture manifest in a one-platform index tagged `multi`.
    let layout = OciLayout::open(&a).unwrap();
    let mut child = Descriptor::new(media_type::OCI_MANIFEST, MANIFEST.parse().unwrap(), 401);
    child.platform = Some(Platform {
        architecture: "amd64".into(),
        os: "linux".into(),
        os_version: None,
        os_features: None,
        variant: None,
        extra: Default::default(),
    });
    let mut index = ImageIndex::empty();
    index.manifests.push(child);
    let bytes = serde_json::to_vec(&index).unwrap();
    let dst_a =
        ImageDest::open(&r(&format!("oci:{}:multi", a.display())), &DestOptions::default()).await.unwrap();
    let idx_digest = dst_a.put_manifest(&bytes, media_type::OCI_INDEX, ManifestRole::TopLevel).await.unwrap();
    assert_eq!(layout.resolve(Some("multi"), None).unwrap().digest, idx_digest);
    assert_eq!(layout.resolve(Some("v1"), None).unwrap().digest.to_string(), MANIFEST);

    // Copy the index image to a fresh layout.
    let b = tmp.path().join("b");
    let src = ImageSource::open(&r(&format!("oci:{}:multi", a.display())), &SourceOptions::default())
        .await
        .unwrap();
    let dst =
        ImageDest::open(&r(&format!("oci:{}:copied", b.display())), &DestOptions::default()).await.unwrap();
    let top = dst.copy_image_from(&src).await.unwrap();
    assert_eq!(top.digest, idx_digest);

    let back = ImageSource::open(&r(&format!("oci:{}:copied", b.display())), &SourceOptions::default())
        .await
        .unwrap();
    let m = back.manifest().await.unwrap();
    assert_eq!(m.media_type, media_type::OCI_INDEX);
    let Manifest::Index(idx) = m.parse().unwrap() else { panic!("index expected") };
    let want: PlatformSpec = "linux/amd64".parse().unwrap();
    let d = select_platform(&idx, &want).unwrap();
    let child = back.manifest_by_digest(&d.digest).await.unwrap();
    assert_eq!(child.digest.to_string(), MANIFEST);
    let e = select_platform(&idx, &"linux/arm64".parse().unwrap()).unwrap_err();
    assert!(e.to_string().contains("available: linux/amd64"), "{e}");
    // only the top-level manifest is tagged in index.json
    let out = OciLayout::open(&b).unwrap().read_index().unwrap();
    assert_eq!(out.manifests.len(), 1);
    assert_eq!(out.manifests[0].ref_name(), Some("copied"));
}
