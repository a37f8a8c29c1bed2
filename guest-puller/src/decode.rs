//! The per-layer decode stage: plaintext layer stream → decompress → diff_id
//! hash → safe extraction, on a blocking thread.
//!
//! The async side reads the (already size-capped, digest-checked and decrypted)
//! layer stream and hands chunks to the blocking side through a bounded
//! channel, so memory is bounded by buffers, not by the layer. The blocking side
//! sees end-of-stream only after the async side has read its source to a clean
//! EOF, which is where the blob digest and the HMAC verdicts are delivered; a
//! source error aborts the extraction. The caller commits the staging directory
//! only when [`decode_layer`] returns `Ok`.

use std::io::{self, BufRead, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::{Bytes, BytesMut};
use openssl::sha::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

use crate::extract::{self, ExtractError, ExtractOptions, ExtractStats};

/// Chunk size read from the source and passed to the blocking side.
const CHUNK: usize = 256 * 1024;
/// Chunks in flight between the two sides.
const DEPTH: usize = 4;

/// How a layer's tar stream is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Plain tar.
    None,
    /// gzip (multi-member streams allowed).
    Gzip,
    /// zstd (multi-frame streams allowed).
    Zstd,
}

impl Compression {
    /// Compression from an OCI / Docker layer media type, encrypted or not.
    pub fn from_media_type(media_type: &str) -> Result<Self, DecodeError> {
        let base = media_type.strip_suffix("+encrypted").unwrap_or(media_type);
        match base {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Ok(Self::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => Ok(Self::Gzip),
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd" => Ok(Self::Zstd),
            other => Err(DecodeError::MediaType(other.to_string())),
        }
    }
}

/// Why decoding a layer failed.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("unsupported layer media type {0:?}")]
    MediaType(String),
    /// Reading the layer source failed: transport, size cap, blob digest or HMAC.
    #[error("layer stream failed verification or transfer: {0}")]
    Source(#[source] io::Error),
    #[error("decompressing the layer: {0}")]
    Decompress(#[source] io::Error),
    #[error("extracting the layer: {0}")]
    Extract(#[source] ExtractError),
    #[error("diff_id mismatch: the config says {expected}, the layer content hashes to {actual}")]
    DiffId { expected: String, actual: String },
    #[error("cancelled after another layer failed")]
    Cancelled,
    #[error("the decode thread failed: {0}")]
    Join(String),
}

/// The outcome of a decoded layer.
#[derive(Debug, Clone)]
pub struct DecodedLayer {
    /// `sha256:<hex>` of the uncompressed tar (the verified diff_id).
    pub diff_id: String,
    /// Compressed (plaintext) bytes read from the source.
    pub source_bytes: u64,
    /// Extraction statistics.
    pub stats: ExtractStats,
}

enum Msg {
    Data(Bytes),
    End,
    Failed,
}

/// Feeds the blocking side; EOF only after the async side said `End`.
struct ChannelReader {
    rx: mpsc::Receiver<Msg>,
    cur: Bytes,
    done: bool,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let avail = self.fill_buf()?;
        let n = buf.len().min(avail.len());
        buf[..n].copy_from_slice(&avail[..n]);
        self.consume(n);
        Ok(n)
    }
}

/// The decompressors read the received chunks in place (no copy into another buffer).
impl BufRead for ChannelReader {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.cur.is_empty() {
            if self.done {
                return Ok(&[]);
            }
            match self.rx.blocking_recv() {
                Some(Msg::Data(b)) => self.cur = b,
                Some(Msg::End) => self.done = true,
                Some(Msg::Failed) | None => {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "layer source aborted"))
                }
            }
        }
        Ok(&self.cur)
    }

    fn consume(&mut self, amt: usize) {
        let _ = self.cur.split_to(amt.min(self.cur.len()));
    }
}

