//! Decompression bombs (issue 21, finding 7): a few KiB of gzip or zstd that
//! unpack to tens of MiB of zeros (more than 1000:1) are refused by default, at
//! the decode stage (typed error) and through `cloak-pull` (naming the layer's
//! digest and the flag); a normal layer passes, and raising the limit lets the
//! bomb through.

mod common;

use std::io::Write;
use std::process::Command;
use std::sync::atomic::AtomicBool;

use common::rawtar::RawTar;
use guest_puller::decode::{decode_layer, Compression, DecodeError};
use guest_puller::extract::{ExtractError, ExtractOptions, Limits};
use oci::{Descriptor, OciLayout};
use sha2::Digest as _;

/// Unpacked size of the bombs.
const ZEROS: usize = 64 << 20;

fn diff_id(tar: &[u8]) -> oci::Digest {
    oci::Digest::from_sha256_bytes(sha2::Sha256::digest(tar).into())
}

fn zeros_tar() -> Vec<u8> {
    RawTar::new().file("zeros", &vec![0u8; ZEROS]).file("after", b"end").finish()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).expect("gz");
    e.finish().expect("gz")
}

fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::encode_all(data, 3).expect("zstd")
}

async fn decode(
    blob: Vec<u8>,
    c: Compression,
    tar: &[u8],
    limits: Limits,
) -> (Result<guest_puller::decode::DecodedLayer, DecodeError>, tempfile::TempDir) {
    let tmp = tempfile::tempdir().expect("tmp");
    let cancel = AtomicBool::new(false);
    let opts = ExtractOptions { limits, ..Default::default() };
    let r =
        decode_layer(std::io::Cursor::new(blob), None, c, &diff_id(tar), tmp.path(), &opts, &|_| {}, &cancel)
            .await;
    (r, tmp)
}

async fn bomb_is_refused_by_default(c: Compression, blob: Vec<u8>) {
    let tar = zeros_tar();
    assert!(tar.len() / blob.len() > 1000, "the test layer must be a 1000:1 bomb ({} bytes)", blob.len());
    let (r, tmp) = decode(blob.clone(), c, &tar, Limits::default()).await;
    match r {
        Err(e @ DecodeError::Ratio { unpacked, compressed, limit }) => {
            assert_eq!(limit, guest_puller::extract::DEFAULT_MAX_RATIO);
            assert!(unpacked > limit * compressed, "{e}");
            // Refused early: not long after the ratio floor, not at the end.
            assert!(unpacked < 16 << 20, "{e}");
            assert!(e.to_string().contains("--max-decompression-ratio"), "{e}");
        }
        other => panic!("expected a ratio refusal, got {other:?}"),
    }
    let written = std::fs::metadata(tmp.path().join("zeros")).map(|m| m.len()).unwrap_or(0);
    assert!(written < 16 << 20, "{written} bytes extracted before the refusal");

    // Raised, the same layer passes and is intact.
    let (r, tmp) = decode(blob, c, &tar, Limits { max_ratio: 1_000_000, ..Default::default() }).await;
    r.expect("a raised ratio lets the layer through");
    assert_eq!(std::fs::metadata(tmp.path().join("zeros")).expect("zeros").len(), ZEROS as u64);
}

#[tokio::test]
async fn gzip_layer_of_zeros_beyond_1000_to_1_is_refused_by_default() {
    bomb_is_refused_by_default(Compression::Gzip, gzip(&zeros_tar())).await;
}

#[tokio::test]
async fn zstd_layer_of_zeros_beyond_1000_to_1_is_refused_by_default() {
    bomb_is_refused_by_default(Compression::Zstd, zstd(&zeros_tar())).await;
}

