//! `cloak`: the build-side tool. Parses flags into validated configs and calls
//! the `encryptor` library; maps errors to exit codes (0 ok, 1 failure, 2 usage).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use encryptor::{
    CommonOptions, DecryptConfig, EncryptConfig, InspectConfig, KbsAdminOptions, KeygenConfig,
    LayerSelection, PlatformSelection,
};

/// Encrypt OCI images so that only an attested confidential guest can read them.
///
/// Layers are encrypted with the ocicrypt format (AES-256-CTR + HMAC-SHA256), the
/// same one skopeo, containerd's imgcrypt and Confidential Containers guests read.
/// Each layer key is wrapped for every recipient you name.
///
/// Image references use skopeo's syntax: `oci:DIR[:TAG]` for an OCI layout,
/// `docker://HOST[:PORT]/REPO[:TAG|@sha256:...]` for a registry.
#[derive(Parser, Debug)]
#[command(name = "cloak", version, propagate_version = true)]
struct Cli {
    /// Log verbosity (error, warn, info, debug, trace); also `RUST_LOG`.
    #[arg(long, global = true, default_value = "warn")]
    log_level: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Encrypt the layers of an image for one or more recipients.
    ///
    /// Examples:
    ///   cloak encrypt --recipient jwe:pub.pem oci:app:v1 oci:app-enc:v1
    ///   cloak encrypt --recipient jwe:pub.pem --dest-tls-verify=false oci:app:v1 docker://127.0.0.1:5000/app:enc
    ///   cloak encrypt --recipient kbs:///default/image-kek/app --kbs-url http://127.0.0.1:8080 \
    ///                 --kbs-admin-key admin.pem oci:app:v1 oci:app-enc:v1
    #[command(verbatim_doc_comment)]
    Encrypt(EncryptArgs),
    /// Decrypt an encrypted image with local private keys.
    ///
    /// The HMAC of every layer is verified before anything is committed to DST.
    ///   cloak decrypt --key priv.pem oci:app-enc:v1 oci:app-dec:v1
    #[command(verbatim_doc_comment)]
    Decrypt(DecryptArgs),
    /// Show, per layer, the media type, size, encryption schemes and recipients.
    Inspect(InspectArgs),
    /// Make a key pair, register the private key in the KBS, write the public JWK.
    ///
    /// The public JWK's `kid` is the KBS URI, so guests know where to fetch the key
    /// after attestation. The private key never touches disk unless --save-private.
    ///   cloak keygen --kbs-url http://127.0.0.1:8080 --kbs-admin-key admin.pem \
    ///                kbs:///default/image-key/app --out app.pub.jwk
    #[command(verbatim_doc_comment)]
    Keygen(KeygenArgs),
    /// Check whether this machine has a usable TEE (AMD SEV-SNP, Intel TDX, Arm CCA).
    ///
    /// Exit code 0 only when a TEE guest interface can produce evidence.
    Check(CheckArgs),
    /// Print an init-data document's digest as each TEE's report carries it, and the
    /// Pod annotation value that makes kata-runtime measure it.
    ///
    /// The digest is the document's `algorithm` (sha256|sha384|sha512) over its bytes
    /// as written; SNP HOST_DATA takes 32 bytes of it, TDX MRCONFIGID 48, the CCA
    /// personalization value 64 (zero-padded). Pin the value in the broker's policy.
    ///   cloak initdata deploy/initdata.toml
    ///   cloak initdata --json initdata.toml | jq -r .annotation_value
    #[command(verbatim_doc_comment)]
    Initdata(InitdataArgs),
    /// Register a new KEK under the next version of a kbs:/// id (app → app.v2 → app.v3)
    /// and say which of the images named still need the old KEK.
    ///
    /// Nothing is replaced or removed: encrypt new releases with the printed id, and
    /// delete the old KEK only once no image listed as "still needs" is deployed.
    ///   cloak rotate-kek --kbs-url http://127.0.0.1:8080 --kbs-admin-key admin.pem \
    ///                    kbs:///default/image-kek/app docker://reg/app:v1 docker://reg/app:v2
    #[command(verbatim_doc_comment)]
    RotateKek(RotateKekArgs),
    /// Sign an image in cosign's format (key-based; `sha256-<hex>.sig` next to the image).
    ///
    /// The signature names the manifest digest the reference resolves to now.
    ///   COSIGN_PASSWORD=… cloak sign --key cosign.key --dest-tls-verify=false docker://127.0.0.1:5000/app@sha256:…
    ///   cloak sign --key key.pem --identity registry.example/app oci:app-enc:v1
    #[command(verbatim_doc_comment)]
    Sign(SignArgs),
    /// Check an image against a containers-policy.json, as cloak-pull does before pulling.
    ///
    /// Exit code 0 only if the policy accepts the image.
    ///   cloak verify --signature-policy policy.json --src-tls-verify=false docker://127.0.0.1:5000/app:v1
    #[command(verbatim_doc_comment)]
    Verify(VerifyArgs),
}

