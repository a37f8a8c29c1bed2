//! Recipient strings → key wrappers.
//!
//! `jwe:FILE`                 public key (PEM, DER, X.509, JWK); all jwe recipients share ONE JWE
//! `provider:NAME[:PARAMS]`   an ocicrypt keyprovider from the keyprovider config
//! `kbs:///REPO/TYPE/TAG`     a KEK registered in the KBS (CoCo AnnotationPacket, provider `attestation-agent`)

use std::path::PathBuf;
use std::sync::Arc;

use ocicrypt::keywrap::KeyWrapper;

use crate::config::{EncryptConfig, KbsAdminOptions};
use crate::Error;

/// One parsed `--recipient`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipient {
    /// A JWE public key file.
    Jwe(PathBuf),
    /// An ocicrypt keyprovider, with optional parameters.
    Provider { name: String, params: Option<String> },
    /// A KEK at this KBS resource.
    Kbs(String),
}

impl std::str::FromStr for Recipient {
    type Err = Error;

    fn from_str(s: &str) -> Result<Recipient, Error> {
        let bad = |reason: &str| Error::Recipient { recipient: s.to_string(), reason: reason.to_string() };
        if let Some(path) = s.strip_prefix("jwe:") {
            if path.is_empty() {
                return Err(bad("jwe: needs a public key file, e.g. jwe:pub.pem"));
            }
            Ok(Recipient::Jwe(PathBuf::from(path)))
        } else if let Some(rest) = s.strip_prefix("provider:") {
            let (name, params) = match rest.split_once(':') {
                Some((n, p)) => (n, Some(p.to_string())),
                None => (rest, None),
            };
            if name.is_empty() {
                return Err(bad("provider: needs a provider name, e.g. provider:attestation-agent"));
            }
            Ok(Recipient::Provider { name: name.to_string(), params })
        } else if s.starts_with("kbs://") {
            s.parse::<kbs_client::ResourceUri>().map_err(|e| bad(&report::line(&e)))?;
            Ok(Recipient::Kbs(s.to_string()))
        } else {
            let scheme = s.split(':').next().unwrap_or(s);
            Err(bad(&format!(
                "unsupported scheme {scheme:?}: use jwe:PUBKEY, provider:NAME[:PARAMS] or kbs:///REPO/TYPE/TAG \
                 (pgp, pkcs7 and pkcs11 are not supported)"
            )))
        }
    }
}

async fn read_file(path: &std::path::Path) -> Result<Vec<u8>, Error> {
    tokio::fs::read(path).await.map_err(Error::io(format!("reading {}", path.display())))
}

fn kbs_admin(kbs: &KbsAdminOptions, what: &str) -> Result<(String, PathBuf), Error> {
    match (&kbs.url, &kbs.admin_key) {
        (Some(u), Some(k)) => Ok((u.clone(), k.clone())),
        _ => Err(Error::Usage(format!(
            "{what} needs --kbs-url URL and --kbs-admin-key admin.pem to register the key in the KBS"
        ))),
    }
}

/// An admin client for the KBS named by the options.
pub(crate) async fn admin_client(
    kbs: &KbsAdminOptions,
    what: &str,
) -> Result<kbs_client::AdminClient, Error> {
    let (url, key_path) = kbs_admin(kbs, what)?;
    let pem = zeroize::Zeroizing::new(read_file(&key_path).await?);
    let ca = kbs.kbs_cert.as_deref().map(kbs_client::CaBundle::read).transpose().map_err(Error::kbs)?;
    kbs_client::AdminClient::trusting(&url, &pem, ca.as_ref()).map_err(Error::kbs)
}

