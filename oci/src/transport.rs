//! How the registry client reaches a registry: extra CA roots (PEM strings such as
//! CDH's `extra_root_certificates`, and skopeo's `--cert-dir`), the image-pull
//! proxy, and the reading of a refused certificate out of an error chain.
//!
//! `--cert-dir DIR`: `DIR/*.crt` are trusted for every registry, and
//! `DIR/HOST:PORT/*.crt` (or `DIR/HOST/*.crt`) for that registry only, as in
//! containers-certs.d(5). Client certificates (`*.cert`, `*.key`) are not used.
//!
//! The proxy applies to the registry client only (its token realm included): the
//! KBS client builds its own HTTP client and never sees it.

use std::fmt;

use report::tls::CertVerdict;
use std::path::{Path, PathBuf};

/// Largest certificate file read (a system bundle is about 200 KiB).
pub const MAX_CERT_FILE: u64 = 1 << 20;

/// Why the TLS or proxy settings are unusable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    #[error("reading the certificate {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{origin} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    NoCertificate { origin: String },
    #[error("{origin} is not a valid PEM certificate bundle")]
    BadCertificate {
        origin: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("the proxy URL {url:?} is not valid")]
    BadProxy {
        url: String,
        #[source]
        source: reqwest::Error,
    },
}

/// The image-pull proxy (`image_pull_proxy` in cdh.toml, `--proxy` of cloak-pull).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ProxyConfig {
    /// For `https://` registries.
    pub https_proxy: Option<String>,
    /// For `http://` (insecure) registries.
    pub http_proxy: Option<String>,
    /// Hosts, domains (`.internal`), IPs and CIDRs reached directly, comma-separated.
    pub no_proxy: Option<String>,
}

impl fmt::Debug for ProxyConfig {
    // A proxy URL may carry user:password; only whether one is set is shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProxyConfig")
            .field("https_proxy", &self.https_proxy.as_ref().map(|u| redact_url(u)))
            .field("http_proxy", &self.http_proxy.as_ref().map(|u| redact_url(u)))
            .field("no_proxy", &self.no_proxy)
            .finish()
    }
}

/// A proxy URL without its user information, for messages.
pub fn redact_url(u: &str) -> String {
    match reqwest::Url::parse(u) {
        Ok(mut url) if !url.username().is_empty() || url.password().is_some() => {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.to_string()
        }
        Ok(url) => url.to_string(),
        Err(_) => "<not a URL>".to_string(),
    }
}

impl ProxyConfig {
    /// Adds the proxies to a client builder; with no proxy set, the builder is
    /// returned unchanged.
    pub(crate) fn apply(
        &self,
        mut b: reqwest::ClientBuilder,
    ) -> Result<reqwest::ClientBuilder, TransportError> {
        let no_proxy = self.no_proxy.as_deref().and_then(reqwest::NoProxy::from_string);
        let make = |url: &str, f: fn(&str) -> reqwest::Result<reqwest::Proxy>| {
            f(url).map(|p| p.no_proxy(no_proxy.clone())).map_err(|source| TransportError::BadProxy {
                url: redact_url(url),
                source: source.without_url(),
            })
        };
        if let Some(u) = self.https_proxy.as_deref().filter(|u| !u.is_empty()) {
            b = b.proxy(make(u, |u| reqwest::Proxy::https(u))?);
        }
        if let Some(u) = self.http_proxy.as_deref().filter(|u| !u.is_empty()) {
            b = b.proxy(make(u, |u| reqwest::Proxy::http(u))?);
        }
        Ok(b)
    }

    /// Whether any proxy is set.
    pub fn is_set(&self) -> bool {
        self.https_proxy.as_deref().is_some_and(|u| !u.is_empty())
            || self.http_proxy.as_deref().is_some_and(|u| !u.is_empty())
    }
}

/// Extra CA roots for registries.
#[derive(Clone, Default)]
pub struct TlsRoots {
    /// Trusted for every registry (PEM strings, flat `--cert-dir` files).
    all: Vec<reqwest::Certificate>,
    /// `--cert-dir DIR`: `DIR/HOST[:PORT]/*.crt` are read for that registry.
    cert_dir: Option<PathBuf>,
    /// Where the roots came from, for a refused certificate's message.
    origins: Vec<String>,
}

impl fmt::Debug for TlsRoots {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsRoots")
            .field("certs", &self.all.len())
            .field("cert_dir", &self.cert_dir)
            .field("origins", &self.origins)
            .finish()
    }
}

/// Parses a PEM bundle; at least one certificate.
fn parse_pem(pem: &[u8], origin: &str) -> Result<Vec<reqwest::Certificate>, TransportError> {
    if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
        return Err(TransportError::NoCertificate { origin: origin.to_string() });
    }
    reqwest::Certificate::from_pem_bundle(pem)
        .map_err(|source| TransportError::BadCertificate { origin: origin.to_string(), source })
}

