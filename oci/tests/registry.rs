//! Integration tests against the real distribution registry (docker-registry 2.8).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use oci::{
    Digest, ImageDest, ImageRef, ImageSource, ManifestRole, OciError, OciLayout, RegistryError, SourceOptions,
};
use test_support::Registry;
use tokio::io::AsyncReadExt;

const LAYER: &str = "sha256:3c4b0491ad42ed94682815ca7a46e4a5595792d857cec1410833a9d226bb948e";
const MANIFEST: &str = "sha256:ab1a944183cb5d94bd0f02435496d7946b9cf8e624eb67d014af6cd68362ccee";

fn insecure() -> SourceOptions {
    SourceOptions { insecure_plain_http: true, ..Default::default() }
}

fn r(s: &str) -> ImageRef {
    s.parse().expect("valid reference")
}

async fn push_fixture(reg: &Registry, repo_tag: &str, opts: &SourceOptions) -> Result<(), OciError> {
    let src_ref = r(&format!("oci:{}:v1", common::plain_fixture().display()));
    let src = ImageSource::open(&src_ref, opts).await?;
    let dst = ImageDest::open(&r(&reg.docker_ref(repo_tag)), opts).await?;
    dst.copy_image_from(&src).await?;
    Ok(())
}

async fn read_all(src: &ImageSource, d: &Digest, size: u64) -> std::io::Result<Vec<u8>> {
    let mut reader = src.blob(d, size).await.map_err(std::io::Error::other)?;
    let mut out = Vec::new();
    reader.read_to_end(&mut out).await?;
    Ok(out)
}

#[tokio::test]
async fn push_layout_then_pull_back_byte_identical() {
    let Some(reg) = Registry::start() else { return };
    push_fixture(&reg, "test/plain:v1", &insecure()).await.unwrap();

    let src = ImageSource::open(&r(&reg.docker_ref("test/plain:v1")), &insecure()).await.unwrap();
    let m = src.manifest().await.unwrap();
    let fixture = common::plain_fixture();
    let fixture_manifest = std::fs::read(fixture.join("blobs/sha256").join(&MANIFEST[7..])).unwrap();
    assert_eq!(m.bytes, fixture_manifest, "manifest bytes survive the round trip");
    assert_eq!(m.digest.to_string(), MANIFEST);
    assert_eq!(m.media_type, oci::media_type::OCI_MANIFEST);

    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("pulled");
    let dst = ImageDest::open(&r(&format!("oci:{}:back", out.display())), &insecure()).await.unwrap();
    dst.copy_image_from(&src).await.unwrap();

    // every blob of the fixture is present and identical in the pulled layout
    for e in std::fs::read_dir(fixture.join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        let got = std::fs::read(out.join("blobs/sha256").join(e.file_name())).unwrap();
        assert_eq!(got, std::fs::read(e.path()).unwrap(), "{:?}", e.file_name());
    }
    let layout = OciLayout::open(&out).unwrap();
    assert_eq!(layout.resolve(Some("back"), None).unwrap().digest.to_string(), MANIFEST);

    // pulling by digest works and is verified
    let pinned =
        ImageSource::open(&r(&reg.docker_ref(&format!("test/plain@{MANIFEST}"))), &insecure()).await.unwrap();
    assert_eq!(pinned.manifest().await.unwrap().bytes, fixture_manifest);

    // a second push skips existing blobs and still succeeds
    push_fixture(&reg, "test/plain:v1", &insecure()).await.unwrap();
}

#[tokio::test]
async fn streaming_upload_with_digest_known_only_at_the_end() {
    let Some(reg) = Registry::start() else { return };
    let dst = ImageDest::open(&r(&reg.docker_ref("stream/up:x")), &insecure()).await.unwrap();
    // ~3 MiB in uneven chunks, produced as we go
    let mut expected = Vec::new();
    let mut w = dst.begin_blob().await.unwrap();
    for i in 0..97u32 {
        let chunk: Vec<u8> =
            (0..(31 * 1024 + i as usize)).map(|j| (j as u32 ^ i).wrapping_mul(2654435761) as u8).collect();
        w.write_all(&chunk).await.unwrap();
        expected.extend_from_slice(&chunk);
    }
    assert_eq!(w.written(), expected.len() as u64);
    let (d, n) = w.finish(None).await.unwrap();
    assert_eq!(d, Digest::sha256_of(&expected));
    assert_eq!(n, expected.len() as u64);
    assert!(dst.has_blob(&d).await.unwrap());

    let src = ImageSource::open(&r(&reg.docker_ref("stream/up:x")), &insecure()).await.unwrap();
    assert_eq!(read_all(&src, &d, n).await.unwrap(), expected);

    // resume from an offset with an HTTP Range request
    let ImageSource::Registry(img) = &src else { panic!("registry source expected") };
    let stream = img.client.get_blob_stream(&d, 1_000_000).await.unwrap();
    let mut tail = Vec::new();
    tokio_util::io::StreamReader::new(stream).read_to_end(&mut tail).await.unwrap();
    assert_eq!(tail, &expected[1_000_000..]);

    // an empty blob works too
    let w = dst.begin_blob().await.unwrap();
    let (d0, n0) = w.finish(Some(&Digest::sha256_of(b""))).await.unwrap();
    assert_eq!((d0, n0), (Digest::sha256_of(b""), 0));
}

