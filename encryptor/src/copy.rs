//! The copy engine shared by `encrypt` and `decrypt`: resolve the source
//! manifest (and index), transform each layer as a stream, write config and
//! layers, and write manifests last, so the destination only gains a tag once
//! every layer has been written and verified.
//!
//! If anything fails on the way, blobs this run added to an OCI layout are
//! removed again (a layout it created is removed whole); a registry keeps only
//! untagged blobs, which its garbage collector reclaims.

use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use oci::{
    Descriptor, Digest, ImageDest, ImageIndex, ImageManifest, ImageRef, ImageSource, Manifest, ManifestRole,
    PlatformSpec, RawManifest,
};
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::config::{CommonOptions, PlatformSelection};
use crate::error::StreamError;
use crate::manifest as mt;
use crate::progress::Progress;
use crate::Error;

/// Streaming buffer: large enough that the cipher runs at full speed, small
/// enough that parallel layers stay within a few MiB.
const BUF_SIZE: usize = 1024 * 1024;

/// What happened to one layer.
#[derive(Debug, Clone, Serialize)]
pub struct LayerResult {
    pub index: usize,
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    pub encrypted: bool,
    /// The layer's digest in the source.
    pub source_digest: String,
}

/// One written manifest.
#[derive(Debug, Clone, Serialize)]
pub struct ManifestResult {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    pub digest: String,
    pub layers: Vec<LayerResult>,
}

/// The result of `encrypt` / `decrypt`, printed as JSON with `--json`.
#[derive(Debug, Clone, Serialize)]
pub struct CopyResult {
    pub source: String,
    pub destination: String,
    /// Digest of the top-level manifest or index written.
    pub manifest_digest: String,
    pub manifests: Vec<ManifestResult>,
    pub elapsed_ms: u128,
}

impl CopyResult {
    /// Prints the JSON result on stdout (`--json`) or a short summary on stderr.
    pub fn report(&self, common: &CommonOptions) -> Result<(), Error> {
        if common.json {
            let s = serde_json::to_string_pretty(self)
                .map_err(|e| Error::Usage(format!("cannot render the result as JSON: {e}")))?;
            println!("{s}");
        } else if !common.quiet {
            let layers: usize = self.manifests.iter().map(|m| m.layers.len()).sum();
            let enc: usize = self.manifests.iter().flat_map(|m| &m.layers).filter(|l| l.encrypted).count();
            eprintln!(
                "wrote {} ({} manifest(s), {layers} layer(s), {enc} encrypted) in {:.2} s, manifest {}",
                self.destination,
                self.manifests.len(),
                self.elapsed_ms as f64 / 1000.0,
                self.manifest_digest
            );
        }
        Ok(())
    }
}

/// What to do with the layers of each manifest.
pub(crate) trait LayerTransform: Send + Sync {
    /// Whether this run converts Docker schema2 manifests to OCI (encryption must).
    fn to_oci(&self) -> bool;
    /// Checks run before any blob is written (key unwrapping, media types), so bad
    /// input fails with nothing written. One entry per layer; `None` copies the
    /// layer unchanged.
    fn prepare(&self, manifest: &ImageManifest) -> futures::future::BoxFuture<'_, Result<LayerJobs, Error>>;
}

/// One job per layer of a manifest; `None` copies the layer unchanged.
pub(crate) type LayerJobs = Vec<Option<Box<dyn LayerJob>>>;

/// The work for one layer, after `prepare`.
pub(crate) trait LayerJob: Send + Sync {
    /// The digest the transformed blob is expected to have, when known in advance
    /// (decryption: the advisory digest in the private options).
    fn digest_hint(&self) -> Option<Digest>;
    /// Wraps the source stream (encrypting or decrypting).
    fn wrap_reader(&self, reader: oci::BlobReader) -> Result<Box<dyn StreamTransform>, Error>;
    /// The new descriptor, once the transformed blob has been written.
    fn finish<'a>(
        &'a self,
        written: (Digest, u64),
        stream: Box<dyn StreamTransform>,
    ) -> futures::future::BoxFuture<'a, Result<Descriptor, Error>>;
}

