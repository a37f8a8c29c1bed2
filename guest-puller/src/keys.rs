//! Key sources of `cloak-pull` as its flags give them: local JWE private keys
//! (`--key`), ocicrypt keyproviders (`--keyprovider-config` /
//! `$OCICRYPT_KEYPROVIDER_CONFIG`) and the KBS directly (`--kbs`, `--attester`).
//! The session itself (one `KbsClient`, so a pull attests once; the unwrappers) is
//! built by the guest session builder, [`keyprovider::session`], that `cloak-cdh`
//! and `cloak-keyprovider` use too.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use keyprovider::session::{GuestSession, KbsConfig, KeyProviderSource, SessionConfig, SessionError};
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
    /// The guest's init-data document (`--initdata FILE`), sent in the attestation.
    pub initdata: Option<PathBuf>,
    /// CA bundle trusted for an https KBS beside the built-in roots (`--kbs-cert FILE`).
    pub kbs_cert: Option<PathBuf>,
}

/// Why the key sources could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum KeysError {
    #[error(transparent)]
    Session(#[from] SessionError),
    #[error("an attester was named but no KBS URL was given")]
    AttesterWithoutKbs,
    #[error("--initdata")]
    Initdata(#[from] kbs_client::initdata::InitdataFileError),
    #[error("--kbs-cert")]
    KbsCert(#[from] kbs_client::CaBundleError),
}

/// The unwrappers and, when a KBS is used, its client (for attestation counts).
pub struct Keys {
    /// Unwrappers in preference order.
    pub unwrappers: Vec<Arc<dyn KeyUnwrapper>>,
    /// The shared KBS client, if any.
    pub kbs: Option<kbs_client::KbsClient>,
}

impl KeySources {
    /// The guest session configuration these flags describe.
    pub fn session_config(&self) -> Result<SessionConfig, KeysError> {
        let kbs = match (&self.kbs_url, self.attester) {
            (None, Some(_)) => return Err(KeysError::AttesterWithoutKbs),
            (None, None) => None,
            (Some(url), attester) => {
                let mut kbs = KbsConfig::new(url.clone());
                kbs.attester = attester.unwrap_or(kbs_client::AttesterKind::Auto);
                kbs.deadline = self.kbs_timeout.unwrap_or(kbs.deadline);
                kbs.initdata =
                    self.initdata.as_deref().map(kbs_client::initdata::Initdata::read_file).transpose()?;
                kbs.ca = self.kbs_cert.as_deref().map(kbs_client::CaBundle::read).transpose()?;
                Some(kbs)
            }
        };
        let keyproviders = match &self.keyprovider_config {
            Some(p) => KeyProviderSource::File(p.clone()),
            None => KeyProviderSource::Environment,
        };
        Ok(SessionConfig { kbs, key_files: self.key_files.clone(), keyproviders, ..Default::default() })
    }
}

impl Keys {
    /// Builds every configured unwrapper.
    pub fn build(src: &KeySources) -> Result<Self, KeysError> {
        let session = GuestSession::build(&src.session_config()?)?;
        Ok(Self { unwrappers: session.unwrappers().to_vec(), kbs: session.kbs().cloned() })
    }
}
