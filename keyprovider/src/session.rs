//! The guest session: the one place that turns typed configuration (KBS URL and
//! certificate, attester, deadline, key sources) into the attested KBS session and
//! the key unwrappers. `cloak-pull`, `cloak-cdh` and `cloak-keyprovider` all build
//! theirs here, so a new rule (init-data, another attester, a KBS option) is one
//! change in one place.
//!
//! Every KBS-backed unwrapper shares ONE [`KbsClient`], so a pull (or a daemon's
//! life) attests once; key material stays in memory only. Nothing here touches the
//! network: the first attestation happens when the first key or resource is asked for.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kbs_client::{AttesterError, AttesterKind, KbsClient, KbsError};
use ocicrypt::KeyUnwrapper;

use crate::client::{ClientError, KeyProviderConfig, ProviderUnwrapper};
use crate::jwe_kbs::KbsJweKeyUnwrapper;
use crate::kek::{KbsKekUnwrapper, DEFAULT_KEK_TTL, PROVIDER_NAME};

/// Which KBS to attest to, and how.
#[derive(Debug, Clone)]
pub struct KbsConfig {
    /// KBS base URL (`http://host:port`, optional path prefix).
    pub url: String,
    /// CA certificates trusted for an https KBS beside the built-in roots
    /// (`--kbs-cert FILE`, cdh.toml `[kbc] kbs_cert`).
    pub ca: Option<kbs_client::CaBundle>,
    /// Where the evidence comes from; `sample` is allowed only when named here
    /// (`auto` never picks it).
    pub attester: AttesterKind,
    /// How long one KBS exchange (attestation, or one key), retries included, may take.
    pub deadline: Duration,
    /// The guest's init-data (`--initdata FILE`, or where kata-agent leaves it), sent in
    /// every attestation so the broker can check it against the report.
    pub initdata: Option<kbs_client::initdata::Initdata>,
}

impl KbsConfig {
    /// `url` with the `auto` attester, no extra certificate and the client's default deadline.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            ca: None,
            attester: AttesterKind::Auto,
            deadline: kbs_client::ClientConfig::default().deadline,
            initdata: None,
        }
    }
}

/// Where ocicrypt keyprovider definitions come from.
#[derive(Debug, Clone, Default)]
pub enum KeyProviderSource {
    /// None are used.
    #[default]
    None,
    /// `$OCICRYPT_KEYPROVIDER_CONFIG`, if it is set.
    Environment,
    /// This config file.
    File(PathBuf),
}

/// The order in which unwrappers are set up and tried. It matters only when a
/// keyprovider config names the provider the KBS unwrapper answers for
/// (`attestation-agent`): then the first in this order is tried first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum UnwrapperOrder {
    /// Local keys, keyproviders, then the KBS (`cloak-pull`).
    #[default]
    LocalFirst,
    /// The KBS, local keys, then keyproviders (`cloak-cdh`, whose keyprovider
    /// config may point back at itself; `cloak-keyprovider`).
    KbsFirst,
}

/// What an attester that cannot start does to the session.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AttesterFailure {
    /// The session is not built ([`SessionError::Attester`]).
    #[default]
    Fails,
    /// The session is built without a KBS and says why
    /// ([`GuestSession::attester_unavailable`]): a build machine wraps keys without a TEE.
    DisablesKbs,
}

/// Everything a guest session is made from.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// The KBS, if keys or resources come from one.
    pub kbs: Option<KbsConfig>,
    /// PEM/DER/JWK private key files for JWE-wrapped layer keys.
    pub key_files: Vec<PathBuf>,
    /// ocicrypt keyproviders for layer keys.
    pub keyproviders: KeyProviderSource,
    /// Set-up and preference order of the unwrappers.
    pub order: UnwrapperOrder,
    /// Whether an attester that cannot start fails the session.
    pub attester_failure: AttesterFailure,
    /// How long a KEK fetched from the KBS stays cached (zero: not cached).
    pub kek_ttl: Duration,
    /// The keyprovider name the KBS KEK unwrapper answers for (`provider.<name>`).
    pub kek_provider: String,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            kbs: None,
            key_files: Vec::new(),
            keyproviders: KeyProviderSource::None,
            order: UnwrapperOrder::LocalFirst,
            attester_failure: AttesterFailure::Fails,
            kek_ttl: DEFAULT_KEK_TTL,
            kek_provider: PROVIDER_NAME.to_owned(),
        }
    }
}

