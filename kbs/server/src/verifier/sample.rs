//! Trustee's sample evidence: `{"svn":"1","report_data":"<base64 STANDARD>"}`, with
//! `"init_data":"<base64 STANDARD of the init-data digest>"` when the guest has init-data. There is
//! no signature; only the binding of report_data to the runtime data is checked. The
//! policy decides whether sample evidence is acceptable at all.

use serde_json::Value;
use subtle::ConstantTimeEq;

use crate::claims::SampleClaims;
use crate::policy::{Denial, Reason};

pub fn verify(evidence: &Value, expected: &[u8]) -> Result<SampleClaims, Denial> {
    let obj = evidence
        .as_object()
        .ok_or_else(|| Denial::new(Reason::MalformedEvidence, "sample evidence is not a JSON object"))?;
    let rd = obj
        .get("report_data")
        .and_then(super::json_bytes)
        .ok_or_else(|| Denial::new(Reason::MalformedEvidence, "sample evidence has no base64 report_data"))?;
    // Trustee's sample attester sends the bare 48-byte hash; attesters written against a
    // 64-byte report_data field send it zero-padded. Both bind the same value.
    let ok = if rd.len() == expected.len() {
        bool::from(rd.ct_eq(expected))
    } else if rd.len() == 64 {
        super::padded64(expected).is_some_and(|p| bool::from(p.ct_eq(&rd[..])))
    } else {
        false
    };
    if !ok {
        return Err(Denial::new(
            Reason::ReportDataMismatch,
            "sample report_data does not match the hash of the runtime data",
        ));
    }
    let svn = match obj.get("svn") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => "0".to_string(),
    };
    // Like a report's HOST_DATA: the digest the "host" launched the guest with; compared
    // with the init-data the guest sends by `crate::initdata::bind`.
    let init_data = match obj.get("init_data") {
        None | Some(Value::Null) => None,
        Some(v) => Some(hex::encode(super::json_bytes(v).ok_or_else(|| {
            Denial::new(Reason::MalformedEvidence, "sample evidence init_data is not base64")
        })?)),
    };
    Ok(SampleClaims { svn, init_data })
}
