//! The broker's own TLS: a certificate chain and key (PEM files) served with rustls on
//! the aws-lc provider, ALPN `http/1.1`, and reloaded in place on SIGHUP (a renewed
//! certificate needs no restart; a bad new pair is refused and the old one stays).
//!
//! Also the rule for plain HTTP ([`Transport::choose`]): allowed without a flag on a
//! loopback address (a TLS-terminating proxy or sidecar beside the broker), elsewhere
//! only with `insecure_http`.

use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;

/// The largest certificate or key file read.
const MAX_PEM_BYTES: u64 = 1 << 20;

/// Why the broker's certificate or key cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TlsError {
    #[error("reading {what} {path}")]
    Read {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{what} {path} is larger than {MAX_PEM_BYTES} bytes")]
    TooLarge { what: &'static str, path: PathBuf },
    #[error("--tls-cert {path} holds no PEM certificate")]
    NoCertificate { path: PathBuf },
    #[error("--tls-cert {path}: a certificate is not valid PEM")]
    BadCertificate {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("--tls-key {path} holds no PEM private key (PKCS#8, PKCS#1 or SEC1)")]
    BadKey {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    #[error("--tls-key {key} does not fit --tls-cert {cert}")]
    Pair {
        cert: PathBuf,
        key: PathBuf,
        #[source]
        source: rustls::Error,
    },
    #[error("TLS configuration")]
    Config(#[source] rustls::Error),
}

/// How the broker speaks to its clients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// TLS with this certificate chain and key.
    Tls { cert: PathBuf, key: PathBuf },
    /// Plain HTTP; `loopback` when allowed by the address rather than by `insecure_http`.
    Plain { loopback: bool },
}

/// Why the transport settings are refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum TransportError {
    #[error("--tls-cert and --tls-key go together (tls_cert / tls_key in the config file)")]
    Half,
    #[error("--insecure-http and --tls-cert contradict each other: choose one")]
    Both,
    #[error(
        "refusing to serve plain HTTP on {addr}, which is not a loopback address: give the broker a \
         certificate with --tls-cert FILE --tls-key FILE, or pass --insecure-http when a TLS-terminating \
         proxy in front of it is the only way in"
    )]
    PlainOnNetwork { addr: SocketAddr },
}

impl Transport {
    /// The decided rule: TLS when given a certificate; plain HTTP on a loopback address,
    /// or anywhere with `insecure_http`; otherwise a refusal naming both options.
    pub fn choose(
        listen: SocketAddr,
        cert: Option<&Path>,
        key: Option<&Path>,
        insecure_http: bool,
    ) -> Result<Self, TransportError> {
        match (cert, key, insecure_http) {
            (Some(_), Some(_), true) => Err(TransportError::Both),
            (Some(c), Some(k), false) => Ok(Transport::Tls { cert: c.to_path_buf(), key: k.to_path_buf() }),
            (Some(_), None, _) | (None, Some(_), _) => Err(TransportError::Half),
            (None, None, true) => Ok(Transport::Plain { loopback: listen.ip().is_loopback() }),
            (None, None, false) if listen.ip().is_loopback() => Ok(Transport::Plain { loopback: true }),
            (None, None, false) => Err(TransportError::PlainOnNetwork { addr: listen }),
        }
    }
}

fn read_bounded(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    let read = |source| TlsError::Read { what, path: path.to_path_buf(), source };
    let mut buf = Vec::new();
    std::fs::File::open(path).map_err(read)?.take(MAX_PEM_BYTES + 1).read_to_end(&mut buf).map_err(read)?;
    if buf.len() as u64 > MAX_PEM_BYTES {
        return Err(TlsError::TooLarge { what, path: path.to_path_buf() });
    }
    Ok(buf)
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Loads and checks a chain and its key: every certificate parses, the key is one the
/// provider can sign with, and it matches the first certificate.
pub fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let cert_pem = read_bounded("--tls-cert", cert)?;
    let chain = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::BadCertificate { path: cert.to_path_buf(), source })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate { path: cert.to_path_buf() });
    }
    let key_pem = zeroize::Zeroizing::new(read_bounded("--tls-key", key)?);
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|source| TlsError::BadKey { path: key.to_path_buf(), source })?;
    let pair = |source| TlsError::Pair { cert: cert.to_path_buf(), key: key.to_path_buf(), source };
    CertifiedKey::from_der(chain, key_der, &provider()).map_err(pair)
}

/// The certificate in force, swapped whole on reload.
#[derive(Debug)]
pub struct ReloadableCert {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        // A poisoned lock still holds a complete, checked key.
        Some(Arc::clone(&self.current.read().unwrap_or_else(|p| p.into_inner())))
    }
}

