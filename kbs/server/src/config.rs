//! `serve` configuration: flags or a `kbs.yaml` with the same keys. Validated into the
//! objects the broker needs before anything listens.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read config {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path} is invalid")]
    Yaml {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("certificate {path} is not a PEM or DER X.509 certificate")]
    Cert { path: PathBuf },
    #[error("{0}")]
    Invalid(String),
    #[error("CCA trust anchors {path}")]
    CcaAnchors {
        path: PathBuf,
        #[source]
        source: crate::verifier::cca::CcaError,
    },
    #[error("cannot build the TDX collateral / AMD KDS HTTP client")]
    Http(#[source] reqwest::Error),
    /// TLS or plain HTTP: the flags contradict each other or plain HTTP is not allowed here.
    #[error(transparent)]
    Transport(#[from] crate::tls::TransportError),
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnpConfig {
    /// AMD Root Key certificate (trust anchor), PEM or DER.
    pub ark: Option<PathBuf>,
    /// AMD SEV Key certificate, PEM or DER (may also come in the evidence cert_chain).
    pub ask: Option<PathBuf>,
    /// A fixed VCEK for guests that do not send one.
    pub vcek: Option<PathBuf>,
    /// AMD ASVK certificate (the VLEK issuer); the bundled one is used without it.
    #[serde(default)]
    pub asvk: Option<PathBuf>,
    /// A directory of VCEK/VLEK certificates (DER or PEM), for guests whose host sends
    /// no certificate table; the one matching the report's chip and TCB is used.
    #[serde(default)]
    pub vcek_dir: Option<PathBuf>,
    /// AMD KDS base URL (`https://kdsintf.amd.com`): asked for the VCEK when the guest
    /// sends none; answers are cached in memory and in `vcek_dir`.
    #[serde(default)]
    pub kds_url: Option<String>,
}

/// Arm CCA trust material (see `verifier::cca`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CcaConfig {
    /// The platform keys (CPAKs): veraison ccatoken's trust-anchor store (a JSON list of
    /// `{"implementation-id", "instance-id", "pkey": JWK}`) or a single JWK.
    pub trust_anchors: Option<PathBuf>,
}

/// TDX collateral sources (see `verifier::collateral`).
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TdxConfig {
    /// Intel SGX Root CA (DER or PEM); the bundled one without it.
    pub root_ca: Option<PathBuf>,
    /// Base URL of a PCCS or Intel's PCS, e.g. `https://api.trustedservices.intel.com`.
    pub pccs_url: Option<String>,
    /// Root CA CRL URL, when the collateral service does not serve `/sgx/certification/v4/rootcacrl`.
    pub root_ca_crl_url: Option<String>,
    /// Offline collateral: `{fmspc}.json` files in `QuoteCollateralV3` JSON.
    pub collateral_dir: Option<PathBuf>,
    /// Where fetched collateral is cached across restarts.
    pub collateral_cache_dir: Option<PathBuf>,
    /// Refetch collateral this long before its earliest nextUpdate (default 1 day).
    pub collateral_refresh_secs: Option<u64>,
    /// Verify SNP and TDX evidence as of this instant (unix seconds) instead of now: for
    /// tests replaying recorded evidence. Library only, never read from a file.
    #[serde(skip)]
    pub verify_at: Option<u64>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    pub listen: SocketAddr,
    /// Certificate chain (PEM) the broker serves TLS with; with `tls_key`. Reloaded on SIGHUP.
    pub tls_cert: Option<PathBuf>,
    /// Private key (PEM) of `tls_cert`.
    pub tls_key: Option<PathBuf>,
    /// Serve plain HTTP on a non-loopback address (a TLS-terminating proxy in front);
    /// a loopback address needs no flag.
    pub insecure_http: bool,
    pub policy: Option<PathBuf>,
    /// The local backend's directory (`--resources DIR` is `--store local:DIR`).
    pub resources: PathBuf,
    /// Where the broker's state lives; None means `local:<resources>`.
    pub store: Option<crate::storage::StoreSpec>,
    /// 32-byte file sealing values in a shared store (required for etcd).
    pub master_key: Option<PathBuf>,
    /// Earlier master keys still accepted for opening values (rotation).
    pub old_master_keys: Vec<PathBuf>,
    /// How long resource reads may be served from the last synchronised state while
    /// the shared store is unreachable; 0 fails closed.
    pub store_stale_secs: u64,
    /// Per-request timeout towards the shared store.
    pub store_timeout_ms: u64,
    /// CA certificate (PEM) of the etcd members; with it they are reached over TLS.
    pub etcd_ca: Option<PathBuf>,
    /// Client certificate and key (PEM) for etcd members that require client certificates.
    pub etcd_cert: Option<PathBuf>,
    pub etcd_key: Option<PathBuf>,
    /// etcd user (etcd authentication enabled); its password is read from `etcd_password_file`.
    pub etcd_user: Option<String>,
    pub etcd_password_file: Option<PathBuf>,
    pub admin_public_key: Option<PathBuf>,
    pub admin_issuer: Option<String>,
    pub admin_audience: Option<String>,
    /// The longest an admin token may be valid: both `exp - iat` and `exp - now` must
    /// be at most this many seconds, so a leaked token cannot serve for years.
    pub admin_token_max_lifetime_secs: u64,
    /// A connection must deliver a request's complete headers within this many seconds
    /// of opening or of its previous answer; otherwise it is closed. This is also how
    /// long an idle keep-alive connection stays open.
    pub request_header_timeout_secs: u64,
    /// A request's body must have arrived completely within this many seconds of its
    /// headers; otherwise the request is answered 408 and the connection closed.
    pub request_body_timeout_secs: u64,
    /// At most this many distinct pod/namespace pairs get attestation series of their
    /// own; later pairs are counted under pod="other", namespace="other".
    pub metrics_max_pods: usize,
    /// At most this many distinct resource names get resource series of their own;
    /// later names are counted under resource="other".
    pub metrics_max_resources: usize,
    /// RCAR session lifetime (Trustee default: 5 minutes).
    pub session_ttl_secs: u64,
    /// Attestation token lifetime (Trustee default: 5 minutes).
    pub token_ttl_secs: u64,
    /// How long a verdict for the same evidence may be reused; 0 disables the cache.
    pub attestation_cache_secs: u64,
    pub body_limit_bytes: usize,
    /// How often the policy file's mtime is polled.
    pub policy_poll_ms: u64,
    pub snp: SnpConfig,
    pub tdx: TdxConfig,
    pub cca: CcaConfig,
    /// Resources the admin key may read back (`GET /kbs/v0/admin/resource/...`), so
    /// build tools reuse a KEK already registered under an id instead of replacing
    /// it. Globs or segment prefixes, as in `released_resources`.
    pub admin_readable: Vec<String>,
}

/// The default `admin_readable`: where `cloak encrypt` and `cloak-keyprovider` keep
/// generated KEKs (`*/image-kek/*`) and the id CoCo's documentation uses for them
/// (`*/key/generated*`); other resources (secrets, private JWKs) are never read back.
pub const DEFAULT_ADMIN_READABLE: &[&str] = &["*/image-kek/*", "*/key/generated*"];

/// Default `admin_token_max_lifetime_secs`: one day. cloak's own admin tokens live five
/// minutes and coco_keyprovider's two hours; a day leaves room for hand-made ones.
pub const DEFAULT_ADMIN_TOKEN_MAX_LIFETIME_SECS: u64 = 86_400;
/// Default `request_header_timeout_secs` (also the keep-alive idle limit).
pub const DEFAULT_REQUEST_HEADER_TIMEOUT_SECS: u64 = 10;
/// Default `request_body_timeout_secs`: headers and body together within 20 s.
pub const DEFAULT_REQUEST_BODY_TIMEOUT_SECS: u64 = 10;

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            tls_cert: None,
            tls_key: None,
            insecure_http: false,
            policy: None,
            resources: PathBuf::from("kbs-resources"),
            store: None,
            master_key: None,
            old_master_keys: Vec::new(),
            store_stale_secs: 0,
            store_timeout_ms: 1000,
            etcd_ca: None,
            etcd_cert: None,
            etcd_key: None,
            etcd_user: None,
            etcd_password_file: None,
            admin_public_key: None,
            admin_issuer: None,
            admin_audience: None,
            admin_token_max_lifetime_secs: DEFAULT_ADMIN_TOKEN_MAX_LIFETIME_SECS,
            request_header_timeout_secs: DEFAULT_REQUEST_HEADER_TIMEOUT_SECS,
            request_body_timeout_secs: DEFAULT_REQUEST_BODY_TIMEOUT_SECS,
            metrics_max_pods: crate::metrics::DEFAULT_MAX_PODS,
            metrics_max_resources: crate::metrics::DEFAULT_MAX_RESOURCES,
            session_ttl_secs: 300,
            token_ttl_secs: 300,
            attestation_cache_secs: 30,
            body_limit_bytes: 1 << 20,
            policy_poll_ms: 500,
            snp: SnpConfig::default(),
            tdx: TdxConfig::default(),
            cca: CcaConfig::default(),
            admin_readable: DEFAULT_ADMIN_READABLE.iter().map(|s| s.to_string()).collect(),
        }
    }
}

