//! `cloak-keyprovider`: an ocicrypt keyprovider (gRPC `serve`, cmd `exec`) that
//! wraps layer keys with KBS-held KEKs (CoCo's `attestation-agent` format).
//! Glue only: flags → validated config → library objects → exit code.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use kbs_client::AttesterKind;
use keyprovider::kek::{KeyPathRule, DEFAULT_KEK_TTL, PROVIDER_NAME};
use keyprovider::server::{self, KeyProviderCore, Limits, ListenAddr, Listener};
use keyprovider::session::{
    AttesterFailure, GuestSession, KbsConfig, SessionConfig, SessionError, UnwrapperOrder,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Parser)]
#[command(
    name = "cloak-keyprovider",
    version,
    about = "ocicrypt keyprovider backed by a KBS (CoCo attestation-agent compatible)"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Serve the gRPC KeyProviderService.
    Serve {
        /// `host:port` or `unix:/path`.
        #[arg(long)]
        grpc: String,
        #[command(flatten)]
        common: Common,
        /// Largest request in bytes.
        #[arg(long, default_value_t = server::DEFAULT_MAX_REQUEST)]
        max_request: usize,
        /// Requests handled at once (more wait).
        #[arg(long, default_value_t = server::DEFAULT_MAX_CONCURRENT)]
        max_concurrent: usize,
    },
    /// cmd protocol: one JSON request on stdin, one JSON answer on stdout.
    Exec {
        #[command(flatten)]
        common: Common,
    },
}

#[derive(Args)]
struct Common {
    /// KBS base URL (needed to unwrap, and to register generated KEKs).
    #[arg(long, env = "CLOAK_KBS_URL")]
    kbs_url: Option<String>,
    /// auto | snp | tdx | az-snp-vtpm | az-tdx-vtpm | cca | sample (sample: development only).
    #[arg(long, value_enum, default_value_t = AttesterKind::Auto)]
    attester: AttesterKind,
    /// Ed25519 PKCS#8 PEM admin key, to register generated KEKs in the KBS.
    #[arg(long)]
    kbs_admin_key: Option<PathBuf>,
    /// CA bundle (PEM) trusted for an https KBS, beside the built-in roots.
    #[arg(long, value_name = "FILE")]
    kbs_cert: Option<PathBuf>,
    /// Local private keys for JWE annotations (PEM/DER/JWK), repeatable.
    #[arg(long = "key")]
    keys: Vec<PathBuf>,
    /// Provider name to read wrap parameters under.
    #[arg(long, default_value = PROVIDER_NAME)]
    name: String,
    /// Seconds a fetched KEK stays cached (0 = no cache).
    #[arg(long, default_value_t = DEFAULT_KEK_TTL.as_secs())]
    kek_ttl: u64,
    /// Total seconds of KBS retries before giving up.
    #[arg(long, default_value_t = 30)]
    kbs_deadline: u64,
    /// Accept `keypath=FILE` in wrap requests only for regular files inside DIR
    /// (links resolved). Without it any regular file this process can read may be
    /// named, as with coco_keyprovider: set it whenever clients other than your
    /// own build tools can reach the provider. Reads are capped at 33 bytes either way.
    #[arg(long, value_name = "DIR")]
    keypath_dir: Option<PathBuf>,
    /// Refuse `keypath=` in wrap requests altogether (KEKs then come only from the
    /// KBS through --kbs-admin-key).
    #[arg(long, conflicts_with = "keypath_dir")]
    no_keypath: bool,
}

fn keypath_rule(c: &Common) -> anyhow::Result<KeyPathRule> {
    Ok(match (&c.keypath_dir, c.no_keypath) {
        (_, true) => KeyPathRule::Refused,
        (Some(dir), false) => {
            let real = std::fs::canonicalize(dir)
                .with_context(|| format!("--keypath-dir {}: cannot resolve it", dir.display()))?;
            anyhow::ensure!(real.is_dir(), "--keypath-dir {} is not a directory", dir.display());
            KeyPathRule::Under(real)
        }
        (None, false) => KeyPathRule::Any,
    })
}

