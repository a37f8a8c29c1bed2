//! Intel TDX: quote version 4 (48-byte header, 584-byte TD report body, then the
//! signature data). The structure, report_data binding and policy fields (MRTD, RTMRs,
//! TEE_TCB_SVN, DEBUG) are checked for real. The quote's ECDSA signature and its
//! PCK/QE certification chain are NOT verified yet: a TDX verdict from this broker
//! proves only what the quote claims, and the broker says so at startup.
//!
//! Evidence JSON (Trustee's TDX attester): `{"quote": "<base64>", "cc_eventlog": ...}`.

use serde_json::Value;
use subtle::ConstantTimeEq;

use crate::claims::TdxClaims;
use crate::policy::{Denial, Reason};

pub const HEADER_LEN: usize = 48;
pub const BODY_LEN: usize = 584;
const TEE_TYPE_TDX: u32 = 0x81;

/// Parsed fields of a v4 quote.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Quote {
    pub version: u16,
    pub tee_type: u32,
    pub tee_tcb_svn: [u8; 16],
    pub td_attributes: [u8; 8],
    pub mr_td: [u8; 48],
    pub mr_config_id: [u8; 48],
    pub mr_owner: [u8; 48],
    pub rtmr: [[u8; 48]; 4],
    pub report_data: [u8; 64],
    pub signature_len: u32,
}

fn arr<const N: usize>(b: &[u8], off: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&b[off..off + N]);
    out
}

impl Quote {
    pub fn parse(q: &[u8]) -> Result<Self, Denial> {
        let bad = |d: String| Denial::new(Reason::MalformedEvidence, d);
        if q.len() < HEADER_LEN + BODY_LEN + 4 {
            return Err(bad(format!("TDX quote is {} bytes, too short for v4", q.len())));
        }
        let version = u16::from_le_bytes(arr(q, 0));
        if version != 4 {
            return Err(bad(format!("TDX quote version {version} is not supported (4)")));
        }
        let tee_type = u32::from_le_bytes(arr(q, 4));
        if tee_type != TEE_TYPE_TDX {
            return Err(bad(format!("quote tee_type {tee_type:#x} is not TDX (0x81)")));
        }
        let b = HEADER_LEN;
        let signature_len = u32::from_le_bytes(arr(q, b + BODY_LEN));
        let declared = HEADER_LEN + BODY_LEN + 4 + signature_len as usize;
        if q.len() < declared {
            return Err(bad(format!(
                "TDX quote declares {signature_len} bytes of signature data but is truncated"
            )));
        }
        Ok(Quote {
            version,
            tee_type,
            tee_tcb_svn: arr(q, b),
            td_attributes: arr(q, b + 120),
            mr_td: arr(q, b + 136),
            mr_config_id: arr(q, b + 184),
            mr_owner: arr(q, b + 232),
            rtmr: [arr(q, b + 328), arr(q, b + 376), arr(q, b + 424), arr(q, b + 472)],
            report_data: arr(q, b + 520),
            signature_len,
        })
    }

    /// TD attribute bit 0 is DEBUG (TUD.DEBUG).
    pub fn debug(&self) -> bool {
        self.td_attributes[0] & 1 != 0
    }
}

pub fn verify(evidence: &Value, expected: &[u8]) -> Result<TdxClaims, Denial> {
    let raw = evidence
        .get("quote")
        .and_then(super::json_bytes)
        .ok_or_else(|| Denial::new(Reason::MalformedEvidence, "TDX evidence has no base64 quote"))?;
    let quote = Quote::parse(&raw)?;
    let want = super::padded64(expected)
        .ok_or_else(|| Denial::new(Reason::ReportDataMismatch, "expected report_data too long"))?;
    if !bool::from(quote.report_data.ct_eq(&want)) {
        return Err(Denial::new(
            Reason::ReportDataMismatch,
            "TDX report_data does not match the hash of the runtime data",
        ));
    }
    Ok(TdxClaims {
        quote_version: quote.version,
        mr_td: hex::encode(quote.mr_td),
        rtmr: quote.rtmr.map(hex::encode),
        mr_config_id: hex::encode(quote.mr_config_id),
        mr_owner: hex::encode(quote.mr_owner),
        tee_tcb_svn: hex::encode(quote.tee_tcb_svn),
        td_attributes: hex::encode(quote.td_attributes),
        debug: quote.debug(),
        quote_signature_verified: false,
    })
}
