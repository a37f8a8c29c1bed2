//! `cloak encrypt`: every selected layer gets a fresh 32-byte key and 16-byte
//! nonce, is encrypted as a stream straight into the destination, and its
//! private options are wrapped once per recipient scheme.

use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use oci::{BlobReader, Descriptor, Digest, ImageManifest};
use ocicrypt::keywrap::KeyWrapper;
use ocicrypt::{AsyncEncryptReader, PrivateOptions, PublicOptions};

use crate::config::{EncryptConfig, LayerSelection};
use crate::copy::{copy_image, CopyResult, LayerJob, LayerJobs, LayerTransform, StreamTransform};
use crate::error::StreamError;
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
                    Error::Stream { index, digest: desc.digest.clone(), source: Box::new(e.into()) }
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
    fn hashes_output(&self) -> bool {
        self.computes_digests()
    }
    fn output_digest(&self) -> Option<Digest> {
        self.sealed()?.ciphertext_sha256.map(Digest::from_sha256_bytes)
    }
}

impl LayerJob for EncryptLayer {
    fn digest_hint(&self) -> Option<Digest> {
        None
    }
    fn wrap_reader(&self, mut reader: BlobReader) -> Result<Box<dyn StreamTransform>, Error> {
        // The source digest, the HMAC and the new blob's digest are computed in
        // one combined pass (see `ocicrypt::LayerEncryptor::with_digests`); the
        // source digest is then judged at EOF by the encrypting reader.
        Ok(Box::new(match reader.take_sha256_check() {
            Some(source) => {
                AsyncEncryptReader::with_digests(reader, &self.opts).expecting_plaintext_sha256(source)
            }
            None => AsyncEncryptReader::new(reader, &self.opts),
        }))
    }
    fn finish<'a>(
        &'a self,
        (digest, size): (Digest, u64),
        stream: Box<dyn StreamTransform>,
    ) -> BoxFuture<'a, Result<Descriptor, Error>> {
        async move {
            let layer_err =
                |source| Error::Layer { index: self.index, digest: self.source.digest.to_string(), source };
            let pubopts = stream.public_options().ok_or_else(|| Error::Stream {
                index: self.index,
                digest: self.source.digest.clone(),
                source: Box::new(StreamError::Unsealed),
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
