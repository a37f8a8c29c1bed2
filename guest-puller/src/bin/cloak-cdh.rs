//! `cloak-cdh`: a drop-in Confidential Data Hub for Kata guests.
//!
//! ```text
//! cloak-cdh -c cdh.toml
//! cloak-cdh --socket unix:///PATH/cdh.sock --kbs URL \
//!           --attester auto|snp|tdx|az-snp-vtpm|az-tdx-vtpm|cca|sample \
//!           [--store DIR] [--bundle-root DIR] [--rest ADDR:PORT] [--insecure-registry HOST:PORT]... \
//!           [--pull-policy FILE] [--keyprovider-config FILE] \
//!           [--signature-policy FILE|kbs:///REPO/TYPE/TAG] [--registries-d DIR] \
//!           [--aa-socket unix:///PATH] [--rest-features resource|attestation|all] [--rest-tee-key]
//! attestation-agent | confidential-data-hub | api-server-rest …   (kata-agent's names: cdh::kata)
//! ```
//! Flags override `cdh.toml`. Logs are JSON lines on stderr (`CLOAK_LOG` sets the filter).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;
use guest_puller::cdh::config::{signature_policy_location, socket_path, CdhToml, DEFAULT_SOCKET};
use guest_puller::cdh::hub::{store_location, Hub, HubOptions};
use guest_puller::cdh::rest::RestOptions;
use guest_puller::policy::PullPolicy;
use guest_puller::registry_access::{ConfSource, RegistryAccess, Source};
use keyprovider::session::KbsConfig;

