//! Bearer-token auth flow against a minimal in-test HTTP server standing in for a
//! registry plus its token service (docker-registry's own token auth needs a signed-JWT
//! issuer, which would test our fake more than our client). The server checks what
//! the client must do: follow the challenge to the realm with service and scope,
//! present basic credentials there, then use the token it got.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use oci::{ImageRef, ImageSource, OciError, RegistryError, SourceOptions};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const MANIFEST: &[u8] = br#"{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:ec1abddf73c57c716638d591657713bae8e88ef5514097113a8f806436e6f576","size":292},"layers":[]}"#;

async fn serve(listener: TcpListener, log: Arc<Mutex<Vec<String>>>) {
    let port = listener.local_addr().unwrap().port();
    loop {
        let (mut sock, _) = listener.accept().await.unwrap();
        let log = log.clone();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            let mut tmp = [0u8; 4096];
            while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                let n = sock.read(&mut tmp).await.unwrap();
                if n == 0 {
                    return;
                }
                buf.extend_from_slice(&tmp[..n]);
            }
            let req = String::from_utf8_lossy(&buf).to_string();
            let first = req.lines().next().unwrap_or_default().to_string();
            let auth = req
                .lines()
                .find(|l| l.to_ascii_lowercase().starts_with("authorization:"))
                .map(|l| l["authorization:".len()..].trim().to_string())
                .unwrap_or_default();
            log.lock().unwrap().push(format!("{first} | {auth}"));
            let (status, headers, body): (&str, String, Vec<u8>) = if first.starts_with("GET /token?") {
                // alice:pw
                if auth == "Basic YWxpY2U6cHc=" {
                    (
                        "200 OK",
                        "Content-Type: application/json\r\n".into(),
                        br#"{"token":"tok-123"}"#.to_vec(),
                    )
                } else {
                    ("401 Unauthorized", String::new(), Vec::new())
                }
            } else if auth == "Bearer tok-123" {
                (
                    "200 OK",
                    "Content-Type: application/vnd.oci.image.manifest.v1+json\r\n".into(),
                    MANIFEST.to_vec(),
                )
            } else {
                (
                    "401 Unauthorized",
                    format!("WWW-Authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"fake\",scope=\"repository:app:pull\"\r\n"),
                    Vec::new(),
                )
            };
            let head = format!(
                "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(&body).await;
        });
    }
}

async fn fake() -> (u16, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let log = Arc::new(Mutex::new(Vec::new()));
    tokio::spawn(serve(listener, log.clone()));
    (port, log)
}

#[tokio::test]
async fn bearer_token_is_fetched_with_credentials_and_used() {
    let (port, log) = fake().await;
    let r: ImageRef = format!("docker://127.0.0.1:{port}/app:v1").parse().unwrap();
    let opts =
        SourceOptions { creds: Some("alice:pw".into()), insecure_plain_http: true, ..Default::default() };
    let src = ImageSource::open(&r, &opts).await.unwrap();
    let m = src.manifest().await.unwrap();
    assert_eq!(m.bytes, MANIFEST);
    let log = log.lock().unwrap().clone();
    assert_eq!(log.len(), 3, "{log:#?}");
    assert!(log[0].starts_with("GET /v2/app/manifests/v1"), "{log:#?}");
    assert!(log[1].starts_with("GET /token?service=fake&scope=repository%3Aapp%3Apull "), "{log:#?}");
    assert!(log[2].ends_with("| Bearer tok-123"), "{log:#?}");
}

#[tokio::test]
async fn bearer_token_refused_is_a_clear_error() {
    let (port, _log) = fake().await;
    let r: ImageRef = format!("docker://127.0.0.1:{port}/app:v1").parse().unwrap();
    let opts =
        SourceOptions { creds: Some("alice:wrong".into()), insecure_plain_http: true, ..Default::default() };
    let src = ImageSource::open(&r, &opts).await.unwrap();
    let e = src.manifest().await.unwrap_err();
    // Issue 27: a refused token names the registry, says what to check, and says it once.
    assert!(matches!(e, OciError::Registry(RegistryError::TokenRefused { status: 401, .. })), "{e}");
    let line = report::line(&e);
    assert!(line.contains(&format!("of 127.0.0.1:{port} refused the credentials (401)")), "{line}");
    assert!(!line.contains("wrong"), "no secret in errors: {line}");
    assert_eq!(report::repeated_source(&e), None);
}
