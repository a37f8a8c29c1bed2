//! Pulls of images encrypted by real skopeo (1.9.3 and 1.18, golden vectors in
//! `testdata/golden`, see its README) from OCI layouts, compared with a
//! reference tree built independently from the plaintext layouts; plus the
//! tamper suite: after each failure the bundle has no rootfs and the store no
//! entry for the tampered layer.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::model;
use guest_puller::assemble::LinkMode;
use guest_puller::extract::ExtractOptions;
use guest_puller::keys::{KeySources, Keys};
use guest_puller::policy::PullPolicy;
use guest_puller::progress::Quiet;
use guest_puller::pull::{pull, PullError, PullOptions, PullSummary};
use sha2::Digest as _;

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/golden").join(name)
}

fn opts(image: String, bundle: &Path, keys: &[PathBuf], store: Option<PathBuf>) -> PullOptions {
    let k = Keys::build(&KeySources { key_files: keys.to_vec(), ..Default::default() }).expect("keys");
    PullOptions {
        image: image.parse().expect("image reference"),
        bundle: bundle.to_path_buf(),
        unwrappers: k.unwrappers,
        policy: PullPolicy::default(),
        platform: None,
        store,
        store_link: LinkMode::Copy,
        source: Default::default(),
        max_concurrent_layers: 3,
        extract: ExtractOptions::default(),
        progress: Arc::new(Quiet),
        signature_check: None,
    }
}

async fn pull_and_compare(vector: &str, enc_layout: &str, key: &str) -> PullSummary {
    let g = golden(vector);
    let tmp = tempfile::tempdir().expect("tmp");
    let bundle = tmp.path().join("bundle");
    let image = format!("oci:{}:enc", g.join(enc_layout).display());
    let summary = pull(&opts(image, &bundle, &[g.join("keys").join(key)], None)).await.expect("pull");
    let plain = g.join("plain-oci");
    let expected = model::expected_from_layout(&plain, &model::tagged(&plain, "v1"));
    assert!(!expected.is_empty());
    model::assert_same(&expected, &model::read_tree(&bundle.join("rootfs")));
    let config: serde_json::Value =
        serde_json::from_slice(&std::fs::read(bundle.join("image.json")).expect("image.json")).expect("json");
    assert!(config["rootfs"]["diff_ids"].is_array());
    // No private store left behind.
    let names: Vec<_> = std::fs::read_dir(&bundle).expect("ls").map(|e| e.expect("e").file_name()).collect();
    assert_eq!(names.len(), 2, "{names:?}");
    summary
}

#[tokio::test]
async fn three_layers_rsa_skopeo_1_9_whiteouts_opaque_symlink_hardlink() {
    let s = pull_and_compare("three-layers", "enc-oci", "rsa.priv.pem").await;
    assert_eq!(s.layers.len(), 3);
    assert!(s.layers.iter().all(|l| l.encrypted && !l.cached));
}

#[tokio::test]
async fn three_layers_rsa_skopeo_1_18() {
    pull_and_compare("three-layers", "enc-oci-1.18", "rsa.priv.pem").await;
}

#[tokio::test]
async fn ec_p256_and_p384() {
    pull_and_compare("ec-p256", "enc-oci", "ec.priv.pem").await;
    pull_and_compare("ec-p384", "enc-oci-1.18", "ec.priv.pem").await;
}

#[tokio::test]
async fn zstd_multi_frame_layer_decodes_whole() {
    let s = pull_and_compare("zstd", "enc-oci", "rsa.priv.pem").await;
    assert!(s.layers.iter().all(|l| l.media_type.contains("zstd")));
}

#[tokio::test]
async fn multi_recipient_either_key() {
    pull_and_compare("multi-recipient-rsa-ec", "enc-oci", "ec.priv.pem").await;
    pull_and_compare("multi-recipient-rsa-ec", "enc-oci-1.18", "rsa.priv.pem").await;
}

#[tokio::test]
async fn two_platform_index_selects_by_platform() {
    let g = golden("index-two-platforms");
    let plain = g.join("plain-oci");
    let plain_index: serde_json::Value = serde_json::from_slice(
        &std::fs::read(
            plain.join("blobs/sha256").join(model::tagged(&plain, "v1").trim_start_matches("sha256:")),
        )
        .expect("idx"),
    )
    .expect("json");
    let mut seen = Vec::new();
    for arch in ["amd64", "arm64"] {
        let tmp = tempfile::tempdir().expect("tmp");
        let bundle = tmp.path().join("b");
        let mut o = opts(
            format!("oci:{}:enc", g.join("enc-oci").display()),
            &bundle,
            &[g.join("keys/rsa.priv.pem")],
            None,
        );
        o.platform = Some(format!("linux/{arch}").parse().expect("platform"));
        pull(&o).await.expect("pull");
        let m = plain_index["manifests"]
            .as_array()
            .expect("manifests")
            .iter()
            .find(|m| m["platform"]["architecture"] == arch)
            .expect("platform entry");
        let expected = model::expected_from_layout(&plain, m["digest"].as_str().expect("d"));
        let actual = model::read_tree(&bundle.join("rootfs"));
        model::assert_same(&expected, &actual);
        seen.push(actual);
    }
    assert_ne!(seen[0], seen[1], "the two platforms must differ");
}

