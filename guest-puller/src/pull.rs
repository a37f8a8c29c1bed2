//! The pull orchestrator, in three stages a caller may run one by one:
//!
//! 1. [`resolve`]: reference policy → manifest (pinned digest checked, index →
//!    platform manifest) → config, verified and parsed ([`ResolvedImage`]);
//! 2. [`plan`]: layer policy, one typed [`LayerPlan`] per layer (media type,
//!    diff_id, whether encrypted) ([`PullPlan`]);
//! 3. [`execute`]: keys → layers in parallel (fetch, verify, decrypt, decode,
//!    extract, commit to the store) → rootfs assembled in order → one rename
//!    into `BUNDLE/rootfs`.
//!
//! [`pull`] runs all three. On any failure nothing is left at `BUNDLE/rootfs`
//! and no unverified layer is in the store.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures::stream::{self, StreamExt};
use oci::{Digest, ImageConfig, ImageManifest, ImageRef, ImageSource, Manifest, PlatformSpec, SourceOptions};
use ocicrypt::{KeyUnwrapper, LayerMediaType, PrivateOptions, PublicOptions};
use serde::Serialize;
use tokio::io::AsyncRead;

use crate::assemble::{self, LinkMode};
use crate::decode::{self, DecodeError};
use crate::extract::{ExtractOptions, WhiteoutMode};
use crate::overlay::{self, OverlayError};
use crate::policy::{LayerFacts, PolicyError, PullPolicy};
use crate::progress::{Event, ProgressSink};
use crate::store::{self, Completion, Store, StoreError};

/// Largest image config accepted.
const MAX_CONFIG_SIZE: u64 = 4 << 20;

/// Everything a pull needs.
pub struct PullOptions {
    /// The image (`docker://…` or `oci:DIR[:TAG|@DIGEST]`).
    pub image: ImageRef,
    /// The bundle directory; `rootfs/` and `image.json` are written into it.
    pub bundle: PathBuf,
    /// Key unwrappers (local JWE keys, keyproviders, KBS), tried per layer.
    pub unwrappers: Vec<Arc<dyn KeyUnwrapper>>,
    /// Pull policy.
    pub policy: PullPolicy,
    /// Platform to select from an index (default: this machine's).
    pub platform: Option<PlatformSpec>,
    /// Persistent layer store; `None` = a private one inside the bundle, removed afterwards.
    pub store: Option<PathBuf>,
    /// How the rootfs is populated from a persistent store.
    pub store_link: LinkMode,
    /// Registry access.
    pub source: SourceOptions,
    /// Layers fetched and decoded at once.
    pub max_concurrent_layers: usize,
    /// Extraction policy (whiteout mode is forced to `Keep` for the store).
    pub extract: ExtractOptions,
    /// Progress events.
    pub progress: Arc<dyn ProgressSink>,
    /// Signature policy (containers-policy.json), checked on the resolved manifest
    /// digest before any layer is fetched or reused; `None` = no signature check.
    pub signature_check: Option<Arc<crate::signatures::SignatureCheck>>,
}

