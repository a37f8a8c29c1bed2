//! The daemon's state and the logic behind every ttRPC call, free of ttRPC so
//! it can be tested directly: one KBS client (one attestation) for the
//! daemon's life, shared by pulls, resources, secrets and key unwraps.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kbs_client::{KbsClient, KbsError, KbsErrorKind, ResourceUri};
use keyprovider::protocol::Op;
use keyprovider::server::{KeyProviderCore, ServiceError};
use keyprovider::session::{
    GuestSession, KbsConfig, KeyProviderSource, SessionConfig, SessionError, UnwrapperOrder,
};
use ocicrypt::KeyUnwrapper;
use zeroize::Zeroizing;

use super::bundle::{self, RequestError};
use super::sealed::{self, SealedError, SecretKind, Signing};
use super::spec::{self, SpecError};
use crate::assemble::LinkMode;
use crate::extract::ExtractOptions;
use crate::policy::PullPolicy;
use crate::progress::Quiet;
use crate::pull::{pull, PullError, PullOptions};
use crate::registry_access::{AccessError, RegistryAccess};
use crate::signatures::{KbsResources, SignatureCheck, SignatureError};
use imgsig::verify::RefusalReason;
use imgsig::{Refusal, ResourceFetcher};

/// At most this many resources are cached at once.
const MAX_CACHED: usize = 256;

/// How the hub is set up (flags and `cdh.toml`, merged by the binary).
#[derive(Debug, Clone)]
pub struct HubOptions {
    /// The KBS (URL, extra root certificate, attester, deadline of one exchange);
    /// without one, pulls of plain images still work and everything that needs the
    /// KBS answers a clear error.
    pub kbs: Option<KbsConfig>,
    /// The layer store (verified layers by diff_id).
    pub store: PathBuf,
    /// Bundles must be inside this directory.
    pub bundle_root: PathBuf,
    /// Registries (`host[:port]`) reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Pull policy applied to every image.
    pub policy: PullPolicy,
    /// Extra ocicrypt keyproviders for layer keys (never read from the environment:
    /// kata's `OCICRYPT_KEYPROVIDER_CONFIG` points back at this daemon).
    pub keyprovider_config: Option<PathBuf>,
    /// Registry auth file.
    pub auth_file: Option<PathBuf>,
    /// Layers of one image fetched at once.
    pub max_concurrent_layers: usize,
    /// Connect, no-progress and total deadlines of registry requests.
    pub registry_timeouts: oci::RegistryTimeouts,
    /// Per-layer bounds (decompression ratio, unpacked size, ...).
    pub layer_limits: crate::extract::Limits,
    /// Refuse unsigned (`fakejwsheader`) sealed secrets.
    pub require_signed_secrets: bool,
    /// How long a fetched resource is served from memory (zero: never cached).
    pub resource_cache_ttl: Duration,
    /// Signature policy (containers-policy.json) enforced on every pull: a file
    /// path or a `kbs:///repo/type/tag` resource (as `config::signature_policy_location`
    /// returns it). `None`: image signatures are not checked.
    pub signature_policy: Option<String>,
    /// registries.d directory: lookaside stores of GPG signatures for `signedBy`.
    pub registries_d: Option<PathBuf>,
    /// Private registries: the auth file (a `kbs:///` one fetched through the
    /// daemon's KBS session at each pull), registries.conf, proxy, extra CA roots.
    pub registry_access: RegistryAccess,
}

/// Where the layer store lives by default: outside kata-agent's bundle root, which
/// the agent's CreateSandbox removes recursively (and re-creates empty) after this
/// daemon has started.
pub const DEFAULT_STORE: &str = "/run/cloak-cdh/store";

/// The layer store directory: `--store` as given (a warning when it is inside the
/// bundle root); else `<[image] work_dir>/cloak-store` unless that is inside the
/// bundle root; else [`DEFAULT_STORE`]. Returns a note to log when a choice was
/// overridden or is risky.
pub fn store_location(
    flag: Option<&Path>,
    work_dir: Option<&Path>,
    bundle_root: &Path,
) -> (PathBuf, Option<String>) {
    let agent_clears = |p: &Path| p.starts_with(bundle_root);
    if let Some(dir) = flag {
        let note = agent_clears(dir).then(|| {
            format!(
                "--store {} is inside the bundle root {}, which kata-agent's CreateSandbox removes: \
                 the store will be emptied then and re-created by the next pull",
                dir.display(),
                bundle_root.display()
            )
        });
        return (dir.to_path_buf(), note);
    }
    if let Some(w) = work_dir {
        if agent_clears(w) {
            let note = format!(
                "[image] work_dir {} is inside the bundle root {}, which kata-agent's CreateSandbox \
                 removes: the layer store goes to {DEFAULT_STORE} instead (--store DIR chooses another)",
                w.display(),
                bundle_root.display()
            );
            return (PathBuf::from(DEFAULT_STORE), Some(note));
        }
        return (w.join("cloak-store"), None);
    }
    (PathBuf::from(DEFAULT_STORE), None)
}

