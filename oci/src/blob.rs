//! A verifying reader for blobs.
//!
//! Whatever a blob comes from (a layout file, a registry response), the bytes are
//! only trusted once their count equals the descriptor size and their hash equals
//! the descriptor digest. [`BlobReader`] enforces both while streaming: it refuses
//! to yield more than `size` bytes, and it withholds the final chunk until the digest
//! has been checked, so a consumer that commits at EOF never commits a bad blob.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

use crate::digest::{Digest, Hasher};

/// Streams a blob, capped at its descriptor size; fails with
/// [`io::ErrorKind::InvalidData`] if it is too long, too short or hashes wrong.
pub struct BlobReader {
    inner: Pin<Box<dyn AsyncRead + Send>>,
    expected: Digest,
    size: u64,
    read: u64,
    hasher: Option<Hasher>,
}

impl std::fmt::Debug for BlobReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlobReader")
            .field("expected", &self.expected)
            .field("size", &self.size)
            .field("read", &self.read)
            .finish_non_exhaustive()
    }
}

impl BlobReader {
    /// Wrap `inner`, which should yield exactly `size` bytes hashing to `expected`.
    pub fn new(inner: impl AsyncRead + Send + 'static, expected: Digest, size: u64) -> Self {
        let hasher = Some(expected.algorithm().hasher());
        BlobReader { inner: Box::pin(inner), expected, size, read: 0, hasher }
    }

    /// The digest the content is checked against.
    pub fn digest(&self) -> &Digest {
        &self.expected
    }

    /// The size the content is capped at.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Take over the digest check: this reader stops hashing (it still caps the
    /// size and reports truncation) and returns the SHA-256 the caller must now
    /// check itself before trusting or committing anything, typically in a
    /// combined hashing pass (`sha256x`). `None` if reading has already begun or
    /// the digest is not sha256, in which case this reader keeps checking.
    pub fn take_sha256_check(&mut self) -> Option<[u8; 32]> {
        if self.read != 0 {
            return None;
        }
        let bytes = self.expected.sha256_bytes()?;
        self.hasher = None;
        Some(bytes)
    }

    fn verify(&mut self) -> io::Result<()> {
        let Some(h) = self.hasher.take() else {
            return Ok(());
        };
        let actual = h.finish();
        if actual == self.expected {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("blob digest mismatch: expected {}, content hashes to {actual}", self.expected),
            ))
        }
    }
}

impl AsyncRead for BlobReader {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.read == this.size {
            // Everything promised has arrived; the verdict is given once, then EOF.
            return Poll::Ready(this.verify());
        }
        let before = buf.filled().len();
        match this.inner.as_mut().poll_read(cx, buf) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => {}
        }
        let n = (buf.filled().len() - before) as u64;
        if n == 0 {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("blob {} truncated: got {} of {} bytes", this.expected, this.read, this.size),
            )));
        }
        if this.read + n > this.size {
            buf.set_filled(before);
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("blob {} is longer than its descriptor size {}", this.expected, this.size),
            )));
        }
        if let Some(h) = this.hasher.as_mut() {
            h.update(&buf.filled()[before..]);
        }
        this.read += n;
        if this.read == this.size {
            // Withhold the last chunk until the digest is known to match.
            if let Err(e) = this.verify() {
                buf.set_filled(before);
                return Poll::Ready(Err(e));
            }
        }
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use tokio::io::AsyncReadExt;

    async fn read_all(data: &'static [u8], d: Digest, size: u64) -> io::Result<Vec<u8>> {
        let mut r = BlobReader::new(data, d, size);
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.map(|_| out)
    }

    #[tokio::test]
    async fn taken_digest_check_is_the_callers_but_size_is_still_capped() {
        let data: &'static [u8] = b"hello blob";
        let claimed = Digest::sha256_of(b"something else");
        let mut r = BlobReader::new(data, claimed.clone(), data.len() as u64);
        assert_eq!(r.take_sha256_check(), claimed.sha256_bytes());
        assert!(claimed.sha256_bytes().is_some());
        let mut out = Vec::new();
        r.read_to_end(&mut out).await.unwrap();
        assert_eq!(out, data, "the reader no longer judges the digest");

        let mut r = BlobReader::new(data, claimed.clone(), data.len() as u64 + 5);
        assert!(r.take_sha256_check().is_some());
        let err = r.read_to_end(&mut Vec::new()).await.unwrap_err();
        assert!(err.to_string().contains("truncated"), "{err}");

        // Once reading has begun the reader keeps the check.
        let mut r = BlobReader::new(data, claimed, data.len() as u64);
        let mut b = [0u8; 3];
        r.read_exact(&mut b).await.unwrap();
        assert_eq!(r.take_sha256_check(), None);
        assert!(r.read_to_end(&mut Vec::new()).await.is_err());
    }

    #[tokio::test]
    async fn good_blob_reads_through() {
        let data: &'static [u8] = b"hello blob";
        let out = read_all(data, Digest::sha256_of(data), data.len() as u64).await.unwrap();
        assert_eq!(out, data);
        let out = read_all(b"", Digest::sha256_of(b""), 0).await.unwrap();
        assert!(out.is_empty());
    }

    #[tokio::test]
    async fn wrong_digest_is_invalid_data_and_last_chunk_is_withheld() {
        let data: &'static [u8] = b"hello blob";
        let mut r = BlobReader::new(data, Digest::sha256_of(b"other"), data.len() as u64);
        let mut out = Vec::new();
        let e = r.read_to_end(&mut out).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("digest mismatch"), "{e}");
        assert!(out.is_empty(), "no byte of the bad final chunk may surface");
    }

    #[tokio::test]
    async fn too_long_and_too_short_are_refused() {
        let data: &'static [u8] = b"hello blob";
        let e = read_all(data, Digest::sha256_of(&data[..5]), 5).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("longer than"), "{e}");
        let e = read_all(data, Digest::sha256_of(data), 20).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
        assert!(e.to_string().contains("truncated"), "{e}");
    }
}
