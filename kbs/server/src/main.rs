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
    Serve(Box<ServeArgs>),
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
        /// CA bundle (PEM) trusted for an https broker, beside the built-in roots.
        #[arg(long, value_name = "FILE")]
        kbs_cert: Option<PathBuf>,
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
        /// CA bundle (PEM) trusted for an https broker, beside the built-in roots.
        #[arg(long, value_name = "FILE")]
        kbs_cert: Option<PathBuf>,
        uri: String,
        /// Write the secret here (mode 0600); without it, it goes to stdout only.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Verify one piece of SNP or TDX evidence offline against the trust anchors and,
    /// optionally, a policy; print the claims. Exit 0 only when it verifies.
    VerifyEvidence(VerifyArgs),
    /// Copy resources (and, with --policy, the policy) from one store to another, e.g.
    /// `--from local:DIR --to etcd://HOST:2379/PREFIX` or back. Create-only: a resource
    /// already in the target with other bytes is reported and left alone unless
    /// --overwrite is given.
    Migrate {
        #[arg(long, value_name = "SPEC")]
        from: kbs_server::storage::StoreSpec,
        #[arg(long, value_name = "SPEC")]
        to: kbs_server::storage::StoreSpec,
        /// 32-byte master key sealing values in an etcd store (both sides when both are etcd).
        #[arg(long)]
        master_key: Option<PathBuf>,
        /// An earlier master key the source's values may still be sealed under.
        #[arg(long)]
        old_master_key: Vec<PathBuf>,
        /// A policy file to write into the target (etcd) store.
        #[arg(long)]
        policy: Option<PathBuf>,
        #[arg(long)]
        overwrite: bool,
        #[command(flatten)]
        etcd: EtcdArgs,
    },
    /// Re-seal every value of an etcd store under --master-key (after a rotation: run
    /// the replicas with the new --master-key and the old one as --old-master-key first).
    Reseal {
        #[arg(long, value_name = "SPEC")]
        store: kbs_server::storage::StoreSpec,
        #[arg(long)]
        master_key: PathBuf,
        #[arg(long)]
        old_master_key: Vec<PathBuf>,
        #[command(flatten)]
        etcd: EtcdArgs,
    },
}

/// How to reach etcd members that use TLS and authentication.
#[derive(clap::Args, Default)]
struct EtcdArgs {
    /// CA certificate (PEM) of the etcd members (TLS).
    #[arg(long)]
    etcd_ca: Option<PathBuf>,
    /// Client certificate (PEM) for members that require one (`--client-cert-auth`);
    /// with --etcd-key and --etcd-ca. Issue it without a CommonName: etcd 3.4 refuses
    /// gateway requests whose certificate has one; name the user with --etcd-user.
    #[arg(long, requires = "etcd_key")]
    etcd_cert: Option<PathBuf>,
    /// Private key (PEM) of --etcd-cert.
    #[arg(long, requires = "etcd_cert")]
    etcd_key: Option<PathBuf>,
    /// etcd user (etcd authentication enabled); with --etcd-password-file.
    #[arg(long, requires = "etcd_password_file")]
    etcd_user: Option<String>,
    /// File holding the etcd user's password (one line), so it is not on the command line.
    #[arg(long, requires = "etcd_user")]
    etcd_password_file: Option<PathBuf>,
}

