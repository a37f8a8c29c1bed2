//! The per-layer decode stage: layer stream → (decrypt) → decompress → diff_id
//! hash → safe extraction, on a blocking thread.
//!
//! The async side reads the (size-capped) layer stream and hands chunks to the
//! blocking side through a bounded channel, so memory is bounded by buffers, not
//! by the layer. A plain layer's blob digest is checked by the async side's
//! reader, whose verdict arrives with its EOF. An encrypted layer is decrypted
//! on the blocking side (the `decrypt` argument of [`decode_layer`]): the blob digest, the HMAC and
//! the diff_id are hashed there in one combined SIMD pass (`sha256x`: each
//! ciphertext chunk's two hashes run together with the diff_id hash of the tar
//! bytes decompressed since the previous chunk), and the blob digest and HMAC
//! verdict is delivered at the stream's end, before the decompressor can see
//! EOF. Any failure aborts the extraction; the caller commits the staging
//! directory only when decoding returns `Ok`.

use std::cell::RefCell;
use std::io::{self, BufRead, Read};
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::{Bytes, BytesMut};
use ocicrypt::{CipherError, LayerDecryptor};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

use crate::extract::{self, ExtractError, ExtractOptions, ExtractStats};

/// Chunk size read from the source and passed to the blocking side.
const CHUNK: usize = 256 * 1024;
/// Chunks in flight between the two sides.
const DEPTH: usize = 4;
/// Decompressed bytes waiting to ride along with the next ciphertext chunk's
/// hashing pass; beyond this they are hashed on their own.
const PENDING_MAX: usize = 2 << 20;

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
    Data(BytesMut),
    End,
    Failed,
}

/// The diff_id hash, shared by the channel reader (which decrypts, and hashes
/// pending diff_id bytes in the same pass) and the tap above the decompressor.
enum DiffHash {
    /// Plain layer: OpenSSL's single-stream SHA-256 (the fastest for one stream).
    Single(openssl::sha::Sha256),
    /// Encrypted layer: `pending` decompressed bytes join the next combined pass.
    Lanes { hasher: sha256x::Sha256, pending: Vec<u8> },
}

struct Shared {
    diff: Option<DiffHash>,
    /// Why the decryptor refused the stream (blob digest or HMAC), if it did.
    source_failure: Option<CipherError>,
}

type SharedState = Rc<RefCell<Shared>>;

/// Feeds the blocking side; EOF only after the async side said `End` and, for
/// an encrypted layer, the blob digest and HMAC matched.
struct ChannelReader {
    rx: mpsc::Receiver<Msg>,
    cur: Bytes,
    done: bool,
    dec: Option<LayerDecryptor>,
    shared: SharedState,
}

impl ChannelReader {
    /// Decrypt a received chunk in place; the diff_id bytes decompressed since
    /// the previous chunk are hashed in the same pass.
    fn decrypt(&mut self, chunk: &mut [u8]) {
        let Some(dec) = self.dec.as_mut() else { return };
        let mut sh = self.shared.borrow_mut();
        match sh.diff.as_mut() {
            Some(DiffHash::Lanes { hasher, pending }) => {
                dec.update_with(chunk, (hasher, pending));
                pending.clear();
            }
            _ => dec.update(chunk),
        }
    }

    /// End of the ciphertext: the blob digest and HMAC verdict.
    fn settle(&mut self) -> io::Result<()> {
        let Some(dec) = self.dec.take() else { return Ok(()) };
        dec.finish().map_err(|e| {
            self.shared.borrow_mut().source_failure = Some(e.clone());
            io::Error::new(io::ErrorKind::InvalidData, e)
        })
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
        while self.cur.is_empty() {
            if self.done {
                return Ok(&[]);
            }
            match self.rx.blocking_recv() {
                Some(Msg::Data(mut b)) => {
                    self.decrypt(&mut b);
                    self.cur = b.freeze();
                }
                Some(Msg::End) => {
                    self.settle()?;
                    self.done = true;
                }
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

/// Hashes what passes through (the uncompressed tar: the diff_id), directly
/// for a plain layer, or by queueing it for the next combined pass.
struct HashReader<R> {
    inner: R,
    shared: SharedState,
}

impl<R: Read> Read for HashReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        let mut sh = self.shared.borrow_mut();
        match sh.diff.as_mut() {
            Some(DiffHash::Single(h)) => h.update(&buf[..n]),
            Some(DiffHash::Lanes { hasher, pending }) => {
                pending.extend_from_slice(&buf[..n]);
                if pending.len() >= PENDING_MAX {
                    hasher.update(pending);
                    pending.clear();
                }
            }
            None => {}
        }
        Ok(n)
    }
}

/// The diff_id of everything that passed the tap.
fn finish_diff(shared: &SharedState) -> String {
    let digest = match shared.borrow_mut().diff.take() {
        Some(DiffHash::Single(h)) => h.finish(),
        Some(DiffHash::Lanes { mut hasher, pending }) => {
            hasher.update(&pending);
            hasher.finalize()
        }
        None => openssl::sha::Sha256::new().finish(),
    };
    format!("sha256:{}", hex::encode(digest))
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
/// With `decrypt`, `source` yields ciphertext that the decryptor (typically made
/// [`with_ciphertext_digest`](LayerDecryptor::with_ciphertext_digest), the
/// source then not checking the blob digest itself) decrypts on the blocking
/// side, its hashes combined with the diff_id's.
///
/// `expected_diff_id` is `sha256:<hex>`. `on_bytes` is called with the number
/// of source bytes after each chunk (for progress). Setting `cancel` aborts
/// the layer at the next chunk.
#[allow(clippy::too_many_arguments)]
pub async fn decode_layer<R>(
    mut source: R,
    decrypt: Option<LayerDecryptor>,
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
    dec: Option<LayerDecryptor>,
    compression: Compression,
    dest: &Path,
    opts: &ExtractOptions,
) -> Result<(String, ExtractStats), DecodeError> {
    let diff = match dec {
        Some(_) => DiffHash::Lanes { hasher: sha256x::Sha256::new(), pending: Vec::with_capacity(CHUNK) },
        None => DiffHash::Single(openssl::sha::Sha256::new()),
    };
    let shared: SharedState = Rc::new(RefCell::new(Shared { diff: Some(diff), source_failure: None }));
    let input = ChannelReader { rx, cur: Bytes::new(), done: false, dec, shared: Rc::clone(&shared) };
    let decompressed: Box<dyn Read> = match compression {
        Compression::None => Box::new(input),
        Compression::Gzip => Box::new(DecompressReader(flate2::bufread::MultiGzDecoder::new(input))),
        Compression::Zstd => {
            // The zstd reader continues across frames: multi-frame layers decode whole.
            let d = zstd::stream::read::Decoder::with_buffer(input).map_err(DecodeError::Decompress)?;
            Box::new(DecompressReader(d))
        }
    };
    let mut hashed = HashReader { inner: decompressed, shared: Rc::clone(&shared) };
    // tar reads 512-byte headers one at a time; the buffer turns those into
    // large decompress and hash calls.
    let extracted = extract::extract(io::BufReader::with_capacity(CHUNK, &mut hashed), dest, opts);
    if let Some(e) = shared.borrow_mut().source_failure.take() {
        // The decryptor refused the stream: that, not the decompressor's view of it, is the error.
        return Err(DecodeError::Source(io::Error::new(io::ErrorKind::InvalidData, e)));
    }
    let stats = extracted.map_err(classify)?;
    Ok((finish_diff(&shared), stats))
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