impl ReloadableCert {
    /// Reads the files again; on success the new pair serves every later handshake.
    pub fn reload(&self) -> Result<(), TlsError> {
        let fresh = Arc::new(load_certified_key(&self.cert, &self.key)?);
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = fresh;
        Ok(())
    }
}

/// The broker's TLS acceptor and the handle that reloads its certificate.
pub fn acceptor(
    cert: &Path,
    key: &Path,
) -> Result<(tokio_rustls::TlsAcceptor, Arc<ReloadableCert>), TlsError> {
    let first = load_certified_key(cert, key)?;
    let resolver = Arc::new(ReloadableCert {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        current: RwLock::new(Arc::new(first)),
    });
    let mut cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_no_client_auth()
        .with_cert_resolver(resolver.clone());
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok((tokio_rustls::TlsAcceptor::from(Arc::new(cfg)), resolver))
}

/// Reloads the certificate on every SIGHUP (the signal that also reloads the policy);
/// runs until dropped.
pub fn spawn_reloader(cert: Arc<ReloadableCert>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Ok(mut hup) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) else {
            tracing::warn!("cannot listen for SIGHUP; the TLS certificate will not be reloaded");
            return;
        };
        while hup.recv().await.is_some() {
            match cert.reload() {
                Ok(()) => tracing::info!(cert = %cert.cert.display(), "TLS certificate reloaded"),
                Err(e) => tracing::error!(
                    error = %report::Line(&e),
                    "new TLS certificate refused; the previous certificate stays in force"
                ),
            }
        }
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn plain_http_is_refused_on_a_network_address_without_insecure_http() {
        let p = Path::new("x");
        assert_eq!(
            Transport::choose(addr("127.0.0.1:8080"), None, None, false),
            Ok(Transport::Plain { loopback: true })
        );
        assert_eq!(
            Transport::choose(addr("[::1]:8080"), None, None, false),
            Ok(Transport::Plain { loopback: true })
        );
        let e = Transport::choose(addr("0.0.0.0:8080"), None, None, false).unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("0.0.0.0:8080") && text.contains("--tls-cert") && text.contains("--insecure-http")
        );
        assert_eq!(
            Transport::choose(addr("0.0.0.0:8080"), None, None, true),
            Ok(Transport::Plain { loopback: false })
        );
        assert_eq!(Transport::choose(addr("0.0.0.0:1"), Some(p), Some(p), true), Err(TransportError::Both));
        assert_eq!(Transport::choose(addr("0.0.0.0:1"), Some(p), None, false), Err(TransportError::Half));
        assert!(matches!(
            Transport::choose(addr("10.0.0.1:443"), Some(p), Some(p), false),
            Ok(Transport::Tls { .. })
        ));
    }

    #[test]
    fn a_key_that_does_not_match_the_certificate_is_refused_naming_both_files() {
        use openssl::{asn1::Asn1Time, hash::MessageDigest, pkey::PKey, rsa::Rsa, x509::X509};
        let dir = tempfile::tempdir().unwrap();
        let mk = || PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
        let (k1, k2) = (mk(), mk());
        let mut b = X509::builder().unwrap();
        b.set_version(2).unwrap();
        b.set_pubkey(&k1).unwrap();
        b.set_not_before(&Asn1Time::days_from_now(0).unwrap()).unwrap();
        b.set_not_after(&Asn1Time::days_from_now(1).unwrap()).unwrap();
        b.sign(&k1, MessageDigest::sha256()).unwrap();
        let cert = dir.path().join("cert.pem");
        std::fs::write(&cert, b.build().to_pem().unwrap()).unwrap();
        let (good, bad) = (dir.path().join("k1.pem"), dir.path().join("k2.pem"));
        std::fs::write(&good, k1.private_key_to_pem_pkcs8().unwrap()).unwrap();
        std::fs::write(&bad, k2.private_key_to_pem_pkcs8().unwrap()).unwrap();
        let (_acceptor, reloadable) = acceptor(&cert, &good).unwrap();
        let e = load_certified_key(&cert, &bad).unwrap_err();
        assert!(matches!(e, TlsError::Pair { .. }), "{e}");
        assert_eq!(report::repeated_source(&e), None);
        // A refused reload keeps the pair in force.
        let before = reloadable.resolve_current();
        std::fs::write(&good, b"garbage").unwrap();
        assert!(reloadable.reload().is_err());
        assert!(Arc::ptr_eq(&before, &reloadable.resolve_current()));
        let e = load_certified_key(&dir.path().join("missing.pem"), &good).unwrap_err();
        assert!(report::line(&e).starts_with("reading --tls-cert "), "{e}");
    }

    impl ReloadableCert {
        fn resolve_current(&self) -> Arc<CertifiedKey> {
            Arc::clone(&self.current.read().unwrap())
        }
    }
}