/// Why a pull failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PullError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Signature(#[from] crate::signatures::SignatureError),
    #[error(transparent)]
    Source(#[from] oci::OciError),
    #[error("manifest digest mismatch: {what} should be {expected} but the bytes hash to {actual}")]
    ManifestDigest { what: &'static str, expected: Digest, actual: Digest },
    #[error("bad manifest: an index nested in an index is not supported")]
    NestedIndex,
    #[error("bad image config")]
    Config(#[from] oci::ConfigError),
    #[error("layer {index} ({digest}): unsupported layer media type")]
    MediaType {
        index: usize,
        digest: Digest,
        #[source]
        source: ocicrypt::MediaTypeError,
    },
    #[error("layer {index} ({digest})")]
    Keys {
        index: usize,
        digest: Digest,
        #[source]
        source: ocicrypt::OcicryptError,
    },
    #[error("layer {index} ({digest})")]
    Layer {
        index: usize,
        digest: Digest,
        #[source]
        source: DecodeError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Assemble(#[from] assemble::AssembleError),
    #[error(transparent)]
    Overlay(#[from] OverlayError),
    #[error("bundle {path}")]
    Bundle {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("bundle {path}: rootfs already exists; use a fresh bundle directory")]
    BundleInUse { path: PathBuf },
    #[error("a blocking task of the pull failed")]
    Join(#[from] tokio::task::JoinError),
    #[error("cancelled after another layer failed")]
    Cancelled,
}

/// One layer in the summary.
#[derive(Debug, Clone, Serialize)]
pub struct LayerSummary {
    pub digest: Digest,
    pub diff_id: Digest,
    pub media_type: String,
    pub size: u64,
    pub encrypted: bool,
    /// Served from the store without fetching.
    pub cached: bool,
}

/// Wall time per phase, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Timings {
    pub resolve_ms: u128,
    pub keys_ms: u128,
    pub layers_ms: u128,
    pub assemble_ms: u128,
    pub total_ms: u128,
}

/// What a successful pull did (`--json`).
#[derive(Debug, Clone, Serialize)]
pub struct PullSummary {
    pub image: String,
    /// Digest of the top-level manifest or index the reference resolved to.
    pub manifest_digest: Digest,
    /// Digest of the platform manifest (equal to `manifest_digest` without an index).
    pub platform_manifest_digest: Digest,
    pub config_digest: Digest,
    pub layers: Vec<LayerSummary>,
    pub rootfs: PathBuf,
    pub timings: Timings,
}

/// Stage 1's result: the image the reference resolved to, every byte of its
/// manifests and config verified against the digests that name them.
pub struct ResolvedImage {
    /// The reference it was resolved from.
    pub image: ImageRef,
    /// Where its blobs come from.
    pub source: ImageSource,
    /// Digest of the top-level manifest or index.
    pub manifest_digest: Digest,
    /// Digest of the platform manifest (equal to `manifest_digest` without an index).
    pub platform_manifest_digest: Digest,
    /// The platform manifest.
    pub manifest: ImageManifest,
    /// The image config, parsed.
    pub config: ImageConfig,
    /// Milliseconds spent resolving.
    pub resolve_ms: u128,
}

/// One layer as the pull will treat it.
#[derive(Debug, Clone)]
pub struct LayerPlan {
    /// Position in the manifest (and in the rootfs order).
    pub index: usize,
    /// Blob digest.
    pub digest: Digest,
    /// Blob size from the descriptor (reads are capped at it).
    pub size: u64,
    /// The descriptor's media type, parsed.
    pub media_type: LayerMediaType,
    /// Descriptor annotations (wrapped keys for encrypted layers).
    pub annotations: HashMap<String, String>,
    /// The diff_id the config gives for this layer.
    pub diff_id: Digest,
}

impl LayerPlan {
    fn encrypted(&self) -> bool {
        self.media_type.encrypted
    }
}

/// Stage 2's result: every layer checked against the policy and typed.
#[derive(Debug, Clone)]
pub struct PullPlan {
    /// The layers in manifest order.
    pub layers: Vec<LayerPlan>,
}

/// One layer's outcome: its tree in the store and its summary.
type LayerResult = Result<(PathBuf, LayerSummary), PullError>;

/// Restricts an unwrapper to the schemes the policy allows.
struct PolicyFiltered {
    inner: Arc<dyn KeyUnwrapper>,
    policy: PullPolicy,
}

impl KeyUnwrapper for PolicyFiltered {
    fn name(&self) -> String {
        self.inner.name()
    }
    fn handles(&self, scheme: &str) -> bool {
        self.policy.scheme_allowed(scheme) && self.inner.handles(scheme)
    }
    fn unwrap<'a>(
        &'a self,
        scheme: &'a str,
        wrapped: &'a [u8],
    ) -> ocicrypt::BoxFuture<'a, Result<zeroize::Zeroizing<Vec<u8>>, ocicrypt::WrapError>> {
        self.inner.unwrap(scheme, wrapped)
    }
}

/// Checks raw manifest bytes against the digest they were fetched by; done
/// here as well as in `oci`, because the whole chain of trust starts here.
fn check_manifest_bytes(
    raw: &oci::RawManifest,
    expected: &Digest,
    what: &'static str,
) -> Result<(), PullError> {
    let actual = Digest::of(expected.algorithm(), &raw.bytes);
    if actual != *expected {
        return Err(PullError::ManifestDigest { what, expected: expected.clone(), actual });
    }
    Ok(())
}

/// Pulls `opts.image` into `opts.bundle`: [`resolve`], [`plan`], [`execute`].
pub async fn pull(opts: &PullOptions) -> Result<PullSummary, PullError> {
    opts.policy.check_image(&opts.image)?;
    // The bundle is checked before anything is fetched.
    prepare_bundle(opts)?;
    let resolved = resolve_checked(opts).await?;
    let plan = plan(opts, &resolved)?;
    execute_prepared(opts, &resolved, &plan).await
}

/// Refuses a bundle that already has a rootfs (or an overlay store link that
/// cannot work here) and creates the bundle directory.
fn prepare_bundle(opts: &PullOptions) -> Result<(), PullError> {
    let rootfs = opts.bundle.join("rootfs");
    if rootfs.symlink_metadata().is_ok() {
        return Err(PullError::BundleInUse { path: rootfs });
    }
    if opts.store.is_some() && opts.store_link == LinkMode::Overlay {
        overlay::check_available()?;
    }
    std::fs::create_dir_all(&opts.bundle)
        .map_err(|source| PullError::Bundle { path: opts.bundle.clone(), source })
}

/// Stage 1: checks the reference against the policy, then fetches and verifies
/// the manifest (the platform's, from an index) and the config.
pub async fn resolve(opts: &PullOptions) -> Result<ResolvedImage, PullError> {
    opts.policy.check_image(&opts.image)?;
    resolve_checked(opts).await
}

/// [`resolve`] once the reference has passed the policy ([`pull`] checks it
/// before the bundle, so it is checked once per pull).
async fn resolve_checked(opts: &PullOptions) -> Result<ResolvedImage, PullError> {
    let t0 = Instant::now();
    let image_ref = &opts.image;
    opts.progress.event(&Event { layer: None, digest: None, phase: "resolve", bytes: 0, total: 0 });
    let source = ImageSource::open(image_ref, &opts.source).await?;
    let top = source.manifest().await?;
    if let Some(pinned) = image_ref.digest() {
        check_manifest_bytes(&top, pinned, "the pinned manifest")?;
    }
    check_manifest_bytes(&top, &top.digest, "the manifest")?;
    // Signatures: on the digest just verified, before the config, any layer or
    // the store is touched, on every pull (cached or not).
    if let Some(check) = &opts.signature_check {
        check.check(image_ref, &top.digest, &opts.source).await?;
    }
    let (platform_digest, manifest) = match top.parse()? {
        Manifest::Image(m) => (top.digest.clone(), m),
        Manifest::Index(idx) => {
            let wanted = opts.platform.clone().unwrap_or_else(PlatformSpec::current);
            let desc = oci::select_platform(&idx, &wanted).map_err(oci::OciError::from)?;
            let child = source.manifest_by_digest(&desc.digest).await?;
            check_manifest_bytes(&child, &desc.digest, "the platform manifest")?;
            match child.parse()? {
                Manifest::Image(m) => (child.digest, m),
                Manifest::Index(_) => return Err(PullError::NestedIndex),
            }
        }
    };
    let config_bytes = source.blob_bytes(&manifest.config.digest, MAX_CONFIG_SIZE).await?;
    let config = ImageConfig::from_blob(config_bytes, &manifest.config.digest)?;
    config.check_layer_count(manifest.layers.len())?;
    Ok(ResolvedImage {
        image: image_ref.clone(),
        source,
        manifest_digest: top.digest,
        platform_manifest_digest: platform_digest,
        manifest,
        config,
        resolve_ms: t0.elapsed().as_millis(),
    })
}

/// Stage 2: checks the layers against the policy and types each one (media
/// type, diff_id); nothing is fetched.
pub fn plan(opts: &PullOptions, resolved: &ResolvedImage) -> Result<PullPlan, PullError> {
    let manifest = &resolved.manifest;
    let diff_ids = resolved.config.diff_ids();
    let empty = Default::default();
    let facts: Vec<LayerFacts<'_>> = manifest
        .layers
        .iter()
        .map(|l| LayerFacts {
            digest: &l.digest,
            media_type: &l.media_type,
            annotations: l.annotations.as_ref().unwrap_or(&empty),
        })
        .collect();
    opts.policy.check_layers(&facts)?;
    let mut layers = Vec::new();
    for (index, (l, diff_id)) in manifest.layers.iter().zip(diff_ids).enumerate() {
        store::diff_id_hex(diff_id)?;
        let media_type_err = |source| PullError::MediaType { index, digest: l.digest.clone(), source };
        let media_type = LayerMediaType::parse(&l.media_type).map_err(media_type_err)?;
        if !media_type.is_tar() {
            return Err(media_type_err(ocicrypt::MediaTypeError::NotATar(l.media_type.clone())));
        }
        layers.push(LayerPlan {
            index,
            digest: l.digest.clone(),
            size: l.size,
            media_type,
            annotations: l.annotations.clone().unwrap_or_default().into_iter().collect(),
            diff_id: diff_id.clone(),
        });
    }
    Ok(PullPlan { layers })
}

/// Stage 3: unwraps the keys, fetches, verifies and unpacks every layer and
/// publishes `BUNDLE/rootfs` (and `image.json`).
pub async fn execute(
    opts: &PullOptions,
    resolved: &ResolvedImage,
    plan: &PullPlan,
) -> Result<PullSummary, PullError> {
    prepare_bundle(opts)?;
    execute_prepared(opts, resolved, plan).await
}

/// [`execute`] once the bundle has been prepared ([`pull`] prepares it before
/// anything is fetched, so it is checked once per pull).
async fn execute_prepared(
    opts: &PullOptions,
    resolved: &ResolvedImage,
    plan: &PullPlan,
) -> Result<PullSummary, PullError> {
    let t0 = Instant::now();
    let mut timings = Timings { resolve_ms: resolved.resolve_ms, ..Default::default() };
    // The store: persistent, or private to this pull.
    let (store, ephemeral) = match &opts.store {
        Some(p) => (Store::open(p)?, false),
        None => {
            (Store::open(&opts.bundle.join(format!(".cloak-pull-store-{}", store::random_suffix())))?, true)
        }
    };
    let ctx = PullCtx {
        opts,
        source: &resolved.source,
        store: &store,
        // `None`: the store is private and thrown away, so its trees are moved into the rootfs.
        link: if ephemeral { None } else { Some(opts.store_link) },
        config_bytes: resolved.config.bytes(),
        unwrappers: opts
            .unwrappers
            .iter()
            .map(|u| {
                Arc::new(PolicyFiltered { inner: u.clone(), policy: opts.policy.clone() })
                    as Arc<dyn KeyUnwrapper>
            })
            .collect(),
        cancel: AtomicBool::new(false),
    };
    let result = pull_layers_and_assemble(&ctx, &plan.layers, &mut timings).await;
    if ephemeral {
        let _ = store::remove_tree(store.root());
    }
    let layers = result?;
    timings.total_ms = timings.resolve_ms + t0.elapsed().as_millis();
    opts.progress.event(&Event { layer: None, digest: None, phase: "done", bytes: 0, total: 0 });
    Ok(PullSummary {
        image: resolved.image.to_string(),
        manifest_digest: resolved.manifest_digest.clone(),
        platform_manifest_digest: resolved.platform_manifest_digest.clone(),
        config_digest: resolved.manifest.config.digest.clone(),
        layers,
        rootfs: opts.bundle.join("rootfs"),
        timings,
    })
}

/// What the layer tasks and the assembly of one execution share.
struct PullCtx<'a> {
    opts: &'a PullOptions,
    /// Where the blobs come from.
    source: &'a ImageSource,
    store: &'a Store,
    /// How the rootfs is made from the store; `None`: by moving the trees of
    /// a private store.
    link: Option<LinkMode>,
    /// Written to `BUNDLE/image.json` with the rootfs.
    config_bytes: &'a [u8],
    /// `opts.unwrappers`, restricted to the schemes the policy allows; one
    /// set (one KBS session) serves all layers.
    unwrappers: Vec<Arc<dyn KeyUnwrapper>>,
    /// Set when a layer fails: the others stop at their next chunk.
    cancel: AtomicBool,
}

/// A layer's unwrapped private and public options.
type LayerKey = (PrivateOptions, PublicOptions);

async fn pull_layers_and_assemble(
    ctx: &PullCtx<'_>,
    plans: &[LayerPlan],
    timings: &mut Timings,
) -> Result<Vec<LayerSummary>, PullError> {
    let t = Instant::now();
    let keys = unwrap_missing_keys(ctx, plans).await?;
    timings.keys_ms = t.elapsed().as_millis();

    let t = Instant::now();
    let fetched = fetch_layers(ctx, plans, keys).await;
    timings.layers_ms = t.elapsed().as_millis();
    let (trees, summaries) = fetched?;

    let t = Instant::now();
    if ctx.link == Some(LinkMode::Overlay) {
        mount_overlay(ctx, plans, trees).await?;
    } else {
        assemble_rootfs(ctx, trees).await?;
    }
    timings.assemble_ms = t.elapsed().as_millis();
    Ok(summaries)
}

/// Keys first, for every encrypted layer the store lacks: a KBS refusal then
/// costs no download.
async fn unwrap_missing_keys(
    ctx: &PullCtx<'_>,
    plans: &[LayerPlan],
) -> Result<HashMap<usize, LayerKey>, PullError> {
    let mut keys = HashMap::new();
    for p in plans.iter().filter(|p| p.encrypted()) {
        if ctx.store.lookup(&p.diff_id)?.is_some() {
            continue;
        }
        layer_event(ctx, p, "keys", 0);
        let k = unwrap_layer_key(&ctx.unwrappers, p).await?;
        keys.insert(p.index, k);
    }
    Ok(keys)
}

/// Every layer's tree in the store (fetched or cached) and its summary, in
/// layer order; the first real error, not the cancellations it caused.
async fn fetch_layers(
    ctx: &PullCtx<'_>,
    plans: &[LayerPlan],
    mut keys: HashMap<usize, LayerKey>,
) -> Result<(Vec<PathBuf>, Vec<LayerSummary>), PullError> {
    // Biggest layers start first, so a small one (not a big one) is what runs
    // alone at the end when there are more layers than slots; results are put
    // back in layer order for the assembly.
    let mut order: Vec<&LayerPlan> = plans.iter().collect();
    order.sort_by(|a, b| b.size.cmp(&a.size).then(a.index.cmp(&b.index)));
    let mut results: Vec<(usize, LayerResult)> = stream::iter(order)
        .map(|p| {
            let key = keys.remove(&p.index);
            async move {
                let r = fetch_layer(ctx, p, key).await;
                if r.is_err() {
                    ctx.cancel.store(true, Ordering::SeqCst);
                }
                (p.index, r)
            }
        })
        .buffer_unordered(ctx.opts.max_concurrent_layers.max(1))
        .collect()
        .await;
    results.sort_by_key(|(i, _)| *i);
    let mut trees = Vec::new();
    let mut summaries = Vec::new();
    let mut first_err = None;
    for (_, r) in results {
        match r {
            Ok((tree, s)) => {
                trees.push(tree);
                summaries.push(s);
            }
            Err(PullError::Cancelled) => {}
            Err(e) => {
                if first_err.is_none() {
                    first_err = Some(e);
                }
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok((trees, summaries)),
    }
}

/// Assembles into a private staging dir, then one rename publishes the rootfs.
async fn assemble_rootfs(ctx: &PullCtx<'_>, trees: Vec<PathBuf>) -> Result<(), PullError> {
    let opts = ctx.opts;
    opts.progress.event(&Event { layer: None, digest: None, phase: "assemble", bytes: 0, total: 0 });
    let staging = opts.bundle.join(format!(".rootfs-{}", store::random_suffix()));
    let mut guard = RemoveOnDrop(Some(staging.clone()));
    std::fs::create_dir(&staging).map_err(|source| PullError::Bundle { path: staging.clone(), source })?;
    let st2 = staging.clone();
    let link = ctx.link;
    tokio::task::spawn_blocking(move || match link {
        Some(mode) => assemble::assemble(&trees, &st2, mode),
        None => assemble::assemble_by_moving(&trees, &st2),
    })
    .await??;
    write_atomic(&opts.bundle.join("image.json"), ctx.config_bytes)?;
    let rootfs = opts.bundle.join("rootfs");
    std::fs::rename(&staging, &rootfs).map_err(|source| PullError::Bundle { path: rootfs, source })?;
    guard.0 = None;
    Ok(())
}

/// `--store-link overlay`: an overlay view per store entry (built once, under
/// the entry's lock), then one mount at `BUNDLE/rootfs`.
async fn mount_overlay(ctx: &PullCtx<'_>, plans: &[LayerPlan], trees: Vec<PathBuf>) -> Result<(), PullError> {
    let opts = ctx.opts;
    opts.progress.event(&Event { layer: None, digest: None, phase: "assemble", bytes: 0, total: 0 });
    let diff_ids: Vec<oci::Digest> = plans.iter().map(|p| p.diff_id.clone()).collect();
    let st = ctx.store.clone();
    let views = tokio::task::spawn_blocking(move || -> Result<Vec<PathBuf>, PullError> {
        let mut views = Vec::new();
        for (tree, diff_id) in trees.iter().zip(&diff_ids) {
            let _lock = st.lock(diff_id)?;
            views.push(overlay::ensure_view(tree)?);
        }
        Ok(views)
    })
    .await??;
    write_atomic(&opts.bundle.join("image.json"), ctx.config_bytes)?;
    let bundle = opts.bundle.clone();
    tokio::task::spawn_blocking(move || overlay::mount(&views, &bundle)).await??;
    Ok(())
}

/// A progress event of layer `p` with `bytes` done of its blob size.
fn layer_event(ctx: &PullCtx<'_>, p: &LayerPlan, phase: &'static str, bytes: u64) {
    let digest = p.digest.to_string();
    ctx.opts.progress.event(&Event {
        layer: Some(p.index),
        digest: Some(&digest),
        phase,
        bytes,
        total: p.size,
    });
}

async fn unwrap_layer_key(
    unwrappers: &[Arc<dyn KeyUnwrapper>],
    p: &LayerPlan,
) -> Result<(PrivateOptions, PublicOptions), PullError> {
    ocicrypt::unwrap_keys(unwrappers, &p.annotations).await.map_err(|source| PullError::Keys {
        index: p.index,
        digest: p.digest.clone(),
        source,
    })
}

/// One layer: from the store if it is there (waiting for a concurrent pull of
/// it), else fetched, verified, unpacked and committed to the store.
async fn fetch_layer(ctx: &PullCtx<'_>, p: &LayerPlan, key: Option<LayerKey>) -> LayerResult {
    let summary = |cached| LayerSummary {
        digest: p.digest.clone(),
        diff_id: p.diff_id.clone(),
        media_type: p.media_type.to_string(),
        size: p.size,
        encrypted: p.encrypted(),
        cached,
    };
    if ctx.cancel.load(Ordering::SeqCst) {
        return Err(PullError::Cancelled);
    }
    // The lock makes a concurrent pull of the same layer wait, then hit the store.
    let st = ctx.store.clone();
    let diff_id = p.diff_id.clone();
    let _lock = tokio::task::spawn_blocking(move || st.lock(&diff_id)).await??;
    if let Some(tree) = ctx.store.lookup(&p.diff_id)? {
        layer_event(ctx, p, "cached", p.size);
        return Ok((tree, summary(true)));
    }
    let key = match (p.encrypted(), key) {
        (false, _) => None,
        (true, Some(k)) => Some(k),
        (true, None) => Some(unwrap_layer_key(&ctx.unwrappers, p).await?),
    };
    let (reader, decrypt) = open_layer(ctx, p, key).await?;
    let tree = decode_into_store(ctx, p, reader, decrypt).await?;
    layer_event(ctx, p, "verified", p.size);
    Ok((tree, summary(false)))
}

fn layer_err(p: &LayerPlan) -> impl FnOnce(DecodeError) -> PullError + '_ {
    |source| PullError::Layer { index: p.index, digest: p.digest.clone(), source }
}

/// The layer's blob stream and, for an encrypted layer, its decryptor. The key
/// is dropped (zeroized) once the decryptor holds what it needs.
async fn open_layer(
    ctx: &PullCtx<'_>,
    p: &LayerPlan,
    key: Option<LayerKey>,
) -> Result<(Box<dyn AsyncRead + Unpin + Send>, Option<ocicrypt::LayerDecryptor>), PullError> {
    let mut blob = ctx.source.blob(&p.digest, p.size).await?;
    // An encrypted layer is decrypted on the decode thread, where its blob
    // digest and HMAC are hashed in one pass with the diff_id; the blob reader
    // then only caps the size. A plain layer's reader checks the digest itself.
    let decrypt = match &key {
        None => None,
        Some((priv_opts, pub_opts)) => {
            // The blob reader's own check is handed to the decryptor, which
            // holds it from the first byte.
            let dec = match blob.take_sha256_check() {
                Some(sha) => ocicrypt::LayerDecryptor::with_ciphertext_digest(priv_opts, pub_opts, sha),
                None => ocicrypt::LayerDecryptor::new(priv_opts, pub_opts),
            };
            Some(dec.map_err(|e| {
                layer_err(p)(DecodeError::Source(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))
            })?)
        }
    };
    drop(key);
    Ok((Box::new(blob), decrypt))
}

/// Decodes the layer into a staging entry of the store and commits it, which
/// happens only when every digest, the HMAC and the diff_id have matched.
async fn decode_into_store(
    ctx: &PullCtx<'_>,
    p: &LayerPlan,
    reader: Box<dyn AsyncRead + Unpin + Send>,
    decrypt: Option<ocicrypt::LayerDecryptor>,
) -> Result<PathBuf, PullError> {
    let staging = ctx.store.begin(&p.diff_id)?;
    let mut xopts = ctx.opts.extract.clone();
    xopts.whiteouts = WhiteoutMode::Keep;
    let progress = ctx.opts.progress.clone();
    let (idx, total, d2) = (p.index, p.size, p.digest.to_string());
    let on_bytes = move |n: u64| {
        progress.event(&Event { layer: Some(idx), digest: Some(&d2), phase: "fetch", bytes: n, total })
    };
    let decoded = decode::decode_layer(
        reader,
        decrypt,
        p.media_type.compression,
        &p.diff_id,
        &staging.tree(),
        &xopts,
        &on_bytes,
        &ctx.cancel,
    )
    .await
    .map_err(|e| match e {
        DecodeError::Cancelled => PullError::Cancelled,
        other => layer_err(p)(other),
    })?;
    for w in &decoded.stats.warnings {
        tracing::warn!(layer = p.index, "{w}");
    }
    let completion = Completion {
        diff_id: p.diff_id.clone(),
        blob_digest: p.digest.clone(),
        entries: decoded.stats.entries,
        bytes: decoded.stats.bytes,
    };
    Ok(ctx.store.commit(staging, &completion)?)
}

struct RemoveOnDrop(Option<PathBuf>);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = store::remove_tree(&p);
        }
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), PullError> {
    let e = |source| PullError::Bundle { path: path.to_path_buf(), source };
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return Err(e(std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file in a directory")));
    };
    // The caller named the bundle (it may be a link it made); inside it, nothing
    // planted can redirect the write.
    let dir = std::fs::canonicalize(dir).map_err(e)?;
    crate::fsutil::write_file_replacing(&dir, name, bytes, 0o644).map_err(e)
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::extract::ExtractError;

    fn digest() -> Digest {
        format!("sha256:{}", "ab".repeat(32)).parse().unwrap()
    }

    /// The first layer's annotations of the golden `three-layers` image (JWE, RSA).
    pub(crate) fn golden_layer_annotations() -> HashMap<String, String> {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/golden/three-layers/enc-oci");
        let blob = |d: &str| root.join("blobs/sha256").join(d.trim_start_matches("sha256:"));
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(root.join("index.json")).unwrap()).unwrap();
        let manifest: serde_json::Value = serde_json::from_slice(
            &std::fs::read(blob(index["manifests"][0]["digest"].as_str().unwrap())).unwrap(),
        )
        .unwrap();
        serde_json::from_value(manifest["layers"][0]["annotations"].clone()).unwrap()
    }

    fn assert_said_once(e: &PullError) {
        let e: &(dyn std::error::Error + 'static) = e;
        assert_eq!(report::repeated_source(e), None, "{}", report::line(e));
        assert_eq!(report::repeated_clause(&report::line(e)), None, "{}", report::line(e));
    }

    /// Issue 27: `layer 0 (…): the layer key could not be unwrapped: could not unwrap the
    /// layer key: [jwe item 0 via -] no unwrapper …` and then the same again, because
    /// each Display embedded its source and the printer walked the chain as well.
    #[test]
    fn pull_errors_do_not_repeat_their_source() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let keys = rt.block_on(ocicrypt::unwrap_keys(&[], &golden_layer_annotations())).unwrap_err();
        let e = PullError::Keys { index: 0, digest: digest(), source: keys };
        assert_said_once(&e);
        let text = report::line(&e);
        assert!(
            text.starts_with(&format!("layer 0 ({}): could not unwrap the layer key", digest())),
            "{text}"
        );

        let e = PullError::Layer {
            index: 2,
            digest: digest(),
            source: DecodeError::Extract(ExtractError::Io {
                path: "etc/passwd".into(),
                op: "create",
                source: std::io::Error::from_raw_os_error(libc::ENOSPC),
            }),
        };
        assert_said_once(&e);
        assert_eq!(
            report::line(&e),
            format!(
                "layer 2 ({}): extracting the layer: tar entry \"etc/passwd\": create: {}",
                digest(),
                std::io::Error::from_raw_os_error(libc::ENOSPC)
            )
        );

        let e = PullError::Layer {
            index: 1,
            digest: digest(),
            source: DecodeError::Source(std::io::Error::other("blob digest mismatch")),
        };
        assert_said_once(&e);
        let e =
            PullError::Bundle { path: "/b".into(), source: std::io::Error::other("read-only file system") };
        assert_said_once(&e);
        assert_eq!(report::line(&e), "bundle /b: read-only file system");
        let e = PullError::from(StoreError::Io {
            path: "/s".into(),
            op: "rename",
            source: std::io::Error::other("disk quota exceeded"),
        });
        assert_said_once(&e);
        let media = LayerMediaType::parse("application/x-nonsense").unwrap_err();
        let e = PullError::MediaType { index: 0, digest: digest(), source: media };
        assert_said_once(&e);
    }
}
