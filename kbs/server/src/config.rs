//! `serve` configuration: flags or a `kbs.yaml` with the same keys. Validated into the
//! objects the broker needs before anything listens.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
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
    pub resources: PathBuf,
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
