//! The per-layer decode stage: layer stream → (decrypt) → decompress → diff_id
//! hash → safe extraction, on a blocking thread.
//!
//! The async side reads the (size-capped) layer stream and hands chunks to the
//! blocking side through a bounded channel, so memory is bounded by buffers, not
//! by the layer. A plain layer's blob digest is checked by the async side's
//! reader, whose verdict arrives with its EOF. An encrypted layer is decrypted
//! on the blocking side, in place, by ocicrypt's [`DecryptBufReader`] (the
//! `decrypt` argument of [`decode_layer`]): the blob digest, the HMAC and the
//! diff_id are hashed there in one combined SIMD pass (`sha256x`: each
//! ciphertext chunk's two hashes run together with the diff_id hash of the tar
//! bytes decompressed since the previous chunk, fed back through the adapter's
//! side hash), and the adapter delivers the blob digest and HMAC verdict at the
//! stream's end, before the decompressor can see EOF; the verdict is then read
//! from the adapter itself. Any failure aborts the extraction; the caller
//! commits the staging directory only when decoding returns `Ok`.

use std::io::{self, BufRead, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::{Buf as _, BytesMut};
use oci::Digest;
use ocicrypt::{BufReadMut, DecryptBufReader, LayerDecryptor};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

use crate::extract::{self, ExtractError, ExtractOptions, ExtractStats};

pub use ocicrypt::Compression;

/// Chunk size read from the source and passed to the blocking side.
const CHUNK: usize = 256 * 1024;
/// Chunks in flight between the two sides.
const DEPTH: usize = 4;

/// Why decoding a layer failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// Reading the layer source failed: transport, size cap, blob digest or
    /// HMAC (then the `io::Error` wraps the [`ocicrypt::CipherError`]).
    #[error("layer stream failed verification or transfer")]
    Source(#[source] io::Error),
    #[error("decompressing the layer")]
    Decompress(#[source] io::Error),
    /// A decompression bomb, by ratio.
    #[error(
        "decompression bomb refused: {unpacked} bytes unpacked from {compressed} compressed bytes, more than \
         {limit}:1; if the image is trusted, raise the limit (cloak-pull --max-decompression-ratio, \
         cloak-cdh [image] max_decompression_ratio)"
    )]
    Ratio { unpacked: u64, compressed: u64, limit: u64 },
    /// A layer that unpacks to more than the size limit.
    #[error(
        "the layer unpacks to more than {max} bytes; if the image is trusted, raise the limit \
         (cloak-pull --max-layer-size, cloak-cdh [image] max_layer_size)"
    )]
    UnpackedTooLarge { max: u64 },
    #[error("extracting the layer")]
    Extract(#[source] ExtractError),
    #[error("diff_id mismatch: the config says {expected}, the layer content hashes to {actual}")]
    DiffId { expected: Digest, actual: Digest },
    #[error("cancelled after another layer failed")]
    Cancelled,
    #[error("the decode thread failed")]
    Join(#[from] tokio::task::JoinError),
}

/// The outcome of a decoded layer.
#[derive(Debug, Clone)]
pub struct DecodedLayer {
    /// The verified diff_id (SHA-256 of the uncompressed tar).
    pub diff_id: Digest,
    /// Compressed (plaintext) bytes read from the source.
    pub source_bytes: u64,
    /// Extraction statistics.
    pub stats: ExtractStats,
}

enum Msg {
    Data(BytesMut),
    End,
    Failed,
}

/// Feeds the blocking side with the received chunks, in place (the decryptor
/// above it decrypts them where they lie); EOF only after the async side said `End`.
struct ChannelReader {
    rx: mpsc::Receiver<Msg>,
    cur: BytesMut,
    done: bool,
}

impl ChannelReader {
    fn fill(&mut self) -> io::Result<()> {
        while self.cur.is_empty() && !self.done {
            match self.rx.blocking_recv() {
                Some(Msg::Data(b)) => self.cur = b,
                Some(Msg::End) => self.done = true,
                Some(Msg::Failed) | None => {
                    return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "layer source aborted"))
                }
            }
        }
        Ok(())
    }
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
        self.fill()?;
        Ok(&self.cur)
    }

    fn consume(&mut self, amt: usize) {
        self.cur.advance(amt.min(self.cur.len()));
    }
}

impl BufReadMut for ChannelReader {
    fn fill_buf_mut(&mut self) -> io::Result<&mut [u8]> {
        self.fill()?;
        Ok(&mut self.cur)
    }
}

/// The compressed tar: as received, or decrypted in place by ocicrypt's
/// adapter, which also carries the diff_id lane (the tar bytes decompressed
/// since the previous chunk are hashed in that chunk's HMAC pass).
// One value per layer, built once and never moved on the hot path: boxing
// the larger variant would only add an indirection to every read.
#[allow(clippy::large_enum_variant)]
enum Source {
    Plain(ChannelReader),
    Encrypted(DecryptBufReader<ChannelReader>),
}

