//! `cloak encrypt`: every selected layer gets a fresh 32-byte key and 16-byte
//! nonce, is encrypted as a stream straight into the destination, and its
//! private options are wrapped once per recipient scheme.

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use ocicrypt::keywrap::KeyWrapper;
use ocicrypt::{AsyncEncryptReader, PrivateOptions, PublicOptions};
use oci::{BlobReader, Descriptor, Digest, ImageManifest};

use crate::config::{EncryptConfig, LayerSelection};
use crate::copy::{copy_image, CopyResult, LayerJob, LayerJobs, LayerTransform, StreamTransform};
use crate::recipients::build_wrappers;
use crate::Error;

/// Encrypts `cfg.src` into `cfg.dst`.
pub async fn encrypt(cfg: &EncryptConfig) -> Result<CopyResult, Error> {
    let wrappers = Arc::new(build_wrappers(cfg).await?);
    let t = Encrypt { wrappers, layers: cfg.layers.clone() };
    copy_image(&cfg.src, &cfg.dst, &cfg.platforms, &t, &cfg.common).await
}

struct Encrypt {
    wrappers: Arc<Vec<Arc<dyn KeyWrapper>>>,
    layers: LayerSelection,
}

impl LayerTransform for Encrypt {
    fn to_oci(&self) -> bool {
        true
    }

    fn prepare(&self, m: &ImageManifest) -> BoxFuture<'_, Result<LayerJobs, Error>> {
        let layers = m.layers.clone();
        async move {
            let selected = self.layers.resolve(layers.len())?;
            let mut jobs: LayerJobs = Vec::with_capacity(layers.len());
            for (index, (desc, sel)) in layers.iter().zip(selected).enumerate() {
                if !sel {
                    jobs.push(None);
                    continue;
                }
                if ocicrypt::is_encrypted(&desc.media_type) {
                    return Err(Error::AlreadyEncrypted {
                        index,
                        digest: desc.digest.to_string(),
                        media_type: desc.media_type.clone(),
                    });
                }
                let media_type = ocicrypt::encrypted_media_type(&desc.media_type).map_err(|e| {
                    Error::Stream { index, digest: desc.digest.to_string(), reason: e.to_string() }
                })?;
                jobs.push(Some(Box::new(EncryptLayer {
                    index,
                    source: desc.clone(),
                    media_type,
                    opts: PrivateOptions::generate(desc.digest.to_string()),
                    wrappers: Arc::clone(&self.wrappers),
                })));
            }
            Ok(jobs)
        }
        .boxed()
    }
}

struct EncryptLayer {
    index: usize,
    source: Descriptor,
    media_type: String,
    opts: PrivateOptions,
    wrappers: Arc<Vec<Arc<dyn KeyWrapper>>>,
}

impl StreamTransform for AsyncEncryptReader<BlobReader> {
    fn public_options(&self) -> Option<PublicOptions> {
        AsyncEncryptReader::public_options(self).cloned()
    }
}

impl LayerJob for EncryptLayer {
    fn digest_hint(&self) -> Option<Digest> {
        None
    }
    fn wrap_reader(&self, mut reader: BlobReader) -> Result<Box<dyn StreamTransform>, Error> {
        // The source digest, the HMAC and the new blob's digest are computed in
        // one combined pass (see `ocicrypt::LayerEncryptor::with_digests`).
        Ok(match reader.take_digest_check() {
            Some(expected) => Box::new(FusedEncryptStream {
                inner: AsyncEncryptReader::with_digests(reader, &self.opts),
                expected_source: expected,
                verdict: None,
            }),
            None => Box::new(AsyncEncryptReader::new(reader, &self.opts)),
        })
    }
    fn finish<'a>(
        &'a self,
        (digest, size): (Digest, u64),
        stream: Box<dyn StreamTransform>,
    ) -> BoxFuture<'a, Result<Descriptor, Error>> {
        async move {
            let layer_err = |source| Error::Layer { index: self.index, digest: self.source.digest.to_string(), source };
            let pubopts = stream.public_options().ok_or_else(|| Error::Stream {
                index: self.index,
                digest: self.source.digest.to_string(),
                reason: "the stream ended before the cipher finished".into(),
            })?;
            let enc = ocicrypt::wrap_keys(&self.wrappers, &self.opts, &pubopts).await.map_err(layer_err)?;
            let existing = self.source.annotations.clone().unwrap_or_default();
            let annotations = ocicrypt::annotations::merge_enc_annotations(&existing, &enc);
            let mut d = self.source.clone();
            d.media_type = self.media_type.clone();
            d.digest = digest;
            d.size = size;
            d.annotations = Some(annotations);
            Ok(d)
        }
        .boxed()
    }
}

/// Encrypts while checking the source blob's digest and hashing the output, all
/// in the HMAC's pass. The source digest is judged at EOF: a mismatch is an
/// error instead of EOF, so the destination blob is never committed.
struct FusedEncryptStream {
    inner: AsyncEncryptReader<BlobReader>,
    expected_source: Digest,
    /// Set at EOF: `Ok` or the mismatch message (sticky).
    verdict: Option<Result<(), String>>,
}

impl FusedEncryptStream {
    fn judge(&self) -> Result<(), String> {
        let sealed = self.inner.sealed().ok_or("the cipher did not finish")?;
        let actual = sealed.plaintext_sha256.ok_or("no source digest was computed")?;
        let actual = Digest::from_sha256_bytes(actual);
        if actual == self.expected_source {
            Ok(())
        } else {
            Err(format!("blob digest mismatch: expected {}, content hashes to {actual}", self.expected_source))
        }
    }
}

impl tokio::io::AsyncRead for FusedEncryptStream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::task::Poll;
        let this = self.get_mut();
        let bad = |m: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, m.to_string());
        match &this.verdict {
            Some(Ok(())) => return Poll::Ready(Ok(())),
            Some(Err(m)) => return Poll::Ready(Err(bad(m))),
            None => {}
        }
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match std::pin::Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) if buf.filled().len() == before => {
                let v = this.judge();
                this.verdict = Some(v.clone());
                Poll::Ready(v.map_err(|m| bad(&m)))
            }
            other => other,
        }
    }
}

impl StreamTransform for FusedEncryptStream {
    fn public_options(&self) -> Option<PublicOptions> {
        self.inner.public_options().cloned()
    }
    fn hashes_output(&self) -> bool {
        true
    }
    fn output_digest(&self) -> Option<Digest> {
        match self.verdict {
            Some(Ok(())) => self.inner.sealed()?.ciphertext_sha256.map(Digest::from_sha256_bytes),
            _ => None,
        }
    }
}
