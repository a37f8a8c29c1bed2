//! The decode stage on its own: multi-member gzip, multi-frame zstd, diff_id
//! verdicts, and a failing source (what a bad HMAC or digest looks like from
//! here) aborting the extraction.

mod common;

use std::io::Write;
use std::sync::atomic::AtomicBool;

use common::rawtar::RawTar;
use guest_puller::decode::{decode_layer, Compression, DecodeError};
use guest_puller::extract::ExtractOptions;
use sha2::Digest as _;

fn diff_id(tar: &[u8]) -> String {
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(tar)))
}

fn layer_tar() -> Vec<u8> {
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    RawTar::new().dir("d/").file("d/a", b"alpha").file("d/big", &big).file("z", b"zulu").finish()
}

async fn run(data: Vec<u8>, c: Compression, id: &str) -> (Result<guest_puller::decode::DecodedLayer, DecodeError>, tempfile::TempDir) {
    let tmp = tempfile::tempdir().expect("tmp");
    let cancel = AtomicBool::new(false);
    let r = decode_layer(std::io::Cursor::new(data), c, id, tmp.path(), &ExtractOptions::default(), &|_| {}, &cancel).await;
    (r, tmp)
}

#[tokio::test]
async fn gzip_multi_member_decodes_whole() {
    let tar = layer_tar();
    let (a, b) = tar.split_at(700);
    let mut gz = Vec::new();
    for part in [a, b] {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(part).expect("gz");
        gz.extend(e.finish().expect("gz"));
    }
    let (r, tmp) = run(gz, Compression::Gzip, &diff_id(&tar)).await;
    r.expect("decode");
    assert_eq!(std::fs::read(tmp.path().join("z")).expect("z"), b"zulu");
}

#[tokio::test]
async fn zstd_multi_frame_decodes_whole() {
    let tar = layer_tar();
    // Cut mid-entry, each half its own frame: stopping after frame 1 truncates the tar.
    let (a, b) = tar.split_at(1000);
    let mut z = zstd::encode_all(a, 3).expect("zstd");
    z.extend(zstd::encode_all(b, 3).expect("zstd"));
    let (r, tmp) = run(z, Compression::Zstd, &diff_id(&tar)).await;
    let d = r.expect("decode");
    assert_eq!(d.diff_id, diff_id(&tar));
    assert_eq!(std::fs::read(tmp.path().join("d/big")).expect("big").len(), 300_000);
    assert_eq!(std::fs::read(tmp.path().join("z")).expect("z"), b"zulu");
}

#[tokio::test]
async fn diff_id_mismatch_is_reported() {
    let tar = layer_tar();
    let wrong = format!("sha256:{}", "0".repeat(64));
    let (r, _tmp) = run(tar.clone(), Compression::None, &wrong).await;
    match r {
        Err(DecodeError::DiffId { expected, actual }) => {
            assert_eq!(expected, wrong);
            assert_eq!(actual, diff_id(&tar));
        }
        other => panic!("expected a diff_id mismatch, got {other:?}"),
    }
}

/// Yields its data, then fails like a reader whose HMAC did not match.
struct FailingAtEof(std::io::Cursor<Vec<u8>>);

impl tokio::io::AsyncRead for FailingAtEof {
    fn poll_read(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>, buf: &mut tokio::io::ReadBuf<'_>) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match std::pin::Pin::new(&mut self.0).poll_read(cx, buf) {
            std::task::Poll::Ready(Ok(())) if buf.filled().len() == before => {
                std::task::Poll::Ready(Err(std::io::Error::new(std::io::ErrorKind::InvalidData, "HMAC mismatch")))
            }
            other => other,
        }
    }
}

#[tokio::test]
async fn source_failure_at_eof_fails_the_layer() {
    let tar = layer_tar();
    let tmp = tempfile::tempdir().expect("tmp");
    let cancel = AtomicBool::new(false);
    let r = decode_layer(FailingAtEof(std::io::Cursor::new(tar.clone())), Compression::None, &diff_id(&tar), tmp.path(), &ExtractOptions::default(), &|_| {}, &cancel).await;
    match r {
        Err(DecodeError::Source(e)) => assert!(e.to_string().contains("HMAC")),
        other => panic!("expected a source failure, got {other:?}"),
    }
}

#[tokio::test]
async fn garbage_gzip_is_a_decompress_error() {
    let (r, _tmp) = run(b"definitely not gzip".to_vec(), Compression::Gzip, &diff_id(b"")).await;
    assert!(matches!(r, Err(DecodeError::Decompress(_)) | Err(DecodeError::Extract(_))), "{r:?}");
}