/// A transforming reader that can say, at EOF, what it learned (the HMAC).
pub(crate) trait StreamTransform: AsyncRead + Send + Unpin {
    /// Public options after encryption; `None` for decryption.
    fn public_options(&self) -> Option<ocicrypt::PublicOptions>;
    /// Whether the stream hashes its own output (in a combined pass), so the
    /// destination writer need not.
    fn hashes_output(&self) -> bool {
        false
    }
    /// The digest of everything the stream yielded, at EOF, if it hashes its output.
    fn output_digest(&self) -> Option<Digest> {
        None
    }
}

/// Tracks blobs added to a layout destination, to remove them on failure.
struct Cleanup {
    layout_root: Option<PathBuf>,
    layout_created: bool,
    added: Mutex<Vec<PathBuf>>,
}

impl Cleanup {
    fn new(dst_ref: &ImageRef) -> Cleanup {
        let (layout_root, layout_created) = match dst_ref {
            ImageRef::Layout(l) => (Some(l.dir.clone()), !l.dir.join("index.json").exists()),
            _ => (None, false),
        };
        Cleanup { layout_root, layout_created, added: Mutex::new(Vec::new()) }
    }

    fn note(&self, dst: &ImageDest, existed: bool, d: &Digest) {
        if existed {
            return;
        }
        if let ImageDest::Layout(l) = dst {
            if let Ok(mut v) = self.added.lock() {
                v.push(l.layout.blob_path(d));
            }
        }
    }

    fn undo(&self) {
        let Some(root) = &self.layout_root else { return };
        if self.layout_created {
            let _ = std::fs::remove_dir_all(root);
            return;
        }
        if let Ok(v) = self.added.lock() {
            for p in v.iter() {
                let _ = std::fs::remove_file(p);
            }
        }
    }
}

/// Source, destination and the per-run state.
struct Run<'a> {
    src: ImageSource,
    dst: ImageDest,
    cleanup: Cleanup,
    common: &'a CommonOptions,
    progress: Progress,
}

/// Copies `src` to `dst`, transforming layers.
pub(crate) async fn copy_image(
    src_ref: &ImageRef,
    dst_ref: &ImageRef,
    platforms: &PlatformSelection,
    transform: &dyn LayerTransform,
    common: &CommonOptions,
) -> Result<CopyResult, Error> {
    let started = Instant::now();
    let (src_s, dst_s) = (src_ref.to_string(), dst_ref.to_string());
    let src_opts = oci::SourceOptions {
        creds: common.src_creds.clone(),
        auth_file: common.authfile.clone(),
        insecure_plain_http: common.insecure_src_plain_http,
        ..Default::default()
    };
    let dst_opts = oci::DestOptions {
        creds: common.dest_creds.clone(),
        auth_file: common.authfile.clone(),
        insecure_plain_http: common.insecure_dest_plain_http,
        ..Default::default()
    };
    let src = ImageSource::open(src_ref, &src_opts).await.map_err(Error::oci(format!("opening {src_s}")))?;
    let top = src.manifest().await.map_err(Error::oci(format!("reading the manifest of {src_s}")))?;
    let parsed = top.parse().map_err(Error::oci(format!("parsing the manifest of {src_s}")))?;

    // Resolve which manifests to process before touching the destination.
    let plan = plan_manifests(&src, &top, parsed, platforms).await?;

    let cleanup = Cleanup::new(dst_ref);
    let dst = ImageDest::open(dst_ref, &dst_opts).await.map_err(Error::oci(format!("opening {dst_s}")))?;
    let run = Run { src, dst, cleanup, common, progress: Progress::new(common.quiet) };

    match run.execute(plan, transform).await {
        Ok((manifest_digest, manifests)) => Ok(CopyResult {
            source: src_s,
            destination: dst_s,
            manifest_digest: manifest_digest.to_string(),
            manifests,
            elapsed_ms: started.elapsed().as_millis(),
        }),
        Err(e) => {
            run.cleanup.undo();
            Err(e)
        }
    }
}

/// The manifests to process: one image, or the chosen children of an index.
enum Plan {
    Single(RawManifest, Box<ImageManifest>),
    Index(Box<ImageIndex>, Vec<(Descriptor, RawManifest, ImageManifest)>),
}