/// Hashes what passes through (the uncompressed tar: the diff_id). OpenSSL's
/// SHA-256 (AVX2 code paths) runs about twice as fast as the portable `sha2`
/// on CPUs without SHA-NI, and the diff_id hash covers every unpacked byte.
struct HashReader<R> {
    inner: R,
    hasher: Sha256,
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Marks errors coming out of the decompressor so they can be told apart.
struct DecompressReader<R>(R);

impl<R: Read> Read for DecompressReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read(buf).map_err(|e| io::Error::new(e.kind(), DecompressFailure(e)))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct DecompressFailure(io::Error);

/// Decodes one layer stream into `dest` (an existing, private, empty directory).
///
/// `expected_diff_id` is `sha256:<hex>`. `on_bytes` is called with the number
/// of source bytes after each chunk (for progress). Setting `cancel` aborts
/// the layer at the next chunk.
pub async fn decode_layer<R>(
    mut source: R,
    compression: Compression,
    expected_diff_id: &str,
    dest: &Path,
    opts: &ExtractOptions,
    on_bytes: &(dyn Fn(u64) + Send + Sync),
    cancel: &AtomicBool,
) -> Result<DecodedLayer, DecodeError>
where
    R: AsyncRead + Unpin + Send,
{
    let (tx, rx) = mpsc::channel::<Msg>(DEPTH);
    let dest: PathBuf = dest.to_path_buf();
    let opts = opts.clone();
    let worker = tokio::task::spawn_blocking(move || decode_blocking(rx, compression, &dest, &opts));

    let mut source_bytes = 0u64;
    let mut source_err: Option<io::Error> = None;
    let mut cancelled = false;
    loop {
        if cancel.load(Ordering::Relaxed) {
            let _ = tx.send(Msg::Failed).await;
            cancelled = true;
            break;
        }
        // Uninitialised capacity: no memset of every chunk before it is overwritten.
        let mut buf = BytesMut::with_capacity(CHUNK);
        match source.read_buf(&mut buf).await {
            Ok(0) => {
                let _ = tx.send(Msg::End).await;
                break;
            }
            Ok(n) => {
                source_bytes += n as u64;
                on_bytes(source_bytes);
                if tx.send(Msg::Data(buf.freeze())).await.is_err() {
                    // The blocking side stopped: its error is the one to report.
                    break;
                }
            }
            Err(e) => {
                let _ = tx.send(Msg::Failed).await;
                source_err = Some(e);
                break;
            }
        }
    }
    drop(tx);
    let result = worker.await.map_err(|e| DecodeError::Join(e.to_string()))?;
    if cancelled {
        return Err(DecodeError::Cancelled);
    }
    if let Some(e) = source_err {
        return Err(DecodeError::Source(e));
    }
    let (actual, stats) = result?;
    if actual != expected_diff_id {
        return Err(DecodeError::DiffId { expected: expected_diff_id.to_string(), actual });
    }
    Ok(DecodedLayer { diff_id: actual, source_bytes, stats })
}

fn decode_blocking(
    rx: mpsc::Receiver<Msg>,
    compression: Compression,
    dest: &Path,
    opts: &ExtractOptions,
) -> Result<(String, ExtractStats), DecodeError> {
    let input = ChannelReader { rx, cur: Bytes::new(), done: false };
    let decompressed: Box<dyn Read> = match compression {
        Compression::None => Box::new(input),
        Compression::Gzip => Box::new(DecompressReader(flate2::bufread::MultiGzDecoder::new(input))),
        Compression::Zstd => {
            // The zstd reader continues across frames: multi-frame layers decode whole.
            let d = zstd::stream::read::Decoder::with_buffer(input).map_err(DecodeError::Decompress)?;
            Box::new(DecompressReader(d))
        }
    };
    let mut hashed = HashReader { inner: decompressed, hasher: Sha256::new() };
    // tar reads 512-byte headers one at a time; the buffer turns those into
    // large decompress and hash calls.
    let stats = extract::extract(io::BufReader::with_capacity(CHUNK, &mut hashed), dest, opts).map_err(classify)?;
    let actual = format!("sha256:{}", hex::encode(hashed.hasher.finish()));
    Ok((actual, stats))
}

fn classify(e: ExtractError) -> DecodeError {
    match e {
        ExtractError::Read(io) => {
            if io.get_ref().is_some_and(|inner| inner.is::<DecompressFailure>()) {
                DecodeError::Decompress(io)
            } else {
                DecodeError::Extract(ExtractError::Read(io))
            }
        }
        other => DecodeError::Extract(other),
    }
}
