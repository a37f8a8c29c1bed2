//! `cloak decrypt`: unwraps every layer key first (so a wrong key or malformed
//! annotation fails before anything is written), then decrypts each layer as a
//! stream. The HMAC is checked at end of stream, before the blob is committed;
//! the manifest is written only when every layer has been verified.

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::BoxFuture;
use futures::FutureExt;
use oci::{BlobReader, Descriptor, Digest, ImageManifest};
use ocicrypt::keywrap::KeyUnwrapper;
use ocicrypt::{AsyncDecryptReader, PrivateOptions, PublicOptions};

use crate::config::DecryptConfig;
use crate::copy::{copy_image, CopyResult, LayerJob, LayerJobs, LayerTransform, StreamTransform};
use crate::error::StreamError;
use crate::Error;

/// Decrypts `cfg.src` into `cfg.dst` with the private keys in `cfg.keys`.
pub async fn decrypt(cfg: &DecryptConfig) -> Result<CopyResult, Error> {
    let mut keys = Vec::new();
    for path in &cfg.keys {
        let bytes = zeroize::Zeroizing::new(
            tokio::fs::read(path).await.map_err(Error::io(format!("reading {}", path.display())))?,
        );
        let key = ocicrypt::load_private_key(&bytes)
            .map_err(|e| Error::Key { path: path.display().to_string(), source: e })?;
        keys.push(key);
    }
    let unwrappers: Vec<Arc<dyn KeyUnwrapper>> = vec![Arc::new(ocicrypt::JweUnwrapper::new(keys))];
    let t = Decrypt { unwrappers };
    copy_image(&cfg.src, &cfg.dst, &cfg.platforms, &t, &cfg.common).await
}

struct Decrypt {
    unwrappers: Vec<Arc<dyn KeyUnwrapper>>,
}

impl LayerTransform for Decrypt {
    fn to_oci(&self) -> bool {
        false
    }

    fn prepare(&self, m: &ImageManifest) -> BoxFuture<'_, Result<LayerJobs, Error>> {
        let layers = m.layers.clone();
        async move {
            let mut jobs: LayerJobs = Vec::with_capacity(layers.len());
            for (index, desc) in layers.into_iter().enumerate() {
                if !ocicrypt::is_encrypted(&desc.media_type) {
                    jobs.push(None);
                    continue;
                }
                let annotations: HashMap<String, String> =
                    desc.annotations.clone().unwrap_or_default().into_iter().collect();
                let (opts, pubopts) = ocicrypt::unwrap_keys(&self.unwrappers, &annotations)
                    .await
                    .map_err(|source| Error::Layer { index, digest: desc.digest.to_string(), source })?;
                let media_type =
                    ocicrypt::decrypted_media_type(&desc.media_type).ok_or_else(|| Error::Stream {
                        index,
                        digest: desc.digest.clone(),
                        source: Box::new(StreamError::NotEncrypted(desc.media_type.clone())),
                    })?;
                jobs.push(Some(Box::new(DecryptLayer { index, source: desc, media_type, opts, pubopts })));
            }
            Ok(jobs)
        }
        .boxed()
    }
}

struct DecryptLayer {
    index: usize,
    source: Descriptor,
    media_type: String,
    opts: PrivateOptions,
    pubopts: PublicOptions,
}

impl StreamTransform for AsyncDecryptReader<BlobReader> {
    fn public_options(&self) -> Option<PublicOptions> {
        None
    }
}

impl LayerJob for DecryptLayer {
    fn digest_hint(&self) -> Option<Digest> {
        // Advisory only (skopeo records the source digest); used to avoid
        // deleting a pre-existing identical blob on failure, never for trust.
        self.opts.digest.parse().ok()
    }
    fn wrap_reader(&self, mut reader: BlobReader) -> Result<Box<dyn StreamTransform>, Error> {
        // The blob digest is checked in the HMAC's pass (one combined SIMD pass
        // where the CPU allows); the verdict comes at EOF, before anything is
        // committed. Otherwise the reader keeps checking it itself.
        let d = match reader.take_sha256_check() {
            Some(sha) => AsyncDecryptReader::with_ciphertext_digest(reader, &self.opts, &self.pubopts, sha),
            None => AsyncDecryptReader::new(reader, &self.opts, &self.pubopts),
        };
        let d = d.map_err(|e| Error::Stream {
            index: self.index,
            digest: self.source.digest.clone(),
            source: Box::new(e.into()),
        })?;
        Ok(Box::new(d))
    }
    fn finish<'a>(
        &'a self,
        (digest, size): (Digest, u64),
        _stream: Box<dyn StreamTransform>,
    ) -> BoxFuture<'a, Result<Descriptor, Error>> {
        async move {
            let mut d = self.source.clone();
            d.media_type = self.media_type.clone();
            d.digest = digest;
            d.size = size;
            let rest = ocicrypt::annotations::strip_enc_annotations(
                &self.source.annotations.clone().unwrap_or_default(),
            );
            d.annotations = (!rest.is_empty()).then_some(rest);
            Ok(d)
        }
        .boxed()
    }
}