impl ServeConfig {
    /// The store to open: `store`, or the local directory `resources`.
    pub fn store_spec(&self) -> crate::storage::StoreSpec {
        self.store.clone().unwrap_or_else(|| crate::storage::StoreSpec::Local(self.resources.clone()))
    }

    /// Refuses limits that would switch a protection off (a zero timeout or lifetime).
    pub fn check_limits(&self) -> Result<(), ConfigError> {
        for (name, v) in [
            ("admin_token_max_lifetime_secs", self.admin_token_max_lifetime_secs),
            ("request_header_timeout_secs", self.request_header_timeout_secs),
            ("request_body_timeout_secs", self.request_body_timeout_secs),
        ] {
            if v == 0 {
                return Err(ConfigError::Invalid(format!("{name} must be at least 1 second")));
            }
        }
        Ok(())
    }

    /// TLS, or plain HTTP where the rule allows it ([`crate::tls::Transport::choose`]).
    pub fn transport(&self) -> Result<crate::tls::Transport, ConfigError> {
        Ok(crate::tls::Transport::choose(
            self.listen,
            self.tls_cert.as_deref(),
            self.tls_key.as_deref(),
            self.insecure_http,
        )?)
    }

    /// The metric label caps.
    pub fn metric_limits(&self) -> crate::metrics::MetricLimits {
        crate::metrics::MetricLimits {
            max_pods: self.metrics_max_pods,
            max_resources: self.metrics_max_resources,
        }
    }

    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
        serde_yaml::from_str(&text).map_err(|source| ConfigError::Yaml { path: path.to_owned(), source })
    }
}