/// Builds the wrappers for every recipient: one JWE wrapper for all jwe: keys,
/// one wrapper per provider, one KEK wrapper per kbs:/// resource.
pub(crate) async fn build_wrappers(cfg: &EncryptConfig) -> Result<Vec<Arc<dyn KeyWrapper>>, Error> {
    let parsed = &cfg.recipients;
    let mut wrappers: Vec<Arc<dyn KeyWrapper>> = Vec::new();

    let mut jwe_keys = Vec::new();
    for r in parsed {
        if let Recipient::Jwe(path) = r {
            let bytes = read_file(path).await?;
            let key = ocicrypt::load_public_key(&bytes).map_err(|e| Error::RecipientUnusable {
                recipient: format!("jwe:{}", path.display()),
                source: e.into(),
            })?;
            jwe_keys.push(key);
        }
    }
    if !jwe_keys.is_empty() {
        wrappers.push(Arc::new(ocicrypt::JweWrapper::new(jwe_keys)));
    }

    // Recipients of one provider share one wrap call with all their parameters, as in Go.
    let mut providers: std::collections::BTreeMap<String, Vec<String>> = std::collections::BTreeMap::new();
    for r in parsed {
        if let Recipient::Provider { name, params } = r {
            providers.entry(name.clone()).or_default().extend(params.clone());
        }
    }
    if let Some(first) = providers.keys().next().cloned() {
        let recipient = format!("provider:{first}");
        let unusable = |e: keyprovider::client::ClientError| Error::RecipientUnusable {
            recipient: recipient.clone(),
            source: e.into(),
        };
        let config = match &cfg.keyprovider_config {
            Some(path) => keyprovider::client::KeyProviderConfig::from_path(path).map_err(unusable)?,
            None => keyprovider::client::KeyProviderConfig::from_env().map_err(unusable)?.ok_or_else(|| {
                Error::Recipient {
                    recipient: recipient.clone(),
                    reason: "no keyprovider config: pass --keyprovider-config FILE or set OCICRYPT_KEYPROVIDER_CONFIG"
                        .into(),
                }
            })?,
        };
        for (name, params) in providers {
            let client = config.client(&name).map_err(|e| Error::RecipientUnusable {
                recipient: format!("provider:{name}"),
                source: e.into(),
            })?;
            wrappers.push(Arc::new(keyprovider::client::ProviderWrapper::new(client, params)));
        }
    }

    for r in parsed {
        if let Recipient::Kbs(uri) = r {
            let kid: kbs_client::ResourceUri = uri.parse().map_err(|e: kbs_client::KbsError| {
                Error::Recipient { recipient: uri.clone(), reason: report::line(&e) }
            })?;
            let wrapper = match &cfg.kbs.kek_file {
                Some(path) => keyprovider::kek::KbsKekWrapper::with_kek_file(kid, path)
                    .map_err(|e| Error::RecipientUnusable { recipient: uri.clone(), source: e.into() })?,
                None => {
                    // Without the admin flags there are two ways to give a KEK: name both.
                    let admin =
                        admin_client(&cfg.kbs, &format!("recipient {uri}")).await.map_err(|e| match e {
                            Error::Usage(_) => Error::Usage(format!(
                            "recipient {uri} needs a KEK: either --kek-file FILE (32 bytes you registered at \
                             that id yourself, e.g. with `cloak-kbs put-resource` or Trustee's kbs-client; \
                             works with any KBS), or --kbs-url URL and --kbs-admin-key admin.pem to have \
                             cloak generate and register one (needs a broker that can read the KEK back, \
                             such as cloak-kbs)"
                        )),
                            e => e,
                        })?;
                    let w = keyprovider::kek::KbsKekWrapper::registering(kid, Arc::new(admin));
                    // The KEK is obtained now, before anything is pushed: a broker that
                    // refuses (Trustee has no read-back) must not leave blobs behind.
                    w.ready()
                        .await
                        .map_err(|e| Error::RecipientUnusable { recipient: uri.clone(), source: e.into() })?;
                    w
                }
            };
            wrappers.push(Arc::new(wrapper));
        }
    }
    Ok(wrappers)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_scheme() {
        assert_eq!("jwe:a.pem".parse::<Recipient>().ok(), Some(Recipient::Jwe("a.pem".into())));
        assert_eq!(
            "provider:attestation-agent:keyid=kbs:///a/b/c::keypath=/k".parse::<Recipient>().ok(),
            Some(Recipient::Provider {
                name: "attestation-agent".into(),
                params: Some("keyid=kbs:///a/b/c::keypath=/k".into())
            })
        );
        assert_eq!(
            "kbs:///default/image-kek/app".parse::<Recipient>().ok(),
            Some(Recipient::Kbs("kbs:///default/image-kek/app".into()))
        );
    }

    #[test]
    fn unknown_scheme_is_named() {
        let e = "pgp:alice@example.com".parse::<Recipient>().err().map(|e| e.to_string());
        assert!(e.is_some_and(|e| e.contains("\"pgp\"") && e.contains("jwe:")));
    }

    #[test]
    fn empty_parts_are_refused() {
        assert!("jwe:".parse::<Recipient>().is_err());
        assert!("provider:".parse::<Recipient>().is_err());
        assert!("kbs:///default/../x".parse::<Recipient>().is_err());
    }
}