fn platform_label(d: &Descriptor) -> Option<String> {
    d.platform.as_ref().map(|p| match &p.variant {
        Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
        None => format!("{}/{}", p.os, p.architecture),
    })
}

async fn child_manifest(src: &ImageSource, d: &Descriptor) -> Result<(RawManifest, ImageManifest), Error> {
    let raw = src
        .manifest_by_digest(&d.digest)
        .await
        .map_err(Error::oci(format!("reading manifest {}", d.digest)))?;
    match raw.parse().map_err(Error::oci(format!("parsing manifest {}", d.digest)))? {
        Manifest::Image(m) => Ok((raw, m)),
        Manifest::Index(_) => Err(Error::Manifest {
            digest: d.digest.to_string(),
            reason: "nested indexes are not supported".into(),
        }),
    }
}

async fn plan_manifests(
    src: &ImageSource,
    top: &RawManifest,
    parsed: Manifest,
    platforms: &PlatformSelection,
) -> Result<Plan, Error> {
    match parsed {
        Manifest::Image(m) => Ok(Plan::Single(top.clone(), Box::new(m))),
        Manifest::Index(idx) => match platforms {
            PlatformSelection::All => {
                let mut children = Vec::new();
                for d in &idx.manifests {
                    if !oci::media_type::is_image_manifest(&d.media_type) {
                        return Err(Error::Manifest {
                            digest: d.digest.to_string(),
                            reason: format!("index entry of type {} is not an image manifest", d.media_type),
                        });
                    }
                    let (raw, m) = child_manifest(src, d).await?;
                    children.push((d.clone(), raw, m));
                }
                Ok(Plan::Index(Box::new(idx), children))
            }
            PlatformSelection::Default | PlatformSelection::Only(_) => {
                let spec = match platforms {
                    PlatformSelection::Only(p) => p.clone(),
                    _ => PlatformSpec::current(),
                };
                let d = oci::select_platform(&idx, &spec).map_err(|e| Error::Manifest {
                    digest: top.digest.to_string(),
                    reason: format!("{} (choose a platform, or all of them)", report::Line(&e)),
                })?;
                let (raw, m) = child_manifest(src, d).await?;
                Ok(Plan::Single(raw, Box::new(m)))
            }
        },
    }
}

