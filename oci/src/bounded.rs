//! What a registry (or its token realm) can make us read and wait for: this crate's
//! one capped, deadlined body reader and the no-progress watchdog for blob streams
//! (STYLE rule 11). Every response body the registry client reads goes through
//! `read_capped` (manifests, tokens, error bodies, small blobs) or
//! `idle_bounded` (layer streams, which are capped at their descriptor size by
//! [`crate::BlobReader`]).
//!
//! Three deadlines, all in [`RegistryTimeouts`]: connect; no-progress (nothing
//! received for that long, while waiting for an answer or between two chunks of a
//! body); and a total for small requests. A layer stream has no total, so a 1 GiB
//! layer over a slow link passes; a registry that stops sending is dropped after
//! the no-progress timeout.

use std::fmt;
use std::io;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};

/// Deadlines of every registry request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegistryTimeouts {
    /// Establishing the TCP (and TLS) connection.
    pub connect: Duration,
    /// Nothing received for this long (no answer yet, or no next chunk of a
    /// body) fails the request.
    pub idle: Duration,
    /// Total time of a small request: a manifest, a token, a config blob, an
    /// error body, the control requests of an upload. Not applied to layer streams.
    pub request: Duration,
}

impl Default for RegistryTimeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(30),
            idle: Duration::from_secs(60),
            request: Duration::from_secs(120),
        }
    }
}

/// Which deadline passed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Deadline {
    /// [`RegistryTimeouts::connect`].
    Connect,
    /// [`RegistryTimeouts::idle`].
    NoProgress,
    /// [`RegistryTimeouts::request`].
    Total,
}

impl fmt::Display for Deadline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Deadline::Connect => "connect timeout (no connection established)",
            Deadline::NoProgress => "no-progress timeout (nothing received)",
            Deadline::Total => "total request timeout (the request did not complete)",
        })
    }
}

/// A body read up to a cap.
#[derive(Debug)]
pub(crate) enum Capped {
    /// The whole body, at most `cap` bytes.
    Whole(Vec<u8>),
    /// The peer offered more than `cap` bytes; the first `cap` are kept and the
    /// rest was never read (the connection is dropped, not drained).
    Over(Vec<u8>),
}

/// Why a capped read failed.
#[derive(Debug)]
pub(crate) enum ReadFailure {
    /// Transport error.
    Http(reqwest::Error),
    /// A deadline passed.
    Timeout(Deadline, Duration),
}

/// Reads `resp`'s body, at most `cap` bytes; fails if no chunk arrives within
/// `t.idle` or the whole read takes longer than `t.request`.
pub(crate) async fn read_capped(
    resp: reqwest::Response,
    cap: usize,
    t: &RegistryTimeouts,
) -> Result<Capped, ReadFailure> {
    let read = async {
        let mut out = Vec::new();
        let mut stream = resp.bytes_stream();
        loop {
            let next = tokio::time::timeout(t.idle, stream.next())
                .await
                .map_err(|_| ReadFailure::Timeout(Deadline::NoProgress, t.idle))?;
            let Some(chunk) = next else { return Ok(Capped::Whole(out)) };
            let chunk = chunk.map_err(ReadFailure::Http)?;
            let room = cap - out.len();
            if chunk.len() > room {
                out.extend_from_slice(&chunk[..room]);
                return Ok(Capped::Over(out));
            }
            out.extend_from_slice(&chunk);
        }
    };
    tokio::time::timeout(t.request, read)
        .await
        .map_err(|_| ReadFailure::Timeout(Deadline::Total, t.request))?
}

/// Ends `stream` with a [`io::ErrorKind::TimedOut`] error (its text from
/// `on_timeout`) when no chunk arrives within `idle`. No total deadline: a big
/// blob over a slow link passes as long as bytes keep coming.
pub(crate) fn idle_bounded<S>(
    stream: S,
    idle: Duration,
    on_timeout: impl Fn() -> String + Send + 'static,
) -> futures::stream::BoxStream<'static, io::Result<Bytes>>
where
    S: Stream<Item = Result<Bytes, reqwest::Error>> + Send + 'static,
{
    let stream = Box::pin(stream);
    futures::stream::unfold(Some((stream, on_timeout)), move |state| async move {
        let (mut stream, on_timeout) = state?;
        match tokio::time::timeout(idle, stream.next()).await {
            Ok(Some(item)) => Some((item.map_err(io::Error::other), Some((stream, on_timeout)))),
            Ok(None) => None,
            Err(_) => Some((Err(io::Error::new(io::ErrorKind::TimedOut, on_timeout())), None)),
        }
    })
    .boxed()
}

/// Reads a local file, at most `max` bytes: a configuration file named by a user
/// (an auth file, a registries.conf) that could be `/dev/zero` or a huge file is
/// refused rather than read whole. `what` names the expected kind in the error.
pub fn read_file_capped(path: &std::path::Path, max: u64, what: &str) -> io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut out = Vec::new();
    std::fs::File::open(path)?.take(max + 1).read_to_end(&mut out)?;
    if out.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {max} bytes; not {what}"),
        ));
    }
    Ok(out)
}