#[tokio::test]
async fn upload_with_wrong_expected_digest_or_dropped_leaves_nothing() {
    let Some(reg) = Registry::start() else { return };
    let dst = ImageDest::open(&r(&reg.docker_ref("stream/bad:x")), &insecure()).await.unwrap();
    let mut w = dst.begin_blob().await.unwrap();
    w.write_all(b"some content").await.unwrap();
    let wrong = Digest::sha256_of(b"other content");
    let e = w.finish(Some(&wrong)).await.unwrap_err();
    assert!(matches!(e, OciError::Registry(RegistryError::DigestMismatch { .. })), "{e}");
    assert!(!dst.has_blob(&Digest::sha256_of(b"some content")).await.unwrap());
    assert!(!dst.has_blob(&wrong).await.unwrap());

    let mut w = dst.begin_blob().await.unwrap();
    w.write_all(b"abandoned").await.unwrap();
    drop(w);
    assert!(!dst.has_blob(&Digest::sha256_of(b"abandoned")).await.unwrap());
}

#[tokio::test]
async fn pinned_manifest_digest_mismatch_is_reported() {
    let Some(reg) = Registry::start() else { return };
    push_fixture(&reg, "tamper/m:v1", &insecure()).await.unwrap();
    // Change the stored manifest behind the registry's back, keeping it valid JSON
    // (the registry parses manifests before serving them): layer size 201 -> 202.
    let path = reg.blob_data(MANIFEST);
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("\"size\":201"), "{text}");
    std::fs::write(&path, text.replace("\"size\":201", "\"size\":202")).unwrap();

    let src =
        ImageSource::open(&r(&reg.docker_ref(&format!("tamper/m@{MANIFEST}"))), &insecure()).await.unwrap();
    let e = src.manifest().await.unwrap_err();
    assert!(matches!(e, OciError::ManifestDigestMismatch { .. }), "{e}");
    assert!(e.to_string().contains("manifest digest mismatch"), "{e}");

    let e = src.manifest_by_digest(&MANIFEST.parse().unwrap()).await.unwrap_err();
    assert!(matches!(e, OciError::ManifestDigestMismatch { .. }), "{e}");
}