impl EtcdArgs {
    fn apply(self, cfg: &mut kbs_server::ServeConfig) {
        if self.etcd_ca.is_some() {
            cfg.etcd_ca = self.etcd_ca;
        }
        if self.etcd_cert.is_some() {
            cfg.etcd_cert = self.etcd_cert;
            cfg.etcd_key = self.etcd_key;
        }
        if self.etcd_user.is_some() {
            cfg.etcd_user = self.etcd_user;
            cfg.etcd_password_file = self.etcd_password_file;
        }
    }
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum TeeArg {
    Tdx,
    Snp,
    Cca,
    /// An Azure confidential VM on SEV-SNP: the evidence JSON (HCL report, TPM quote, VCEK).
    #[value(name = "az-snp-vtpm")]
    AzSnpVtpm,
    /// An Azure confidential VM on TDX: the evidence JSON (HCL report, TPM quote, TD quote).
    #[value(name = "az-tdx-vtpm")]
    AzTdxVtpm,
}

#[derive(clap::Args)]
struct VerifyArgs {
    #[arg(long, value_enum)]
    tee: TeeArg,
    /// TDX: a raw quote or the evidence JSON; SNP: a raw report (binary or hex) or the
    /// evidence JSON (cloak's or CoCo attestation-agent's); CCA: the CBOR token or the
    /// evidence JSON (`{"token": ...}`); az-snp-vtpm / az-tdx-vtpm: the evidence JSON
    /// (every version attestation-agent emits; the quote's extraData is shown, not
    /// compared: there is no session).
    #[arg(long)]
    evidence: PathBuf,
    /// TDX and az-tdx-vtpm collateral, QuoteCollateralV3 JSON.
    #[arg(long)]
    collateral: Option<PathBuf>,
    /// SNP and az-snp-vtpm: the VCEK (or VLEK) certificate, DER or PEM (az-snp-vtpm
    /// evidence usually carries its own).
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
    /// CCA: the platform keys (CPAKs): veraison ccatoken's trust-anchor store (a JSON
    /// list of {"implementation-id", "instance-id", "pkey": JWK}) or a single JWK.
    #[arg(long)]
    cca_trust_anchors: Option<PathBuf>,
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
    if let Some(p) = &a.cca_trust_anchors {
        let bytes = offline::read(p).map_err(e)?;
        inp.cca = kbs_server::verifier::cca::CcaTrust::parse(&bytes).map_err(|x| {
            anyhow::Error::new(x).context(format!("reading --cca-trust-anchors {}", p.display()))
        })?;
    }
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
        TeeArg::Cca => offline::OfflineTee::Cca,
        TeeArg::AzSnpVtpm => offline::OfflineTee::AzSnpVtpm,
        TeeArg::AzTdxVtpm => offline::OfflineTee::AzTdxVtpm,
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
                // `reason` and `detail` as before; `error` and `chain` as every cloak
                // binary's JSON failure carries them (report::json).
                let mut v = report::json(&d);
                if let Some(o) = v.as_object_mut() {
                    o.insert("verified".into(), false.into());
                    o.insert("reason".into(), d.reason.as_str().into());
                    o.insert("detail".into(), d.detail.clone().into());
                }
                println!("{v}");
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
    /// Serve TLS with this certificate chain (PEM, leaf first); with --tls-key. Reloaded
    /// on SIGHUP (a bad new pair is refused and the old one stays).
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Private key (PEM) of --tls-cert.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve plain HTTP on a non-loopback --listen address (a TLS-terminating proxy in
    /// front is the only way in). A loopback address serves plain HTTP without it.
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"])]
    insecure_http: bool,
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Same as --store local:DIR.
    #[arg(long)]
    resources: Option<PathBuf>,
    /// Where state lives: local:DIR (default: the --resources directory) or
    /// etcd://HOST:PORT[,HOST:PORT...]/PREFIX (replicas sharing state).
    #[arg(long, value_name = "SPEC")]
    store: Option<kbs_server::storage::StoreSpec>,
    /// 32-byte file (head -c 32 /dev/urandom) sealing values in a shared store; required
    /// for etcd, identical on every replica, never stored in etcd.
    #[arg(long, env = "CLOAK_KBS_MASTER_KEY_FILE")]
    master_key: Option<PathBuf>,
    /// An earlier master key still accepted when opening values (rotation; repeatable).
    #[arg(long)]
    old_master_key: Vec<PathBuf>,
    /// Seconds resource reads may be served from the last synchronised state while
    /// etcd is unreachable or without quorum (0: fail closed at once).
    #[arg(long)]
    store_stale_secs: Option<u64>,
    #[command(flatten)]
    etcd: EtcdArgs,
    #[arg(long)]
    admin_public_key: Option<PathBuf>,
    /// Refuse admin tokens valid for longer than this many seconds, counted from their
    /// `iat` and from now (default 86400, one day; cloak's own tokens live 300 s).
    /// A leaked token is then useless within a day, not for the years its `exp` claims.
    #[arg(long, value_name = "SECS")]
    admin_token_max_lifetime_secs: Option<u64>,
    /// Close a connection that has not sent a request's complete headers within this
    /// many seconds of opening or of its previous answer; idle keep-alive connections
    /// close after the same time (default 10). Half-open connections then cannot hold
    /// the broker's file descriptors and lock guests out.
    #[arg(long, value_name = "SECS")]
    request_header_timeout_secs: Option<u64>,
    /// Answer 408 and close the connection when a request's body has not arrived
    /// completely within this many seconds of its headers (default 10; progress does
    /// not extend it).
    #[arg(long, value_name = "SECS")]
    request_body_timeout_secs: Option<u64>,
    /// At most this many distinct pod/namespace pairs get attestation metrics of their
    /// own; later pairs are counted under pod="other" (default 1000). Guests choose
    /// these names, so the cap is what keeps /metrics and memory bounded.
    #[arg(long, value_name = "N")]
    metrics_max_pods: Option<usize>,
    /// At most this many distinct resource names get resource metrics of their own;
    /// later names are counted under resource="other" (default 1000).
    #[arg(long, value_name = "N")]
    metrics_max_resources: Option<usize>,
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
    if a.tls_cert.is_some() {
        cfg.tls_cert = a.tls_cert;
        cfg.tls_key = a.tls_key;
        cfg.insecure_http = false;
    }
    if a.insecure_http {
        cfg.insecure_http = true;
        cfg.tls_cert = None;
        cfg.tls_key = None;
    }
    if a.policy.is_some() {
        cfg.policy = a.policy;
    }
    if let Some(v) = a.resources {
        cfg.resources = v;
    }
    if a.store.is_some() {
        cfg.store = a.store;
    }
    if a.master_key.is_some() {
        cfg.master_key = a.master_key;
    }
    if !a.old_master_key.is_empty() {
        cfg.old_master_keys = a.old_master_key;
    }
    if let Some(v) = a.store_stale_secs {
        cfg.store_stale_secs = v;
    }
    a.etcd.apply(&mut cfg);
    if a.admin_public_key.is_some() {
        cfg.admin_public_key = a.admin_public_key;
    }
    if let Some(v) = a.admin_token_max_lifetime_secs {
        cfg.admin_token_max_lifetime_secs = v;
    }
    if let Some(v) = a.request_header_timeout_secs {
        cfg.request_header_timeout_secs = v;
    }
    if let Some(v) = a.request_body_timeout_secs {
        cfg.request_body_timeout_secs = v;
    }
    if let Some(v) = a.metrics_max_pods {
        cfg.metrics_max_pods = v;
    }
    if let Some(v) = a.metrics_max_resources {
        cfg.metrics_max_resources = v;
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
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new(format!("info,{}", kbs_client::tls::QUIET_VERIFIER_LOG))
        }))
        .with_writer(std::io::stderr)
        .init();
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The chain once, each step's own text (report: no step repeats its cause).
            eprintln!("cloak-kbs: {}", report::line(e.as_ref()));
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.cmd {
        Cmd::Serve(a) => {
            let cfg = serve_config(*a)?;
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(kbs_server::serve(cfg))?;
            Ok(())
        }
        Cmd::PutResource { url, admin_key, replace, kbs_cert, uri, file } => {
            let ca = kbs_cert.as_deref().map(kbs_client::CaBundle::read).transpose().context("--kbs-cert")?;
            let uri: kbs_client::ResourceUri = uri.parse()?;
            let pem = zeroize::Zeroizing::new(
                std::fs::read(&admin_key).with_context(|| format!("reading {}", admin_key.display()))?,
            );
            let data = zeroize::Zeroizing::new(
                std::fs::read(&file).with_context(|| format!("reading {}", file.display()))?,
            );
            let admin = kbs_client::AdminClient::trusting(&url, &pem, ca.as_ref())?;
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
        Cmd::GetResource { url, attester, kbs_cert, uri, out } => {
            let ca = kbs_cert.as_deref().map(kbs_client::CaBundle::read).transpose().context("--kbs-cert")?;
            let uri: kbs_client::ResourceUri = uri.parse()?;
            let kind: kbs_client::AttesterKind = attester.parse()?;
            // Naming `--attester sample` is the explicit opt-in the attester requires.
            let att = kbs_client::make_attester(kind, &kbs_client::AttesterOptions::for_kind(kind))?;
            let client =
                kbs_client::KbsClient::trusting(&url, att, kbs_client::ClientConfig::default(), ca.as_ref())?;
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
            let json = a.json;
            match verify_evidence(a) {
                Ok(true) => Ok(()),
                Ok(false) => std::process::exit(1),
                Err(e) => {
                    if json {
                        println!("{}", report::json(e.as_ref()));
                    }
                    Err(e)
                }
            }
        }
        Cmd::Migrate { from, to, master_key, old_master_key, policy, overwrite, etcd } => {
            let mut cfg =
                kbs_server::ServeConfig { master_key, old_master_keys: old_master_key, ..Default::default() };
            etcd.apply(&mut cfg);
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(migrate(from, to, cfg, policy, overwrite))
        }
        Cmd::Reseal { store, master_key, old_master_key, etcd } => {
            let rt = tokio::runtime::Runtime::new()?;
            rt.block_on(async {
                let mut cfg = kbs_server::ServeConfig {
                    master_key: Some(master_key),
                    old_master_keys: old_master_key,
                    ..Default::default()
                };
                etcd.apply(&mut cfg);
                let s =
                    kbs_server::storage::Store::open(&store, kbs_server::server::store_options(&cfg, None)?)
                        .await?;
                let n = s.reseal().await?;
                eprintln!("re-sealed {n} value(s) of {store} under the current master key");
                anyhow::Ok(())
            })
        }
        Cmd::GenAdminKey { out, public_out } => {
            let (private, public) = kbs_server::admin::generate_admin_key()?;
            write_new(&out, &private, 0o600)?;
            write_new(&public_out, &public, 0o644)?;
            Ok(())
        }
    }
}

async fn migrate(
    from: kbs_server::storage::StoreSpec,
    to: kbs_server::storage::StoreSpec,
    cfg: kbs_server::ServeConfig,
    policy: Option<PathBuf>,
    overwrite: bool,
) -> anyhow::Result<()> {
    use kbs_server::storage::Store;
    let src = Store::open(&from, kbs_server::server::store_options(&cfg, None)?)
        .await
        .with_context(|| format!("opening the source {from}"))?;
    let seed = match &policy {
        Some(p) => {
            let t = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
            kbs_server::policy::BrokerPolicy::parse(&t).with_context(|| format!("policy {}", p.display()))?;
            Some(t)
        }
        None => None,
    };
    let dst = Store::open(&to, kbs_server::server::store_options(&cfg, None)?)
        .await
        .with_context(|| format!("opening the target {to}"))?;
    let (mut copied, mut same, mut conflicts) = (0usize, 0usize, Vec::new());
    for p in src.resource_list().await? {
        let data = src.resource_get_fresh(&p).await.with_context(|| format!("reading {p} from {from}"))?;
        match dst.resource_put(&p, &data, true).await {
            Ok(()) => copied += 1,
            Err(kbs_server::storage::StoreError::Exists(_)) => {
                let there = dst.resource_get_fresh(&p).await?;
                if there[..] == data[..] {
                    same += 1;
                } else if overwrite {
                    dst.resource_put(&p, &data, false).await?;
                    copied += 1;
                } else {
                    conflicts.push(p.to_string());
                }
            }
            Err(e) => return Err(anyhow::Error::new(e).context(format!("writing {p} to {to}"))),
        }
    }
    if let Some(t) = seed {
        if !dst.policy_put(&t).await? {
            eprintln!(
                "note: {to} keeps no policy (a local store's policy is its --policy file); not written"
            );
        }
    }
    eprintln!(
        "migrated {from} -> {to}: {copied} copied, {same} already identical, {} conflicting",
        conflicts.len()
    );
    if !conflicts.is_empty() {
        anyhow::bail!(
            "{} resource(s) differ in the target and were left unchanged (pass --overwrite to replace): {}",
            conflicts.len(),
            conflicts.join(", ")
        );
    }
    Ok(())
}
