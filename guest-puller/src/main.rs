//! `cloak-pull [OPTIONS] IMAGE BUNDLE_DIR`: flags → validated options → the
//! library's `pull`; errors become a non-zero exit with one clear line.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, ValueEnum};
use guest_puller::assemble::LinkMode;
use guest_puller::extract::{DevicePolicy, ExtractOptions, Limits, DEFAULT_MAX_RATIO};
use guest_puller::keys::{KeySources, Keys};
use guest_puller::policy::PullPolicy;
use guest_puller::progress::{Bars, JsonLines, ProgressSink, Quiet};
use guest_puller::pull::{pull, PullOptions};
use guest_puller::registry_access::{ConfSource, RegistryAccess, Source};

#[derive(Debug, Parser)]
#[command(
    name = "cloak-pull",
    version,
    about = "Pull an (encrypted) OCI image into a bundle rootfs, verified and fail-closed"
)]
struct Cli {
    /// Image: docker://HOST/REPO[:TAG|@DIGEST] or oci:DIR[:TAG|@DIGEST].
    image: String,
    /// Bundle directory; BUNDLE_DIR/rootfs and BUNDLE_DIR/image.json are written.
    bundle_dir: PathBuf,
    /// Private key file for JWE-wrapped layer keys (repeatable).
    #[arg(long = "key", value_name = "FILE")]
    keys: Vec<PathBuf>,
    /// ocicrypt keyprovider config (JSON).
    #[arg(long, value_name = "FILE", env = "OCICRYPT_KEYPROVIDER_CONFIG")]
    keyprovider_config: Option<PathBuf>,
    /// KBS URL to fetch KEKs / private keys from after attestation.
    #[arg(long, value_name = "URL")]
    kbs: Option<String>,
    /// Attester for the KBS: auto | snp | tdx | az-snp-vtpm | az-tdx-vtpm | cca | sample
    /// (sample only when named).
    #[arg(long, value_name = "KIND")]
    attester: Option<kbs_client::AttesterKind>,
    /// Deadline of each KBS exchange (attestation, each key), retries with
    /// backoff included; an unreachable KBS fails the pull after this long.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_timeout)]
    kbs_timeout: Duration,
    /// CoCo init-data (TOML) the guest was launched with, sent to the KBS in the
    /// attestation; the KBS checks its digest against the report (SNP HOST_DATA, TDX MRCONFIGID).
    #[arg(long, value_name = "FILE", requires = "kbs")]
    initdata: Option<PathBuf>,
    /// CA bundle (PEM) trusted for an https KBS, beside the built-in roots.
    #[arg(long, value_name = "FILE", requires = "kbs")]
    kbs_cert: Option<PathBuf>,
    /// Pull policy (YAML).
    #[arg(long, value_name = "FILE")]
    policy: Option<PathBuf>,
    /// Signature policy (containers-policy.json), a file or a kbs:///… resource (fetched
    /// after attestation); enforced before any layer is fetched or reused.
    #[arg(long, value_name = "FILE|kbs:///…")]
    signature_policy: Option<String>,
    /// registries.d directory (lookaside stores of GPG signatures, as skopeo reads them).
    #[arg(long, value_name = "DIR")]
    registries_d: Option<PathBuf>,
    /// Platform to pick from an index, OS/ARCH[/VARIANT].
    #[arg(long, value_name = "OS/ARCH")]
    platform: Option<String>,
    /// Layer store (cache by diff_id); without it a private store is used and removed.
    #[arg(long, value_name = "DIR")]
    store: Option<PathBuf>,
    /// How the rootfs gets files from --store: copy (reflink when possible), hardlink,
    /// or overlay (root only: BUNDLE_DIR/rootfs is an overlayfs mount of per-layer
    /// views of the store, writes go to BUNDLE_DIR/.cloak-overlay; `umount
    /// BUNDLE_DIR/rootfs` before removing the bundle).
    #[arg(long, value_name = "MODE", default_value = "copy")]
    store_link: StoreLink,
    /// Verify the registry's TLS (false = plain HTTP, insecure).
    #[arg(long, value_name = "BOOL", default_value = "true", action = clap::ArgAction::Set)]
    src_tls_verify: bool,
    /// Registry credentials USER[:PASSWORD].
    #[arg(long, value_name = "USER[:PASS]")]
    creds: Option<String>,
    /// Registry auth file (containers-auth.json): a file, or a kbs:///REPO/TYPE/TAG
    /// resource fetched after attestation (needs --kbs) and kept in memory only.
    #[arg(long, value_name = "FILE|kbs:///R/T/TAG")]
    authfile: Option<String>,
    /// containers-registries.conf (version 2): blocked registries, mirrors (tried in
    /// order before the registry; a digest resolved on one is what every later
    /// request must match), prefix remaps, insecure (plain HTTP) registries.
    #[arg(long, value_name = "FILE")]
    registries_conf: Option<PathBuf>,
    /// Extra CA roots for registries, as skopeo's --cert-dir: DIR/*.crt for every
    /// registry, DIR/HOST:PORT/*.crt for that registry.
    #[arg(long, value_name = "DIR")]
    cert_dir: Option<PathBuf>,
    /// HTTP proxy for registry requests (https registries through CONNECT), instead
    /// of the proxy environment variables; the KBS is never reached through it.
    #[arg(long, value_name = "URL")]
    proxy: Option<String>,
    /// With --proxy: hosts, .domains, IPs and CIDRs reached directly, comma-separated.
    #[arg(long, value_name = "LIST", requires = "proxy")]
    no_proxy: Option<String>,
    /// Registry connect timeout (TCP and TLS).
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_timeout)]
    registry_connect_timeout: Duration,
    /// Registry no-progress timeout: a registry (or token realm) that sends nothing
    /// for this long, before its answer or in the middle of a layer, fails the pull.
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = parse_timeout)]
    registry_idle_timeout: Duration,
    /// Total deadline of each small registry request (manifest, token, config, error
    /// body); layer streams have none, only the no-progress timeout.
    #[arg(long, value_name = "SECS", default_value = "120", value_parser = parse_timeout)]
    registry_request_timeout: Duration,
    /// Refuse a compressed layer that unpacks to more than N times the compressed
    /// bytes read so far (checked after its first MiB): decompression bombs.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_RATIO,
          value_parser = clap::value_parser!(u64).range(1..))]
    max_decompression_ratio: u64,
    /// Refuse a layer that unpacks to more than SIZE (bytes, or with a K, M, G or T suffix).
    #[arg(long, value_name = "SIZE", default_value = "64G", value_parser = parse_size)]
    max_layer_size: u64,
    /// Layers fetched and decoded at the same time.
    #[arg(long, default_value_t = 3)]
    max_concurrent_layers: usize,
    /// Device nodes and FIFOs in layers: create | skip | reject.
    #[arg(long, value_name = "POLICY", default_value = "create")]
    devices: Devices,
    /// No progress output.
    #[arg(long)]
    quiet: bool,
    /// Progress format: `json` for JSON lines on stderr.
    #[arg(long, value_name = "FORMAT")]
    progress: Option<ProgressFormat>,
    /// Print a JSON summary on stdout.
    #[arg(long)]
    json: bool,
}