#[derive(Args, Debug)]
struct SignArgs {
    /// Private key: cosign's encrypted key (password from COSIGN_PASSWORD or a prompt) or PKCS#8 PEM.
    #[arg(long, value_name = "FILE")]
    key: PathBuf,
    /// Identity written into the signature (default: the image's repository, as cosign does;
    /// required for oci: layouts).
    #[arg(long, value_name = "HOST/REPO[:TAG]")]
    identity: Option<String>,
    /// Require HTTPS and verify certificates (false = plain HTTP).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    dest_tls_verify: bool,
    /// Credentials, USER:PASS.
    #[arg(long, value_name = "USER:PASS")]
    creds: Option<String>,
    /// Auth file (docker config.json format).
    #[arg(long, value_name = "FILE")]
    authfile: Option<PathBuf>,
    /// Print the result as JSON.
    #[arg(long)]
    json: bool,
    /// Image to sign: docker://HOST/REPO@sha256:… (or :TAG) or oci:DIR:TAG
    image: String,
}

#[derive(Args, Debug)]
struct VerifyArgs {
    /// containers-policy.json to evaluate.
    #[arg(long, value_name = "FILE")]
    signature_policy: PathBuf,
    /// registries.d directory (lookaside stores for GPG signatures).
    #[arg(long, value_name = "DIR")]
    registries_d: Option<PathBuf>,
    /// Require HTTPS and verify certificates (false = plain HTTP).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    src_tls_verify: bool,
    /// Credentials, USER:PASS.
    #[arg(long, value_name = "USER:PASS")]
    creds: Option<String>,
    /// Auth file (docker config.json format).
    #[arg(long, value_name = "FILE")]
    authfile: Option<PathBuf>,
    /// Print the decision as JSON.
    #[arg(long)]
    json: bool,
    /// Image to check
    image: String,
}

#[derive(Args, Debug)]
struct CommonArgs {
    /// Print nothing but errors (no progress bars).
    #[arg(long, short)]
    quiet: bool,
    /// Print a machine-readable JSON result on stdout.
    #[arg(long)]
    json: bool,
    /// Credentials for both registries, USER:PASS.
    #[arg(long, value_name = "USER:PASS")]
    creds: Option<String>,
    /// Credentials for the source registry, USER:PASS.
    #[arg(long, value_name = "USER:PASS")]
    src_creds: Option<String>,
    /// Credentials for the destination registry, USER:PASS.
    #[arg(long, value_name = "USER:PASS")]
    dest_creds: Option<String>,
    /// Auth file (docker config.json format); default $REGISTRY_AUTH_FILE, then ~/.docker/config.json.
    #[arg(long, value_name = "FILE")]
    authfile: Option<PathBuf>,
    /// Require HTTPS and verify certificates for the source registry (false = plain HTTP).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    src_tls_verify: bool,
    /// Require HTTPS and verify certificates for the destination registry (false = plain HTTP).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    dest_tls_verify: bool,
    /// Layers processed at the same time.
    #[arg(long, default_value_t = 4, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=64))]
    max_concurrent_layers: u16,
}

