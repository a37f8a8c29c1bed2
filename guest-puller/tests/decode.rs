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

fn diff_id(tar: &[u8]) -> oci::Digest {
    oci::Digest::from_sha256_bytes(sha2::Sha256::digest(tar).into())
}

fn layer_tar() -> Vec<u8> {
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    RawTar::new().dir("d/").file("d/a", b"alpha").file("d/big", &big).file("z", b"zulu").finish()
}

async fn run(
    data: Vec<u8>,
    c: Compression,
    id: &oci::Digest,
) -> (Result<guest_puller::decode::DecodedLayer, DecodeError>, tempfile::TempDir) {
    let tmp = tempfile::tempdir().expect("tmp");
    let cancel = AtomicBool::new(false);
    let r = decode_layer(
        std::io::Cursor::new(data),
        None,
        c,
        id,
        tmp.path(),
        &ExtractOptions::default(),
        &|_| {},
        &cancel,
    )
    .await;
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
    let wrong: oci::Digest = format!("sha256:{}", "0".repeat(64)).parse().expect("digest");
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
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        match std::pin::Pin::new(&mut self.0).poll_read(cx, buf) {
            std::task::Poll::Ready(Ok(())) if buf.filled().len() == before => std::task::Poll::Ready(Err(
                std::io::Error::new(std::io::ErrorKind::InvalidData, "HMAC mismatch"),
            )),
            other => other,
        }
    }
}

#[tokio::test]
async fn source_failure_at_eof_fails_the_layer() {
    let tar = layer_tar();
    let tmp = tempfile::tempdir().expect("tmp");
    let cancel = AtomicBool::new(false);
    let r = decode_layer(
        FailingAtEof(std::io::Cursor::new(tar.clone())),
        None,
        Compression::None,
        &diff_id(&tar),
        tmp.path(),
        &ExtractOptions::default(),
        &|_| {},
        &cancel,
    )
    .await;
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

// ------------------------------------------------- encrypted: decrypted here

/// A gzip layer encrypted as skopeo would: (ciphertext, its sha256, options).
fn encrypted_layer(
    tar: &[u8],
    c: Compression,
) -> (Vec<u8>, [u8; 32], ocicrypt::PrivateOptions, ocicrypt::PublicOptions) {
    let mut ct = if c == Compression::Gzip {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(tar).expect("gz");
        e.finish().expect("gz")
    } else {
        tar.to_vec()
    };
    let opts = ocicrypt::PrivateOptions::generate("");
    let mut enc = ocicrypt::LayerEncryptor::new(&opts);
    enc.update(&mut ct);
    let public = enc.finish();
    let sha: [u8; 32] = sha2::Sha256::digest(&ct).into();
    (ct, sha, opts, public)
}

async fn run_encrypted(
    ct: Vec<u8>,
    dec: ocicrypt::LayerDecryptor,
    c: Compression,
    id: &oci::Digest,
) -> (Result<guest_puller::decode::DecodedLayer, DecodeError>, tempfile::TempDir) {
    let tmp = tempfile::tempdir().expect("tmp");
    let cancel = AtomicBool::new(false);
    let r = decode_layer(
        std::io::Cursor::new(ct),
        Some(dec),
        c,
        id,
        tmp.path(),
        &ExtractOptions::default(),
        &|_| {},
        &cancel,
    )
    .await;
    (r, tmp)
}

/// The blob digest, HMAC and diff_id hashed in one pass on the decode thread
/// give the same verdicts as separate hashes: a good layer decodes.
#[tokio::test]
async fn encrypted_layer_decrypts_and_verifies_in_one_pass() {
    // Big enough for many chunks and a pending diff_id buffer that overflows.
    let big: Vec<u8> = (0..6_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 9) as u8).collect();
    let tar = RawTar::new().file("a", b"alpha").file("big", &big).file("z", b"zulu").finish();
    let (ct, sha, opts, public) = encrypted_layer(&tar, Compression::Gzip);
    let dec = ocicrypt::LayerDecryptor::with_ciphertext_digest(&opts, &public, sha).expect("dec");
    let (r, tmp) = run_encrypted(ct, dec, Compression::Gzip, &diff_id(&tar)).await;
    let d = r.expect("decode");
    assert_eq!(d.diff_id, diff_id(&tar));
    assert_eq!(std::fs::read(tmp.path().join("big")).expect("big"), big);
}

/// Tampered ciphertext under a consistent blob digest fails on the HMAC; a blob
/// that is not the one the manifest names fails on the digest; both as source
/// failures. A wrong diff_id is still caught.
#[tokio::test]
async fn encrypted_layer_failures_are_source_failures() {
    // A plain-tar layer: a flipped byte inside a file's content is invisible
    // to tar, so only the HMAC can object (at the end of the stream).
    let tar = layer_tar();
    let (ct, sha, opts, public) = encrypted_layer(&tar, Compression::None);
    let mut flipped = ct.clone();
    let pos = tar.windows(5).position(|w| w == b"alpha").expect("alpha");
    flipped[pos] ^= 0x01;
    let flipped_sha: [u8; 32] = sha2::Sha256::digest(&flipped).into();
    let dec = ocicrypt::LayerDecryptor::with_ciphertext_digest(&opts, &public, flipped_sha).expect("dec");
    let (r, _t) = run_encrypted(flipped, dec, Compression::None, &diff_id(&tar)).await;
    let err = r.expect_err("tampered");
    assert!(matches!(&err, DecodeError::Source(_)), "{err}");
    assert!(report::line(&err).contains("HMAC"), "{err}");

    let mut other = sha;
    other[0] ^= 0xff;
    let dec = ocicrypt::LayerDecryptor::with_ciphertext_digest(&opts, &public, other).expect("dec");
    let (r, _t) = run_encrypted(ct.clone(), dec, Compression::None, &diff_id(&tar)).await;
    let err = r.expect_err("wrong blob digest");
    assert!(matches!(&err, DecodeError::Source(_)), "{err}");
    assert!(report::line(&err).contains("digest mismatch"), "{err}");

    let dec = ocicrypt::LayerDecryptor::with_ciphertext_digest(&opts, &public, sha).expect("dec");
    let (r, _t) = run_encrypted(
        ct,
        dec,
        Compression::None,
        &"sha256:0000000000000000000000000000000000000000000000000000000000000000".parse().expect("digest"),
    )
    .await;
    assert!(matches!(r, Err(DecodeError::DiffId { .. })));
}