/// `--store-link`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum StoreLink {
    Copy,
    Hardlink,
    Overlay,
}

/// `--devices`.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Devices {
    Create,
    Skip,
    Reject,
}

/// `--progress`.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum ProgressFormat {
    Json,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("CLOAK_LOG").unwrap_or_else(|_| {
            let level = if cli.quiet { "error" } else { "warn" };
            tracing_subscriber::EnvFilter::new(format!("{level},{}", kbs_client::tls::QUIET_VERIFIER_LOG))
        }))
        .with_writer(std::io::stderr)
        .init();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cloak-pull: {}", report::line(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let image: oci::ImageRef =
        cli.image.parse().with_context(|| format!("invalid image reference {:?}", cli.image))?;
    let policy = match &cli.policy {
        Some(p) => PullPolicy::load(p)?,
        None => PullPolicy::default(),
    };
    let platform = cli.platform.as_deref().map(str::parse).transpose().context("--platform")?;
    let store_link = match cli.store_link {
        StoreLink::Copy => LinkMode::Copy,
        StoreLink::Hardlink => LinkMode::Hardlink,
        StoreLink::Overlay if cli.store.is_none() => {
            anyhow::bail!("--store-link overlay needs --store (the overlay's lower layers live there)")
        }
        StoreLink::Overlay => LinkMode::Overlay,
    };
    if cli.attester.is_some() && cli.kbs.is_none() {
        anyhow::bail!("--attester needs --kbs");
    }
    let progress: Arc<dyn ProgressSink> = match (cli.quiet, cli.progress) {
        (true, _) => Arc::new(Quiet),
        (false, Some(ProgressFormat::Json)) => Arc::new(JsonLines::default()),
        (false, None) if std::io::stderr().is_terminal() => Arc::new(Bars::default()),
        (false, None) => Arc::new(Quiet),
    };
    raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async {
        let keys = Keys::build(&KeySources {
            key_files: cli.keys.clone(),
            keyprovider_config: cli.keyprovider_config.clone(),
            kbs_url: cli.kbs.clone(),
            attester: cli.attester,
            kbs_timeout: Some(cli.kbs_timeout),
            initdata: cli.initdata.clone(),
            kbs_cert: cli.kbs_cert.clone(),
        })?;
        let signature_check = signature_check(&cli, keys.kbs.clone()).await?;
        let mut source = source_options(&cli);
        registry_access(&cli)?
            .load_into(&mut source, keys.kbs.as_ref())
            .await
            .context("loading the registry settings")?;
        let opts = PullOptions {
            image,
            bundle: cli.bundle_dir.clone(),
            unwrappers: keys.unwrappers.clone(),
            policy,
            platform,
            store: cli.store.clone(),
            store_link,
            source,
            max_concurrent_layers: cli.max_concurrent_layers,
            extract: extract_options(&cli),
            progress,
            signature_check,
        };
        // A key failure's KbsError already names the broker and the deadline it ran into.
        let summary = pull(&opts).await?;
        if cli.json {
            let mut v = serde_json::to_value(&summary)?;
            if let (Some(obj), Some(k)) = (v.as_object_mut(), &keys.kbs) {
                obj.insert("attestations".into(), k.attestation_count().into());
            }
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        anyhow::Ok(())
    })
}

