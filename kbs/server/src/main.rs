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
    /// Register a resource (admin): POST /kbs/v0/resource/REPO/TYPE/TAG.
    ///
    /// Create-only by default: a resource that already exists is left untouched and the
    /// command fails, because replacing a KEK locks out every image wrapped with it.
    PutResource {
        #[arg(long)]
        url: String,
        /// Ed25519 admin private key (PKCS#8 PEM).
        #[arg(long)]
        admin_key: PathBuf,
        /// Overwrite the resource if it exists (images wrapped with the old bytes can
        /// no longer be decrypted).
        #[arg(long)]
        replace: bool,
        /// REPO/TYPE/TAG or kbs:///REPO/TYPE/TAG
        uri: String,
        file: PathBuf,
    },
    /// Fetch a resource as a guest would (RCAR, then GET).
    GetResource {
        #[arg(long)]
        url: String,
        /// auto | snp | tdx | sample (sample is allowed because it is named explicitly)
        #[arg(long, default_value = "auto")]
        attester: String,
        uri: String,
        /// Write the secret here (mode 0600); without it, it goes to stdout only.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Verify one piece of SNP or TDX evidence offline against the trust anchors and,
    /// optionally, a policy; print the claims. Exit 0 only when it verifies.
    VerifyEvidence(VerifyArgs),
    /// Load generator for ci/bench-kbs.sh (sample attester).
    #[command(hide = true)]
    Loadgen {
        #[arg(long)]
        url: String,
        uri: String,
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
        #[arg(long, default_value_t = 1000)]
        requests: usize,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum TeeArg {
    Tdx,
    Snp,
}

#[derive(clap::Args)]
struct VerifyArgs {
    #[arg(long, value_enum)]
    tee: TeeArg,
    /// TDX: a raw quote or the evidence JSON; SNP: a raw report (binary or hex) or the
    /// evidence JSON (cloak's or CoCo attestation-agent's).
    #[arg(long)]
    evidence: PathBuf,
    /// TDX collateral, QuoteCollateralV3 JSON.
    #[arg(long)]
    collateral: Option<PathBuf>,
    /// SNP: the VCEK (or VLEK) certificate, DER or PEM.
    #[arg(long)]
    vcek: Option<PathBuf>,
    /// SNP: a directory of VCEK/VLEK certificates; the one matching the report is used.
    #[arg(long)]
    vcek_dir: Option<PathBuf>,
    /// SNP: an ARK to trust instead of the bundled AMD ARKs.
    #[arg(long)]
    ark: Option<PathBuf>,
    /// SNP: the ASK (or ASVK) issued by that ARK.
    #[arg(long)]
    ask: Option<PathBuf>,
    /// TDX: an Intel SGX Root CA instead of the bundled one.
    #[arg(long)]
    root_ca: Option<PathBuf>,
    /// Verification time: unix seconds or RFC 3339 (default: now).
    #[arg(long)]
    at: Option<String>,
    /// A broker policy file; without it: any measurement, no debug, TDX UpToDate only.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Print the claims as JSON (hex fields lowercase).
    #[arg(long)]
    json: bool,
}

fn verify_evidence(a: VerifyArgs) -> anyhow::Result<bool> {
    use kbs_server::verifier::offline;
    let e = |s: String| anyhow::anyhow!(s);
    let mut inp =
        offline::OfflineInputs { evidence: offline::read(&a.evidence).map_err(e)?, ..Default::default() };
    inp.collateral = a.collateral.as_deref().map(offline::read).transpose().map_err(e)?;
    inp.tdx_root_ca_der = a
        .root_ca
        .as_deref()
        .map(|p| offline::read_cert(p).and_then(|c| c.to_der().map_err(|x| x.to_string())))
        .transpose()
        .map_err(e)?;
    inp.snp.vcek = a.vcek.as_deref().map(offline::read_vcek).transpose().map_err(e)?;
    inp.snp.vcek_dir = a.vcek_dir.as_deref().map(offline::check_dir).transpose().map_err(e)?;
    inp.snp.ark = a.ark.as_deref().map(offline::read_cert).transpose().map_err(e)?;
    if let Some(p) = &a.ask {
        let c = offline::read_cert(p).map_err(e)?;
        inp.snp.asvk = Some(c.clone());
        inp.snp.ask = Some(c);
    }
    inp.at = match &a.at {
        Some(s) => offline::parse_instant(s).map_err(e)?,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    };
    let policy = a.policy.as_deref().map(kbs_server::policy::BrokerPolicy::load).transpose()?;
    let tee = match a.tee {
        TeeArg::Tdx => offline::OfflineTee::Tdx,
        TeeArg::Snp => offline::OfflineTee::Snp,
    };
    match offline::verify_with_policy(tee, &inp, policy.as_ref()) {
        Ok((claims, _)) => {
            if a.json {
                println!("{}", serde_json::to_string_pretty(&claims)?);
            } else {
                println!("verified: {}", serde_json::to_string(&claims)?);
            }
            Ok(true)
        }
        Err(d) => {
            if a.json {
                println!(
                    "{}",
                    serde_json::json!({"verified": false, "reason": d.reason.as_str(), "detail": d.detail})
                );
            }
            eprintln!("cloak-kbs: verify-evidence: refused: {d}");
            Ok(false)
        }
    }
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
    /// A resource pattern the admin key may read back, so build tools reuse a KEK
    /// registered earlier (repeatable; replaces the default "*/image-kek/*",
    /// "*/key/generated*"; "none" allows no read-back at all).
    #[arg(long, value_name = "PATTERN")]
    admin_readable: Vec<String>,
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
    if !a.admin_readable.is_empty() {
        cfg.admin_readable = a.admin_readable.into_iter().filter(|p| p != "none").collect();
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
        Cmd::PutResource { url, admin_key, replace, uri, file } => {
            let uri: kbs_client::ResourceUri = uri.parse()?;
            let pem = zeroize::Zeroizing::new(
                std::fs::read(&admin_key).with_context(|| format!("reading {}", admin_key.display()))?,
            );
            let data = zeroize::Zeroizing::new(
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?,
            );
            let admin = kbs_client::AdminClient::new(&url, &pem)?;
            let rt = tokio::runtime::Runtime::new()?;
            if replace {
                rt.block_on(admin.put_resource(&uri, &data))?;
                eprintln!("stored {uri} (replacing any earlier value)");
            } else {
                match rt.block_on(admin.create_resource(&uri, &data))? {
                    kbs_client::Created::New => eprintln!("stored {uri}"),
                    kbs_client::Created::Exists => anyhow::bail!(
                        "{uri} already exists in the KBS and was left unchanged; pass --replace to overwrite it \
                         (images wrapped with the current value will no longer decrypt)"
                    ),
                }
            }
            Ok(())
        }
        Cmd::GetResource { url, attester, uri, out } => {
            let uri: kbs_client::ResourceUri = uri.parse()?;
            let kind: kbs_client::AttesterKind = attester.parse()?;
            let opts = kbs_client::AttesterOptions {
                // Naming `--attester sample` is the explicit opt-in the attester requires.
                allow_sample: matches!(kind, kbs_client::AttesterKind::Sample),
                ..Default::default()
            };
            let att = kbs_client::make_attester(kind, &opts)?;
            let client = kbs_client::KbsClient::new(&url, att, kbs_client::ClientConfig::default())?;
            let rt = tokio::runtime::Runtime::new()?;
            let secret = rt.block_on(client.get_resource(&uri))?;
            match out {
                Some(p) => write_new(&p, &secret, 0o600)?,
                None => {
                    use std::io::Write;
                    let mut so = std::io::stdout().lock();
                    so.write_all(&secret)?;
                    so.flush()?;
                }
            }
            Ok(())
        }
        Cmd::VerifyEvidence(a) => {
            if verify_evidence(a)? {
                Ok(())
            } else {
                std::process::exit(1)
            }
        }
        Cmd::Loadgen { url, uri, concurrency, requests } => {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(loadgen(url, uri.parse()?, concurrency, requests))
        }
        Cmd::GenAdminKey { out, public_out } => {
            let (private, public) = kbs_server::admin::generate_admin_key()?;
            write_new(&out, &private, 0o600)?;
            write_new(&public_out, &public, 0o644)?;
            Ok(())
        }
    }
}

/// Runs `requests` full attest+fetch cycles (a fresh KBS client, hence a fresh RCAR
/// and a fresh ephemeral TEE key, each time) over `concurrency` workers and prints
/// one JSON line with latency percentiles. Each worker is one "guest" keeping its
/// HTTP connection pool, as a guest's agent does across its requests. The pools are
/// built before the clock starts: building one loads the system's TLS roots (several
/// milliseconds of CPU), which a guest does once at boot, not per attestation.
async fn loadgen(
    url: String,
    uri: kbs_client::ResourceUri,
    concurrency: usize,
    requests: usize,
) -> anyhow::Result<()> {
    let opts = kbs_client::AttesterOptions { allow_sample: true, ..Default::default() };
    let att = kbs_client::make_attester(kbs_client::AttesterKind::Sample, &opts)?;
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let pools =
        (0..concurrency.max(1)).map(|_| kbs_client::client::http_client()).collect::<Result<Vec<_>, _>>()?;
    let start = std::time::Instant::now();
    let mut tasks = Vec::new();
    for http in pools {
        let (url, uri, att, next) = (url.clone(), uri.clone(), att.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < requests {
                let t = std::time::Instant::now();
                let c = kbs_client::KbsClient::with_http_client(
                    &url,
                    att.clone(),
                    kbs_client::ClientConfig::default(),
                    http.clone(),
                )?;
                c.get_resource(&uri).await?;
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let wall = start.elapsed().as_secs_f64();
    all.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1))).copied().unwrap_or(0.0)
    };
    println!(
        "{{\"concurrency\":{concurrency},\"requests\":{},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"per_sec\":{:.1}}}",
        all.len(),
        pct(0.50),
        pct(0.99),
        all.len() as f64 / wall
    );
    Ok(())
}
