//! Intel TDX evidence: a quote from configfs-tsm (provider `tdx_guest`) plus the
//! CC event log when the firmware publishes it, in Trustee's evidence shape.

use std::path::PathBuf;

use base64::prelude::{Engine, BASE64_STANDARD};
use serde_json::{json, Value};

use super::{tsm, Attester, Tee};
use crate::error::AttesterError;
use ocicrypt::keywrap::BoxFuture;

/// Where ACPI exposes the CC event log (CCEL) the verifier replays against the RTMRs.
const CCEL_PATH: &str = "/sys/firmware/acpi/tables/data/CCEL";

/// Collects TDX quotes.
#[derive(Debug, Clone)]
pub struct TdxAttester {
    tsm_root: PathBuf,
}

impl TdxAttester {
    pub fn new(tsm_root: PathBuf) -> Self {
        TdxAttester { tsm_root }
    }

    fn collect(&self, report_data: &[u8; 64]) -> Result<Value, AttesterError> {
        let r = tsm::get_report(&self.tsm_root, "tdx_guest", report_data, None)?;
        let ccel = std::fs::read(CCEL_PATH).ok().map(|b| BASE64_STANDARD.encode(b));
        Ok(json!({
            "cc_eventlog": ccel,
            "quote": BASE64_STANDARD.encode(&r.outblob),
        }))
    }
}

impl Attester for TdxAttester {
    fn tee(&self) -> Tee {
        Tee::Tdx
    }

    fn evidence<'a>(&'a self, report_data: &'a [u8; 64]) -> BoxFuture<'a, Result<Value, AttesterError>> {
        let this = self.clone();
        let rd = *report_data;
        super::collect_blocking("TDX", move || this.collect(&rd))
    }
}
