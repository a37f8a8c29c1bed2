//! How pulls reach private registries, shared by `cloak-pull` and `cloak-cdh`: the
//! auth file (a path or a `kbs:///` resource fetched through the caller's one KBS
//! session, kept in memory only), containers-registries.conf (blocked registries,
//! mirrors, remaps), the image-pull proxy and extra CA roots.
//!
//! The binaries turn flags and cdh.toml into a [`RegistryAccess`] once; each pull
//! then [`RegistryAccess::load_into`] its `oci::SourceOptions`, so an edited file or
//! KBS resource takes effect at the next pull. Nothing fetched from the KBS is
//! written anywhere or logged: the auth file's bytes live in `Zeroizing` buffers
//! and its secrets in `oci::auth::Secret`s.

use std::path::PathBuf;
use std::sync::Arc;

use kbs_client::{KbsClient, KbsError, ResourceUri};
use oci::{AuthJson, RegistriesConf};

/// Where a configuration file comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    File(PathBuf),
    Kbs(ResourceUri),
}

impl Source {
    /// `kbs:///REPO/TYPE/TAG`, `file:///PATH` or a path (the caller decides whether
    /// a relative one is allowed).
    pub fn parse(s: &str) -> Result<Source, String> {
        let loc = crate::cdh::config::signature_policy_location(s)?;
        if loc.starts_with("kbs:///") {
            let uri = loc.parse().map_err(|e: KbsError| report::line(&e))?;
            return Ok(Source::Kbs(uri));
        }
        Ok(Source::File(PathBuf::from(loc)))
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Kbs(u) => write!(f, "{u}"),
        }
    }
}

/// Where the registries.conf comes from.
#[derive(Debug, Clone)]
pub enum ConfSource {
    /// Read (again) at every pull.
    Source(Source),
    /// Given inline (cdh.toml `[image] registry_config`), parsed at start.
    Inline(Arc<RegistriesConf>),
}

/// Why the registry access settings of a pull could not be loaded: the pull is
/// refused rather than run without the configured credentials or blocks.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AccessError {
    #[error("{what} {uri} is a KBS resource, but no KBS is configured (--kbs URL or [kbc] url in cdh.toml)")]
    NoKbs { what: &'static str, uri: String },
    #[error("fetching {what} {uri} from the KBS")]
    Kbs {
        what: &'static str,
        uri: String,
        #[source]
        source: KbsError,
    },
    #[error(transparent)]
    Auth(#[from] oci::auth::AuthError),
    #[error(transparent)]
    Conf(#[from] oci::RegistriesConfError),
}

/// The registry access settings of every pull.
#[derive(Debug, Clone, Default)]
pub struct RegistryAccess {
    /// The auth file (containers-auth.json).
    pub auth: Option<Source>,
    /// containers-registries.conf (version 2).
    pub registries_conf: Option<ConfSource>,
    /// The image-pull proxy; `None`: the proxy environment variables.
    pub proxy: Option<oci::ProxyConfig>,
    /// Extra CA roots for registries.
    pub roots: oci::TlsRoots,
}

const AUTH_FILE: &str = "the registry auth file";
const REGISTRIES_CONF: &str = "the registries.conf";

async fn fetch(
    kbs: Option<&KbsClient>,
    uri: &ResourceUri,
    what: &'static str,
) -> Result<zeroize::Zeroizing<Vec<u8>>, AccessError> {
    let kbs = kbs.ok_or_else(|| AccessError::NoKbs { what, uri: uri.to_string() })?;
    kbs.get_resource(uri).await.map_err(|source| AccessError::Kbs { what, uri: uri.to_string(), source })
}

impl RegistryAccess {
    /// Loads the auth file and the registries.conf (a `kbs:///` one through `kbs`,
    /// the caller's attested session) and sets them, the proxy and the roots in
    /// `opts`. A loaded auth file takes the place of `opts.auth_file` and the
    /// default files.
    pub async fn load_into(
        &self,
        opts: &mut oci::SourceOptions,
        kbs: Option<&KbsClient>,
    ) -> Result<(), AccessError> {
        if let Some(src) = &self.auth {
            let json = match src {
                Source::File(p) => oci::auth::load_auth_file(p)?,
                Source::Kbs(uri) => {
                    let bytes = fetch(kbs, uri, AUTH_FILE).await?;
                    AuthJson::parse(&bytes, &uri.to_string())?
                }
            };
            opts.auth_json = Some(Arc::new(json));
            opts.auth_file = None;
        }
        if let Some(conf) = &self.registries_conf {
            let conf = match conf {
                ConfSource::Inline(c) => c.clone(),
                ConfSource::Source(Source::File(p)) => Arc::new(RegistriesConf::load(p)?),
                ConfSource::Source(Source::Kbs(uri)) => {
                    let bytes = fetch(kbs, uri, REGISTRIES_CONF).await?;
                    Arc::new(RegistriesConf::parse(&bytes, &uri.to_string())?)
                }
            };
            opts.registries = Some(conf);
        }
        if self.proxy.is_some() {
            opts.proxy = self.proxy.clone();
        }
        if !self.roots.is_empty() {
            opts.roots = self.roots.clone();
        }
        Ok(())
    }

    /// Whether the KBS is needed to load these settings.
    pub fn needs_kbs(&self) -> Option<String> {
        match (&self.auth, &self.registries_conf) {
            (Some(Source::Kbs(u)), _) => Some(format!("{AUTH_FILE} {u}")),
            (_, Some(ConfSource::Source(Source::Kbs(u)))) => Some(format!("{REGISTRIES_CONF} {u}")),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn sources_parse_like_the_policy_uri() {
        assert!(matches!(Source::parse("kbs:///default/credential/test").unwrap(), Source::Kbs(_)));
        assert_eq!(Source::parse("file:///etc/auth.json").unwrap(), Source::File("/etc/auth.json".into()));
        assert_eq!(Source::parse("auth.json").unwrap(), Source::File("auth.json".into()));
        assert!(Source::parse("kbs:///only/two").is_err());
        assert!(Source::parse("https://x/auth.json").is_err());
    }

    #[tokio::test]
    async fn a_kbs_auth_file_without_a_kbs_is_refused_naming_it() {
        let access = RegistryAccess {
            auth: Some(Source::parse("kbs:///default/credential/test").unwrap()),
            ..Default::default()
        };
        let mut opts = oci::SourceOptions::default();
        let e = access.load_into(&mut opts, None).await.unwrap_err();
        let line = report::line(&e);
        assert!(line.contains("kbs:///default/credential/test") && line.contains("no KBS"), "{line}");
    }
}
