//! JWE recipients whose key lives in the KBS. `cloak keygen` registers a private
//! JWK at a `kbs:///` URI and writes the public JWK with that URI as its `kid`;
//! the JWE header then names where a guest can fetch the private key after
//! attestation. This unwrapper does exactly that and hands the key to ocicrypt's
//! JWE unwrapper; keys are kept only in memory for the unwrapper's lifetime.

use std::collections::HashMap;
use std::sync::Mutex;

use kbs_client::KbsClient;
use ocicrypt::jwe::{jwe_recipients, load_private_key, JweUnwrapper};
use ocicrypt::keywrap::{BoxFuture, KeyUnwrapper, WrapError};
use std::sync::Arc;
use zeroize::Zeroizing;

use crate::kek::{parse_kid, KekError, KekFetcher};

/// `jwe` unwrapper that fetches private keys named by `kbs:///` kids.
pub struct KbsJweKeyUnwrapper {
    client: Arc<dyn KekFetcher>,
    keys: Mutex<HashMap<String, Arc<JweUnwrapper>>>,
}

impl std::fmt::Debug for KbsJweKeyUnwrapper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KbsJweKeyUnwrapper").finish_non_exhaustive()
    }
}

impl KbsJweKeyUnwrapper {
    /// Shares `client` (and so its attestation) with the other unwrappers of a pull.
    pub fn new(client: KbsClient) -> Self {
        Self::with_fetcher(Arc::new(client))
    }

    /// Uses any resource source (the KBS in production).
    pub fn with_fetcher(client: Arc<dyn KekFetcher>) -> Self {
        Self { client, keys: Mutex::new(HashMap::new()) }
    }

    async fn unwrapper_for(&self, kid: &str) -> Result<Arc<JweUnwrapper>, WrapError> {
        if let Some(u) = self.keys.lock().unwrap_or_else(|p| p.into_inner()).get(kid) {
            return Ok(u.clone());
        }
        let uri = parse_kid(kid)
            .map_err(|e| WrapError::Malformed { what: "JWE kid".into(), source: Box::new(e) })?;
        let jwk = self.client.fetch(&uri).await.map_err(|e| WrapError::from(KekError::from(e)))?;
        let key = load_private_key(&jwk).map_err(|e| WrapError::Malformed {
            what: format!("private key fetched from {uri}"),
            source: Box::new(e),
        })?;
        let u = Arc::new(JweUnwrapper::new(vec![key]));
        self.keys.lock().unwrap_or_else(|p| p.into_inner()).insert(kid.to_owned(), u.clone());
        Ok(u)
    }
}

impl KeyUnwrapper for KbsJweKeyUnwrapper {
    fn name(&self) -> String {
        "jwe (keys from the KBS)".into()
    }

    fn handles(&self, scheme: &str) -> bool {
        scheme == "jwe"
    }

    fn unwrap<'a>(
        &'a self,
        _scheme: &'a str,
        wrapped: &'a [u8],
    ) -> BoxFuture<'a, Result<Zeroizing<Vec<u8>>, WrapError>> {
        Box::pin(async move {
            let kids: Vec<String> = jwe_recipients(wrapped)
                .map_err(WrapError::from)?
                .into_iter()
                .filter_map(|r| r.kid)
                .filter(|k| k.starts_with("kbs:"))
                .collect();
            if kids.is_empty() {
                return Err(WrapError::NoKey("no JWE recipient has a kbs:/// kid".into()));
            }
            let mut errors = Vec::new();
            for kid in &kids {
                match self.unwrapper_for(kid).await {
                    Ok(u) => match u.unwrap_jwe(wrapped) {
                        Ok(o) => return Ok(o),
                        Err(e) => errors.push(format!("{kid}: {}", report::Line(&e))),
                    },
                    // A refusal or an outage is final: do not hide it behind NoKey.
                    Err(e @ (WrapError::Refused(_) | WrapError::Unavailable(_))) => return Err(e),
                    Err(e) => errors.push(format!("{kid}: {}", report::Line(&e))),
                }
            }
            Err(WrapError::NoKey(errors.join("; ").into()))
        })
    }
}