#[derive(Debug, Parser)]
#[command(
    name = "cloak-cdh",
    version,
    about = "cloak as the guest's Confidential Data Hub (ttRPC on cdh.sock)"
)]
struct Cli {
    /// CDH configuration file (cdh.toml: socket, [kbc] name/url/kbs_cert, [image]).
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Socket address, unix:///PATH (default unix:///run/confidential-containers/cdh.sock).
    #[arg(long, value_name = "unix:///PATH")]
    socket: Option<String>,
    /// KBS URL (overrides [kbc] url).
    #[arg(long, value_name = "URL")]
    kbs: Option<String>,
    /// Attester for the KBS: auto | snp | tdx | az-snp-vtpm | az-tdx-vtpm | cca | sample
    /// (sample only when named).
    #[arg(long, value_name = "KIND", default_value = "auto")]
    attester: String,
    /// Deadline of one KBS exchange (attestation or one resource), retries included.
    #[arg(long, value_name = "SECS", default_value = "30", value_parser = parse_secs)]
    kbs_timeout: Duration,
    /// CA bundle (PEM) trusted for an https KBS beside the built-in roots (overrides
    /// [kbc] kbs_cert).
    #[arg(long, value_name = "FILE")]
    kbs_cert: Option<PathBuf>,
    /// attestation-agent's config (aa.toml): its `[token_configs.kbs] cert` is the
    /// broker's certificate when neither --kbs-cert nor cdh.toml's [kbc] kbs_cert gives
    /// one (how kata-agent's `attestation-agent -c aa.toml` reaches this daemon).
    #[arg(long, value_name = "FILE")]
    aa_config: Option<PathBuf>,
    /// CoCo init-data (TOML) sent to the KBS in the attestation, whose digest the KBS
    /// checks against the report (default: /run/confidential-containers/initdata/initdata.toml,
    /// where kata-agent writes it, when that file exists).
    #[arg(long, value_name = "FILE")]
    initdata: Option<PathBuf>,
    /// Layer store (default: [image] work_dir/cloak-store, else /run/cloak-cdh/store; never
    /// inside --bundle-root by default, which kata-agent's CreateSandbox removes).
    #[arg(long, value_name = "DIR")]
    store: Option<PathBuf>,
    /// Every bundle_path must be inside this directory.
    #[arg(long, value_name = "DIR", default_value = "/run/kata-containers")]
    bundle_root: PathBuf,
    /// Serve api-server-rest's API to loopback peers on ADDR:PORT: GET
    /// /cdh/resource/<repo>/<type>/<tag>, /aa/token?token_type=kbs, /aa/evidence?runtime_data=….
    #[arg(long, value_name = "ADDR:PORT")]
    rest: Option<SocketAddr>,
    /// What --rest serves, as api-server-rest's --features: resource (/cdh/…),
    /// attestation (/aa/…) or all.
    #[arg(
        long,
        value_name = "FEATURES",
        default_value = "all",
        value_parser = ["resource", "attestation", "all"]
    )]
    rest_features: String,
    /// /aa/token also hands out the TEE private key (`tee_keypair`, as attestation-agent
    /// does), so the workload can decrypt KBS answers itself. Off: the token alone.
    #[arg(long)]
    rest_tee_key: bool,
    /// Also serve attestation-agent's ttRPC API on this socket (kata-agent waits for
    /// unix:///run/confidential-containers/attestation-agent/attestation-agent.sock).
    #[arg(long, value_name = "unix:///PATH")]
    aa_socket: Option<String>,
    /// Registry (HOST:PORT) reached over plain HTTP; repeatable.
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    insecure_registries: Vec<String>,
    /// containers-registries.conf (version 2): blocked registries, mirrors, remaps,
    /// insecure registries (overrides [image] registry_configuration_uri / registry_config).
    #[arg(long, value_name = "FILE")]
    registries_conf: Option<PathBuf>,
    /// Pull policy (YAML, as cloak-pull --policy).
    #[arg(long, value_name = "FILE")]
    pull_policy: Option<PathBuf>,
    /// Signature policy (containers-policy.json), a file or a kbs:///… resource (fetched
    /// after attestation); loaded for every pull and enforced before any layer is fetched
    /// or reused from the store (overrides [image] image_security_policy_uri).
    #[arg(long, value_name = "FILE|kbs:///…")]
    signature_policy: Option<String>,
    /// registries.d directory (lookaside stores of GPG signatures, as skopeo reads them).
    #[arg(long, value_name = "DIR")]
    registries_d: Option<PathBuf>,
    /// ocicrypt keyprovider config for extra layer-key providers (not read from
    /// $OCICRYPT_KEYPROVIDER_CONFIG, which in a Kata guest points at this daemon).
    #[arg(long, value_name = "FILE")]
    keyprovider_config: Option<PathBuf>,
    /// Registry auth file (auth.json).
    #[arg(long, value_name = "FILE")]
    auth_file: Option<PathBuf>,
    /// Refuse unsigned (fakejwsheader) sealed secrets.
    #[arg(long)]
    require_signed_secrets: bool,
    /// Seconds a fetched KBS resource is served from memory (0: no cache).
    #[arg(long, value_name = "SECS", default_value = "10")]
    resource_cache_secs: u64,
    /// On SIGTERM, how long in-flight calls may run before the daemon exits.
    #[arg(long, value_name = "SECS", default_value = "60", value_parser = parse_secs)]
    shutdown_grace: Duration,
    /// Log format: json (default) or text.
    #[arg(long, value_name = "FORMAT", default_value = "json")]
    log_format: String,
}

/// Where kata-agent leaves the init-data it found on the init-data device.
const KATA_INITDATA: &str = "/run/confidential-containers/initdata/initdata.toml";

/// `--initdata FILE`, else kata-agent's copy when there is one. A file that is there
/// but unreadable or invalid stops the daemon: attesting without it would hide a
/// broken launch.
fn guest_initdata(flag: Option<&std::path::Path>) -> anyhow::Result<Option<kbs_client::initdata::Initdata>> {
    let path = match flag {
        Some(p) => p,
        None if std::path::Path::new(KATA_INITDATA).exists() => std::path::Path::new(KATA_INITDATA),
        None => return Ok(None),
    };
    let d = kbs_client::initdata::Initdata::read_file(path).context("setting up: --initdata")?;
    Ok(Some(d))
}

