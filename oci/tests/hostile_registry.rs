//! A hostile registry on 127.0.0.1 (issue 21, findings 4 and 6): huge error
//! bodies and token answers, a registry that accepts and never answers, one that
//! trickles bytes, one that stops in the middle of a layer. The client must read
//! only a bounded prefix (counted by what the server managed to write before the
//! client hung up) and give up within its deadlines, naming the request, the peer
//! and the deadline.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use oci::{
    Deadline, Digest, ImageRef, ImageSource, OciError, RegistryError, RegistryTimeouts, SourceOptions,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Declared size of the hostile bodies; the old client read all of it.
const HUGE: u64 = 128 << 20;
/// What the server may have pushed into socket buffers before the client hung up.
const BOUNDED: u64 = 32 << 20;

fn timeouts() -> RegistryTimeouts {
    RegistryTimeouts {
        connect: Duration::from_secs(2),
        idle: Duration::from_secs(1),
        request: Duration::from_secs(2),
    }
}

fn opts() -> SourceOptions {
    SourceOptions { insecure_plain_http: true, timeouts: timeouts(), ..Default::default() }
}

/// Reads one request head; returns its first line.
async fn read_head(sock: &mut TcpStream) -> Option<String> {
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = sock.read(&mut tmp).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&tmp[..n]);
    }
    Some(String::from_utf8_lossy(&buf).lines().next().unwrap_or_default().to_string())
}

/// Writes zeros until `total` bytes or the peer goes away; adds what was written to `count`.
async fn stream_zeros(sock: &mut TcpStream, total: u64, count: &AtomicU64) {
    let chunk = vec![b'x'; 64 << 10];
    let mut sent = 0u64;
    while sent < total {
        let n = (total - sent).min(chunk.len() as u64) as usize;
        match sock.write(&chunk[..n]).await {
            Ok(0) | Err(_) => return,
            Ok(w) => {
                sent += w as u64;
                count.fetch_add(w as u64, Ordering::SeqCst);
            }
        }
    }
}

#[derive(Clone, Copy)]
enum Behaviour {
    /// 500 with a HUGE body to every request.
    HugeError,
    /// Registry asks for a bearer token; the realm answers a HUGE token document.
    HugeToken,
    /// Reads the request, never answers.
    Silent,
    /// The realm never answers (the registry asks for a token).
    SilentRealm,
    /// A manifest answer whose 1000 bytes come one every 300 ms.
    TrickleManifest,
    /// A blob answer that sends 64 KiB of 1 MiB and stops.
    StallingBlob,
    /// Opens upload sessions, then never reads a PATCH body.
    StalledUpload,
    /// A blob of 8 × 1 KiB chunks, one every 400 ms: slow (3 s, more than the
    /// total deadline) but never idle for the no-progress timeout.
    SlowBlob,
}

const SLOW_CHUNKS: usize = 8;