impl Run<'_> {
    async fn execute(
        &self,
        plan: Plan,
        transform: &dyn LayerTransform,
    ) -> Result<(Digest, Vec<ManifestResult>), Error> {
        match plan {
            Plan::Single(raw, m) => {
                let (bytes, media_type, layers) = self.process_manifest(&raw, *m, transform).await?;
                let digest = self
                    .dst
                    .put_manifest(&bytes, &media_type, ManifestRole::TopLevel)
                    .await
                    .map_err(Error::oci("writing the manifest"))?;
                Ok((
                    digest.clone(),
                    vec![ManifestResult { platform: None, digest: digest.to_string(), layers }],
                ))
            }
            Plan::Index(mut idx, children) => {
                let mut results = Vec::new();
                let mut new_entries = Vec::new();
                for (desc, raw, m) in children {
                    let (bytes, media_type, layers) = self.process_manifest(&raw, m, transform).await?;
                    let digest = self
                        .dst
                        .put_manifest(&bytes, &media_type, ManifestRole::Child)
                        .await
                        .map_err(Error::oci(format!("writing the manifest for {}", desc.digest)))?;
                    results.push(ManifestResult {
                        platform: platform_label(&desc),
                        digest: digest.to_string(),
                        layers,
                    });
                    let mut entry = desc.clone();
                    entry.media_type = media_type;
                    entry.digest = digest;
                    entry.size = bytes.len() as u64;
                    new_entries.push(entry);
                }
                idx.manifests = new_entries;
                if transform.to_oci() || idx.media_type.is_some() {
                    idx.media_type = Some(oci::media_type::OCI_INDEX.to_string());
                }
                let bytes = serde_json::to_vec(&idx)
                    .map_err(|e| Error::Usage(format!("cannot serialise the index: {e}")))?;
                let digest = self
                    .dst
                    .put_manifest(&bytes, oci::media_type::OCI_INDEX, ManifestRole::TopLevel)
                    .await
                    .map_err(Error::oci("writing the index"))?;
                Ok((digest, results))
            }
        }
    }

    /// Writes config and layers of one manifest; returns the new manifest bytes.
    async fn process_manifest(
        &self,
        raw: &RawManifest,
        m: ImageManifest,
        transform: &dyn LayerTransform,
    ) -> Result<(Vec<u8>, String, Vec<LayerResult>), Error> {
        let jobs = transform.prepare(&m).await?;
        self.copy_unchanged(&m.config.digest, m.config.size)
            .await
            .map_err(Error::oci(format!("copying config {}", m.config.digest)))?;

        let limit = self.common.max_concurrent_layers.max(1);
        let layers: Vec<(Descriptor, LayerResult)> =
            futures::stream::iter(m.layers.iter().cloned().zip(jobs).enumerate())
                .map(|(i, (desc, job))| async move { self.process_layer(i, desc, job).await })
                .buffered(limit)
                .try_collect()
                .await?;

        let (descs, results): (Vec<Descriptor>, Vec<LayerResult>) = layers.into_iter().unzip();
        let new = mt::rewrite_manifest(m, descs, transform.to_oci());
        let bytes = serde_json::to_vec(&new).map_err(|e| Error::Manifest {
            digest: raw.digest.to_string(),
            reason: format!("cannot serialise the new manifest: {e}"),
        })?;
        let media_type = new.media_type.clone().unwrap_or_else(|| raw.media_type.clone());
        Ok((bytes, media_type, results))
    }

    /// Copies a blob as it is, noting it for cleanup if this run added it.
    async fn copy_unchanged(&self, d: &Digest, size: u64) -> Result<(), oci::OciError> {
        let existed = self.dst.has_blob(d).await.unwrap_or(false);
        self.dst.copy_blob_from(&self.src, d, size).await?;
        self.cleanup.note(&self.dst, existed, d);
        Ok(())
    }

    async fn process_layer(
        &self,
        index: usize,
        desc: Descriptor,
        job: Option<Box<dyn LayerJob>>,
    ) -> Result<(Descriptor, LayerResult), Error> {
        let stream_err =
            |e: StreamError| Error::Stream { index, digest: desc.digest.clone(), source: Box::new(e) };
        let bar = self.progress.layer(&format!("layer {index} {}", short(&desc.digest)), desc.size);
        let new_desc = if let Some(job) = job {
            let hint = job.digest_hint();
            let hint_existed = match &hint {
                Some(h) => self.dst.has_blob(h).await.unwrap_or(true),
                None => false,
            };
            let reader = self.src.blob(&desc.digest, desc.size).await.map_err(|e| stream_err(e.into()))?;
            let mut stream = job.wrap_reader(reader)?;
            let mut writer = self.dst.begin_blob().await.map_err(|e| stream_err(e.into()))?;
            if stream.hashes_output() {
                writer.skip_hashing();
            }
            let mut buf = vec![0u8; BUF_SIZE];
            loop {
                let n = stream.read(&mut buf).await.map_err(|e| stream_err(e.into()))?;
                if n == 0 {
                    break;
                }
                writer.write_all(&buf[..n]).await.map_err(|e| stream_err(e.into()))?;
                bar.inc(n as u64);
            }
            let written =
                writer.finish(stream.output_digest().as_ref()).await.map_err(|e| stream_err(e.into()))?;
            // A fresh random key makes a pre-existing identical ciphertext
            // impossible; a decrypted blob may already have been there.
            let existed = hint_existed && hint.as_ref() == Some(&written.0);
            self.cleanup.note(&self.dst, existed, &written.0);
            let d = job.finish(written, stream).await?;
            bar.finish_with_message("done");
            d
        } else {
            self.copy_unchanged(&desc.digest, desc.size).await.map_err(|e| stream_err(e.into()))?;
            bar.finish_with_message("copied");
            desc.clone()
        };
        let result = LayerResult {
            index,
            media_type: new_desc.media_type.clone(),
            digest: new_desc.digest.to_string(),
            size: new_desc.size,
            encrypted: ocicrypt::is_encrypted(&new_desc.media_type),
            source_digest: desc.digest.to_string(),
        };
        Ok((new_desc, result))
    }
}

/// `sha256:0123456789ab` for labels.
fn short(d: &Digest) -> String {
    d.to_string().chars().take(19).collect()
}