#[tokio::test]
async fn wrong_key_fails_without_rootfs() {
    let g = golden("three-layers");
    let tmp = tempfile::tempdir().expect("tmp");
    let bundle = tmp.path().join("b");
    let err = pull(&opts(
        format!("oci:{}:enc", g.join("enc-oci").display()),
        &bundle,
        &[golden("ec-p256/keys/ec.priv.pem")],
        None,
    ))
    .await
    .expect_err("wrong key");
    assert!(matches!(err, PullError::Keys { .. }), "{err}");
    assert!(!bundle.join("rootfs").exists());
}

#[tokio::test]
async fn policy_refuses_partly_encrypted_and_unpinned_before_fetching() {
    let g = golden("partial-last-layer");
    let tmp = tempfile::tempdir().expect("tmp");
    let bundle = tmp.path().join("b");
    let store = tmp.path().join("store");
    let mut o = opts(
        format!("oci:{}:enc", g.join("enc-oci").display()),
        &bundle,
        &[g.join("keys/rsa.priv.pem")],
        Some(store.clone()),
    );
    o.policy = PullPolicy::parse("require_encrypted_layers: true").expect("policy");
    let err = pull(&o).await.expect_err("refused");
    assert!(err.to_string().contains("not encrypted"), "{err}");
    let stored = std::fs::read_dir(store.join("layers/sha256")).map(|r| r.count()).unwrap_or(0);
    assert_eq!(stored, 0, "nothing fetched");
    o.policy = PullPolicy::parse("require_digest: true").expect("policy");
    let err = pull(&o).await.expect_err("refused");
    assert!(err.to_string().contains("pinned by digest"), "{err}");
    // Without a policy the partly encrypted image pulls fine.
    o.policy = PullPolicy::default();
    pull(&o).await.expect("pull");
    assert_eq!(std::fs::read_dir(store.join("layers/sha256")).expect("ls").count(), 3);
}

#[tokio::test]
async fn store_reuses_layers_and_refetches_corrupt_entries() {
    let g = golden("three-layers");
    let tmp = tempfile::tempdir().expect("tmp");
    let store = tmp.path().join("store");
    let image = format!("oci:{}:enc", g.join("enc-oci").display());
    let key = [g.join("keys/rsa.priv.pem")];
    let s1 =
        pull(&opts(image.clone(), &tmp.path().join("b1"), &key, Some(store.clone()))).await.expect("first");
    assert!(s1.layers.iter().all(|l| !l.cached));
    // The 1.18 encryption has other blobs but the same diff_ids: all cached.
    let image2 = format!("oci:{}:enc", g.join("enc-oci-1.18").display());
    let s2 = pull(&opts(image2, &tmp.path().join("b2"), &key, Some(store.clone()))).await.expect("second");
    assert!(s2.layers.iter().all(|l| l.cached));
    model::assert_same(
        &model::read_tree(&tmp.path().join("b1/rootfs")),
        &model::read_tree(&tmp.path().join("b2/rootfs")),
    );
    // Break one entry's completion marker: it is detected and fetched again.
    let hex = s1.layers[1].diff_id.hex();
    std::fs::remove_file(store.join("layers/sha256").join(hex).join("complete.json")).expect("rm marker");
    let s3 = pull(&opts(image, &tmp.path().join("b3"), &key, Some(store.clone()))).await.expect("third");
    assert!(s3.layers[0].cached && !s3.layers[1].cached && s3.layers[2].cached);
    model::assert_same(
        &model::read_tree(&tmp.path().join("b1/rootfs")),
        &model::read_tree(&tmp.path().join("b3/rootfs")),
    );
}