/// Starts the hostile server; returns its port and the count of body bytes written.
async fn hostile(b: Behaviour) -> (u16, Arc<AtomicU64>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let count = Arc::new(AtomicU64::new(0));
    let c = count.clone();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else { return };
            let count = c.clone();
            tokio::spawn(async move {
                while let Some(first) = read_head(&mut sock).await {
                    match b {
                        Behaviour::HugeError => {
                            let head = format!("HTTP/1.1 500 Internal Server Error\r\nContent-Type: text/plain\r\nContent-Length: {HUGE}\r\n\r\n");
                            sock.write_all(head.as_bytes()).await.unwrap();
                            stream_zeros(&mut sock, HUGE, &count).await;
                            return;
                        }
                        Behaviour::HugeToken | Behaviour::SilentRealm if first.starts_with("GET /token") => {
                            if matches!(b, Behaviour::SilentRealm) {
                                tokio::time::sleep(Duration::from_secs(3600)).await;
                                return;
                            }
                            let head = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {HUGE}\r\n\r\n{{\"token\":\"");
                            sock.write_all(head.as_bytes()).await.unwrap();
                            stream_zeros(&mut sock, HUGE, &count).await;
                            return;
                        }
                        Behaviour::HugeToken | Behaviour::SilentRealm => {
                            let head = format!("HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"http://127.0.0.1:{port}/token\",service=\"hostile\"\r\nContent-Length: 0\r\n\r\n");
                            sock.write_all(head.as_bytes()).await.unwrap();
                        }
                        Behaviour::Silent => {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            return;
                        }
                        Behaviour::TrickleManifest => {
                            let head = "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: 1000\r\n\r\n";
                            sock.write_all(head.as_bytes()).await.unwrap();
                            for _ in 0..1000 {
                                tokio::time::sleep(Duration::from_millis(300)).await;
                                if sock.write_all(b" ").await.is_err() {
                                    return;
                                }
                                count.fetch_add(1, Ordering::SeqCst);
                            }
                            return;
                        }
                        Behaviour::StallingBlob => {
                            let head = "HTTP/1.1 200 OK\r\nContent-Length: 1048576\r\n\r\n";
                            sock.write_all(head.as_bytes()).await.unwrap();
                            stream_zeros(&mut sock, 64 << 10, &count).await;
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            return;
                        }
                        Behaviour::StalledUpload if first.starts_with("POST ") => {
                            let head = format!("HTTP/1.1 202 Accepted\r\nLocation: http://127.0.0.1:{port}/v2/app/blobs/uploads/u1\r\nContent-Length: 0\r\n\r\n");
                            sock.write_all(head.as_bytes()).await.unwrap();
                        }
                        Behaviour::StalledUpload => {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            return;
                        }
                        Behaviour::SlowBlob => {
                            let head =
                                format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n", SLOW_CHUNKS * 1024);
                            sock.write_all(head.as_bytes()).await.unwrap();
                            for _ in 0..SLOW_CHUNKS {
                                tokio::time::sleep(Duration::from_millis(400)).await;
                                if sock.write_all(&[b'x'; 1024]).await.is_err() {
                                    return;
                                }
                                count.fetch_add(1024, Ordering::SeqCst);
                            }
                        }
                    }
                }
            });
        }
    });
    (port, count)
}

async fn source(port: u16) -> ImageSource {
    let r: ImageRef = format!("docker://127.0.0.1:{port}/app:v1").parse().unwrap();
    ImageSource::open(&r, &opts()).await.unwrap()
}

/// Runs `f`, failing the test if it takes longer than the generous `within`
/// (the old client hung here forever).
async fn bounded<T>(within: Duration, f: impl std::future::Future<Output = T>) -> (T, Duration) {
    let t0 = Instant::now();
    let r =
        tokio::time::timeout(within, f).await.unwrap_or_else(|_| panic!("still running after {within:?}"));
    (r, t0.elapsed())
}

/// The server saw the client hang up: its count stops growing.
async fn settled(count: &AtomicU64) -> u64 {
    let mut last = u64::MAX;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = count.load(Ordering::SeqCst);
        if now == last {
            return now;
        }
        last = now;
    }
}

#[tokio::test]
async fn registry_error_body_is_read_only_up_to_a_cap_not_buffered_whole() {
    let (port, count) = hostile(Behaviour::HugeError).await;
    let src = source(port).await;
    let (e, _) = bounded(Duration::from_secs(30), src.manifest()).await;
    let e = e.unwrap_err();
    assert!(
        matches!(&e, OciError::Registry(RegistryError::Status { status: 500, body, .. }) if body.contains("truncated") && body.len() < 1024),
        "{e}"
    );
    let written = settled(&count).await;
    assert!(written < BOUNDED, "the client read {written} bytes of a {HUGE}-byte error body");
}

#[tokio::test]
async fn token_answer_is_capped_not_buffered_whole() {
    let (port, count) = hostile(Behaviour::HugeToken).await;
    let src = source(port).await;
    let (e, _) = bounded(Duration::from_secs(30), src.manifest()).await;
    let e = e.unwrap_err();
    match &e {
        OciError::Registry(RegistryError::TokenTooLarge { realm, max }) => {
            assert_eq!(realm, &format!("http://127.0.0.1:{port}/token"));
            assert_eq!(*max, oci::MAX_TOKEN_ANSWER);
        }
        other => panic!("expected TokenTooLarge, got {other}"),
    }
    assert!(e.to_string().contains(&format!("127.0.0.1:{port}/token")), "{e}");
    assert!(e.to_string().contains("65536"), "{e}");
    let written = settled(&count).await;
    assert!(written < BOUNDED, "the client read {written} bytes of a {HUGE}-byte token answer");
}