/// `--kbs-cert FILE`, else cdh.toml's `[kbc] kbs_cert` (a PEM string, as CoCo's CDH
/// takes it), else aa.toml's `[token_configs.kbs] cert` (`--aa-config`).
fn kbs_ca(
    flag: Option<&std::path::Path>,
    toml: Option<&str>,
    aa_config: Option<&std::path::Path>,
) -> anyhow::Result<Option<kbs_client::CaBundle>> {
    let pem = |pem: &str, what: &str| -> anyhow::Result<Option<kbs_client::CaBundle>> {
        Ok(Some(kbs_client::CaBundle::from_pem(pem.as_bytes(), what).context("setting up")?))
    };
    match (flag, toml, aa_config) {
        (Some(p), _, _) => Ok(Some(kbs_client::CaBundle::read(p).context("setting up: --kbs-cert")?)),
        (None, Some(text), _) => pem(text, "cdh.toml [kbc] kbs_cert"),
        (None, None, Some(p)) => {
            let aa =
                guest_puller::cdh::kata::aa_toml_kbs(p).map_err(|e| anyhow::anyhow!("setting up: {e}"))?;
            match aa.cert {
                Some(text) => pem(&text, &format!("{} [token_configs.kbs] cert", p.display())),
                None => Ok(None),
            }
        }
        (None, None, None) => Ok(None),
    }
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let secs: f64 = s.trim().parse().map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !(secs > 0.0 && secs <= 3600.0) {
        return Err(format!("{s} s is out of range (more than 0, at most 3600)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn main() -> ExitCode {
    // Installed as attestation-agent, confidential-data-hub or api-server-rest, kata-agent's
    // command lines become this daemon's (guest_puller::cdh::kata).
    let cli = match guest_puller::cdh::kata::invocation(std::env::args_os().collect()) {
        Ok(guest_puller::cdh::kata::Invocation::Daemon(args)) => Cli::parse_from(args),
        Ok(guest_puller::cdh::kata::Invocation::AlreadyServed(what)) => {
            eprintln!("cloak-cdh: {what}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("cloak-cdh: {}", report::line(&e));
            return ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("CLOAK_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!("info,{}", kbs_client::tls::QUIET_VERIFIER_LOG))
    });
    if cli.log_format == "text" {
        tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    } else {
        tracing_subscriber::fmt().json().with_env_filter(filter).with_writer(std::io::stderr).init();
        guest_puller::cdh::set_json_logs(true);
    }
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let e: &(dyn std::error::Error + 'static) = e.as_ref();
            tracing::error!(
                error = %report::Line(e),
                error_chain = guest_puller::cdh::error_chain(e),
                "cloak-cdh stopped"
            );
            eprintln!("cloak-cdh: {}", report::line(e));
            ExitCode::FAILURE
        }
    }
}

/// Where a registry setting comes from, for a daemon that changes directory:
/// a path made absolute, a `kbs:///` URI as is.
fn absolute_source(s: &str, what: &str) -> anyhow::Result<Source> {
    Ok(match Source::parse(s).map_err(anyhow::Error::msg).with_context(|| what.to_owned())? {
        Source::File(p) => {
            Source::File(std::path::absolute(&p).with_context(|| format!("{what} {}", p.display()))?)
        }
        k => k,
    })
}

/// Private registries: `--auth-file` / `--registries-conf` over cdh.toml's
/// `authenticated_registry_credentials_uri` / `registry_configuration_uri` /
/// `registry_config`, and its `image_pull_proxy`, `skip_proxy_ips`,
/// `extra_root_certificates`. Files named here are checked now (and read again
/// at each pull); KBS resources are fetched at each pull.
fn registry_access(cli: &Cli, toml: &CdhToml) -> anyhow::Result<RegistryAccess> {
    let auth = match (&cli.auth_file, &toml.registry_credentials) {
        // --auth-file keeps its old meaning (HubOptions::auth_file), read at the pull.
        (Some(_), _) => None,
        (None, Some(uri)) => Some(absolute_source(uri, "[image] authenticated_registry_credentials_uri")?),
        (None, None) => None,
    };
    let registries_conf = match (&cli.registries_conf, &toml.registry_configuration, &toml.registry_config) {
        (Some(p), _, _) => {
            oci::RegistriesConf::load(p).context("setting up: --registries-conf")?;
            Some(ConfSource::Source(absolute_source(&p.display().to_string(), "--registries-conf")?))
        }
        (None, Some(uri), _) => {
            let src = absolute_source(uri, "[image] registry_configuration_uri")?;
            if let Source::File(p) = &src {
                oci::RegistriesConf::load(p).context("setting up: [image] registry_configuration_uri")?;
            }
            Some(ConfSource::Source(src))
        }
        (None, None, Some(conf)) => Some(ConfSource::Inline(Arc::new(conf.clone()))),
        (None, None, None) => None,
    };
    let mut roots = oci::TlsRoots::default();
    for (i, pem) in toml.extra_root_certificates.iter().enumerate() {
        roots.add_pem(pem, &format!("[image] extra_root_certificates[{i}]")).context("setting up")?;
    }
    Ok(RegistryAccess { auth, registries_conf, proxy: toml.image_pull_proxy.clone(), roots })
}

/// The hub's options: flags over `cdh.toml`.
fn hub_options(cli: &Cli, toml: &CdhToml) -> anyhow::Result<HubOptions> {
    let insecure = cli.insecure_registries.clone();
    let registry_access = registry_access(cli, toml)?;
    let policy = match &cli.pull_policy {
        Some(p) => PullPolicy::load(p)?,
        None => PullPolicy::default(),
    };
    let signature_policy = match &cli.signature_policy {
        Some(p) => {
            let loc =
                signature_policy_location(p).map_err(anyhow::Error::msg).context("--signature-policy")?;
            Some(if loc.starts_with("kbs:///") {
                loc
            } else {
                // The daemon may change directory later; the policy is read on every pull.
                std::path::absolute(&loc)
                    .with_context(|| format!("--signature-policy {loc}"))?
                    .display()
                    .to_string()
            })
        }
        None => toml.signature_policy.clone(),
    };
    let (store, note) = store_location(cli.store.as_deref(), toml.work_dir.as_deref(), &cli.bundle_root);
    if let Some(note) = note {
        tracing::warn!("{note}");
    }
    let kbs = match cli.kbs.clone().or(toml.kbs_url.clone()) {
        Some(url) => Some(KbsConfig {
            url,
            ca: kbs_ca(cli.kbs_cert.as_deref(), toml.kbs_cert.as_deref(), cli.aa_config.as_deref())?,
            // Parsed only when a KBS is configured (a daemon without one never uses it).
            attester: cli.attester.parse().map_err(|e| anyhow::anyhow!("setting up: --attester: {e}"))?,
            deadline: cli.kbs_timeout,
            initdata: guest_initdata(cli.initdata.as_deref())?,
        }),
        None => None,
    };
    Ok(HubOptions {
        kbs,
        store,
        bundle_root: cli.bundle_root.clone(),
        insecure_registries: insecure,
        policy,
        keyprovider_config: cli.keyprovider_config.clone(),
        auth_file: cli.auth_file.clone(),
        max_concurrent_layers: toml.max_concurrent_layers.unwrap_or(3),
        registry_timeouts: {
            let d = oci::RegistryTimeouts::default();
            oci::RegistryTimeouts {
                connect: toml.registry_connect_timeout.unwrap_or(d.connect),
                idle: toml.registry_idle_timeout.unwrap_or(d.idle),
                request: toml.registry_request_timeout.unwrap_or(d.request),
            }
        },
        layer_limits: {
            let d = guest_puller::extract::Limits::default();
            guest_puller::extract::Limits {
                max_ratio: toml.max_decompression_ratio.unwrap_or(d.max_ratio),
                max_total_size: toml.max_layer_size.unwrap_or(d.max_total_size),
                ..d
            }
        },
        require_signed_secrets: cli.require_signed_secrets,
        resource_cache_ttl: Duration::from_secs(cli.resource_cache_secs),
        signature_policy,
        registries_d: cli.registries_d.clone(),
        registry_access,
    })
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let toml = match &cli.config {
        Some(p) => CdhToml::load(p)?,
        None => CdhToml::default(),
    };
    for w in &toml.warnings {
        tracing::warn!("{w}");
    }
    let socket_addr = cli.socket.clone().or(toml.socket.clone()).unwrap_or_else(|| DEFAULT_SOCKET.to_owned());
    let socket = socket_path(&socket_addr).map_err(anyhow::Error::msg).context("--socket")?;
    let aa_socket = match &cli.aa_socket {
        Some(a) => Some(socket_path(a).map_err(anyhow::Error::msg).context("--aa-socket")?),
        None => None,
    };
    if !cli.bundle_root.is_absolute() {
        bail!("--bundle-root must be an absolute path");
    }
    let opts = hub_options(&cli, &toml)?;
    if opts.kbs.is_none() {
        tracing::warn!("no KBS configured: encrypted images, resources and secrets will be refused");
    }
    match &opts.signature_policy {
        Some(p) => tracing::info!(policy = %p, "signature policy enforced on every pull"),
        None => tracing::warn!(
            "no signature policy (--signature-policy or [image] image_security_policy_uri): \
             image signatures are not checked"
        ),
    }
    raise_fd_limit();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(async move {
        let hub = Arc::new(Hub::new(opts)?);
        hub.preflight().await.context("checking the signature policy at start")?;
        // Before the socket exists: a SIGTERM sent as soon as it appears (kata tearing a
        // sandbox down, a test) must reach the graceful path, not the default action.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
        let mut server = guest_puller::cdh::server::start(hub.clone(), &socket).await?;
        tracing::info!(socket = %socket.display(), kbs = ?hub.options().kbs.as_ref().map(|k| &k.url), store = %hub.options().store.display(), "cloak-cdh serving");
        let mut aa_server = match &aa_socket {
            Some(path) => {
                let s = guest_puller::cdh::aa::start(hub.clone(), path).await?;
                tracing::info!(socket = %path.display(), "attestation-agent API serving");
                Some(s)
            }
            None => None,
        };
        // kata-agent removes cdh.sock before it launches `confidential-data-hub`; the
        // daemon puts its sockets back whenever their path disappears.
        let mut keepers = vec![{
            let h = hub.clone();
            guest_puller::cdh::server::keep_published(socket.clone(), move |p| {
                let h = h.clone();
                async move { guest_puller::cdh::server::start(h, &p).await }
            })
        }];
        if let Some(path) = &aa_socket {
            let h = hub.clone();
            keepers.push(guest_puller::cdh::server::keep_published(path.clone(), move |p| {
                let h = h.clone();
                async move { guest_puller::cdh::aa::start(h, &p).await }
            }));
        }
        let rest = match cli.rest {
            Some(addr) => {
                let listener =
                    tokio::net::TcpListener::bind(addr).await.with_context(|| format!("--rest {addr}: bind"))?;
                let opts = RestOptions::from_features(&cli.rest_features, cli.rest_tee_key);
                tracing::info!(%addr, features = %cli.rest_features, "REST endpoint serving (loopback peers only)");
                let h = hub.clone();
                Some(tokio::spawn(async move {
                    if let Err(e) = guest_puller::cdh::rest::serve_with(h, listener, opts).await {
                        tracing::error!(error = %report::Line(&e), "REST endpoint stopped");
                    }
                }))
            }
            None => None,
        };
        let reaper = hub.spawn_volume_reaper();
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM: finishing in-flight calls"),
            _ = int.recv() => tracing::info!("SIGINT: finishing in-flight calls"),
        }
        for k in keepers.drain(..) {
            k.abort();
        }
        let left = hub.drain(cli.shutdown_grace).await;
        if left > 0 {
            tracing::warn!(in_flight = left, "shutdown grace elapsed; exiting with calls still running");
        }
        // Secure volumes: unmounted and closed, so no mapping (no volume key) outlives the daemon.
        reaper.abort();
        if hub.close_volumes().await > 0 {
            tracing::error!("some secure volumes could not be closed (see above)");
        }
        if let Some(r) = rest {
            r.abort();
        }
        let _ = tokio::time::timeout(Duration::from_secs(2), server.shutdown()).await;
        let _ = std::fs::remove_file(&socket);
        if let (Some(s), Some(path)) = (aa_server.as_mut(), &aa_socket) {
            let _ = tokio::time::timeout(Duration::from_secs(2), s.shutdown()).await;
            let _ = std::fs::remove_file(path);
        }
        tracing::info!(attestations = hub.attestations(), "cloak-cdh stopped");
        anyhow::Ok(())
    })?;
    // In-flight pulls run on blocking threads; do not wait for them past the grace.
    rt.shutdown_timeout(Duration::from_secs(1));
    Ok(())
}

/// Deep layer trees hold one directory fd per level; raise the soft limit.
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