#[tokio::test]
async fn concurrent_pulls_of_one_image_share_the_work() {
    let g = golden("three-layers");
    let tmp = tempfile::tempdir().expect("tmp");
    let store = tmp.path().join("store");
    let image = format!("oci:{}:enc", g.join("enc-oci").display());
    let key = [g.join("keys/rsa.priv.pem")];
    let o1 = opts(image.clone(), &tmp.path().join("b1"), &key, Some(store.clone()));
    let o2 = opts(image, &tmp.path().join("b2"), &key, Some(store.clone()));
    let (a, b) = tokio::join!(pull(&o1), pull(&o2));
    let (a, b) = (a.expect("a"), b.expect("b"));
    // Each layer was decoded by exactly one of the two pulls.
    for i in 0..3 {
        assert!(a.layers[i].cached != b.layers[i].cached, "layer {i} decoded twice or never");
    }
    model::assert_same(
        &model::read_tree(&tmp.path().join("b1/rootfs")),
        &model::read_tree(&tmp.path().join("b2/rootfs")),
    );
}

// ---- tamper suite -------------------------------------------------------

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).expect("mkdir");
    for e in std::fs::read_dir(src).expect("ls") {
        let e = e.expect("e");
        let to = dst.join(e.file_name());
        if e.file_type().expect("ft").is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).expect("copy");
        }
    }
}

fn put_blob(layout: &Path, bytes: &[u8]) -> String {
    let hex = hex::encode(sha2::Sha256::digest(bytes));
    std::fs::write(layout.join("blobs/sha256").join(&hex), bytes).expect("write blob");
    format!("sha256:{hex}")
}

fn read_blob(layout: &Path, digest: &str) -> Vec<u8> {
    std::fs::read(layout.join("blobs/sha256").join(digest.trim_start_matches("sha256:"))).expect("blob")
}

/// Rewrites the manifest tagged `tag` with `f` and retags the new one.
fn edit_manifest(layout: &Path, tag: &str, f: impl FnOnce(&Path, &mut serde_json::Value)) -> String {
    let old = model::tagged(layout, tag);
    let mut m: serde_json::Value = serde_json::from_slice(&read_blob(layout, &old)).expect("manifest");
    f(layout, &mut m);
    let bytes = serde_json::to_vec(&m).expect("ser");
    let new = put_blob(layout, &bytes);
    let mut idx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("idx")).expect("json");
    for e in idx["manifests"].as_array_mut().expect("manifests") {
        if e["digest"] == old.as_str() {
            e["digest"] = new.clone().into();
            e["size"] = bytes.len().into();
        }
    }
    std::fs::write(layout.join("index.json"), serde_json::to_vec(&idx).expect("ser")).expect("write idx");
    new
}

struct Tampered {
    _tmp: tempfile::TempDir,
    layout: PathBuf,
    bundle: PathBuf,
    store: PathBuf,
}

fn tampered() -> Tampered {
    let tmp = tempfile::tempdir().expect("tmp");
    let layout = tmp.path().join("layout");
    copy_dir(&golden("three-layers/enc-oci"), &layout);
    Tampered { layout, bundle: tmp.path().join("bundle"), store: tmp.path().join("store"), _tmp: tmp }
}

async fn pull_tampered(t: &Tampered, image: String) -> PullError {
    let err =
        pull(&opts(image, &t.bundle, &[golden("three-layers/keys/rsa.priv.pem")], Some(t.store.clone())))
            .await
            .expect_err("tampered image must fail");
    assert!(!t.bundle.join("rootfs").exists(), "a rootfs was published");
    let staging: Vec<_> =
        std::fs::read_dir(t.store.join("staging")).map(|r| r.flatten().collect()).unwrap_or_default();
    assert!(staging.is_empty(), "staging left behind: {staging:?}");
    err
}

fn store_has(t: &Tampered, diff_id: &str) -> bool {
    t.store.join("layers/sha256").join(diff_id.trim_start_matches("sha256:")).exists()
}

fn diff_ids(layout: &Path) -> Vec<String> {
    let m: serde_json::Value =
        serde_json::from_slice(&read_blob(layout, &model::tagged(layout, "enc"))).expect("m");
    let c: serde_json::Value =
        serde_json::from_slice(&read_blob(layout, m["config"]["digest"].as_str().expect("c"))).expect("c");
    c["rootfs"]["diff_ids"]
        .as_array()
        .expect("ids")
        .iter()
        .map(|v| v.as_str().expect("s").to_string())
        .collect()
}

#[tokio::test]
async fn tamper_flipped_ciphertext_byte_with_consistent_digests_fails_hmac() {
    let t = tampered();
    let ids = diff_ids(&t.layout);
    edit_manifest(&t.layout, "enc", |layout, m| {
        let l = &mut m["layers"][1];
        let mut blob = read_blob(layout, l["digest"].as_str().expect("d"));
        let mid = blob.len() / 2;
        blob[mid] ^= 0x01;
        l["digest"] = put_blob(layout, &blob).into();
    });
    let err = pull_tampered(&t, format!("oci:{}:enc", t.layout.display())).await;
    let msg = report::line(&err);
    assert!(matches!(err, PullError::Layer { index: 1, .. }), "{msg}");
    assert!(
        msg.to_lowercase().contains("hmac") || msg.contains("decompress") || msg.contains("extract"),
        "{msg}"
    );
    assert!(!store_has(&t, &ids[1]), "the tampered layer reached the store");
}

