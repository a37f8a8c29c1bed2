//! Trust for an https broker: the CA bundle a user gives (`--kbs-cert FILE`, cdh.toml
//! `[kbc] kbs_cert`), added to the built-in roots as CoCo's CDH does, the one builder of
//! the HTTP client every KBS client uses, and the reading of a refused certificate out
//! of reqwest's error chain (rustls's verdict sits under hyper's and the OS's errors).

use report::tls::CertVerdict;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

use base64::Engine;

use crate::error::KbsError;

/// A tracing filter directive for the binaries' default filters: the platform
/// verifier logs every refused certificate at ERROR, which the client's own error
/// (naming the broker and the reason) already says.
pub const QUIET_VERIFIER_LOG: &str = "rustls_platform_verifier=off";

/// The largest CA bundle read (a system bundle is about 200 KiB).
pub const MAX_BUNDLE_BYTES: u64 = 1 << 20;

/// How long a connection to the broker (TCP and TLS handshake) may take to open.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// CA certificates to trust for the broker, beside the built-in roots.
#[derive(Clone)]
pub struct CaBundle {
    /// Where they came from (a file, `cdh.toml [kbc] kbs_cert`), for messages.
    source: String,
    certs: Vec<reqwest::Certificate>,
}

impl std::fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CaBundle").field("source", &self.source).field("certs", &self.certs.len()).finish()
    }
}

/// Why a CA bundle is unusable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CaBundleError {
    #[error("reading the CA bundle {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the CA bundle {source_name} is larger than {MAX_BUNDLE_BYTES} bytes")]
    TooLarge { source_name: String },
    #[error("the CA bundle {source_name} holds no PEM certificate (-----BEGIN CERTIFICATE-----)")]
    Empty { source_name: String },
    #[error("the CA bundle {source_name} holds a {label} block; only CERTIFICATE blocks belong in it")]
    NotACertificate { source_name: String, label: String },
    #[error("certificate {index} of the CA bundle {source_name} is not valid PEM/X.509 ({reason})")]
    Malformed { source_name: String, index: usize, reason: String },
}

impl CaBundle {
    /// Reads a PEM bundle from a file (at most [`MAX_BUNDLE_BYTES`]).
    pub fn read(path: &Path) -> Result<Self, CaBundleError> {
        let shown = path.display().to_string();
        let read = |source| CaBundleError::Read { path: shown.clone(), source };
        let mut text = Vec::new();
        std::fs::File::open(path)
            .map_err(read)?
            .take(MAX_BUNDLE_BYTES + 1)
            .read_to_end(&mut text)
            .map_err(read)?;
        Self::from_pem(&text, &shown)
    }

    /// Parses a PEM bundle; `source_name` names it in errors. Every `CERTIFICATE` block
    /// must be a valid X.509 certificate, and there must be at least one; text outside
    /// the blocks is ignored, any other block is refused.
    pub fn from_pem(pem: &[u8], source_name: &str) -> Result<Self, CaBundleError> {
        let source = source_name.to_owned();
        if pem.len() as u64 > MAX_BUNDLE_BYTES {
            return Err(CaBundleError::TooLarge { source_name: source });
        }
        let text = String::from_utf8_lossy(pem);
        let mut certs = Vec::new();
        let mut rest: &str = &text;
        while let Some(at) = rest.find("-----BEGIN ") {
            let after = &rest[at + "-----BEGIN ".len()..];
            let index = certs.len() + 1;
            let malformed = |reason: &str| CaBundleError::Malformed {
                source_name: source.clone(),
                index,
                reason: reason.to_owned(),
            };
            let Some(label_end) = after.find("-----") else {
                return Err(malformed("unterminated BEGIN line"));
            };
            let label = &after[..label_end];
            if label != "CERTIFICATE" && label != "TRUSTED CERTIFICATE" {
                return Err(CaBundleError::NotACertificate { source_name: source, label: label.to_owned() });
            }
            let body_and_rest = &after[label_end + 5..];
            let end_marker = format!("-----END {label}-----");
            let Some(end) = body_and_rest.find(&end_marker) else {
                return Err(malformed("no END line"));
            };
            let b64: String = body_and_rest[..end].chars().filter(|c| !c.is_whitespace()).collect();
            let der = base64::engine::general_purpose::STANDARD
                .decode(b64.as_bytes())
                .map_err(|_| malformed("bad base64"))?;
            // The X.509 parse reqwest defers until the client is built, done here so
            // the error names the bundle and the certificate.
            openssl::x509::X509::from_der(&der).map_err(|_| malformed("not an X.509 certificate"))?;
            certs.push(
                reqwest::Certificate::from_der(&der).map_err(|_| malformed("refused by the TLS stack"))?,
            );
            rest = &body_and_rest[end + end_marker.len()..];
        }
        if certs.is_empty() {
            return Err(CaBundleError::Empty { source_name: source });
        }
        Ok(CaBundle { source, certs })
    }

    /// Where the bundle came from.
    pub fn source_name(&self) -> &str {
        &self.source
    }

    /// How many certificates it holds.
    pub fn len(&self) -> usize {
        self.certs.len()
    }

    /// Never true for a parsed bundle (it needs one certificate).
    pub fn is_empty(&self) -> bool {
        self.certs.is_empty()
    }
}