#[derive(Args, Debug)]
struct KbsAdminArgs {
    /// KBS URL for registering keys (kbs:/// recipients, keygen).
    #[arg(long, value_name = "URL")]
    kbs_url: Option<String>,
    /// Ed25519 admin private key (PKCS#8 PEM, as `openssl genpkey -algorithm ed25519` writes).
    #[arg(long, value_name = "FILE")]
    kbs_admin_key: Option<PathBuf>,
    /// CA bundle (PEM) trusted for an https KBS, beside the built-in roots.
    #[arg(long, value_name = "FILE")]
    kbs_cert: Option<PathBuf>,
    /// For kbs:/// recipients: wrap with this 32-byte KEK, which you have registered in
    /// the KBS yourself (needed with Trustee, whose admin API cannot read a KEK back).
    /// Without it, the KEK already at the id is reused, or a new one is registered
    /// create-only; an existing KEK is never replaced.
    #[arg(long, value_name = "FILE")]
    kek_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct EncryptArgs {
    /// Recipient, repeatable: `jwe:PUBKEY` (PEM, DER, X.509 or JWK file),
    /// `provider:NAME[:PARAMS]` (ocicrypt keyprovider from $OCICRYPT_KEYPROVIDER_CONFIG),
    /// or `kbs:///REPO/TYPE/TAG` (a KEK registered in the KBS, CoCo-compatible).
    #[arg(long = "recipient", short = 'r', required = true, value_name = "RECIPIENT")]
    recipients: Vec<String>,
    /// Encrypt only this layer (0-based; negative counts from the end), repeatable.
    /// Default: all layers.
    #[arg(long = "layer", value_name = "N", allow_negative_numbers = true)]
    layers: Vec<i64>,
    /// From an index, encrypt only this platform (OS/ARCH[/VARIANT]).
    #[arg(long, value_name = "OS/ARCH", conflicts_with = "all")]
    platform: Option<String>,
    /// From an index, encrypt every platform and write a new index.
    #[arg(long)]
    all: bool,
    /// ocicrypt keyprovider config for provider: recipients (default $OCICRYPT_KEYPROVIDER_CONFIG).
    #[arg(long, value_name = "FILE")]
    keyprovider_config: Option<PathBuf>,
    #[command(flatten)]
    kbs: KbsAdminArgs,
    #[command(flatten)]
    common: CommonArgs,
    /// Sign the encrypted image (its manifest digest at DST) in cosign's format with this
    /// key (cosign's encrypted key with COSIGN_PASSWORD, or PKCS#8 PEM); skopeo's flag name.
    #[arg(long, value_name = "FILE")]
    sign_by_sigstore_private_key: Option<PathBuf>,
    /// Source image, e.g. oci:app:v1 or docker://registry/app:v1
    src: String,
    /// Destination image, e.g. oci:app-enc:v1 or docker://registry/app:enc
    dst: String,
}

#[derive(Args, Debug)]
struct DecryptArgs {
    /// Private key file (PEM, DER or JWK), repeatable; every key is tried.
    #[arg(long = "key", short = 'k', required = true, value_name = "FILE")]
    keys: Vec<PathBuf>,
    /// From an index, decrypt only this platform (OS/ARCH[/VARIANT]).
    #[arg(long, value_name = "OS/ARCH", conflicts_with = "all")]
    platform: Option<String>,
    /// From an index, decrypt every platform and write a new index.
    #[arg(long)]
    all: bool,
    #[command(flatten)]
    common: CommonArgs,
    /// Source image (encrypted)
    src: String,
    /// Destination image (plain)
    dst: String,
}

#[derive(Args, Debug)]
struct InspectArgs {
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// From an index, show only this platform.
    #[arg(long, value_name = "OS/ARCH")]
    platform: Option<String>,
    /// Credentials, USER:PASS.
    #[arg(long, value_name = "USER:PASS")]
    creds: Option<String>,
    /// Auth file (docker config.json format).
    #[arg(long, value_name = "FILE")]
    authfile: Option<PathBuf>,
    /// Require HTTPS and verify certificates (false = plain HTTP).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    tls_verify: bool,
    /// Image to inspect
    image: String,
}

#[derive(Args, Debug)]
struct KeygenArgs {
    #[command(flatten)]
    kbs: KbsAdminArgs,
    /// Make an RSA-3072 key (RSA-OAEP) instead of EC P-256 (ECDH-ES+A256KW).
    #[arg(long)]
    rsa: bool,
    /// Where to write the public JWK.
    #[arg(long, value_name = "FILE")]
    out: PathBuf,
    /// Also write the private JWK here (otherwise it exists only in the KBS).
    #[arg(long, value_name = "FILE")]
    save_private: Option<PathBuf>,
    /// KBS resource for the private key, e.g. kbs:///default/image-key/app
    uri: String,
}

#[derive(Args, Debug)]
struct RotateKekArgs {
    #[command(flatten)]
    kbs: KbsAdminArgs,
    /// Require HTTPS and verify certificates when reading the images (false = plain HTTP).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    tls_verify: bool,
    /// The current KEK id, e.g. kbs:///default/image-kek/app
    kid: String,
    /// Images to check for the old KEK (docker://…, oci:DIR:TAG, …).
    images: Vec<String>,
}

#[derive(Args, Debug)]
struct InitdataArgs {
    /// The init-data TOML document (`version`, `algorithm`, `[data]`).
    #[arg(value_name = "FILE")]
    file: PathBuf,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Args, Debug)]