pub(crate) fn load_cert(path: &Path) -> Result<openssl::x509::X509, ConfigError> {
    let bytes = std::fs::read(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    openssl::x509::X509::from_pem(&bytes)
        .or_else(|_| openssl::x509::X509::from_der(&bytes))
        .map_err(|_| ConfigError::Cert { path: path.to_owned() })
}

impl ServeConfig {
    /// The verifiers' trust material from the `snp`, `tdx` and `cca` sections.
    pub fn trust(&self) -> Result<crate::verifier::Trust, ConfigError> {
        use crate::verifier::{CollateralConfig, CollateralSource, SnpTrust, TdxTrust, Trust};
        let snp = SnpTrust {
            ark: self.snp.ark.as_deref().map(load_cert).transpose()?,
            ask: self.snp.ask.as_deref().map(load_cert).transpose()?,
            asvk: self.snp.asvk.as_deref().map(load_cert).transpose()?,
            vcek: self.snp.vcek.as_deref().map(load_cert).transpose()?,
            vcek_dir: self.snp.vcek_dir.clone(),
        };
        let t = &self.tdx;
        let mut tdx = TdxTrust::default();
        if let Some(p) = &t.root_ca {
            tdx.root_ca_der = load_cert(p)?.to_der().map_err(|_| ConfigError::Cert { path: p.clone() })?;
        }
        if t.pccs_url.is_some() || t.collateral_dir.is_some() || t.collateral_cache_dir.is_some() {
            let cfg = CollateralConfig {
                pccs_url: t.pccs_url.clone(),
                root_ca_crl_url: t.root_ca_crl_url.clone(),
                offline_dir: t.collateral_dir.clone(),
                cache_dir: t.collateral_cache_dir.clone(),
                refresh_margin: std::time::Duration::from_secs(t.collateral_refresh_secs.unwrap_or(86_400)),
            };
            tdx.collateral =
                Some(std::sync::Arc::new(CollateralSource::new(cfg).map_err(ConfigError::Http)?));
        }
        let snp_kds = match &self.snp.kds_url {
            Some(url) => Some(std::sync::Arc::new(
                crate::verifier::kds::KdsClient::new(crate::verifier::kds::KdsConfig {
                    url: url.clone(),
                    cache_dir: self.snp.vcek_dir.clone(),
                    retries: 3,
                    backoff: std::time::Duration::from_secs(2),
                })
                .map_err(ConfigError::Http)?,
            )),
            None => None,
        };
        let cca = match &self.cca.trust_anchors {
            None => Default::default(),
            Some(p) => {
                let bytes =
                    std::fs::read(p).map_err(|source| ConfigError::Read { path: p.clone(), source })?;
                crate::verifier::cca::CcaTrust::parse(&bytes)
                    .map_err(|source| ConfigError::CcaAnchors { path: p.clone(), source })?
            }
        };
        Ok(Trust { snp, snp_kds, tdx, cca, verify_at: t.verify_at })
    }
}
