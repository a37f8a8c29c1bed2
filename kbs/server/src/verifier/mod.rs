//! Evidence verifiers. Each turns the TEE-specific `primary_evidence` JSON plus the
//! expected report_data (SHA-384 of the canonical runtime data) into `Claims`, or a
//! `Denial` whose reason becomes a metric label. Policy is applied afterwards, by the
//! caller, so that the same claims can be re-checked later against a newer policy.

pub mod sample;
pub mod snp;
pub mod tdx;

pub use kbs_types::Tee;
use serde_json::Value;

use crate::claims::Claims;
use crate::policy::{Denial, Reason};

pub use snp::SnpTrust;

/// Runs the verifier for `tee`.
pub fn verify(
    tee: Tee,
    evidence: &Value,
    expected_report_data: &[u8],
    snp_trust: &SnpTrust,
) -> Result<Claims, Denial> {
    match tee {
        Tee::Sample => sample::verify(evidence, expected_report_data).map(Claims::Sample),
        Tee::Snp => snp::verify(evidence, expected_report_data, snp_trust).map(Claims::Snp),
        Tee::Tdx => tdx::verify(evidence, expected_report_data).map(Claims::Tdx),
        other => Err(Denial::new(Reason::UnsupportedTee, format!("no verifier for TEE {other}"))),
    }
}

/// The expected report_data zero-padded to the 64-byte field SNP and TDX use.
pub(crate) fn padded64(expected: &[u8]) -> Option<[u8; 64]> {
    if expected.len() > 64 {
        return None;
    }
    let mut out = [0u8; 64];
    out[..expected.len()].copy_from_slice(expected);
    Some(out)
}

/// Decodes a JSON value holding bytes: a base64 string (standard or URL-safe, with or
/// without padding) or an array of numbers 0..=255 (what serde writes for `Vec<u8>`).
pub(crate) fn json_bytes(v: &Value) -> Option<Vec<u8>> {
    use base64::Engine;
    match v {
        Value::String(s) => {
            let s = s.trim();
            base64::engine::general_purpose::STANDARD
                .decode(s)
                .or_else(|_| base64::engine::general_purpose::STANDARD_NO_PAD.decode(s))
                .or_else(|_| base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(s))
                .or_else(|_| base64::engine::general_purpose::URL_SAFE.decode(s))
                .ok()
        }
        Value::Array(a) => a.iter().map(|x| x.as_u64().and_then(|n| u8::try_from(n).ok())).collect(),
        _ => None,
    }
}