fn read_crt_files(dir: &Path) -> Result<Vec<reqwest::Certificate>, TransportError> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else { return Ok(out) };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "crt") && p.is_file())
        .collect();
    files.sort();
    for p in files {
        let shown = p.display().to_string();
        let bytes = crate::bounded::read_file_capped(&p, MAX_CERT_FILE, "a certificate file")
            .map_err(|source| TransportError::Read { path: shown.clone(), source })?;
        out.extend(parse_pem(&bytes, &shown)?);
    }
    Ok(out)
}

impl TlsRoots {
    /// Adds PEM certificates (each string may hold several); `origin` names them.
    pub fn add_pem(&mut self, pem: &str, origin: &str) -> Result<(), TransportError> {
        self.all.extend(parse_pem(pem.as_bytes(), origin)?);
        self.origins.push(origin.to_string());
        Ok(())
    }

    /// `--cert-dir DIR`: its `*.crt` now (for every registry), its per-registry
    /// directories when a client for that registry is built.
    pub fn set_cert_dir(&mut self, dir: &Path) -> Result<(), TransportError> {
        if !dir.is_dir() {
            return Err(TransportError::Read {
                path: dir.display().to_string(),
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "not a directory"),
            });
        }
        self.all.extend(read_crt_files(dir)?);
        self.cert_dir = Some(dir.to_path_buf());
        self.origins.push(format!("--cert-dir {}", dir.display()));
        Ok(())
    }

    /// Whether any extra root is configured.
    pub fn is_empty(&self) -> bool {
        self.all.is_empty() && self.cert_dir.is_none()
    }

    /// The roots for `registry` (`host[:port]`).
    pub(crate) fn for_registry(&self, registry: &str) -> Result<Vec<reqwest::Certificate>, TransportError> {
        let mut v = self.all.clone();
        if let Some(d) = &self.cert_dir {
            v.extend(read_crt_files(&d.join(registry))?);
            let host = registry.split(':').next().unwrap_or(registry);
            if host != registry {
                v.extend(read_crt_files(&d.join(host))?);
            }
        }
        Ok(v)
    }

    /// Where the extra roots came from (empty: none).
    pub fn origins(&self) -> &[String] {
        &self.origins
    }
}

/// Why a registry's certificate was refused, in the words a user acts on (the
/// verdict itself is read by `report::tls`, shared with the broker client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertProblem(pub CertVerdict);

impl fmt::Display for CertProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            CertVerdict::UnknownIssuer => f.write_str(
                "it is signed by an unknown CA; add that CA to the trusted roots \
                 (cdh.toml [image] extra_root_certificates, cloak-pull --cert-dir DIR)",
            ),
            CertVerdict::Expired => f.write_str("it has expired"),
            CertVerdict::NotValidYet => f.write_str("it is not valid yet (check the clocks)"),
            CertVerdict::WrongName { presented, .. } if presented.is_empty() => {
                f.write_str("it is for another name")
            }
            CertVerdict::WrongName { presented, .. } => {
                write!(f, "it is for another name (it lists {})", presented.join(", "))
            }
            CertVerdict::Revoked => f.write_str("it was revoked"),
            CertVerdict::Other(s) => f.write_str(s),
        }
    }
}

/// The certificate verdict somewhere in `e`'s source chain, if a certificate was refused.
pub fn cert_problem(e: &(dyn std::error::Error + 'static)) -> Option<CertProblem> {
    report::tls::cert_verdict(e).map(CertProblem)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn proxy_debug_hides_user_info() {
        let p = ProxyConfig {
            https_proxy: Some("http://bob:hunter2@proxy:3128".into()),
            http_proxy: None,
            no_proxy: Some(".internal".into()),
        };
        let d = format!("{p:?}");
        assert!(!d.contains("hunter2") && !d.contains("bob") && d.contains("proxy:3128"), "{d}");
        assert!(p.is_set());
        assert!(p.apply(reqwest::Client::builder()).is_ok());
        let bad = ProxyConfig { https_proxy: Some("::nope".into()), ..Default::default() };
        assert!(bad.apply(reqwest::Client::builder()).is_err());
    }

    #[test]
    fn pem_strings_are_checked() {
        let mut r = TlsRoots::default();
        let e = r.add_pem("hello", "extra_root_certificates[0]").unwrap_err();
        assert!(report::line(&e).contains("extra_root_certificates[0] holds no PEM certificate"), "{e}");
        let e = r
            .add_pem("-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "x")
            .map(|_| r.for_registry("h").map(|v| v.len()));
        // reqwest may defer the X.509 parse; either way nothing panics.
        let _ = e;
        let dir = tempfile::tempdir().unwrap();
        let mut r = TlsRoots::default();
        r.set_cert_dir(dir.path()).unwrap();
        assert!(!r.is_empty());
        assert!(r.set_cert_dir(&dir.path().join("missing")).is_err());
    }
}