impl Default for HubOptions {
    fn default() -> Self {
        Self {
            kbs: None,
            store: PathBuf::from(DEFAULT_STORE),
            bundle_root: PathBuf::from(bundle::DEFAULT_BUNDLE_ROOT),
            insecure_registries: Vec::new(),
            policy: PullPolicy::default(),
            keyprovider_config: None,
            auth_file: None,
            max_concurrent_layers: 3,
            registry_timeouts: oci::RegistryTimeouts::default(),
            layer_limits: crate::extract::Limits::default(),
            require_signed_secrets: false,
            resource_cache_ttl: Duration::from_secs(10),
            signature_policy: None,
            registries_d: None,
            registry_access: RegistryAccess::default(),
        }
    }
}

/// Why a call failed. The message is what the caller (kata-agent) logs.
#[derive(Debug, thiserror::Error)]
pub enum HubError {
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error("no KBS is configured (--kbs URL or [kbc] url in cdh.toml)")]
    NoKbs,
    #[error("ResourcePath {path:?}")]
    ResourcePath {
        path: String,
        #[source]
        source: KbsError,
    },
    #[error("KBS")]
    Kbs(#[from] KbsError),
    #[error("pull failed")]
    Pull(#[from] PullError),
    /// The configured signature policy could not be loaded: the pull is refused
    /// rather than run unchecked.
    #[error("the signature policy could not be loaded, so no image is pulled")]
    SignaturePolicy {
        #[source]
        source: SignatureError,
    },
    /// The auth file or registries.conf could not be loaded: the pull is refused
    /// rather than run without them.
    #[error("the registry settings could not be loaded, so no image is pulled")]
    RegistryAccess {
        #[source]
        source: AccessError,
    },
    #[error(transparent)]
    Sealed(#[from] SealedError),
    #[error("keyprovider")]
    KeyProvider(#[from] ServiceError),
    #[error("bundle config.json")]
    Spec(#[from] SpecError),
    #[error("bundle {path}")]
    Bundle {
        path: PathBuf,
        #[source]
        reason: BundleError,
    },
    #[error("SecureMount: unsupported volume type {0:?} (cloak-cdh implements block-device only)")]
    UnsupportedMount(String),
    #[error(transparent)]
    Storage(#[from] super::storage::StorageError),
    #[error("cloak-cdh is shutting down; not starting new work")]
    ShuttingDown,
    /// The hub could not be built.
    #[error("setting up")]
    Setup(#[source] SetupError),
}

/// What is wrong with a bundle directory, or with writing into it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BundleError {
    #[error("pull task")]
    PullTask(#[source] tokio::task::JoinError),
    #[error("exists and is not a directory")]
    RootfsNotADirectory,
    #[error("is already a mount point (pulled before?); unmount it or use a new bundle")]
    RootfsMounted,
    #[error("exists and is not empty; use a fresh bundle directory")]
    RootfsNotEmpty,
    #[error("image.json")]
    ReadImageJson(#[source] std::io::Error),
    #[error("encoding config.json")]
    EncodeSpec(#[source] serde_json::Error),
    #[error("writing config.json")]
    WriteSpec(#[source] std::io::Error),
}

/// Why the hub could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SetupError {
    /// The guest session (KBS client, attester, keyproviders).
    #[error(transparent)]
    Session(SessionError),
    /// The layer store.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    #[error(
        "the signature policy {policy} is a KBS resource, but no KBS is configured \
         (--kbs URL or [kbc] url in cdh.toml)"
    )]
    KbsPolicyWithoutKbs { policy: String },
    #[error("{what} is a KBS resource, but no KBS is configured (--kbs URL or [kbc] url in cdh.toml)")]
    KbsRegistrySettingsWithoutKbs { what: String },
}

/// What a failed call means, whatever the transport: [`HubError::kind`] is the one
/// mapping from errors (and the KBS's answers) to outcomes; the ttRPC code
/// ([`HubError::code`]) and the REST endpoint's HTTP status are tables over it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The request itself is malformed.
    InvalidArgument,
    /// The daemon is not set up for this (no KBS, an unusable policy or key).
    FailedPrecondition,
    /// The KBS failed or answered no, as its client classifies it.
    Kbs(KbsErrorKind),
    /// Something asked for does not exist.
    NotFound,
    /// Refused by a policy or a signature check.
    Denied,
    /// Try again later: shutting down, or a peer could not be reached.
    Unavailable,
    /// cloak-cdh does not implement this.
    Unimplemented,
    /// Anything else.
    Internal,
}

impl HubError {
    /// What this error means to the caller (see [`ErrorKind`]).
    pub fn kind(&self) -> ErrorKind {
        match self {
            HubError::Request(_) | HubError::ResourcePath { .. } => ErrorKind::InvalidArgument,
            HubError::NoKbs | HubError::Setup(_) => ErrorKind::FailedPrecondition,
            HubError::Kbs(k) => ErrorKind::Kbs(k.kind()),
            HubError::SignaturePolicy { source } => match source {
                SignatureError::Kbs { source, .. } => resource_kind(source),
                _ => ErrorKind::FailedPrecondition,
            },
            HubError::RegistryAccess { source: AccessError::Kbs { source, .. } } => {
                ErrorKind::Kbs(source.kind())
            }
            HubError::RegistryAccess { .. } => ErrorKind::FailedPrecondition,
            HubError::Pull(PullError::Signature(SignatureError::Refused(r))) => refusal_kind(r),
            HubError::Pull(_) | HubError::Spec(_) | HubError::Bundle { .. } => ErrorKind::Internal,
            HubError::Sealed(SealedError::BadSignature { .. } | SealedError::UnsignedRefused) => {
                ErrorKind::Denied
            }
            HubError::Sealed(SealedError::UnsupportedType(_) | SealedError::UnsupportedProvider(_)) => {
                ErrorKind::Unimplemented
            }
            HubError::Sealed(_) => ErrorKind::InvalidArgument,
            HubError::KeyProvider(e) => match keyprovider::server::status_code(e) {
                tonic::Code::InvalidArgument => ErrorKind::InvalidArgument,
                tonic::Code::NotFound => ErrorKind::NotFound,
                tonic::Code::PermissionDenied => ErrorKind::Denied,
                tonic::Code::Unavailable => ErrorKind::Unavailable,
                tonic::Code::FailedPrecondition => ErrorKind::FailedPrecondition,
                _ => ErrorKind::Internal,
            },
            HubError::UnsupportedMount(_) => ErrorKind::Unimplemented,
            HubError::Storage(e) => e.kind(),
            HubError::ShuttingDown => ErrorKind::Unavailable,
        }
    }

    /// What the caller reads (ttRPC message, REST body, log line): the chain once.
    /// Where nothing configured could try a layer's key, the hint says what to set
    /// up in this daemon (cdh.toml, the KBS) rather than cloak-pull's flags.
    pub fn message(&self) -> String {
        self.chain().join(": ")
    }

    /// The steps of [`HubError::message`], outermost first (the `error_chain` of
    /// JSON logs).
    pub fn chain(&self) -> Vec<String> {
        let mut steps = report::chain(self);
        if let Some((theirs, ours)) = unwrap_report(self).and_then(|r| Some((r.hint()?, cdh_hint(r)?))) {
            for step in &mut steps {
                *step = step.replacen(&theirs, &ours, 1);
            }
        }
        steps
    }

    /// The ttRPC status code for this error.
    pub fn code(&self) -> ttrpc::Code {
        use ttrpc::Code;
        match self.kind() {
            ErrorKind::InvalidArgument => Code::INVALID_ARGUMENT,
            ErrorKind::FailedPrecondition => Code::FAILED_PRECONDITION,
            ErrorKind::Kbs(k) => match k {
                KbsErrorKind::Unavailable => Code::UNAVAILABLE,
                KbsErrorKind::NotFound => Code::NOT_FOUND,
                KbsErrorKind::Denied => Code::PERMISSION_DENIED,
                KbsErrorKind::InvalidUri => Code::INVALID_ARGUMENT,
                _ => Code::INTERNAL,
            },
            ErrorKind::NotFound => Code::NOT_FOUND,
            ErrorKind::Denied => Code::PERMISSION_DENIED,
            ErrorKind::Unavailable => Code::UNAVAILABLE,
            ErrorKind::Unimplemented => Code::UNIMPLEMENTED,
            ErrorKind::Internal => Code::INTERNAL,
        }
    }
}

/// The report of a layer key no unwrapper could recover, if that is the cause.
fn unwrap_report(e: &HubError) -> Option<&ocicrypt::UnwrapReport> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = next {
        if let Some(r) = err.downcast_ref::<ocicrypt::UnwrapReport>() {
            return Some(r);
        }
        next = err.source();
    }
    None
}

/// What opens the layers nothing configured could try, in this daemon's terms: it
/// holds no private keys (no `--key`), so a JWE or attestation-agent layer needs the
/// KBS, another keyprovider an entry in `--keyprovider-config`. Schemes needing the
/// same set-up are named together, so no advice is said twice.
fn cdh_hint(report: &ocicrypt::UnwrapReport) -> Option<String> {
    const KBS: &str = "configure the KBS that holds its key ([kbc] url in cdh.toml, or --kbs URL)";
    const PROVIDER: &str = "add its keyprovider to the ocicrypt config given by --keyprovider-config FILE";
    const LOCAL: &str = "cloak-cdh holds no private keys: it opens a JWE layer through the KBS only, \
                         for a recipient whose kid is a kbs:/// resource ([kbc] url in cdh.toml, or --kbs URL)";
    let mut groups: Vec<(&str, Vec<String>)> = Vec::new();
    for c in report.unopened() {
        let flags = c.flags();
        let fix = if flags.contains(&ocicrypt::FLAG_KEYPROVIDER) {
            PROVIDER
        } else if flags.contains(&ocicrypt::FLAG_KBS) {
            KBS
        } else {
            LOCAL
        };
        let what = c.describe();
        match groups.iter_mut().find(|(f, _)| *f == fix) {
            Some((_, names)) => names.push(what),
            None => groups.push((fix, vec![what])),
        }
    }
    let parts: Vec<String> = groups
        .into_iter()
        .map(|(fix, names)| format!("nothing configured opens {}; {fix}", names.join(" or ")))
        .collect();
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// The one log line of a failed PullImage: the message kata-agent gets, and the chain.
fn log_pull_failure(image_url: &str, bundle_path: &str, e: &HubError) {
    tracing::warn!(
        image = %image_url,
        bundle = %bundle_path,
        error = %e.message(),
        error_chain = super::chain_field(|| e.chain()),
        "PullImage failed"
    );
}

/// A policy's verdict is a denial; a refusal only because a key or the signatures
/// could not be fetched (KBS or registry down) may pass on a retry.
fn refusal_kind(r: &Refusal) -> ErrorKind {
    match &*r.reason {
        RefusalReason::Key(k) => k.cause.as_ref().map_or(ErrorKind::FailedPrecondition, resource_kind),
        RefusalReason::BadKey(_) => ErrorKind::FailedPrecondition,
        RefusalReason::Fetch(_) => ErrorKind::Unavailable,
        _ => ErrorKind::Denied,
    }
}

/// A `kbs:///` policy or key that could not be fetched: as the KBS answered (absent,
/// refused, unreachable); unavailable when the cause is not the KBS client's.
fn resource_kind(cause: &imgsig::ResourceError) -> ErrorKind {
    cause.downcast_ref::<KbsError>().map_or(ErrorKind::Unavailable, |k| ErrorKind::Kbs(k.kind()))
}

struct Cached {
    at: Instant,
    bytes: Zeroizing<Vec<u8>>,
}

/// Counts calls in flight so SIGTERM can let them finish.
#[derive(Default)]
struct InFlight {
    count: AtomicUsize,
    closing: AtomicBool,
}

/// Decrements the in-flight count when dropped.
pub struct InFlightGuard<'a>(&'a InFlight);

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.0.count.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The daemon's state.
pub struct Hub {
    opts: HubOptions,
    kbs: Option<KbsClient>,
    unwrappers: Vec<Arc<dyn KeyUnwrapper>>,
    keyprovider: KeyProviderCore,
    cache: Mutex<HashMap<String, Cached>>,
    inflight: InFlight,
    volumes: Arc<super::storage::Volumes>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub").field("kbs", &self.opts.kbs.as_ref().map(|k| &k.url)).finish_non_exhaustive()
    }
}

impl Hub {
    /// Builds the hub: the KBS client (no network yet), the key unwrappers, the store.
    pub fn new(opts: HubOptions) -> Result<Self, HubError> {
        let session = GuestSession::build(&SessionConfig {
            kbs: opts.kbs.clone(),
            // Never from the environment: kata's OCICRYPT_KEYPROVIDER_CONFIG points
            // back at this daemon, and so the KBS is tried before any keyprovider.
            keyproviders: opts
                .keyprovider_config
                .clone()
                .map_or(KeyProviderSource::None, KeyProviderSource::File),
            order: UnwrapperOrder::KbsFirst,
            ..Default::default()
        })
        .map_err(|e| HubError::Setup(SetupError::Session(e)))?;
        if let Some(p) = &opts.signature_policy {
            if p.starts_with("kbs:///") && session.kbs().is_none() {
                return Err(HubError::Setup(SetupError::KbsPolicyWithoutKbs { policy: p.clone() }));
            }
        }
        if let Some(what) = opts.registry_access.needs_kbs() {
            if session.kbs().is_none() {
                return Err(HubError::Setup(SetupError::KbsRegistrySettingsWithoutKbs { what }));
            }
        }
        // Callers of the daemon's socket never make it read guest files (keypath=).
        let keyprovider = KeyProviderCore::new(None, session.kek_unwrapper())
            .with_unwrap_disabled_reason("no KBS is configured (--kbs URL or [kbc] url in cdh.toml)")
            .with_keypath_rule(keyprovider::KeyPathRule::Refused);
        let store =
            crate::store::Store::open(&opts.store).map_err(|e| HubError::Setup(SetupError::Store(e)))?;
        store.clean_staging();
        Ok(Self {
            opts,
            kbs: session.kbs().cloned(),
            unwrappers: session.unwrappers().to_vec(),
            keyprovider,
            cache: Mutex::new(HashMap::new()),
            inflight: InFlight::default(),
            volumes: Arc::default(),
        })
    }

    /// What can be checked at start without the KBS, so a typo stops the daemon
    /// rather than every pull: a file policy reads and parses, registries.d
    /// loads. (Pulls load both again; a `kbs:///` policy is first read then.)
    pub async fn preflight(&self) -> Result<(), HubError> {
        let bad = |source| HubError::SignaturePolicy { source };
        match &self.opts.signature_policy {
            Some(p) if !p.starts_with("kbs:///") => {
                SignatureCheck::load(p, self.opts.registries_d.as_deref(), None).await.map_err(bad)?;
            }
            _ => {
                if let Some(d) = &self.opts.registries_d {
                    imgsig::registries_d::RegistriesD::load(d).map_err(|e| bad(e.into()))?;
                }
            }
        }
        Ok(())
    }

    /// The options the hub runs with.
    pub fn options(&self) -> &HubOptions {
        &self.opts
    }

    /// Successful attestations so far (one for the daemon's life unless a token
    /// expires or the KBS refuses it).
    pub fn attestations(&self) -> u64 {
        self.kbs.as_ref().map_or(0, KbsClient::attestation_count)
    }

    /// The daemon's one KBS client (token, TEE key, attester), if a KBS is configured:
    /// the attestation-agent API answers from it (`super::aa`).
    pub fn kbs_client(&self) -> Option<&KbsClient> {
        self.kbs.as_ref()
    }

    /// The secure volumes this daemon opened (`super::storage`).
    pub(crate) fn volumes(&self) -> &Arc<super::storage::Volumes> {
        &self.volumes
    }

    /// Where this pull's layers go: kata's trusted image store while one is mounted
    /// through this daemon (SecureMount on the image work dir), else `--store`.
    fn layer_store(&self) -> PathBuf {
        self.volumes.trusted_image_store().unwrap_or_else(|| self.opts.store.clone())
    }

    pub(crate) fn enter(&self) -> Result<InFlightGuard<'_>, HubError> {
        self.inflight.count.fetch_add(1, Ordering::SeqCst);
        let guard = InFlightGuard(&self.inflight);
        if self.inflight.closing.load(Ordering::SeqCst) {
            return Err(HubError::ShuttingDown);
        }
        Ok(guard)
    }

    /// Refuses new calls and waits (at most `grace`) for the ones in flight.
    /// Returns how many were still running when it gave up.
    pub async fn drain(&self, grace: Duration) -> usize {
        self.inflight.closing.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + grace;
        loop {
            let n = self.inflight.count.load(Ordering::SeqCst);
            if n == 0 || Instant::now() >= deadline {
                return n;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// `ImagePullService.PullImage`: the full cloak pull into `bundle_path/rootfs`
    /// (an overlay mount of the verified store layers with a private upper), then
    /// `bundle_path/config.json`. Returns the manifest digest.
    pub async fn pull_image(&self, image_url: &str, bundle_path: &str) -> Result<String, HubError> {
        let _guard = self.enter()?;
        let started = Instant::now();
        let bundle = bundle::check_bundle_path(&self.opts.bundle_root, bundle_path)?;
        let image = bundle::docker_reference(image_url)?;
        let image_ref: oci::ImageRef = image.parse().map_err(|source| RequestError::Reference {
            image: image_url.chars().take(200).collect(),
            source,
        })?;
        // Loaded for every pull, before the bundle is touched: an edited file or
        // KBS resource takes effect at once, and a policy that cannot be read
        // refuses the pull rather than letting it run unchecked.
        let signature_check = match self.signature_check().await {
            Ok(c) => c,
            Err(e) => {
                log_pull_failure(image_url, bundle_path, &e);
                return Err(e);
            }
        };
        let mut source = oci::SourceOptions {
            creds: None,
            auth_file: self.opts.auth_file.clone(),
            insecure_plain_http: bundle::registry_of(&image)
                .is_some_and(|r| self.opts.insecure_registries.contains(&r)),
            timeouts: self.opts.registry_timeouts,
            ..Default::default()
        };
        // Also loaded for every pull (a kbs:/// auth file through the daemon's one
        // KBS session, held in memory only), before the bundle is touched.
        if let Err(source) = self.opts.registry_access.load_into(&mut source, self.kbs.as_ref()).await {
            let e = HubError::RegistryAccess { source };
            log_pull_failure(image_url, bundle_path, &e);
            return Err(e);
        }
        let bundle = bundle::prepare_bundle(&self.opts.bundle_root, &bundle)?;
        let rootfs = bundle.join("rootfs");
        clear_empty_rootfs(&bundle, &rootfs)?;
        let had_image_json = bundle.join("image.json").exists();
        let opts = PullOptions {
            image: image_ref,
            bundle: bundle.clone(),
            unwrappers: self.unwrappers.clone(),
            policy: self.opts.policy.clone(),
            platform: None,
            store: Some(self.layer_store()),
            store_link: LinkMode::Overlay,
            source,
            max_concurrent_layers: self.opts.max_concurrent_layers,
            extract: ExtractOptions { limits: self.opts.layer_limits, ..Default::default() },
            progress: Arc::new(Quiet),
            // Checked by pull() on the manifest digest it resolves, before any layer
            // is fetched or reused from the store: cached images are checked too.
            signature_check,
        };
        // The pull runs on its own blocking thread to completion, whatever the
        // caller does: a rootfs is mounted whole or not at all.
        let handle = tokio::runtime::Handle::current();
        let result = tokio::task::spawn_blocking(move || handle.block_on(async move { pull(&opts).await }))
            .await
            .map_err(|e| HubError::Bundle { path: bundle.clone(), reason: BundleError::PullTask(e) })?;
        let summary = match result {
            Ok(s) => s,
            Err(e) => {
                if !had_image_json {
                    let _ = std::fs::remove_file(bundle.join("image.json"));
                }
                let e = HubError::from(e);
                log_pull_failure(image_url, bundle_path, &e);
                return Err(e);
            }
        };
        if let Err(e) = write_runtime_spec(&bundle) {
            undo_mount(&bundle);
            log_pull_failure(image_url, bundle_path, &e);
            return Err(e);
        }
        let cached = summary.layers.iter().filter(|l| l.cached).count();
        tracing::info!(
            image = %image_url,
            bundle = %bundle_path,
            manifest_digest = %summary.manifest_digest,
            layers = summary.layers.len(),
            cached_layers = cached,
            ms = started.elapsed().as_millis() as u64,
            "PullImage done"
        );
        Ok(summary.manifest_digest.to_string())
    }

    /// The configured signature policy, loaded now (a `kbs:///` policy and
    /// `kbs:///` keys through the daemon's one KBS session); `None` when no
    /// policy is configured.
    async fn signature_check(&self) -> Result<Option<Arc<SignatureCheck>>, HubError> {
        let Some(policy) = &self.opts.signature_policy else { return Ok(None) };
        let kbs = self.kbs.clone().map(|c| Arc::new(KbsResources(c)) as Arc<dyn ResourceFetcher>);
        let check = SignatureCheck::load(policy, self.opts.registries_d.as_deref(), kbs)
            .await
            .map_err(|source| HubError::SignaturePolicy { source })?;
        Ok(Some(Arc::new(check)))
    }

    fn kbs(&self) -> Result<&KbsClient, HubError> {
        self.kbs.as_ref().ok_or(HubError::NoKbs)
    }

    /// A KBS resource through the short in-memory cache (denials are never cached).
    pub async fn resource(&self, uri: &ResourceUri) -> Result<Zeroizing<Vec<u8>>, HubError> {
        let key = uri.to_string();
        let ttl = self.opts.resource_cache_ttl;
        if !ttl.is_zero() {
            let map = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(c) = map.get(&key) {
                if c.at.elapsed() < ttl {
                    return Ok(c.bytes.clone());
                }
            }
        }
        let bytes = self.kbs()?.get_resource(uri).await?;
        if !ttl.is_zero() {
            let mut map = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            map.retain(|_, c| c.at.elapsed() < ttl);
            if map.len() < MAX_CACHED {
                map.insert(key, Cached { at: Instant::now(), bytes: bytes.clone() });
            }
        }
        Ok(bytes)
    }

    /// `GetResourceService.GetResource` (`kbs:///repo/type/tag`).
    pub async fn get_resource(&self, path: &str) -> Result<Zeroizing<Vec<u8>>, HubError> {
        let _guard = self.enter()?;
        if !path.starts_with("kbs://") {
            return Err(HubError::ResourcePath {
                path: path.chars().take(200).collect(),
                source: KbsError::InvalidUri("must be kbs:///repository/type/tag".into()),
            });
        }
        let uri: ResourceUri = path
            .parse()
            .map_err(|source| HubError::ResourcePath { path: path.chars().take(200).collect(), source })?;
        self.resource(&uri).await
    }

    /// `SealedSecretService.UnsealSecret`.
    pub async fn unseal_secret(&self, secret: &[u8]) -> Result<Zeroizing<Vec<u8>>, HubError> {
        let _guard = self.enter()?;
        let sealed = sealed::parse(secret)?;
        match &sealed.signing {
            Signing::Unsigned if self.opts.require_signed_secrets => {
                return Err(SealedError::UnsignedRefused.into())
            }
            Signing::Unsigned => {}
            Signing::Jws { alg, kid } => {
                let uri: ResourceUri = kid.parse().map_err(|e| {
                    SealedError::Header(format!("kid {kid:?} is not a KBS resource: {}", report::Line(&e)))
                })?;
                let key = self.resource(&uri).await?;
                sealed::verify(&sealed, alg, kid, &key)?;
            }
        }
        match sealed::interpret(&sealed.payload)? {
            SecretKind::Vault { name } => self.resource(&name).await,
        }
    }

    /// `KeyProviderService.UnWrapKey` / `WrapKey`: the keyprovider JSON document.
    pub async fn keyprovider(&self, input: &[u8], op: Op) -> Result<Vec<u8>, HubError> {
        let _guard = self.enter()?;
        Ok(self.keyprovider.handle(input, Some(op)).await?)
    }

    // `SecureMountService.SecureMount`: `Hub::secure_mount` in `super::storage`.
}

/// kata (or a retry) may leave an empty `rootfs` directory: it is removed so
/// the pull can mount there. Anything else there is an error.
fn clear_empty_rootfs(bundle: &Path, rootfs: &Path) -> Result<(), HubError> {
    let Ok(meta) = rootfs.symlink_metadata() else { return Ok(()) };
    let busy = |reason| HubError::Bundle { path: rootfs.to_path_buf(), reason };
    if !meta.is_dir() {
        return Err(busy(BundleError::RootfsNotADirectory));
    }
    use std::os::unix::fs::MetadataExt;
    let parent_dev = bundle.metadata().map(|m| m.dev()).unwrap_or(0);
    if meta.dev() != parent_dev {
        return Err(busy(BundleError::RootfsMounted));
    }
    std::fs::remove_dir(rootfs).map_err(|_| busy(BundleError::RootfsNotEmpty))
}

fn write_runtime_spec(bundle: &Path) -> Result<(), HubError> {
    let config = std::fs::read(bundle.join("image.json")).map_err(|e| HubError::Bundle {
        path: bundle.to_path_buf(),
        reason: BundleError::ReadImageJson(e),
    })?;
    let spec = spec::runtime_spec(&config, &bundle.join("rootfs"))?;
    let path = bundle.join("config.json");
    let body = serde_json::to_vec_pretty(&spec)
        .map_err(|e| HubError::Bundle { path: path.clone(), reason: BundleError::EncodeSpec(e) })?;
    // Never through a name someone could have planted in the bundle beforehand.
    crate::fsutil::write_file_replacing(bundle, "config.json", &body, 0o644)
        .map_err(|e| HubError::Bundle { path, reason: BundleError::WriteSpec(e) })
}

/// Takes a just-made rootfs down again (a later step failed).
fn undo_mount(bundle: &Path) {
    let rootfs = bundle.join("rootfs");
    let _ = rustix::mount::unmount(&rootfs, rustix::mount::UnmountFlags::DETACH);
    let _ = std::fs::remove_dir(&rootfs);
    let _ = crate::store::remove_tree(&bundle.join(crate::overlay::BUNDLE_DIR));
    let _ = std::fs::remove_file(bundle.join("image.json"));
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Issue 21, finding 2: `.config.json.tmp` planted in the bundle as a link to a
    /// file outside `--bundle-root` was written through by PullImage, and
    /// `config.json` became that link.
    /// A bundle ready for `write_runtime_spec`, with `planted` a link to a file
    /// outside it; returns (outside dir, bundle dir, the link's target).
    fn bundle_with_planted_link(planted: &str) -> (tempfile::TempDir, tempfile::TempDir, PathBuf) {
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let bundle = tempfile::tempdir().unwrap();
        std::fs::create_dir(bundle.path().join("rootfs")).unwrap();
        std::fs::write(bundle.path().join("image.json"), br#"{"config":{"Cmd":["/bin/true"]}}"#).unwrap();
        std::os::unix::fs::symlink(&victim, bundle.path().join(planted)).unwrap();
        (outside, bundle, victim)
    }

    #[test]
    fn planted_config_tmp_symlink_is_not_written_through() {
        let (_outside, bundle, victim) = bundle_with_planted_link(".config.json.tmp");

        write_runtime_spec(bundle.path()).unwrap();

        assert_eq!(std::fs::read(&victim).unwrap(), b"precious", "the link's target was overwritten");
        let meta = std::fs::symlink_metadata(bundle.path().join("config.json")).unwrap();
        assert!(meta.file_type().is_file(), "config.json must be a regular file, not a link");
        let spec: serde_json::Value =
            serde_json::from_slice(&std::fs::read(bundle.path().join("config.json")).unwrap()).unwrap();
        assert_eq!(spec["process"]["args"][0], "/bin/true");
    }

    /// Issue 21, finding 12: the store defaulted to `/run/kata-containers/image/cloak-store`
    /// (and followed `[image] work_dir = "/run/kata-containers/image"`), inside the
    /// directory kata-agent's CreateSandbox removes after the daemon started.
    #[test]
    fn layer_store_is_never_placed_where_kata_agent_deletes_it() {
        let root = Path::new(bundle::DEFAULT_BUNDLE_ROOT);
        assert!(!HubOptions::default().store.starts_with(root));
        let (store, note) = store_location(None, None, root);
        assert!(!store.starts_with(root) && note.is_none());
        let (store, note) = store_location(None, Some(Path::new("/run/kata-containers/image")), root);
        assert!(!store.starts_with(root), "{}", store.display());
        assert!(note.is_some_and(|n| n.contains("CreateSandbox")));
        let (store, note) = store_location(None, Some(Path::new("/var/lib/images")), root);
        assert_eq!(store, Path::new("/var/lib/images/cloak-store"));
        assert!(note.is_none());
        // An explicit --store is honoured, with a warning.
        let (store, note) = store_location(Some(Path::new("/run/kata-containers/s")), None, root);
        assert_eq!(store, Path::new("/run/kata-containers/s"));
        assert!(note.is_some());
    }

    /// Issue 27: ttRPC answers carried `pull failed: layer 0 (…): …` with each
    /// cause's text written into its parent's, and kata-agent logged every clause
    /// two or three times. The message is the chain once; the codes are unchanged.
    #[test]
    fn cdh_ttrpc_error_message_says_each_cause_once() {
        let digest: oci::Digest = format!("sha256:{}", "cd".repeat(32)).parse().unwrap();
        let io = |text: &str| std::io::Error::other(text.to_owned());
        let bad_uri = "kbs:///only-two/parts".parse::<ResourceUri>().unwrap_err();
        let cases: Vec<(HubError, ttrpc::Code, &str)> = vec![
            (
                HubError::Pull(PullError::Layer {
                    index: 0,
                    digest: digest.clone(),
                    source: crate::decode::DecodeError::Decompress(io("unexpected end of zstd frame")),
                }),
                ttrpc::Code::INTERNAL,
                "decompressing the layer: unexpected end of zstd frame",
            ),
            (
                HubError::Setup(SetupError::Session(SessionError::KeyProvider {
                    name: "acme".into(),
                    source: keyprovider::client::ClientError::NoTransport("acme".into()),
                })),
                ttrpc::Code::FAILED_PRECONDITION,
                "setting up: keyprovider config: keyprovider \"acme\" has neither",
            ),
            (
                HubError::SignaturePolicy {
                    source: SignatureError::Read {
                        path: "/etc/p.json".into(),
                        source: io("permission denied"),
                    },
                },
                ttrpc::Code::FAILED_PRECONDITION,
                "so no image is pulled: reading signature policy /etc/p.json: permission denied",
            ),
            (
                HubError::Bundle {
                    path: "/b/config.json".into(),
                    reason: BundleError::WriteSpec(io("no space")),
                },
                ttrpc::Code::INTERNAL,
                "bundle /b/config.json: writing config.json: no space",
            ),
            (
                HubError::ResourcePath { path: "kbs:///only-two/parts".into(), source: bad_uri },
                ttrpc::Code::INVALID_ARGUMENT,
                "ResourcePath \"kbs:///only-two/parts\": ",
            ),
        ];
        for (e, code, says) in cases {
            assert_eq!(e.code(), code, "{}", report::line(&e));
            assert_eq!(report::repeated_source(&e), None, "{}", report::line(&e));
            let ttrpc::Error::RpcStatus(status) = super::super::server::status(e) else {
                panic!("not a status")
            };
            assert_eq!(status.code(), code);
            let msg = status.message();
            assert!(msg.contains(says), "{msg}");
            assert_eq!(report::repeated_clause(msg), None, "{msg}");
        }
    }

    /// Issue 27, point 3: a layer nothing configured could open says what it carries
    /// and, in cloak-cdh's terms, what to set up: the KBS in cdh.toml, not the
    /// `--key FILE` flag cloak-cdh does not have.
    #[test]
    fn cdh_no_unwrapper_hint_names_the_kbs_configuration_not_flags() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        let annotations = crate::pull::tests::golden_layer_annotations();
        let keys = rt.block_on(ocicrypt::unwrap_keys(&[], &annotations)).unwrap_err();
        let digest: oci::Digest = format!("sha256:{}", "ef".repeat(32)).parse().unwrap();
        let e = HubError::Pull(PullError::Keys { index: 0, digest, source: keys });
        assert_eq!(e.code(), ttrpc::Code::INTERNAL);
        let ttrpc::Error::RpcStatus(status) = super::super::server::status(e) else { panic!("not a status") };
        let msg = status.message();
        assert!(msg.contains("could not unwrap the layer key"), "{msg}");
        assert!(msg.contains("nothing configured opens jwe (recipient RSA-OAEP)"), "{msg}");
        assert!(msg.contains("[kbc] url in cdh.toml"), "{msg}");
        assert!(!msg.contains("--key FILE") && !msg.contains("cloak-pull"), "{msg}");
        assert_eq!(report::repeated_clause(msg), None, "{msg}");
    }

    /// A link planted at `config.json` itself is replaced, not followed.
    #[test]
    fn planted_config_json_symlink_is_replaced_not_followed() {
        let (_outside, bundle, victim) = bundle_with_planted_link("config.json");

        write_runtime_spec(bundle.path()).unwrap();

        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(std::fs::symlink_metadata(bundle.path().join("config.json")).unwrap().file_type().is_file());
    }
}