/// The HTTP client of every KBS client (guest and admin): the built-in roots, plus
/// `ca` when given.
pub fn http_client(ca: Option<&CaBundle>) -> Result<reqwest::Client, KbsError> {
    let mut b = reqwest::Client::builder().connect_timeout(CONNECT_TIMEOUT);
    if let Some(ca) = ca {
        b = b.tls_certs_merge(ca.certs.iter().cloned());
    }
    b.build().map_err(|e| KbsError::Config(format!("cannot build the HTTP client: {e}")))
}

/// Why a broker's certificate was refused, in the words a guest's operator acts on
/// (the verdict itself is read by `report::tls`, shared with the registry client).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertProblem(pub CertVerdict);

impl std::fmt::Display for CertProblem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            CertVerdict::UnknownIssuer => f.write_str(
                "unknown issuer: no trusted CA signed it; give the broker's CA bundle with --kbs-cert FILE \
                 (cloak-cdh: also [kbc] kbs_cert in cdh.toml)",
            ),
            CertVerdict::Expired => f.write_str("expired: the broker needs a renewed certificate"),
            CertVerdict::NotValidYet => {
                f.write_str("not valid yet: check the clocks of the guest and the issuer")
            }
            CertVerdict::WrongName { expected, presented } => {
                f.write_str("not valid for the host name")?;
                if let Some(e) = expected {
                    write!(f, " {e}")?;
                }
                if !presented.is_empty() {
                    write!(f, " (it lists {})", presented.join(", "))?;
                }
                f.write_str("; connect by a name or address the certificate lists")
            }
            CertVerdict::Revoked => f.write_str("revoked"),
            CertVerdict::Other(s) => f.write_str(s),
        }
    }
}

/// The certificate verdict under a reqwest error, if a certificate was refused.
pub fn cert_problem(e: &reqwest::Error) -> Option<CertProblem> {
    report::tls::cert_verdict(e).map(CertProblem)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn ca_pem() -> String {
        use openssl::{asn1::Asn1Time, hash::MessageDigest, pkey::PKey, rsa::Rsa, x509::X509};
        let key = PKey::from_rsa(Rsa::generate(2048).unwrap()).unwrap();
        let mut b = X509::builder().unwrap();
        let mut name = openssl::x509::X509NameBuilder::new().unwrap();
        name.append_entry_by_text("CN", "test CA").unwrap();
        let name = name.build();
        b.set_subject_name(&name).unwrap();
        b.set_issuer_name(&name).unwrap();
        b.set_pubkey(&key).unwrap();
        b.set_not_before(&Asn1Time::days_from_now(0).unwrap()).unwrap();
        b.set_not_after(&Asn1Time::days_from_now(1).unwrap()).unwrap();
        b.sign(&key, MessageDigest::sha256()).unwrap();
        String::from_utf8(b.build().to_pem().unwrap()).unwrap()
    }

    #[test]
    fn a_bundle_of_two_certificates_with_comments_is_read_whole() {
        let pem = format!("# our CA\n{}\nsubject=...\n{}", ca_pem(), ca_pem());
        let b = CaBundle::from_pem(pem.as_bytes(), "ca.pem").unwrap();
        assert_eq!(b.len(), 2);
        assert!(http_client(Some(&b)).is_ok());
    }

    #[test]
    fn a_broken_certificate_is_named_by_bundle_and_position() {
        let good = ca_pem();
        let broken = good.replace("MII", "MIX");
        let pem = format!("{good}{broken}");
        let e = CaBundle::from_pem(pem.as_bytes(), "/etc/kbs-ca.pem").unwrap_err();
        assert!(e.to_string().starts_with("certificate 2 of the CA bundle /etc/kbs-ca.pem"), "{e}");
        let e = CaBundle::from_pem(b"not a pem at all", "cdh.toml [kbc] kbs_cert").unwrap_err();
        assert!(matches!(e, CaBundleError::Empty { .. }), "{e}");
        let e =
            CaBundle::from_pem(b"-----BEGIN PRIVATE KEY-----\nAA==\n-----END PRIVATE KEY-----\n", "k.pem")
                .unwrap_err();
        assert!(e.to_string().contains("PRIVATE KEY block"), "{e}");
    }

    #[test]
    fn a_bundle_over_the_cap_is_refused_without_reading_it_all() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("big.pem");
        std::fs::write(&p, vec![b'#'; (MAX_BUNDLE_BYTES + 10) as usize]).unwrap();
        let e = CaBundle::read(&p).unwrap_err();
        assert!(matches!(e, CaBundleError::TooLarge { .. }), "{e}");
        let e = CaBundle::read(&dir.path().join("missing.pem")).unwrap_err();
        assert!(report::line(&e).starts_with(&format!("reading the CA bundle {}", dir.path().display())));
    }

    #[test]
    fn rustls_verdicts_under_io_errors_are_classified() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert_eq!(
            report::tls::cert_verdict(&io).map(CertProblem),
            Some(CertProblem(CertVerdict::UnknownIssuer))
        );
        let r = rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForNameContext {
            expected: rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap(),
            presented: vec!["DnsName(\"kbs.example\")".into()],
        });
        let p = report::tls::cert_verdict(&r).map(CertProblem).unwrap();
        assert_eq!(
            p.to_string(),
            "not valid for the host name 127.0.0.1 (it lists kbs.example); connect by a name or address \
             the certificate lists"
        );
        let plain = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(report::tls::cert_verdict(&plain), None);
    }
}