fn assert_timeout(e: &OciError, port: u16, op: &str, deadline: Deadline, peer: &str) {
    match e {
        OciError::Registry(RegistryError::Timeout { op: o, peer: p, deadline: d, .. }) => {
            assert!(o.starts_with(op), "{e}");
            assert_eq!(*d, deadline, "{e}");
            assert!(p.contains(peer), "{e}");
        }
        other => panic!("expected a {deadline:?} timeout, got {other}"),
    }
    let text = e.to_string();
    assert!(text.contains(&format!("127.0.0.1:{port}")) && text.contains(op), "{text}");
}

#[tokio::test]
async fn registry_that_accepts_and_never_answers_is_dropped_after_the_no_progress_timeout() {
    let (port, _) = hostile(Behaviour::Silent).await;
    let src = source(port).await;
    let (e, took) = bounded(Duration::from_secs(30), src.manifest()).await;
    assert_timeout(&e.unwrap_err(), port, "GET manifest v1", Deadline::NoProgress, "127.0.0.1");
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[tokio::test]
async fn token_realm_that_never_answers_is_dropped_after_the_no_progress_timeout() {
    let (port, _) = hostile(Behaviour::SilentRealm).await;
    let src = source(port).await;
    let (e, took) = bounded(Duration::from_secs(30), src.manifest()).await;
    assert_timeout(&e.unwrap_err(), port, "GET token", Deadline::NoProgress, "/token");
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[tokio::test]
async fn registry_that_trickles_a_manifest_hits_the_total_deadline() {
    let (port, count) = hostile(Behaviour::TrickleManifest).await;
    let src = source(port).await;
    let (e, took) = bounded(Duration::from_secs(30), src.manifest()).await;
    assert_timeout(&e.unwrap_err(), port, "GET manifest v1", Deadline::Total, "127.0.0.1");
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert!(count.load(Ordering::SeqCst) < 1000);
}

#[tokio::test]
async fn layer_stream_that_stops_sending_fails_after_the_no_progress_timeout() {
    let (port, _) = hostile(Behaviour::StallingBlob).await;
    let src = source(port).await;
    let d = Digest::sha256_of(b"whatever");
    let (r, took) = bounded(Duration::from_secs(30), async {
        let mut blob = src.blob(&d, 1 << 20).await?;
        let mut sink = Vec::new();
        blob.read_to_end(&mut sink).await.map_err(|source| OciError::Io { context: "read".into(), source })
    })
    .await;
    let e = r.unwrap_err();
    match &e {
        OciError::Io { source, .. } => {
            assert_eq!(source.kind(), std::io::ErrorKind::TimedOut, "{e}");
            let text = source.to_string();
            assert!(text.contains(&format!("GET blob {d}")) && text.contains("no-progress"), "{text}");
            assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
        }
        other => panic!("expected a timed-out read, got {other}"),
    }
    assert!(took < Duration::from_secs(10), "{took:?}");
}

#[tokio::test]
async fn slow_layer_stream_that_keeps_sending_outlives_the_total_deadline() {
    let (port, _) = hostile(Behaviour::SlowBlob).await;
    let src = source(port).await;
    let body = vec![b'x'; SLOW_CHUNKS * 1024];
    let d = Digest::sha256_of(&body);
    let (r, took) = bounded(Duration::from_secs(30), async {
        let mut blob = src.blob(&d, body.len() as u64).await.unwrap();
        let mut sink = Vec::new();
        blob.read_to_end(&mut sink).await.map(|_| sink)
    })
    .await;
    assert_eq!(r.expect("a slow but live layer passes"), body);
    assert!(took > timeouts().request, "the test must outlast the total deadline: {took:?}");
}

#[tokio::test]
async fn upload_to_a_registry_that_stops_reading_fails_after_the_no_progress_timeout() {
    let (port, _) = hostile(Behaviour::StalledUpload).await;
    let r: ImageRef = format!("docker://127.0.0.1:{port}/app:v1").parse().unwrap();
    let dst = oci::ImageDest::open(&r, &opts()).await.unwrap();
    let (res, took) = bounded(Duration::from_secs(30), async {
        let mut w = dst.begin_blob().await?;
        let chunk = vec![0u8; 1 << 20];
        // Far more than the socket buffers hold.
        for _ in 0..256 {
            w.write_all(&chunk).await?;
        }
        w.finish(None).await.map(|_| ())
    })
    .await;
    assert_timeout(&res.unwrap_err(), port, "PATCH blob upload", Deadline::NoProgress, "127.0.0.1");
    assert!(took < Duration::from_secs(10), "{took:?}");
}
