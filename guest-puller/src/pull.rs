//! The pull orchestrator: reference → policy → manifest (pinned digest checked)
//! → config → keys → layers in parallel (fetch, verify, decrypt, decode,
//! extract, commit to the store) → rootfs assembled in order → one rename into
//! `BUNDLE/rootfs`. On any failure nothing is left at `BUNDLE/rootfs` and no
//! unverified layer is in the store.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use futures::stream::{self, StreamExt};
use oci::{Digest, ImageRef, ImageSource, Manifest, PlatformSpec, SourceOptions};
use ocicrypt::{KeyUnwrapper, PrivateOptions, PublicOptions};
use serde::Serialize;
use tokio::io::AsyncRead;

use crate::assemble::{self, LinkMode};
use crate::decode::{self, Compression, DecodeError};
use crate::extract::{ExtractOptions, WhiteoutMode};
use crate::overlay::{self, OverlayError};
use crate::policy::{LayerFacts, Policy, PolicyError};
use crate::progress::{Event, ProgressSink};
use crate::store::{self, Completion, Store, StoreError};

/// Largest image config accepted.
const MAX_CONFIG_SIZE: u64 = 4 << 20;

/// Everything a pull needs.
pub struct PullOptions {
    /// `docker://…` or `oci:DIR[:TAG|@DIGEST]`.
    pub image: String,
    /// The bundle directory; `rootfs/` and `image.json` are written into it.
    pub bundle: PathBuf,
    /// Key unwrappers (local JWE keys, keyproviders, KBS), tried per layer.
    pub unwrappers: Vec<Arc<dyn KeyUnwrapper>>,
    /// Pull policy.
    pub policy: Policy,
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
pub enum PullError {
    #[error("invalid image reference {image:?}: {reason}")]
    Reference { image: String, reason: String },
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error(transparent)]
    Signature(#[from] crate::signatures::SignatureError),
    #[error(transparent)]
    Source(#[from] oci::OciError),
    #[error("manifest digest mismatch: {what} should be {expected} but the bytes hash to {actual}")]
    ManifestDigest { what: String, expected: String, actual: String },
    #[error("bad manifest: {0}")]
    Manifest(String),
    #[error("bad image config: {0}")]
    Config(String),
    #[error("layer {index} ({digest}): the layer key could not be unwrapped: {reason}")]
    Keys { index: usize, digest: String, reason: String },
    #[error("layer {index} ({digest}): {source}")]
    Layer {
        index: usize,
        digest: String,
        #[source]
        source: DecodeError,
    },
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Assemble(#[from] assemble::AssembleError),
    #[error(transparent)]
    Overlay(#[from] OverlayError),
    #[error("bundle {path}: {reason}")]
    Bundle { path: String, reason: String },
    #[error("cancelled after another layer failed")]
    Cancelled,
}

/// One layer in the summary.
#[derive(Debug, Clone, Serialize)]
pub struct LayerSummary {
    pub digest: String,
    pub diff_id: String,
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
    pub manifest_digest: String,
    /// Digest of the platform manifest (equal to `manifest_digest` without an index).
    pub platform_manifest_digest: String,
    pub config_digest: String,
    pub layers: Vec<LayerSummary>,
    pub rootfs: PathBuf,
    pub timings: Timings,
}

/// One layer's outcome: its tree in the store and its summary.
type LayerResult = Result<(PathBuf, LayerSummary), PullError>;

struct LayerPlan {
    index: usize,
    digest: Digest,
    size: u64,
    media_type: String,
    annotations: HashMap<String, String>,
    diff_id: String,
    compression: Compression,
    encrypted: bool,
}

/// Restricts an unwrapper to the schemes the policy allows.
struct PolicyFiltered {
    inner: Arc<dyn KeyUnwrapper>,
    policy: Policy,
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

fn sha256_hex(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(openssl::sha::sha256(bytes)))
}

/// Checks raw manifest bytes against the digest they were fetched by; done
/// here as well as in `oci`, because the whole chain of trust starts here.
fn check_manifest_bytes(raw: &oci::RawManifest, expected: &Digest, what: &str) -> Result<(), PullError> {
    if expected.algorithm() == oci::Algorithm::Sha256 {
        let actual = sha256_hex(&raw.bytes);
        if actual != expected.to_string() {
            return Err(PullError::ManifestDigest {
                what: what.to_string(),
                expected: expected.to_string(),
                actual,
            });
        }
    } else if !expected.matches(&raw.bytes) {
        return Err(PullError::ManifestDigest {
            what: what.to_string(),
            expected: expected.to_string(),
            actual: "(other)".into(),
        });
    }
    Ok(())
}

/// Pulls `opts.image` into `opts.bundle`.
pub async fn pull(opts: &PullOptions) -> Result<PullSummary, PullError> {
    let t0 = Instant::now();
    let mut timings = Timings::default();
    let image_ref = ImageRef::from_str(&opts.image)
        .map_err(|e| PullError::Reference { image: opts.image.clone(), reason: e.to_string() })?;
    let registry = match &image_ref {
        ImageRef::Registry(r) => Some(r.registry.clone()),
        ImageRef::Layout(_) => None,
    };
    opts.policy.check_reference(&opts.image, registry.as_deref(), image_ref.digest().is_some())?;

    let rootfs = opts.bundle.join("rootfs");
    if rootfs.symlink_metadata().is_ok() {
        return Err(PullError::Bundle {
            path: rootfs.display().to_string(),
            reason: "already exists; use a fresh bundle directory".into(),
        });
    }
    if opts.store.is_some() && opts.store_link == LinkMode::Overlay {
        // Refused before anything is fetched.
        overlay::check_available()?;
    }
    std::fs::create_dir_all(&opts.bundle)
        .map_err(|e| PullError::Bundle { path: opts.bundle.display().to_string(), reason: e.to_string() })?;

    // Resolve: manifest (or index → platform manifest) and config.
    opts.progress.event(&Event { layer: None, digest: None, phase: "resolve", bytes: 0, total: 0 });
    let source = ImageSource::open(&image_ref, &opts.source).await?;
    let top = source.manifest().await?;
    if let Some(pinned) = image_ref.digest() {
        check_manifest_bytes(&top, pinned, "the pinned manifest")?;
    }
    check_manifest_bytes(&top, &top.digest, "the manifest")?;
    // Signatures: on the digest just verified, before the config, any layer or
    // the store is touched, on every pull (cached or not).
    if let Some(check) = &opts.signature_check {
        check.check(&image_ref, &top.digest, &opts.source).await?;
    }
    let manifest_digest = top.digest.to_string();
    let (platform_raw, manifest) = match top.parse()? {
        Manifest::Image(m) => (top.clone(), m),
        Manifest::Index(idx) => {
            let wanted = opts.platform.clone().unwrap_or_else(PlatformSpec::current);
            let desc = oci::select_platform(&idx, &wanted).map_err(oci::OciError::from)?;
            let child = source.manifest_by_digest(&desc.digest).await?;
            check_manifest_bytes(&child, &desc.digest, "the platform manifest")?;
            match child.parse()? {
                Manifest::Image(m) => (child, m),
                Manifest::Index(_) => {
                    return Err(PullError::Manifest("an index nested in an index is not supported".into()))
                }
            }
        }
    };
    let config_bytes = source.blob_bytes(&manifest.config.digest, MAX_CONFIG_SIZE).await?;
    if !manifest.config.digest.matches(&config_bytes) {
        return Err(PullError::Config(format!("config does not hash to {}", manifest.config.digest)));
    }
    let config: serde_json::Value =
        serde_json::from_slice(&config_bytes).map_err(|e| PullError::Config(e.to_string()))?;
    let diff_ids: Vec<String> = config
        .get("rootfs")
        .and_then(|r| r.get("diff_ids"))
        .and_then(|d| d.as_array())
        .ok_or_else(|| PullError::Config("rootfs.diff_ids is missing".into()))?
        .iter()
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| PullError::Config("a diff_id is not a string".into()))
        })
        .collect::<Result<_, _>>()?;
    if diff_ids.len() != manifest.layers.len() {
        return Err(PullError::Config(format!(
            "{} diff_ids for {} layers",
            diff_ids.len(),
            manifest.layers.len()
        )));
    }
    let empty = Default::default();
    let facts: Vec<LayerFacts<'_>> = manifest
        .layers
        .iter()
        .map(|l| LayerFacts {
            digest: "",
            media_type: &l.media_type,
            annotations: l.annotations.as_ref().unwrap_or(&empty),
        })
        .collect();
    let digests: Vec<String> = manifest.layers.iter().map(|l| l.digest.to_string()).collect();
    let facts: Vec<LayerFacts<'_>> =
        facts.into_iter().zip(&digests).map(|(f, d)| LayerFacts { digest: d, ..f }).collect();
    opts.policy.check_layers(&facts)?;
    let mut plans = Vec::new();
    for (index, (l, diff_id)) in manifest.layers.iter().zip(&diff_ids).enumerate() {
        store::diff_id_hex(diff_id)?;
        let compression = Compression::from_media_type(&l.media_type).map_err(|e| PullError::Layer {
            index,
            digest: l.digest.to_string(),
            source: e,
        })?;
        plans.push(LayerPlan {
            index,
            digest: l.digest.clone(),
            size: l.size,
            media_type: l.media_type.clone(),
            annotations: l.annotations.clone().unwrap_or_default().into_iter().collect(),
            diff_id: diff_id.clone(),
            compression,
            encrypted: ocicrypt::is_encrypted(&l.media_type),
        });
    }
    timings.resolve_ms = t0.elapsed().as_millis();

    // The store: persistent, or private to this pull.
    let (store, ephemeral) = match &opts.store {
        Some(p) => (Store::open(p)?, false),
        None => {
            (Store::open(&opts.bundle.join(format!(".cloak-pull-store-{}", store::random_suffix())))?, true)
        }
    };
    // `None`: the store is private and thrown away, so its trees are moved into the rootfs.
    let link = if ephemeral { None } else { Some(opts.store_link) };
    let result =
        pull_layers_and_assemble(opts, &source, &store, &plans, link, &config_bytes, &mut timings).await;
    if ephemeral {
        let _ = store::remove_tree(store.root());
    }
    let layers = result?;
    timings.total_ms = t0.elapsed().as_millis();
    opts.progress.event(&Event { layer: None, digest: None, phase: "done", bytes: 0, total: 0 });
    Ok(PullSummary {
        image: opts.image.clone(),
        manifest_digest,
        platform_manifest_digest: platform_raw.digest.to_string(),
        config_digest: manifest.config.digest.to_string(),
        layers,
        rootfs,
        timings,
    })
}

async fn pull_layers_and_assemble(
    opts: &PullOptions,
    source: &ImageSource,
    store: &Store,
    plans: &[LayerPlan],
    link: Option<LinkMode>,
    config_bytes: &[u8],
    timings: &mut Timings,
) -> Result<Vec<LayerSummary>, PullError> {
    // Keys first, for every encrypted layer the store lacks: a KBS refusal then
    // costs no download. One unwrapper set (one KBS session) serves all layers.
    let t = Instant::now();
    let unwrappers: Vec<Arc<dyn KeyUnwrapper>> = opts
        .unwrappers
        .iter()
        .map(|u| {
            Arc::new(PolicyFiltered { inner: u.clone(), policy: opts.policy.clone() })
                as Arc<dyn KeyUnwrapper>
        })
        .collect();
    let mut keys: HashMap<usize, (PrivateOptions, PublicOptions)> = HashMap::new();
    for p in plans.iter().filter(|p| p.encrypted) {
        if store.lookup(&p.diff_id)?.is_some() {
            continue;
        }
        opts.progress.event(&Event {
            layer: Some(p.index),
            digest: Some(&p.digest.to_string()),
            phase: "keys",
            bytes: 0,
            total: p.size,
        });
        let k = unwrap_layer_key(&unwrappers, p).await?;
        keys.insert(p.index, k);
    }
    timings.keys_ms = t.elapsed().as_millis();

    let t = Instant::now();
    let cancel = AtomicBool::new(false);
    let max = opts.max_concurrent_layers.max(1);
    // Biggest layers start first, so a small one (not a big one) is what runs
    // alone at the end when there are more layers than slots; results are put
    // back in layer order for the assembly.
    let mut order: Vec<&LayerPlan> = plans.iter().collect();
    order.sort_by(|a, b| b.size.cmp(&a.size).then(a.index.cmp(&b.index)));
    let mut results: Vec<(usize, LayerResult)> = stream::iter(order)
        .map(|p| {
            let key = keys.remove(&p.index);
            let cancel = &cancel;
            let unwrappers = &unwrappers;
            async move {
                let r = fetch_layer(opts, source, store, p, key, unwrappers, cancel).await;
                if r.is_err() {
                    cancel.store(true, Ordering::SeqCst);
                }
                (p.index, r)
            }
        })
        .buffer_unordered(max)
        .collect()
        .await;
    results.sort_by_key(|(i, _)| *i);
    let results = results.into_iter().map(|(_, r)| r);
    timings.layers_ms = t.elapsed().as_millis();
    let mut trees = Vec::new();
    let mut summaries = Vec::new();
    let mut first_err = None;
    for r in results {
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
    if let Some(e) = first_err {
        return Err(e);
    }

    if link == Some(LinkMode::Overlay) {
        return mount_overlay(opts, store, plans, trees, config_bytes, timings, summaries).await;
    }

    // Assemble into a private staging dir, then one rename publishes the rootfs.
    let t = Instant::now();
    opts.progress.event(&Event { layer: None, digest: None, phase: "assemble", bytes: 0, total: 0 });
    let staging = opts.bundle.join(format!(".rootfs-{}", store::random_suffix()));
    let mut guard = RemoveOnDrop(Some(staging.clone()));
    std::fs::create_dir(&staging)
        .map_err(|e| PullError::Bundle { path: staging.display().to_string(), reason: e.to_string() })?;
    let st2 = staging.clone();
    tokio::task::spawn_blocking(move || match link {
        Some(mode) => assemble::assemble(&trees, &st2, mode),
        None => assemble::assemble_by_moving(&trees, &st2),
    })
    .await
    .map_err(|e| PullError::Bundle { path: staging.display().to_string(), reason: e.to_string() })??;
    write_atomic(&opts.bundle.join("image.json"), config_bytes)?;
    std::fs::rename(&staging, opts.bundle.join("rootfs")).map_err(|e| PullError::Bundle {
        path: opts.bundle.join("rootfs").display().to_string(),
        reason: e.to_string(),
    })?;
    guard.0 = None;
    timings.assemble_ms = t.elapsed().as_millis();
    Ok(summaries)
}

/// `--store-link overlay`: an overlay view per store entry (built once, under
/// the entry's lock), then one mount at `BUNDLE/rootfs`.
async fn mount_overlay(
    opts: &PullOptions,
    store: &Store,
    plans: &[LayerPlan],
    trees: Vec<PathBuf>,
    config_bytes: &[u8],
    timings: &mut Timings,
    summaries: Vec<LayerSummary>,
) -> Result<Vec<LayerSummary>, PullError> {
    let t = Instant::now();
    opts.progress.event(&Event { layer: None, digest: None, phase: "assemble", bytes: 0, total: 0 });
    let join = |e: tokio::task::JoinError| PullError::Bundle {
        path: opts.bundle.display().to_string(),
        reason: e.to_string(),
    };
    let diff_ids: Vec<String> = plans.iter().map(|p| p.diff_id.clone()).collect();
    let st = store.clone();
    let views = tokio::task::spawn_blocking(move || -> Result<Vec<PathBuf>, PullError> {
        let mut views = Vec::new();
        for (tree, diff_id) in trees.iter().zip(&diff_ids) {
            let _lock = st.lock(diff_id)?;
            views.push(overlay::ensure_view(tree)?);
        }
        Ok(views)
    })
    .await
    .map_err(join)??;
    write_atomic(&opts.bundle.join("image.json"), config_bytes)?;
    let bundle = opts.bundle.clone();
    tokio::task::spawn_blocking(move || overlay::mount(&views, &bundle)).await.map_err(join)??;
    timings.assemble_ms = t.elapsed().as_millis();
    Ok(summaries)
}

async fn unwrap_layer_key(
    unwrappers: &[Arc<dyn KeyUnwrapper>],
    p: &LayerPlan,
) -> Result<(PrivateOptions, PublicOptions), PullError> {
    ocicrypt::unwrap_keys(unwrappers, &p.annotations).await.map_err(|e| PullError::Keys {
        index: p.index,
        digest: p.digest.to_string(),
        reason: e.to_string(),
    })
}

async fn fetch_layer(
    opts: &PullOptions,
    source: &ImageSource,
    store: &Store,
    p: &LayerPlan,
    key: Option<(PrivateOptions, PublicOptions)>,
    unwrappers: &[Arc<dyn KeyUnwrapper>],
    cancel: &AtomicBool,
) -> Result<(PathBuf, LayerSummary), PullError> {
    let digest_s = p.digest.to_string();
    let summary = |cached| LayerSummary {
        digest: digest_s.clone(),
        diff_id: p.diff_id.clone(),
        media_type: p.media_type.clone(),
        size: p.size,
        encrypted: p.encrypted,
        cached,
    };
    if cancel.load(Ordering::SeqCst) {
        return Err(PullError::Cancelled);
    }
    // The lock makes a concurrent pull of the same layer wait, then hit the store.
    let st = store.clone();
    let diff_id = p.diff_id.clone();
    let _lock = tokio::task::spawn_blocking(move || st.lock(&diff_id)).await.map_err(|e| {
        PullError::Bundle { path: store.root().display().to_string(), reason: e.to_string() }
    })??;
    if let Some(tree) = store.lookup(&p.diff_id)? {
        opts.progress.event(&Event {
            layer: Some(p.index),
            digest: Some(&digest_s),
            phase: "cached",
            bytes: p.size,
            total: p.size,
        });
        return Ok((tree, summary(true)));
    }
    let key = match (p.encrypted, key) {
        (false, _) => None,
        (true, Some(k)) => Some(k),
        (true, None) => Some(unwrap_layer_key(unwrappers, p).await?),
    };
    let layer_err = |source| PullError::Layer { index: p.index, digest: digest_s.clone(), source };
    let mut blob = source.blob(&p.digest, p.size).await?;
    // An encrypted layer is decrypted on the decode thread, where its blob
    // digest and HMAC are hashed in one pass with the diff_id; the blob reader
    // then only caps the size. A plain layer's reader checks the digest itself.
    let decrypt = match &key {
        None => None,
        Some((priv_opts, pub_opts)) => {
            let mut d = ocicrypt::LayerDecryptor::new(priv_opts, pub_opts)
                .map_err(|e| layer_err(DecodeError::Source(std::io::Error::other(e.to_string()))))?;
            if let Some(bytes) = blob.take_sha256_check() {
                d = d.with_ciphertext_digest(bytes);
            }
            Some(d)
        }
    };
    drop(key);
    let reader: Box<dyn AsyncRead + Unpin + Send> = Box::new(blob);
    let staging = store.begin(&p.diff_id)?;
    let mut xopts = opts.extract.clone();
    xopts.whiteouts = WhiteoutMode::Keep;
    let progress = opts.progress.clone();
    let total = p.size;
    let idx = p.index;
    let d2 = digest_s.clone();
    let on_bytes = move |n: u64| {
        progress.event(&Event { layer: Some(idx), digest: Some(&d2), phase: "fetch", bytes: n, total })
    };
    let decoded = decode::decode_layer(
        reader,
        decrypt,
        p.compression,
        &p.diff_id,
        &staging.tree(),
        &xopts,
        &on_bytes,
        cancel,
    )
    .await
    .map_err(|e| match e {
        DecodeError::Cancelled => PullError::Cancelled,
        other => layer_err(other),
    })?;
    for w in &decoded.stats.warnings {
        tracing::warn!(layer = p.index, "{w}");
    }
    let completion = Completion {
        diff_id: p.diff_id.clone(),
        blob_digest: digest_s.clone(),
        entries: decoded.stats.entries,
        bytes: decoded.stats.bytes,
    };
    let tree = store.commit(staging, &completion)?;
    opts.progress.event(&Event {
        layer: Some(p.index),
        digest: Some(&digest_s),
        phase: "verified",
        bytes: p.size,
        total: p.size,
    });
    Ok((tree, summary(false)))
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
    let tmp = path.with_extension(format!("tmp-{}", store::random_suffix()));
    let e = |e: std::io::Error| PullError::Bundle { path: path.display().to_string(), reason: e.to_string() };
    std::fs::write(&tmp, bytes).map_err(e)?;
    std::fs::rename(&tmp, path).map_err(e)
}