#[tokio::test]
async fn tamper_wrong_diff_id_fails() {
    let t = tampered();
    let ids = diff_ids(&t.layout);
    edit_manifest(&t.layout, "enc", |layout, m| {
        let mut c: serde_json::Value =
            serde_json::from_slice(&read_blob(layout, m["config"]["digest"].as_str().expect("c")))
                .expect("c");
        c["rootfs"]["diff_ids"][2] = format!("sha256:{}", "ab".repeat(32)).into();
        let bytes = serde_json::to_vec(&c).expect("ser");
        m["config"]["digest"] = put_blob(layout, &bytes).into();
        m["config"]["size"] = bytes.len().into();
    });
    let err = pull_tampered(&t, format!("oci:{}:enc", t.layout.display())).await;
    assert!(report::line(&err).contains("diff_id mismatch"), "{err}");
    assert!(!store_has(&t, &format!("sha256:{}", "ab".repeat(32))));
    assert!(!store_has(&t, &ids[2]));
}

#[tokio::test]
async fn tamper_manifest_substituted_under_pinned_digest() {
    let t = tampered();
    let pinned = model::tagged(&t.layout, "enc");
    let index = std::fs::read(t.layout.join("index.json")).expect("index");
    // Put another (valid) manifest's bytes at the pinned digest's path.
    let other = edit_manifest(&t.layout, "enc", |_, m| {
        m["layers"].as_array_mut().expect("layers").pop();
    });
    let bytes = read_blob(&t.layout, &other);
    std::fs::write(t.layout.join("blobs/sha256").join(pinned.trim_start_matches("sha256:")), bytes)
        .expect("swap");
    std::fs::write(t.layout.join("index.json"), index).expect("restore index");
    let err = pull_tampered(&t, format!("oci:{}@{}", t.layout.display(), pinned)).await;
    let msg = err.to_string();
    assert!(msg.contains("digest") && msg.contains("mismatch") || msg.contains("hashes to"), "{msg}");
}

/// Unmounts on drop, so a failing assertion leaves no mount behind.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg(&self.0).status();
    }
}

#[tokio::test]
async fn overlay_store_link_mounts_views_and_keeps_writes_out_of_the_store() {
    if let Err(e) = guest_puller::overlay::check_available() {
        eprintln!("skipped: {e}");
        return;
    }
    let g = golden("three-layers");
    let tmp = tempfile::tempdir().expect("tmp");
    let store = tmp.path().join("store");
    let image = format!("oci:{}:enc", g.join("enc-oci").display());
    let key = [g.join("keys/rsa.priv.pem")];
    let plain = g.join("plain-oci");
    let expected = model::expected_from_layout(&plain, &model::tagged(&plain, "v1"));
    let mut mounts = Vec::new();
    for (i, cached) in [(1, false), (2, true)] {
        let bundle = tmp.path().join(format!("b{i}"));
        let mut o = opts(image.clone(), &bundle, &key, Some(store.clone()));
        o.store_link = LinkMode::Overlay;
        let s = pull(&o).await.expect("overlay pull");
        mounts.push(Unmount(bundle.join("rootfs")));
        assert!(s.layers.iter().all(|l| l.cached == cached));
        // The whiteouts and opaque directories of the layers are applied by overlayfs.
        model::assert_same(&expected, &model::read_tree(&bundle.join("rootfs")));
        let mounted = std::fs::read_to_string("/proc/mounts").expect("mounts");
        assert!(
            mounted.contains(&format!("{} overlay", bundle.join("rootfs").display())),
            "not an overlay mount"
        );
    }
    // A container write lands in the bundle's upper directory, never in the store.
    let stored = model::read_tree(&store);
    let rootfs = tmp.path().join("b1/rootfs");
    let (victim, _) = expected.iter().find(|(_, n)| matches!(n, model::Node::File { .. })).expect("a file");
    std::fs::write(rootfs.join(victim), b"written by the container").expect("write");
    std::fs::write(rootfs.join("new-file"), b"new").expect("create");
    model::assert_same(&stored, &model::read_tree(&store));
    model::assert_same(&expected, &model::read_tree(&tmp.path().join("b2/rootfs")));
    assert!(tmp.path().join("b1/.cloak-overlay/upper/new-file").exists());
}