#[tokio::test]
async fn normal_layers_pass_the_default_ratio_and_tiny_layers_the_floor() {
    // Incompressible-ish content of a few MiB, and a tiny layer whose tar padding
    // compresses far beyond the ratio but stays under the floor.
    let data: Vec<u8> = (0..4_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let normal = RawTar::new().dir("d/").file("d/data", &data).file("d/text", &[b'a'; 300_000]).finish();
    let tiny = RawTar::new().file("x", b"x").finish();
    for tar in [normal, tiny] {
        for (c, blob) in [(Compression::Gzip, gzip(&tar)), (Compression::Zstd, zstd(&tar))] {
            let (r, _tmp) = decode(blob, c, &tar, Limits::default()).await;
            r.expect("a normal layer passes");
        }
    }
}

#[tokio::test]
async fn layer_beyond_the_size_limit_is_refused() {
    let tar = zeros_tar();
    let limits = Limits { max_total_size: 8 << 20, max_ratio: 1_000_000, ..Default::default() };
    let (r, _tmp) = decode(zstd(&tar), Compression::Zstd, &tar, limits).await;
    let e = r.expect_err("too large");
    assert!(
        matches!(
            e,
            DecodeError::UnpackedTooLarge { max: 8388608 }
                | DecodeError::Extract(ExtractError::TooLarge { max: 8388608 })
        ),
        "{e:?}"
    );
    assert!(report::line(&e).contains("--max-layer-size"), "{e}");
}

/// A one-layer OCI layout whose layer is `blob` (`media_type`) of `tar`.
async fn layout_with(dir: &std::path::Path, blob: &[u8], media_type: &str, tar: &[u8]) -> oci::Digest {
    let layout = OciLayout::create(dir).expect("layout");
    let layer = layout.put_blob_bytes(blob).await.expect("layer");
    let config = format!(
        r#"{{"architecture":"amd64","os":"linux","rootfs":{{"type":"layers","diff_ids":["{}"]}}}}"#,
        diff_id(tar)
    );
    let config_digest = layout.put_blob_bytes(config.as_bytes()).await.expect("config");
    let manifest = format!(
        r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"{config_digest}","size":{}}},"layers":[{{"mediaType":"{media_type}","digest":"{layer}","size":{}}}]}}"#,
        config.len(),
        blob.len()
    );
    let m = layout.put_blob_bytes(manifest.as_bytes()).await.expect("manifest");
    let desc = Descriptor::new("application/vnd.oci.image.manifest.v1+json", m, manifest.len() as u64);
    layout.set_manifest(&desc, Some("v1")).expect("tag");
    layer
}

#[tokio::test]
async fn cloak_pull_refuses_a_gzip_bomb_naming_the_layer_and_the_flag() {
    let tmp = tempfile::tempdir().expect("tmp");
    let tar = zeros_tar();
    let layer = layout_with(
        &tmp.path().join("img"),
        &gzip(&tar),
        "application/vnd.oci.image.layer.v1.tar+gzip",
        &tar,
    )
    .await;
    let image = format!("oci:{}:v1", tmp.path().join("img").display());
    let pull = |bundle: &str, extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_cloak-pull"))
            .arg("--quiet")
            .args(extra)
            .arg(&image)
            .arg(tmp.path().join(bundle))
            .output()
            .expect("run cloak-pull")
    };
    let out = pull("refused", &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains(&layer.to_string()), "names the layer: {stderr}");
    assert!(
        stderr.contains("decompression bomb") && stderr.contains("--max-decompression-ratio"),
        "{stderr}"
    );
    assert!(!tmp.path().join("refused/rootfs").exists(), "nothing published");

    let out = pull("raised", &["--max-decompression-ratio", "100000"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let zeros = tmp.path().join("raised/rootfs/zeros");
    assert_eq!(std::fs::metadata(zeros).expect("zeros").len(), ZEROS as u64);

    let out = pull("small", &["--max-decompression-ratio", "100000", "--max-layer-size", "8M"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("--max-layer-size") && stderr.contains(&layer.to_string()), "{stderr}");
}
