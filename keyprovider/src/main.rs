//! `cloak-keyprovider`: an ocicrypt keyprovider (gRPC `serve`, cmd `exec`) that
//! wraps layer keys with KBS-held KEKs (CoCo's `attestation-agent` format).
//! Glue only: flags → validated config → library objects → exit code.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand, ValueEnum};
use keyprovider::kek::{KbsKekUnwrapper, KeyPathRule, DEFAULT_KEK_TTL, PROVIDER_NAME};
use keyprovider::server::{self, KeyProviderCore, Limits, ListenAddr, Listener};
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
    /// auto | snp | tdx | sample (sample: development only).
    #[arg(long, value_enum, default_value_t = Attester::Auto)]
    attester: Attester,
    /// Ed25519 PKCS#8 PEM admin key, to register generated KEKs in the KBS.
    #[arg(long)]
    kbs_admin_key: Option<PathBuf>,
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

/// `--attester`.
#[derive(Debug, Clone, Copy, ValueEnum)]
enum Attester {
    Auto,
    Snp,
    Tdx,
    Sample,
}

impl Attester {
    fn kind(self) -> kbs_client::AttesterKind {
        match self {
            Attester::Auto => kbs_client::AttesterKind::Auto,
            Attester::Snp => kbs_client::AttesterKind::Snp,
            Attester::Tdx => kbs_client::AttesterKind::Tdx,
            Attester::Sample => kbs_client::AttesterKind::Sample,
        }
    }

    fn name(self) -> String {
        self.to_possible_value().map(|v| v.get_name().to_owned()).unwrap_or_default()
    }
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
    let admin = match (&c.kbs_admin_key, &c.kbs_url) {
        (Some(path), Some(url)) => {
            let pem = zeroize::Zeroizing::new(
                std::fs::read(path).with_context(|| format!("reading --kbs-admin-key {}", path.display()))?,
            );
            Some(Arc::new(kbs_client::AdminClient::new(url, &pem)?))
        }
        (Some(_), None) => anyhow::bail!("--kbs-admin-key needs --kbs-url"),
        _ => None,
    };
    let unwrapper = match &c.kbs_url {
        Some(url) => {
            let kind = c.attester.kind();
            let allow_sample = matches!(kind, kbs_client::AttesterKind::Sample);
            let opts = kbs_client::AttesterOptions { allow_sample, ..Default::default() };
            // A build machine wraps without a TEE: an attester that cannot start only
            // disables unwrapping, and unwrap requests say why.
            match kbs_client::make_attester(kind, &opts) {
                Ok(attester) => {
                    let cfg = kbs_client::ClientConfig {
                        deadline: Duration::from_secs(c.kbs_deadline),
                        ..Default::default()
                    };
                    let client = kbs_client::KbsClient::new(url, attester, cfg)?;
                    Ok(Arc::new(
                        KbsKekUnwrapper::new(client)
                            .with_ttl(Duration::from_secs(c.kek_ttl))
                            .with_provider_name(&c.name),
                    ))
                }
                Err(e) => Err(format!("attester {:?} unavailable: {e}", c.attester.name())),
            }
        }
        None => Err("no --kbs-url: cannot fetch KEKs".to_owned()),
    };
    let mut core = match unwrapper {
        Ok(u) => KeyProviderCore::new(admin, Some(u)),
        Err(why) => KeyProviderCore::new(admin, None).with_unwrap_disabled_reason(&why),
    }
    .with_name(&c.name)
    .with_keypath_rule(keypath_rule(c)?);
    if !c.keys.is_empty() {
        let mut keys = Vec::new();
        for p in &c.keys {
            let bytes = zeroize::Zeroizing::new(
                std::fs::read(p).with_context(|| format!("reading --key {}", p.display()))?,
            );
            keys.push(
                ocicrypt::jwe::load_private_key(&bytes)
                    .with_context(|| format!("loading --key {}", p.display()))?,
            );
        }
        core = core.with_local_unwrapper(Arc::new(ocicrypt::jwe::JweUnwrapper::new(keys)));
    }
    Ok(Arc::new(core))
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
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // Logs go to stderr (stdout carries the cmd protocol). No secrets are logged anywhere.
    let default = if matches!(cli.cmd, Cmd::Exec { .. }) { "warn" } else { "info" };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("CLOAK_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default)),
        )
        .init();
    match &cli.cmd {
        Cmd::Serve { grpc, common, max_request, max_concurrent } => {
            let addr: ListenAddr = grpc.parse()?;
            let core = build_core(common)?;
            let listener = Listener::bind(&addr).await?;
            tracing::info!(addr = %grpc, "cloak-keyprovider listening");
            let limits = Limits { max_request: *max_request, max_concurrent: *max_concurrent };
            server::serve(listener, core, limits, shutdown_signal()).await?;
            Ok(())
        }
        Cmd::Exec { common } => {
            let code = exec(common).await?;
            std::process::exit(code);
        }
    }
}
