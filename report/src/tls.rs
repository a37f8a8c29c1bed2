//! Why a peer's TLS certificate was refused, read out of an error chain (feature
//! `tls`): the broker client and the registry client both need it, each saying it in
//! its own words (which flag or key adds a CA differs).
//!
//! reqwest keeps rustls's verdict deep in its chain, sometimes inside an
//! `io::Error` whose `source()` skips the error it wraps, so a plain chain walk
//! never reaches it; [`cert_verdict`] looks inside those too.

use std::error::Error;

/// What was wrong with the certificate, as a user acts on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CertVerdict {
    /// No trusted CA issued it.
    UnknownIssuer,
    Expired,
    NotValidYet,
    /// It is not for the host the client connected to (`expected`, when rustls says
    /// which), but for `presented` (possibly empty).
    WrongName {
        expected: Option<String>,
        presented: Vec<String>,
    },
    Revoked,
    /// Anything else rustls refused about it, in its words.
    Other(String),
}

/// The certificate verdict somewhere in `e`'s chain, if a certificate was refused.
pub fn cert_verdict(e: &(dyn Error + 'static)) -> Option<CertVerdict> {
    let mut cause: Option<&(dyn Error + 'static)> = Some(e);
    while let Some(c) = cause {
        if let Some(v) = rustls_verdict(c) {
            return Some(v);
        }
        cause = c.source();
    }
    None
}

/// rustls's error, as itself or inside an `io::Error`.
fn rustls_verdict(e: &(dyn Error + 'static)) -> Option<CertVerdict> {
    if let Some(r) = e.downcast_ref::<rustls::Error>() {
        return classify(r);
    }
    let inner = e.downcast_ref::<std::io::Error>()?.get_ref()?;
    rustls_verdict(inner)
}

fn classify(e: &rustls::Error) -> Option<CertVerdict> {
    use rustls::CertificateError as C;
    let rustls::Error::InvalidCertificate(c) = e else { return None };
    Some(match c {
        C::UnknownIssuer => CertVerdict::UnknownIssuer,
        C::Expired | C::ExpiredContext { .. } => CertVerdict::Expired,
        C::NotValidYet | C::NotValidYetContext { .. } => CertVerdict::NotValidYet,
        C::NotValidForName => CertVerdict::WrongName { expected: None, presented: Vec::new() },
        C::NotValidForNameContext { expected, presented } => CertVerdict::WrongName {
            expected: Some(expected.to_str().into_owned()),
            presented: presented.iter().map(|p| unwrap_name(p)).collect(),
        },
        C::Revoked => CertVerdict::Revoked,
        _ => CertVerdict::Other(e.to_string()),
    })
}

/// `DnsName("kbs.example")` (how rustls spells a presented name) as `kbs.example`.
fn unwrap_name(p: &str) -> String {
    match (p.find('('), p.ends_with(')')) {
        (Some(i), true) => p[i + 1..p.len() - 1].trim_matches('"').to_owned(),
        _ => p.to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Outer(std::io::Error);
    impl std::fmt::Display for Outer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("sending the request")
        }
    }
    impl Error for Outer {
        fn source(&self) -> Option<&(dyn Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn verdicts_inside_io_errors_deep_in_a_chain_are_found() {
        let io = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert_eq!(cert_verdict(&Outer(io)), Some(CertVerdict::UnknownIssuer));
        let r = rustls::Error::InvalidCertificate(rustls::CertificateError::NotValidForNameContext {
            expected: rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap(),
            presented: vec!["DnsName(\"kbs.example\")".into(), "IpAddress(10.0.0.1)".into()],
        });
        assert_eq!(
            cert_verdict(&r),
            Some(CertVerdict::WrongName {
                expected: Some("127.0.0.1".into()),
                presented: vec!["kbs.example".into(), "10.0.0.1".into()],
            })
        );
        let other = std::io::Error::other("connection reset");
        assert_eq!(cert_verdict(&Outer(other)), None);
        assert_eq!(cert_verdict(&rustls::Error::DecryptError), None);
    }
}