/// Why a guest session could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SessionError {
    #[error("reading key file {path}")]
    ReadKey {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("key file {path}")]
    BadKey {
        path: PathBuf,
        #[source]
        source: ocicrypt::KeyError,
    },
    /// The keyprovider config could not be read or parsed.
    #[error("keyprovider config")]
    KeyProviderConfig(#[source] ClientError),
    /// One provider of the config is unusable.
    #[error("keyprovider config")]
    KeyProvider {
        name: String,
        #[source]
        source: ClientError,
    },
    #[error("KBS client")]
    Kbs(#[source] KbsError),
    #[error("attester")]
    Attester(#[source] AttesterError),
}

/// The attested session (no network yet) and the key unwrappers.
pub struct GuestSession {
    kbs: Option<KbsClient>,
    kek: Option<Arc<KbsKekUnwrapper>>,
    local: Option<Arc<dyn KeyUnwrapper>>,
    unwrappers: Vec<Arc<dyn KeyUnwrapper>>,
    attester_unavailable: Option<AttesterError>,
}

impl std::fmt::Debug for GuestSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GuestSession")
            .field("kbs", &self.kbs)
            .field("unwrappers", &self.unwrappers.iter().map(|u| u.name()).collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl GuestSession {
    /// Builds every configured source, in `cfg.order`.
    pub fn build(cfg: &SessionConfig) -> Result<Self, SessionError> {
        let mut s =
            Self { kbs: None, kek: None, local: None, unwrappers: Vec::new(), attester_unavailable: None };
        match cfg.order {
            UnwrapperOrder::LocalFirst => {
                s.add_local_keys(&cfg.key_files)?;
                s.add_keyproviders(&cfg.keyproviders)?;
                s.add_kbs(cfg)?;
            }
            UnwrapperOrder::KbsFirst => {
                s.add_kbs(cfg)?;
                s.add_local_keys(&cfg.key_files)?;
                s.add_keyproviders(&cfg.keyproviders)?;
            }
        }
        Ok(s)
    }

    /// The shared KBS client, if a KBS is configured (and its attester started).
    pub fn kbs(&self) -> Option<&KbsClient> {
        self.kbs.as_ref()
    }

    /// Successful attestations so far (0 without a KBS).
    pub fn attestations(&self) -> u64 {
        self.kbs.as_ref().map_or(0, KbsClient::attestation_count)
    }

    /// Every unwrapper, in preference order.
    pub fn unwrappers(&self) -> &[Arc<dyn KeyUnwrapper>] {
        &self.unwrappers
    }

    /// The `provider.attestation-agent` unwrapper backed by the KBS, if any.
    pub fn kek_unwrapper(&self) -> Option<Arc<KbsKekUnwrapper>> {
        self.kek.clone()
    }

    /// The unwrapper of the local key files, if any were given.
    pub fn local_unwrapper(&self) -> Option<Arc<dyn KeyUnwrapper>> {
        self.local.clone()
    }

    /// Why there is no KBS although one was configured
    /// ([`AttesterFailure::DisablesKbs`] and the attester could not start).
    pub fn attester_unavailable(&self) -> Option<&AttesterError> {
        self.attester_unavailable.as_ref()
    }

    fn add_local_keys(&mut self, files: &[PathBuf]) -> Result<(), SessionError> {
        if files.is_empty() {
            return Ok(());
        }
        let mut keys = Vec::new();
        for path in files {
            let bytes = zeroize::Zeroizing::new(
                std::fs::read(path).map_err(|source| SessionError::ReadKey { path: path.clone(), source })?,
            );
            let key = ocicrypt::load_private_key(&bytes)
                .map_err(|source| SessionError::BadKey { path: path.clone(), source })?;
            keys.push(key);
        }
        let local: Arc<dyn KeyUnwrapper> = Arc::new(ocicrypt::JweUnwrapper::new(keys));
        self.unwrappers.push(local.clone());
        self.local = Some(local);
        Ok(())
    }

    fn add_keyproviders(&mut self, source: &KeyProviderSource) -> Result<(), SessionError> {
        let config = match source {
            KeyProviderSource::None => Ok(None),
            KeyProviderSource::Environment => KeyProviderConfig::from_env(),
            KeyProviderSource::File(p) => KeyProviderConfig::from_path(p).map(Some),
        }
        .map_err(SessionError::KeyProviderConfig)?;
        let Some(config) = config else { return Ok(()) };
        for name in config.key_providers.keys() {
            let client = config
                .client(name)
                .map_err(|source| SessionError::KeyProvider { name: name.clone(), source })?;
            self.unwrappers.push(Arc::new(ProviderUnwrapper::new(client, Vec::new())));
        }
        Ok(())
    }

    fn add_kbs(&mut self, cfg: &SessionConfig) -> Result<(), SessionError> {
        let Some(kbs) = &cfg.kbs else { return Ok(()) };
        // Sample evidence only when asked for by name; `auto` never picks it.
        let opts = kbs_client::AttesterOptions {
            initdata_digest: kbs.initdata.as_ref().map(kbs_client::initdata::Initdata::digest),
            ..kbs_client::AttesterOptions::for_kind(kbs.attester)
        };
        let attester = match kbs_client::make_attester(kbs.attester, &opts) {
            Ok(a) => a,
            Err(e) if cfg.attester_failure == AttesterFailure::DisablesKbs => {
                self.attester_unavailable = Some(e);
                return Ok(());
            }
            Err(e) => return Err(SessionError::Attester(e)),
        };
        let client_cfg = kbs_client::ClientConfig {
            deadline: kbs.deadline,
            init_data: kbs.initdata.clone(),
            ..Default::default()
        };
        let client = KbsClient::with_http_client(&kbs.url, attester, client_cfg, http_client(kbs)?)
            .map_err(SessionError::Kbs)?;
        let kek = Arc::new(
            KbsKekUnwrapper::new(client.clone()).with_ttl(cfg.kek_ttl).with_provider_name(&cfg.kek_provider),
        );
        // A keyprovider config may also name attestation-agent; the direct KBS
        // unwrapper is tried alongside it.
        self.unwrappers.push(kek.clone());
        self.unwrappers.push(Arc::new(KbsJweKeyUnwrapper::new(client.clone())));
        self.kek = Some(kek);
        self.kbs = Some(client);
        Ok(())
    }
}

/// The KBS client's HTTP client: the built-in roots, and `ca` when given.
fn http_client(kbs: &KbsConfig) -> Result<reqwest::Client, SessionError> {
    kbs_client::tls::http_client(kbs.ca.as_ref()).map_err(SessionError::Kbs)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample_kbs() -> KbsConfig {
        KbsConfig { attester: AttesterKind::Sample, ..KbsConfig::new("http://127.0.0.1:9") }
    }

    #[test]
    fn kbs_unwrappers_share_one_client_in_the_chosen_order() {
        let key = PathBuf::from(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../testdata/golden/three-layers/keys/rsa.priv.pem"
        ));
        let cfg = SessionConfig { kbs: Some(sample_kbs()), key_files: vec![key], ..Default::default() };
        let s = GuestSession::build(&cfg).unwrap();
        assert!(s.kbs().is_some() && s.kek_unwrapper().is_some() && s.local_unwrapper().is_some());
        assert_eq!(s.unwrappers().len(), 3);
        assert!(s.unwrappers()[0].handles("jwe") && !s.unwrappers()[0].handles("provider.attestation-agent"));
        assert!(s.unwrappers()[1].handles("provider.attestation-agent"));

        let s = GuestSession::build(&SessionConfig { order: UnwrapperOrder::KbsFirst, ..cfg }).unwrap();
        assert!(s.unwrappers()[0].handles("provider.attestation-agent"));
        assert_eq!(s.attestations(), 0, "building a session never attests");
    }

    #[test]
    fn an_attester_that_cannot_start_fails_or_disables_the_kbs_as_configured() {
        let kbs = KbsConfig { attester: AttesterKind::Tdx, ..KbsConfig::new("http://127.0.0.1:9") };
        let cfg = SessionConfig { kbs: Some(kbs), ..Default::default() };
        // No TDX here (the tests never run inside a TD).
        if kbs_client::make_attester(AttesterKind::Tdx, &Default::default()).is_ok() {
            return;
        }
        let e = GuestSession::build(&cfg).unwrap_err();
        assert!(matches!(e, SessionError::Attester(_)), "{e}");
        assert!(report::line(&e).starts_with("attester: "), "{e}");
        assert_eq!(report::repeated_source(&e), None);
        let s = GuestSession::build(&SessionConfig { attester_failure: AttesterFailure::DisablesKbs, ..cfg })
            .unwrap();
        assert!(s.kbs().is_none() && s.kek_unwrapper().is_none() && s.attester_unavailable().is_some());
    }

    #[test]
    fn a_missing_key_file_is_named() {
        let cfg = SessionConfig { key_files: vec!["/nonexistent/k.pem".into()], ..Default::default() };
        let e = GuestSession::build(&cfg).unwrap_err();
        assert!(report::line(&e).starts_with("reading key file /nonexistent/k.pem: "), "{e}");
    }

    /// Issue 27: `reading key file X: <io error>` and `keyprovider config: <cause>`
    /// embedded the cause that `source()` also returned, so every printer said it twice.
    #[test]
    fn session_errors_do_not_repeat_their_source() {
        let e = GuestSession::build(&SessionConfig {
            key_files: vec!["/nonexistent/k.pem".into()],
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.to_string(), "reading key file /nonexistent/k.pem");
        assert_eq!(report::repeated_source(&e), None);
        let dir = tempfile::tempdir().unwrap();
        let bad = dir.path().join("bad.pem");
        std::fs::write(&bad, b"not a key").unwrap();
        let e =
            GuestSession::build(&SessionConfig { key_files: vec![bad], ..Default::default() }).unwrap_err();
        assert_eq!(report::repeated_source(&e), None, "{}", report::line(&e));
        assert_eq!(report::repeated_clause(&report::line(&e)), None, "{}", report::line(&e));
        let config = dir.path().join("ocicrypt.json");
        std::fs::write(&config, br#"{"key-providers":{"acme":{}}}"#).unwrap();
        let e = GuestSession::build(&SessionConfig {
            keyproviders: KeyProviderSource::File(config),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(
            report::line(&e),
            "keyprovider config: keyprovider \"acme\" has neither a \"cmd\" nor a \"grpc\" entry"
        );
    }
}
