//! The `sample` attester: Trustee's test evidence, with no hardware behind it.
//! Only for development and CI; `make_attester` refuses it unless allowed.

use base64::prelude::{Engine, BASE64_STANDARD};
use serde_json::{json, Value};

use super::{Attester, Tee};
use crate::error::AttesterError;
use crate::protocol::RUNTIME_DATA_HASH_LEN;
use ocicrypt::keywrap::BoxFuture;

/// Produces `{"svn":"1","report_data":"<b64>"}`.
#[derive(Debug, Clone, Default)]
pub struct SampleAttester;

impl SampleAttester {
    pub fn new() -> Self {
        SampleAttester
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
        let v = json!({"svn": "1", "report_data": BASE64_STANDARD.encode(digest)});
        Box::pin(async move { Ok(v) })
    }
}