impl Read for Source {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Source::Plain(r) => r.read(buf),
            Source::Encrypted(r) => r.read(buf),
        }
    }
}

impl BufRead for Source {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        match self {
            Source::Plain(r) => r.fill_buf(),
            Source::Encrypted(r) => r.fill_buf(),
        }
    }

    fn consume(&mut self, amt: usize) {
        match self {
            Source::Plain(r) => r.consume(amt),
            Source::Encrypted(r) => r.consume(amt),
        }
    }
}

/// Counts the compressed bytes the decompressor consumes (for the ratio bound).
struct Counted {
    inner: Source,
    consumed: u64,
}

impl Read for Counted {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.consumed += n as u64;
        Ok(n)
    }
}

impl BufRead for Counted {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.inner.fill_buf()
    }

    fn consume(&mut self, amt: usize) {
        self.consumed += amt as u64;
        self.inner.consume(amt);
    }
}

/// A decompression bound that tripped.
#[derive(Debug, Clone, Copy)]
enum Bomb {
    Ratio { unpacked: u64, compressed: u64, limit: u64 },
    Size { max: u64 },
}

impl From<Bomb> for DecodeError {
    fn from(b: Bomb) -> Self {
        match b {
            Bomb::Ratio { unpacked, compressed, limit } => DecodeError::Ratio { unpacked, compressed, limit },
            Bomb::Size { max } => DecodeError::UnpackedTooLarge { max },
        }
    }
}

/// The decompressor over the source; it remembers whether it failed, so its
/// errors are told apart from the extractor's own, and bounds what it
/// unpacks: at most `max_ratio` times the compressed bytes read so far (once
/// past `ratio_floor`), and at most `max_unpacked` in all.
struct Decompressor {
    kind: Decompress,
    failed: bool,
    unpacked: u64,
    max_ratio: u64,
    ratio_floor: u64,
    max_unpacked: u64,
    bomb: Option<Bomb>,
}

#[allow(clippy::large_enum_variant)] // as for `Source`
enum Decompress {
    None(Source),
    Gzip(flate2::bufread::MultiGzDecoder<Counted>),
    Zstd(zstd::stream::read::Decoder<'static, Counted>),
}

impl Decompressor {
    fn new(source: Source, compression: Compression, limits: &extract::Limits) -> io::Result<Self> {
        let counted = |inner| Counted { inner, consumed: 0 };
        let kind = match compression {
            Compression::None => Decompress::None(source),
            Compression::Gzip => Decompress::Gzip(flate2::bufread::MultiGzDecoder::new(counted(source))),
            // The zstd reader continues across frames: multi-frame layers decode whole.
            Compression::Zstd => Decompress::Zstd(zstd::stream::read::Decoder::with_buffer(counted(source))?),
        };
        Ok(Decompressor {
            kind,
            failed: false,
            unpacked: 0,
            max_ratio: limits.max_ratio,
            ratio_floor: limits.ratio_floor,
            max_unpacked: limits.max_total_size,
            bomb: None,
        })
    }

    fn source(&mut self) -> &mut Source {
        match &mut self.kind {
            Decompress::None(s) => s,
            Decompress::Gzip(d) => &mut d.get_mut().inner,
            Decompress::Zstd(d) => &mut d.get_mut().inner,
        }
    }

    /// The bound the bytes unpacked so far break, if any.
    fn check(&self, compressed: u64) -> Option<Bomb> {
        if self.unpacked > self.max_unpacked {
            return Some(Bomb::Size { max: self.max_unpacked });
        }
        if self.unpacked > self.ratio_floor
            && self.unpacked > self.max_ratio.saturating_mul(compressed.max(1))
        {
            return Some(Bomb::Ratio { unpacked: self.unpacked, compressed, limit: self.max_ratio });
        }
        None
    }
}

impl Read for Decompressor {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(b) = self.bomb {
            return Err(io::Error::new(io::ErrorKind::InvalidData, DecodeError::from(b).to_string()));
        }
        let (r, compressed) = match &mut self.kind {
            Decompress::None(s) => return s.read(buf),
            Decompress::Gzip(d) => (d.read(buf), d.get_ref().consumed),
            Decompress::Zstd(d) => (d.read(buf), d.get_ref().consumed),
        };
        self.failed |= r.is_err();
        let n = r?;
        self.unpacked += n as u64;
        if let Some(b) = self.check(compressed) {
            self.failed = true;
            self.bomb = Some(b);
            return Err(io::Error::new(io::ErrorKind::InvalidData, DecodeError::from(b).to_string()));
        }
        Ok(n)
    }
}

