//! The `sample` attester: Trustee's test evidence, with no hardware behind it.
//! Only for development and CI; `make_attester` refuses it unless allowed.
//!
//! Like hardware, its evidence carries the init-data digest the guest was launched
//! with, so the broker's init-data binding can be tested end to end:
//! - `init_data`: base64 (STANDARD) of the raw digest (Trustee's sample verifier adds
//!   the unpadded digest the same way), present only when a digest is set;
//! - the "host" decides that digest. By default it is the digest of the init-data the
//!   guest itself sends (`AttesterOptions::initdata_digest`: a correctly launched
//!   guest). The environment variable [`SAMPLE_INIT_DATA_DIGEST_ENV`]
//!   (`CLOAK_SAMPLE_INIT_DATA_DIGEST=<hex>`) overrides it: the host launched the guest
//!   with other init-data than the guest now sends, which the broker must refuse.

use base64::prelude::{Engine, BASE64_STANDARD};
use serde_json::{json, Value};

use super::{Attester, Tee};
use crate::error::AttesterError;
use crate::protocol::RUNTIME_DATA_HASH_LEN;
use ocicrypt::keywrap::BoxFuture;

/// Overrides the init-data digest of sample evidence (hex): what a host that launched
/// the guest with other init-data would have measured.
pub const SAMPLE_INIT_DATA_DIGEST_ENV: &str = "CLOAK_SAMPLE_INIT_DATA_DIGEST";

/// Produces `{"svn":"1","report_data":"<b64>"[,"init_data":"<b64>"]}`.
#[derive(Debug, Clone, Default)]
pub struct SampleAttester {
    init_data: Option<Vec<u8>>,
}

impl SampleAttester {
    pub fn new() -> Self {
        SampleAttester::default()
    }

    /// Evidence that carries `digest` as the launch-time init-data digest.
    pub fn with_init_data(digest: Option<Vec<u8>>) -> Self {
        SampleAttester { init_data: digest }
    }

    /// The digest the "host" set: [`SAMPLE_INIT_DATA_DIGEST_ENV`] if set, else `guest`.
    pub(crate) fn host_digest(guest: Option<&[u8]>) -> Result<Option<Vec<u8>>, AttesterError> {
        match std::env::var(SAMPLE_INIT_DATA_DIGEST_ENV) {
            Ok(h) => hex::decode(h.trim()).map(Some).map_err(|_| {
                AttesterError::Other(format!("{SAMPLE_INIT_DATA_DIGEST_ENV} is not a hex digest"))
            }),
            Err(_) => Ok(guest.map(<[u8]>::to_vec)),
        }
    }
}

impl Attester for SampleAttester {
    fn tee(&self) -> Tee {
        Tee::Sample
    }

    fn evidence<'a>(&'a self, report_data: &'a [u8; 64]) -> BoxFuture<'a, Result<Value, AttesterError>> {
        // Trustee's sample attester does not pad and its verifier compares the
        // exact 48-byte SHA-384, so send only the digest, not the padded field.
        let digest = &report_data[..RUNTIME_DATA_HASH_LEN];
        let mut v = json!({"svn": "1", "report_data": BASE64_STANDARD.encode(digest)});
        if let Some(d) = &self.init_data {
            v["init_data"] = Value::String(BASE64_STANDARD.encode(d));
        }
        Box::pin(async move { Ok(v) })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn evidence_carries_the_init_data_digest_only_when_set() {
        let rd = [7u8; 64];
        let v = SampleAttester::new().evidence(&rd).await.unwrap();
        assert!(v.get("init_data").is_none(), "{v}");
        let v = SampleAttester::with_init_data(Some(vec![1, 2, 3])).evidence(&rd).await.unwrap();
        assert_eq!(v["init_data"], "AQID");
        assert_eq!(v["report_data"], BASE64_STANDARD.encode([7u8; 48]));
    }
}