struct CheckArgs {
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

impl Command {
    /// Whether the command was asked for JSON on stdout; a failure is then JSON too.
    fn json(&self) -> bool {
        match self {
            Command::Encrypt(a) => a.common.json,
            Command::Decrypt(a) => a.common.json,
            Command::Inspect(a) => a.json,
            Command::Sign(a) => a.json,
            Command::Verify(a) => a.json,
            Command::Initdata(a) => a.json,
            Command::Check(a) => a.json,
            Command::Keygen(_) | Command::RotateKek(_) => false,
        }
    }
}

fn common_options(c: &CommonArgs) -> CommonOptions {
    CommonOptions {
        quiet: c.quiet,
        json: c.json,
        src_creds: c.src_creds.clone().or_else(|| c.creds.clone()),
        dest_creds: c.dest_creds.clone().or_else(|| c.creds.clone()),
        authfile: c.authfile.clone(),
        insecure_src_plain_http: !c.src_tls_verify,
        insecure_dest_plain_http: !c.dest_tls_verify,
        max_concurrent_layers: usize::from(c.max_concurrent_layers),
    }
}

fn kbs_options(k: &KbsAdminArgs) -> KbsAdminOptions {
    KbsAdminOptions {
        url: k.kbs_url.clone(),
        admin_key: k.kbs_admin_key.clone(),
        kek_file: k.kek_file.clone(),
        kbs_cert: k.kbs_cert.clone(),
    }
}

fn platform_selection(platform: Option<String>, all: bool) -> Result<PlatformSelection, encryptor::Error> {
    Ok(match (platform, all) {
        (_, true) => PlatformSelection::All,
        (Some(p), false) => PlatformSelection::Only(parse_platform(&p)?),
        (None, false) => PlatformSelection::Default,
    })
}

/// `--platform`; a bad value is a usage error (exit 2).
fn parse_platform(p: &str) -> Result<oci::PlatformSpec, encryptor::Error> {
    p.parse().map_err(|e| encryptor::Error::Usage(format!("--platform {p:?}: {}", report::Line(&e))))
}

/// An image reference argument; a bad one is a usage error (exit 2).
fn parse_image(s: &str, what: &str) -> Result<oci::ImageRef, encryptor::Error> {
    s.parse().map_err(|e| encryptor::Error::Usage(format!("{what} {s:?}: {}", report::Line(&e))))
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Encrypt(a) => {
            // Loaded first: a wrong password must not cost an encryption.
            let signing_key = a
                .sign_by_sigstore_private_key
                .as_deref()
                .map(encryptor::sign::load_signing_key)
                .transpose()?;
            let cfg = EncryptConfig {
                src: parse_image(&a.src, "source")?,
                dst: parse_image(&a.dst, "destination")?,
                recipients: a.recipients.iter().map(|r| r.parse()).collect::<Result<_, _>>()?,
                layers: if a.layers.is_empty() {
                    LayerSelection::All
                } else {
                    LayerSelection::Indices(a.layers)
                },
                platforms: platform_selection(a.platform, a.all)?,
                keyprovider_config: a.keyprovider_config,
                kbs: kbs_options(&a.kbs),
                common: common_options(&a.common),
            };
            let result = encryptor::encrypt(&cfg).await?;
            result.report(&cfg.common)?;
            if let Some(key) = &signing_key {
                let opts = oci::SourceOptions {
                    creds: cfg.common.dest_creds.clone(),
                    auth_file: cfg.common.authfile.clone(),
                    insecure_plain_http: cfg.common.insecure_dest_plain_http,
                    ..Default::default()
                };
                let signed =
                    encryptor::sign::sign_digest(&cfg.dst, &result.manifest_digest, key, &opts).await?;
                if !cfg.common.quiet && !cfg.common.json {
                    eprintln!("signed {} as {} at {}", signed.digest, signed.identity, signed.signature_ref);
                }
            }
        }
        Command::Sign(a) => {
            let key = encryptor::sign::load_signing_key(&a.key)?;
            let opts = oci::SourceOptions {
                creds: a.creds,
                auth_file: a.authfile,
                insecure_plain_http: !a.dest_tls_verify,
                ..Default::default()
            };
            let signed = encryptor::sign::sign(&a.image, &key, a.identity.as_deref(), &opts).await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&signed)?);
            } else {
                eprintln!("signed {} as {} at {}", signed.digest, signed.identity, signed.signature_ref);
            }
        }
        Command::Verify(a) => {
            let opts = oci::SourceOptions {
                creds: a.creds,
                auth_file: a.authfile,
                insecure_plain_http: !a.src_tls_verify,
                ..Default::default()
            };
            let (digest, decision) =
                encryptor::sign::verify(&a.image, &a.signature_policy, a.registries_d.as_deref(), &opts)
                    .await?;
            if a.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(
                        &serde_json::json!({"digest": digest.to_string(), "decision": decision})
                    )?
                );
            } else {
                eprintln!(
                    "accepted {} ({digest}) under {}: {}",
                    a.image,
                    decision.scope,
                    decision.accepted.join("; ")
                );
            }
        }
        Command::Decrypt(a) => {
            let cfg = DecryptConfig {
                src: parse_image(&a.src, "source")?,
                dst: parse_image(&a.dst, "destination")?,
                keys: a.keys,
                platforms: platform_selection(a.platform, a.all)?,
                common: common_options(&a.common),
            };
            let result = encryptor::decrypt(&cfg).await?;
            result.report(&cfg.common)?;
        }
        Command::Inspect(a) => {
            let cfg = InspectConfig {
                image: parse_image(&a.image, "image")?,
                platform: a.platform.as_deref().map(parse_platform).transpose()?,
                creds: a.creds,
                authfile: a.authfile,
                insecure_plain_http: !a.tls_verify,
            };
            let report = encryptor::inspect(&cfg).await?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&report.to_json())?);
            } else {
                print!("{}", report.render_text());
            }
        }
        Command::Keygen(a) => {
            let cfg = KeygenConfig {
                kbs: kbs_options(&a.kbs),
                rsa: a.rsa,
                out: a.out,
                save_private: a.save_private,
                uri: a.uri,
            };
            let kid = encryptor::keygen(&cfg).await?;
            eprintln!("registered the private key at {kid}; public JWK written to {}", cfg.out.display());
        }
        Command::RotateKek(a) => {
            let old: kbs_client::ResourceUri = a.kid.parse()?;
            let new = encryptor::rotate::rotate_kek(&kbs_options(&a.kbs), &old).await?;
            println!("new KEK registered at {new} (the old one at {} is unchanged)", a.kid);
            for image in &a.images {
                let cfg = InspectConfig {
                    image: parse_image(image, "image")?,
                    platform: None,
                    creds: None,
                    authfile: None,
                    insecure_plain_http: !a.tls_verify,
                };
                let report = encryptor::inspect(&cfg).await?;
                let needs = report
                    .kek_ids()
                    .iter()
                    .any(|k| k.parse::<kbs_client::ResourceUri>().is_ok_and(|k| k == old));
                if needs {
                    println!("{image}: still needs {}", a.kid);
                } else {
                    println!("{image}: does not use {}", a.kid);
                }
            }
            println!("encrypt new releases with --recipient {new}");
        }
        Command::Initdata(a) => {
            let report = encryptor::initdata_report(&a.file)?;
            if a.json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", report.render_text());
            }
        }
        Command::Check(a) => {
            let report = kbs_client::attester::check::run_check(std::path::Path::new("/"));
            if a.json {
                println!("{}", serde_json::to_string_pretty(&report.to_json())?);
            } else {
                print!("{}", report.render_text());
            }
            // The report already says what is missing; the exit code carries the verdict.
            if !report.usable() {
                return Ok(ExitCode::from(1));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    // clap exits with 2 on usage errors by itself.
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!(
            "{},{}",
            cli.log_level,
            kbs_client::tls::QUIET_VERIFIER_LOG
        ))
    });
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let json = cli.command.json();
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) => {
            // Each error says only its own step; the chain is printed once, as is (a
            // clause said twice is a bug in a Display, for the tests to find).
            let e: &(dyn std::error::Error + 'static) = e.as_ref();
            // Bad references and flags found after parsing are usage errors too.
            let (prefix, code) = match e.downcast_ref::<encryptor::Error>() {
                Some(encryptor::Error::Usage(_)) => ("", 2),
                // The library names the index; the flag that gave it is `--layer`.
                Some(encryptor::Error::LayerOutOfRange { .. }) => ("--layer: ", 2),
                _ => ("", 1),
            };
            eprintln!("error: {prefix}{}", report::Line(e));
            if json {
                println!("{}", report::json(e));
            }
            ExitCode::from(code)
        }
    }
}
