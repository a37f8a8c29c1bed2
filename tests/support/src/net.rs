//! Loopback ports: one that is free now, waiting until one accepts, and a plain
//! HTTP GET on one.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// A TCP port on 127.0.0.1 that is free now (the kernel picks it). Another process
/// may take it before the caller binds it; launchers that can, retry (see
/// [`crate::Registry`]).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("no free TCP port on 127.0.0.1")
}

/// Waits until `127.0.0.1:port` accepts connections.
pub fn wait_for_port(port: u16, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listening on 127.0.0.1:{port} after {timeout:?}")
}

/// An answer to [`http_get`].
pub struct HttpAnswer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// A plain HTTP/1.0 `GET path` on 127.0.0.1:`port` (metrics, health, registry
/// manifests, cloak-cdh's REST endpoint), with an `Accept` header when given.
pub fn http_get(port: u16, path: &str, accept: Option<&str>) -> Result<HttpAnswer> {
    let mut s =
        TcpStream::connect(("127.0.0.1", port)).with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let accept = accept.map(|a| format!("Accept: {a}\r\n")).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n{accept}Connection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("HTTP answer without a header/body separator")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("bad status line in {head:?}"))?;
    Ok(HttpAnswer { status, body: raw[split + 4..].to_vec() })
}