/// `--signature-policy` loaded now (a `kbs:///` policy through the pull's KBS session).
async fn signature_check(
    cli: &Cli,
    kbs: Option<kbs_client::KbsClient>,
) -> anyhow::Result<Option<Arc<guest_puller::signatures::SignatureCheck>>> {
    let Some(p) = &cli.signature_policy else { return Ok(None) };
    let kbs =
        kbs.map(|c| Arc::new(guest_puller::signatures::KbsResources(c)) as Arc<dyn imgsig::ResourceFetcher>);
    let check = guest_puller::signatures::SignatureCheck::load(p, cli.registries_d.as_deref(), kbs).await?;
    Ok(Some(Arc::new(check)))
}

/// How layers are unpacked: device nodes, size and ratio bounds.
fn extract_options(cli: &Cli) -> ExtractOptions {
    let devices = match cli.devices {
        Devices::Create => DevicePolicy::Create,
        Devices::Skip => DevicePolicy::Skip,
        Devices::Reject => DevicePolicy::Reject,
    };
    ExtractOptions {
        devices,
        limits: Limits {
            max_ratio: cli.max_decompression_ratio,
            max_total_size: cli.max_layer_size,
            ..Default::default()
        },
        ..Default::default()
    }
}

/// --authfile, --registries-conf, --cert-dir and --proxy, checked (files are read
/// at the pull, a kbs:/// auth file after attestation).
fn registry_access(cli: &Cli) -> anyhow::Result<RegistryAccess> {
    let auth = match &cli.authfile {
        Some(a) => {
            let src = Source::parse(a).map_err(anyhow::Error::msg).context("--authfile")?;
            if matches!(src, Source::Kbs(_)) && cli.kbs.is_none() {
                anyhow::bail!("--authfile {a} is a KBS resource: it needs --kbs URL");
            }
            Some(src)
        }
        None => None,
    };
    let mut roots = oci::TlsRoots::default();
    if let Some(d) = &cli.cert_dir {
        roots.set_cert_dir(d).context("--cert-dir")?;
    }
    let proxy = cli.proxy.as_ref().map(|p| oci::ProxyConfig {
        https_proxy: Some(p.clone()),
        http_proxy: Some(p.clone()),
        no_proxy: cli.no_proxy.clone(),
    });
    Ok(RegistryAccess {
        auth,
        registries_conf: cli.registries_conf.clone().map(|p| ConfSource::Source(Source::File(p))),
        proxy,
        roots,
    })
}

/// Registry access: credentials, TLS, timeouts.
fn source_options(cli: &Cli) -> oci::SourceOptions {
    oci::SourceOptions {
        creds: cli.creds.clone(),
        insecure_plain_http: !cli.src_tls_verify,
        timeouts: oci::RegistryTimeouts {
            connect: cli.registry_connect_timeout,
            idle: cli.registry_idle_timeout,
            request: cli.registry_request_timeout,
        },
        ..Default::default()
    }
}

/// `--kbs-timeout`: positive seconds, fractions allowed, at most an hour.
fn parse_timeout(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.trim().parse().map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(secs > 0.0 && secs <= 3600.0) {
        return Err(format!("{s} s is out of range (more than 0, at most 3600)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// `--max-layer-size`: bytes, or a number with a K, M, G or T suffix (powers of 1024).
fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let (num, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("{s:?}: the suffix must be K, M, G or T")),
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    let n: u64 =
        num.trim().parse().map_err(|_| format!("{s:?} is not a size (bytes, or N with K, M, G or T)"))?;
    match n.checked_mul(1u64 << shift) {
        Some(0) | None => Err(format!("{s:?} is out of range")),
        Some(v) => Ok(v),
    }
}

/// Deep layer trees hold one directory fd per level while being removed or
/// assembled; the soft limit is raised to the hard one.
fn raise_fd_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let lim = getrlimit(Resource::Nofile);
    if lim.current < lim.maximum {
        let _ = setrlimit(
            Resource::Nofile,
            rustix::process::Rlimit { current: lim.maximum, maximum: lim.maximum },
        );
    }
}
