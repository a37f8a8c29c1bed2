//! Key sources for a pull: local JWE private keys (`--key`), ocicrypt
//! keyproviders (`--keyprovider-config` / `$OCICRYPT_KEYPROVIDER_CONFIG`) and the
//! KBS directly (a KBS URL and an attester kind). All KBS-backed unwrappers share
//! ONE `KbsClient`, so a pull attests once; keys stay in memory only.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ocicrypt::KeyUnwrapper;

/// Where keys come from.
#[derive(Debug, Clone, Default)]
pub struct KeySources {
    /// PEM/DER private key files (`--key`).
    pub key_files: Vec<PathBuf>,
    /// ocicrypt keyprovider config; `None` = `$OCICRYPT_KEYPROVIDER_CONFIG` if set.
    pub keyprovider_config: Option<PathBuf>,
    /// KBS URL (`--kbs`).
    pub kbs_url: Option<String>,
    /// Attester for the KBS; `None` = `auto` (which never picks `sample`).
    pub attester: Option<kbs_client::AttesterKind>,
    /// How long one KBS exchange (attestation, or one key), retries included,
    /// may take before the pull fails; `None` = the client's default (30 s).
    pub kbs_timeout: Option<Duration>,
}

/// Why the key sources could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeysError {
    #[error("reading key file {path}: {source}")]
    ReadKey {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("key file {path}: {source}")]
    BadKey {
        path: PathBuf,
        #[source]
        source: ocicrypt::KeyError,
    },
    #[error("keyprovider config: {0}")]
    KeyProvider(#[from] keyprovider::client::ClientError),
    #[error("KBS client: {0}")]
    Kbs(#[from] kbs_client::KbsError),
    #[error("attester: {0}")]
    Attester(#[from] kbs_client::AttesterError),
    #[error("an attester was named but no KBS URL was given")]
    AttesterWithoutKbs,
}

/// The unwrappers and, when a KBS is used, its client (for attestation counts).
pub struct Keys {
    /// Unwrappers in preference order.
    pub unwrappers: Vec<Arc<dyn KeyUnwrapper>>,
    /// The shared KBS client, if any.
    pub kbs: Option<kbs_client::KbsClient>,
}

impl Keys {
    /// Builds every configured unwrapper.
    pub fn build(src: &KeySources) -> Result<Self, KeysError> {
        let mut unwrappers: Vec<Arc<dyn KeyUnwrapper>> = Vec::new();
        if !src.key_files.is_empty() {
            let mut keys = Vec::new();
            for path in &src.key_files {
                let bytes = zeroize::Zeroizing::new(
                    std::fs::read(path)
                        .map_err(|source| KeysError::ReadKey { path: path.clone(), source })?,
                );
                let key = ocicrypt::load_private_key(&bytes)
                    .map_err(|source| KeysError::BadKey { path: path.clone(), source })?;
                keys.push(key);
            }
            unwrappers.push(Arc::new(ocicrypt::JweUnwrapper::new(keys)));
        }

        let config = match &src.keyprovider_config {
            Some(p) => Some(keyprovider::KeyProviderConfig::from_path(p)?),
            None => keyprovider::KeyProviderConfig::from_env()?,
        };
        if let Some(cfg) = &config {
            for name in cfg.key_providers.keys() {
                let client = cfg.client(name)?;
                unwrappers.push(Arc::new(keyprovider::ProviderUnwrapper::new(client, Vec::new())));
            }
        }

        let mut kbs_client = None;
        match (&src.kbs_url, &src.attester) {
            (None, Some(_)) => return Err(KeysError::AttesterWithoutKbs),
            (None, None) => {}
            (Some(url), attester) => {
                let kind = attester.unwrap_or(kbs_client::AttesterKind::Auto);
                // Sample evidence only when asked for by name; `auto` never picks it.
                let opts = kbs_client::AttesterOptions {
                    allow_sample: kind == kbs_client::AttesterKind::Sample,
                    ..Default::default()
                };
                let attester = kbs_client::make_attester(kind, &opts)?;
                let mut cfg = kbs_client::ClientConfig::default();
                if let Some(t) = src.kbs_timeout {
                    cfg.deadline = t;
                }
                let client = kbs_client::KbsClient::new(url, attester, cfg)?;
                // A keyprovider config may also name attestation-agent; the direct
                // KBS unwrapper is tried alongside it.
                unwrappers.push(Arc::new(keyprovider::KbsKekUnwrapper::new(client.clone())));
                unwrappers.push(Arc::new(keyprovider::KbsJweKeyUnwrapper::new(client.clone())));
                kbs_client = Some(client);
            }
        }
        Ok(Self { unwrappers, kbs: kbs_client })
    }
}