/// Hashes what passes through (the uncompressed tar: the diff_id): directly
/// for a plain layer, through the decryptor's lane for an encrypted one.
struct DiffIdTap {
    inner: Decompressor,
    /// Plain layer: OpenSSL's single-stream SHA-256 (the fastest for one stream).
    single: Option<openssl::sha::Sha256>,
}

impl Read for DiffIdTap {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        match (&mut self.single, self.inner.source()) {
            (Some(h), _) => h.update(&buf[..n]),
            (None, Source::Encrypted(d)) => d.feed_side_hash(&buf[..n]),
            (None, Source::Plain(_)) => {}
        }
        Ok(n)
    }
}

impl DiffIdTap {
    /// The diff_id of everything that passed the tap.
    fn finish(mut self) -> Digest {
        let digest = match (self.single.take(), self.inner.source()) {
            (Some(h), _) => h.finish(),
            (None, Source::Encrypted(d)) => d.finish_side_hash().unwrap_or_default(),
            (None, Source::Plain(_)) => openssl::sha::Sha256::new().finish(),
        };
        Digest::from_sha256_bytes(digest)
    }

    /// Why the decryptor refused the stream (blob digest or HMAC), if it did.
    fn refusal(&mut self) -> Option<ocicrypt::CipherError> {
        match self.inner.source() {
            Source::Encrypted(d) => d.failure().cloned(),
            Source::Plain(_) => None,
        }
    }

    /// Whether an encrypted source reached its end and passed every check
    /// (always true for a plain one, whose reader checks its own digest).
    fn verified(&mut self) -> bool {
        match self.inner.source() {
            Source::Encrypted(d) => d.is_verified(),
            Source::Plain(_) => true,
        }
    }
}

/// Decodes one layer stream into `dest` (an existing, private, empty directory).
///
/// With `decrypt`, `source` yields ciphertext that the decryptor (typically made
/// [`with_ciphertext_digest`](LayerDecryptor::with_ciphertext_digest), the
/// source then not checking the blob digest itself) decrypts on the blocking
/// side, its hashes combined with the diff_id's.
///
/// `on_bytes` is called with the number
/// of source bytes after each chunk (for progress). Setting `cancel` aborts
/// the layer at the next chunk.
#[allow(clippy::too_many_arguments)]
pub async fn decode_layer<R>(
    mut source: R,
    decrypt: Option<LayerDecryptor>,
    compression: Compression,
    expected_diff_id: &Digest,
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
    let worker = tokio::task::spawn_blocking(move || decode_blocking(rx, decrypt, compression, &dest, &opts));

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
                if tx.send(Msg::Data(buf)).await.is_err() {
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
    let result = worker.await?;
    if cancelled {
        return Err(DecodeError::Cancelled);
    }
    if let Some(e) = source_err {
        return Err(DecodeError::Source(e));
    }
    let (actual, stats) = result?;
    if actual != *expected_diff_id {
        return Err(DecodeError::DiffId { expected: expected_diff_id.clone(), actual });
    }
    Ok(DecodedLayer { diff_id: actual, source_bytes, stats })
}

fn decode_blocking(
    rx: mpsc::Receiver<Msg>,
    dec: Option<LayerDecryptor>,
    compression: Compression,
    dest: &Path,
    opts: &ExtractOptions,
) -> Result<(Digest, ExtractStats), DecodeError> {
    let input = ChannelReader { rx, cur: BytesMut::new(), done: false };
    let (source, single) = match dec {
        Some(dec) => (Source::Encrypted(DecryptBufReader::with_side_hash(input, dec)), None),
        None => (Source::Plain(input), Some(openssl::sha::Sha256::new())),
    };
    let inner = Decompressor::new(source, compression, &opts.limits).map_err(DecodeError::Decompress)?;
    let mut tap = DiffIdTap { inner, single };
    // tar reads 512-byte headers one at a time; the buffer turns those into
    // large decompress and hash calls.
    let extracted = extract::extract(io::BufReader::with_capacity(CHUNK, &mut tap), dest, opts);
    if let Some(e) = tap.refusal() {
        // The decryptor refused the stream: that, not the decompressor's or
        // the extractor's view of it, is the error.
        return Err(DecodeError::Source(io::Error::new(io::ErrorKind::InvalidData, e)));
    }
    if let Some(b) = tap.inner.bomb {
        return Err(b.into());
    }
    let stats = match extracted {
        Ok(stats) => stats,
        Err(ExtractError::Read(io)) if tap.inner.failed => return Err(DecodeError::Decompress(io)),
        Err(e) => return Err(DecodeError::Extract(e)),
    };
    if !tap.verified() {
        // Fail closed: nothing is committed unless the HMAC verdict was read.
        return Err(DecodeError::Source(io::Error::new(
            io::ErrorKind::InvalidData,
            "the layer ended before its blob digest and HMAC were verified",
        )));
    }
    Ok((tap.finish(), stats))
}
