//! `cloak-kbs`: the broker (`serve`) and operator subcommands. Flags are parsed into a
//! validated config and handed to the library; errors map to exit codes here.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cloak-kbs", version, about = "Key Broker Service speaking Trustee's KBS protocol 0.4.0")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the broker.
    Serve(ServeArgs),
    /// Generate an Ed25519 admin key pair (PKCS#8 private PEM, SPKI public PEM).
    GenAdminKey {
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        public_out: PathBuf,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// YAML file with the same keys as these flags (flags given explicitly win).
    #[arg(long)]
    config: Option<PathBuf>,
    #[arg(long)]
    listen: Option<std::net::SocketAddr>,
    #[arg(long)]
    policy: Option<PathBuf>,
    #[arg(long)]
    resources: Option<PathBuf>,
    #[arg(long)]
    admin_public_key: Option<PathBuf>,
    /// AMD ARK certificate (trust anchor for SNP).
    #[arg(long)]
    snp_ark: Option<PathBuf>,
    /// AMD ASK certificate.
    #[arg(long)]
    snp_ask: Option<PathBuf>,
    #[arg(long)]
    token_ttl_secs: Option<u64>,
    #[arg(long)]
    attestation_cache_secs: Option<u64>,
}

fn serve_config(a: ServeArgs) -> anyhow::Result<kbs_server::ServeConfig> {
    let mut cfg = match &a.config {
        Some(p) => kbs_server::ServeConfig::from_file(p)?,
        None => kbs_server::ServeConfig::default(),
    };
    if let Some(v) = a.listen {
        cfg.listen = v;
    }
    if a.policy.is_some() {
        cfg.policy = a.policy;
    }
    if let Some(v) = a.resources {
        cfg.resources = v;
    }
    if a.admin_public_key.is_some() {
        cfg.admin_public_key = a.admin_public_key;
    }
    if a.snp_ark.is_some() {
        cfg.snp.ark = a.snp_ark;
    }
    if a.snp_ask.is_some() {
        cfg.snp.ask = a.snp_ask;
    }
    if let Some(v) = a.token_ttl_secs {
        cfg.token_ttl_secs = v;
    }
    if let Some(v) = a.attestation_cache_secs {
        cfg.attestation_cache_secs = v;
    }
    Ok(cfg)
}

fn write_new(path: &std::path::Path, data: &[u8], mode: u32) -> anyhow::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.write_all(data)?;
    f.sync_all()?;
    Ok(())
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cloak-kbs: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Serve(a) => {
            let cfg = serve_config(a)?;
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(kbs_server::serve(cfg))?;
            Ok(())
        }
        Cmd::GenAdminKey { out, public_out } => {
            let (private, public) = kbs_server::admin::generate_admin_key()?;
            write_new(&out, &private, 0o600)?;
            write_new(&public_out, &public, 0o644)?;
            Ok(())
        }
    }
}
