//! `serve` configuration: flags or a `kbs.yaml` with the same keys. Validated into the
//! objects the broker needs before anything listens.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path} is invalid: {source}")]
    Yaml {
        path: PathBuf,
        #[source]
        source: serde_yaml::Error,
    },
    #[error("certificate {path} is not a PEM or DER X.509 certificate")]
    Cert { path: PathBuf },
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
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServeConfig {
    pub listen: SocketAddr,
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
    pub admin_public_key: Option<PathBuf>,
    pub admin_issuer: Option<String>,
    pub admin_audience: Option<String>,
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
    /// Resources the admin key may read back (`GET /kbs/v0/admin/resource/...`), so
    /// build tools reuse a KEK already registered under an id instead of replacing
    /// it. Globs or segment prefixes, as in `released_resources`.
    pub admin_readable: Vec<String>,
}

/// The default `admin_readable`: where `cloak encrypt` and `cloak-keyprovider` keep
/// generated KEKs (`*/image-kek/*`) and the id CoCo's documentation uses for them
/// (`*/key/generated*`); other resources (secrets, private JWKs) are never read back.
pub const DEFAULT_ADMIN_READABLE: &[&str] = &["*/image-kek/*", "*/key/generated*"];

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            policy: None,
            resources: PathBuf::from("kbs-resources"),
            store: None,
            master_key: None,
            old_master_keys: Vec::new(),
            store_stale_secs: 0,
            store_timeout_ms: 1000,
            etcd_ca: None,
            admin_public_key: None,
            admin_issuer: None,
            admin_audience: None,
            session_ttl_secs: 300,
            token_ttl_secs: 300,
            attestation_cache_secs: 30,
            body_limit_bytes: 1 << 20,
            policy_poll_ms: 500,
            snp: SnpConfig::default(),
            admin_readable: DEFAULT_ADMIN_READABLE.iter().map(|s| s.to_string()).collect(),
        }
    }
}

impl ServeConfig {
    /// The store to open: `store`, or the local directory `resources`.
    pub fn store_spec(&self) -> crate::storage::StoreSpec {
        self.store.clone().unwrap_or_else(|| crate::storage::StoreSpec::Local(self.resources.clone()))
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