fn build_core(c: &Common) -> anyhow::Result<Arc<KeyProviderCore>> {
    let ca = c.kbs_cert.as_deref().map(kbs_client::CaBundle::read).transpose().context("--kbs-cert")?;
    let admin = match (&c.kbs_admin_key, &c.kbs_url) {
        (Some(path), Some(url)) => {
            let pem = zeroize::Zeroizing::new(
                std::fs::read(path).with_context(|| format!("reading --kbs-admin-key {}", path.display()))?,
            );
            Some(Arc::new(kbs_client::AdminClient::trusting(url, &pem, ca.as_ref())?))
        }
        (Some(_), None) => anyhow::bail!("--kbs-admin-key needs --kbs-url"),
        _ => None,
    };
    let session = GuestSession::build(&SessionConfig {
        kbs: c.kbs_url.as_ref().map(|url| KbsConfig {
            attester: c.attester,
            deadline: Duration::from_secs(c.kbs_deadline),
            ca: ca.clone(),
            ..KbsConfig::new(url.clone())
        }),
        key_files: c.keys.clone(),
        order: UnwrapperOrder::KbsFirst,
        // A build machine wraps without a TEE: an attester that cannot start only
        // disables unwrapping, and unwrap requests say why.
        attester_failure: AttesterFailure::DisablesKbs,
        kek_ttl: Duration::from_secs(c.kek_ttl),
        kek_provider: c.name.clone(),
        ..Default::default()
    })
    .map_err(flag_error)?;
    let mut core = match (session.kek_unwrapper(), session.attester_unavailable()) {
        (Some(u), _) => KeyProviderCore::new(admin, Some(u)),
        (None, Some(e)) => KeyProviderCore::new(admin, None).with_unwrap_disabled_reason(&format!(
            "attester {:?} unavailable: {}",
            c.attester.name(),
            report::Line(e)
        )),
        (None, None) => {
            KeyProviderCore::new(admin, None).with_unwrap_disabled_reason("no --kbs-url: cannot fetch KEKs")
        }
    }
    .with_name(&c.name)
    .with_keypath_rule(keypath_rule(c)?);
    if let Some(local) = session.local_unwrapper() {
        core = core.with_local_unwrapper(local);
    }
    Ok(Arc::new(core))
}

/// A session error in this binary's words (its flags are `--key`, `--kbs-url`).
fn flag_error(e: SessionError) -> anyhow::Error {
    match e {
        SessionError::ReadKey { path, source } => {
            anyhow::Error::new(source).context(format!("reading --key {}", path.display()))
        }
        SessionError::BadKey { path, source } => {
            anyhow::Error::new(source).context(format!("loading --key {}", path.display()))
        }
        SessionError::Kbs(e) => e.into(),
        e => e.into(),
    }
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = term => {},
        _ = tokio::signal::ctrl_c() => {},
    }
    tracing::info!("shutting down: draining in-flight calls");
}

async fn exec(common: &Common) -> anyhow::Result<i32> {
    let core = build_core(common)?;
    let mut input = Vec::new();
    let limit = server::DEFAULT_MAX_REQUEST;
    tokio::io::stdin().take(limit as u64 + 1).read_to_end(&mut input).await.context("reading stdin")?;
    match server::exec_once(&core, &input, limit).await {
        Ok(out) => {
            let mut stdout = tokio::io::stdout();
            stdout.write_all(&out).await.context("writing stdout")?;
            stdout.flush().await.context("flushing stdout")?;
            Ok(0)
        }
        Err(e) => {
            eprintln!("{}", server::error_json(&e));
            Ok(server::exit_code(&e))
        }
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    // Logs go to stderr (stdout carries the cmd protocol). No secrets are logged anywhere.
    let default = if matches!(cli.cmd, Cmd::Exec { .. }) { "warn" } else { "info" };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("CLOAK_LOG").unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new(format!("{default},{}", kbs_client::tls::QUIET_VERIFIER_LOG))
        }))
        .init();
    match run(&cli.cmd).await {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            // The chain once, on one line (not anyhow's Debug "Error: ... Caused by:").
            eprintln!("cloak-keyprovider: {}", report::line(e.as_ref()));
            ExitCode::FAILURE
        }
    }
}

/// The command; `Ok` carries the exit status (`exec` maps a refused request to one).
async fn run(cmd: &Cmd) -> anyhow::Result<u8> {
    match cmd {
        Cmd::Serve { grpc, common, max_request, max_concurrent } => {
            let addr: ListenAddr = grpc.parse()?;
            let core = build_core(common)?;
            let listener = Listener::bind(&addr).await?;
            tracing::info!(addr = %grpc, "cloak-keyprovider listening");
            let limits = Limits { max_request: *max_request, max_concurrent: *max_concurrent };
            server::serve(listener, core, limits, shutdown_signal()).await?;
            Ok(0)
        }
        Cmd::Exec { common } => {
            let code = exec(common).await?;
            Ok(u8::try_from(code).unwrap_or(1))
        }
    }
}