#[tokio::test]
async fn blob_digest_mismatch_is_invalid_data() {
    let Some(reg) = Registry::start() else { return };
    push_fixture(&reg, "tamper/b:v1", &insecure()).await.unwrap();
    let path = reg.blob_data(LAYER);
    let mut bytes = std::fs::read(&path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();

    let src = ImageSource::open(&r(&reg.docker_ref("tamper/b:v1")), &insecure()).await.unwrap();
    let d: Digest = LAYER.parse().unwrap();
    let e = read_all(&src, &d, 201).await.unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
    assert!(e.to_string().contains("digest mismatch"), "{e}");

    let e = src.blob_bytes(&d, 1024).await.unwrap_err();
    assert!(matches!(e, OciError::BlobDigestMismatch { .. }), "{e}");

    // copying the bad blob to a layout fails and leaves no blob behind
    let tmp = tempfile::tempdir().unwrap();
    let dst = ImageDest::open(&r(&format!("oci:{}:x", tmp.path().display())), &insecure()).await.unwrap();
    assert!(dst.copy_blob_from(&src, &d, 201).await.is_err());
    assert!(!dst.has_blob(&d).await.unwrap());
}

#[tokio::test]
async fn missing_manifest_and_blob_are_not_found() {
    let Some(reg) = Registry::start() else { return };
    let src = ImageSource::open(&r(&reg.docker_ref("nothing/here:v1")), &insecure()).await.unwrap();
    let e = src.manifest().await.unwrap_err();
    assert!(matches!(e, OciError::Registry(RegistryError::NotFound { .. })), "{e}");
    assert!(e.to_string().contains("manifest v1 not found"), "{e}");
}

#[tokio::test]
async fn basic_auth_with_creds_works_and_without_is_refused() {
    let Some(reg) = Registry::start_with_basic_auth("alice", "s3cret:pw") else {
        return;
    };
    // anonymous: refused with a hint
    let e = push_fixture(&reg, "auth/img:v1", &insecure()).await.unwrap_err();
    assert!(matches!(e, OciError::Registry(RegistryError::Unauthorized { .. })), "{e}");
    assert!(e.to_string().contains("--creds"), "{e}");
    // Issue 27: a 401 names the registry host.
    assert!(e.to_string().contains(&format!("{} answered 401 Unauthorized", reg.host())), "{e}");
    // Issue 24: and says no credentials were found for it.
    assert!(e.to_string().contains(&format!("no credentials were found for {}", reg.host())), "{e}");
    assert_eq!(report::repeated_clause(&report::line(&e)), None);

    // wrong password
    let wrong = SourceOptions { creds: Some("alice:nope".into()), ..insecure() };
    let e = push_fixture(&reg, "auth/img:v1", &wrong).await.unwrap_err();
    assert!(matches!(e, OciError::Registry(RegistryError::Unauthorized { .. })), "{e}");
    assert!(!e.to_string().contains("nope"), "no secret in errors: {e}");

    // --creds
    let good = SourceOptions { creds: Some("alice:s3cret:pw".into()), ..insecure() };
    push_fixture(&reg, "auth/img:v1", &good).await.unwrap();

    // auth file with a base64 `auth` field
    let tmp = tempfile::tempdir().unwrap();
    let auth_file = tmp.path().join("auth.json");
    std::fs::write(
        &auth_file,
        format!(
            r#"{{"auths":{{"{}":{{"auth":"{}"}}}}}}"#,
            reg.host(),
            base64::Engine::encode(&base64::engine::general_purpose::STANDARD, "alice:s3cret:pw")
        ),
    )
    .unwrap();
    let via_file = SourceOptions { auth_file: Some(auth_file), ..insecure() };
    let src = ImageSource::open(&r(&reg.docker_ref("auth/img:v1")), &via_file).await.unwrap();
    assert_eq!(src.manifest().await.unwrap().digest.to_string(), MANIFEST);
    let d: Digest = LAYER.parse().unwrap();
    assert_eq!(read_all(&src, &d, 201).await.unwrap().len(), 201);

    // streaming upload through basic auth
    let dst = ImageDest::open(&r(&reg.docker_ref("auth/img:v2")), &via_file).await.unwrap();
    let mut w = dst.begin_blob().await.unwrap();
    w.write_all(b"authenticated stream").await.unwrap();
    let (d, _) = w.finish(None).await.unwrap();
    assert!(dst.has_blob(&d).await.unwrap());
    let cfg = dst.put_blob_bytes(b"{}").await.unwrap();
    assert!(dst.has_blob(&cfg).await.unwrap());
    let _ = ManifestRole::Child;
}

#[tokio::test]
async fn plain_http_is_not_used_unless_asked() {
    let Some(reg) = Registry::start() else { return };
    // Without insecure_plain_http the client speaks TLS to a plain-HTTP port: it must fail.
    let src = ImageSource::open(&r(&reg.docker_ref("x/y:v1")), &SourceOptions::default()).await.unwrap();
    let e = src.manifest().await.unwrap_err();
    assert!(matches!(e, OciError::Registry(RegistryError::Http { .. })), "{e}");
}

#[tokio::test]
async fn unreachable_registry_names_the_url_once() {
    let port = test_support::free_port();
    let src = ImageSource::open(&r(&format!("docker://127.0.0.1:{port}/app:v1")), &insecure()).await.unwrap();
    let e = src.manifest().await.unwrap_err();
    let line = report::line(&e);
    assert!(matches!(e, OciError::Registry(RegistryError::Http { .. })), "{line}");
    assert_eq!(line.matches(&format!("127.0.0.1:{port}")).count(), 1, "{line}");
    assert_eq!(report::repeated_source(&e), None, "{line}");
    assert_eq!(report::repeated_clause(&line), None, "{line}");
}

#[tokio::test]
async fn display_does_not_repeat_its_source() {
    // A missing layout, a bad auth file, a bad index: each step once.
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("nope");
    let e = ImageSource::open(&r(&format!("oci:{}:v1", missing.display())), &insecure()).await.unwrap_err();
    let line = report::line(&e);
    assert_eq!(report::repeated_source(&e), None, "{line}");
    assert_eq!(line.matches("cannot read oci-layout").count(), 1, "{line}");
    assert!(line.ends_with("(os error 2)"), "{line}");

    let auth = tmp.path().join("auth.json");
    std::fs::write(&auth, b"{not json").unwrap();
    let opts = SourceOptions { auth_file: Some(auth), ..insecure() };
    let e = ImageSource::open(&r("docker://127.0.0.1:1/app:v1"), &opts).await.unwrap_err();
    let line = report::line(&e);
    assert_eq!(report::repeated_source(&e), None, "{line}");
    assert!(line.contains("is not valid JSON: "), "{line}");
}
