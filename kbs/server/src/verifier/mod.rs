//! Evidence verifiers. Each turns the TEE-specific `primary_evidence` JSON plus the
//! expected report_data (SHA-384 of the canonical runtime data) into `Claims`, or a
//! `Denial` whose reason becomes a metric label. Policy is applied afterwards, by the
//! caller, so that the same claims can be re-checked later against a newer policy.

pub mod azure;
pub mod cca;
pub mod collateral;
pub mod kds;
pub mod offline;
pub mod sample;
pub mod snp;
pub mod tdx;

use std::sync::Arc;

pub use kbs_types::Tee;
use serde_json::Value;

use crate::claims::Claims;
use crate::policy::{Denial, Reason};

pub use collateral::{CollateralConfig, CollateralSource};
pub use snp::SnpTrust;

/// TDX trust material: Intel's root CA and where collateral comes from.
#[derive(Debug, Clone)]
pub struct TdxTrust {
    pub root_ca_der: Vec<u8>,
    pub collateral: Option<Arc<CollateralSource>>,
}

impl Default for TdxTrust {
    fn default() -> Self {
        Self { root_ca_der: tdx::INTEL_SGX_ROOT_CA_DER.to_vec(), collateral: None }
    }
}

/// Everything the verifiers need besides the evidence.
#[derive(Debug, Clone, Default)]
pub struct Trust {
    pub snp: SnpTrust,
    /// AMD KDS, asked for the VCEK when neither the guest nor the configuration has it.
    pub snp_kds: Option<Arc<kds::KdsClient>>,
    pub tdx: TdxTrust,
    /// Arm CCA platform keys (CPAKs) by instance id.
    pub cca: cca::CcaTrust,
    /// A fixed verification time (unix seconds) instead of the clock: for replaying
    /// recorded evidence in tests. Not settable from the config file.
    pub verify_at: Option<u64>,
}

impl Trust {
    fn now(&self) -> u64 {
        self.verify_at.unwrap_or_else(crate::now_secs)
    }
}

/// Runs the verifier for `tee`: the evidence's signatures and chain, then the binding
/// of `expected_report_data`.
pub async fn verify(
    tee: Tee,
    evidence: &Value,
    expected_report_data: &[u8],
    trust: &Trust,
) -> Result<Claims, Denial> {
    let now = trust.now();
    match tee {
        Tee::Sample => sample::verify(evidence, expected_report_data).map(Claims::Sample),
        Tee::Snp => {
            let mut ev = snp::parse_evidence(evidence)?;
            add_vcek_from_kds(&ev.report, &mut ev.certs, trust).await?;
            let claims = snp::verify_report(&ev.report, &ev.certs, &trust.snp, now)?;
            check_report_data("SNP", &claims.report_data, expected_report_data)?;
            Ok(Claims::Snp(claims))
        }
        Tee::Tdx => {
            let ev = tdx::parse_evidence(evidence)?;
            let info = tdx::quote_info(&ev.quote)?;
            let collateral = tdx_collateral(trust)?.get(&info, now).await?;
            let claims = tdx::verify_quote(&ev.quote, &collateral, &trust.tdx.root_ca_der, now)?;
            check_report_data("TDX", &claims.report_data, expected_report_data)?;
            Ok(Claims::Tdx(claims))
        }
        Tee::Cca => {
            let token = cca::parse_evidence(evidence)?;
            let claims = cca::verify_token(&token, &trust.cca)?;
            cca::check_challenge(&claims, expected_report_data)?;
            Ok(Claims::Cca(claims))
        }
        Tee::AzSnpVtpm => {
            let ev = azure::parse_evidence(evidence, azure::AzureKind::Snp)?;
            let mut certs = ev.certs();
            let hcl = azure::parse_hcl_report(&ev.hcl_report)?;
            add_vcek_from_kds(azure::snp_report(&hcl)?, &mut certs, trust).await?;
            let claims = azure::verify_snp(&ev, &certs, &trust.snp, now)?;
            azure::check_nonce(&claims.vtpm, expected_report_data)?;
            Ok(Claims::AzSnpVtpm(claims))
        }
        Tee::AzTdxVtpm => {
            let ev = azure::parse_evidence(evidence, azure::AzureKind::Tdx)?;
            let vtpm = azure::verify_tdx_vtpm(&ev)?;
            let info = tdx::quote_info(ev.td_quote.as_deref().unwrap_or_default())?;
            let collateral = tdx_collateral(trust)?.get(&info, now).await?;
            let claims = azure::verify_tdx(vtpm, &ev, &collateral, &trust.tdx.root_ca_der, now)?;
            azure::check_nonce(&claims.vtpm, expected_report_data)?;
            Ok(Claims::AzTdxVtpm(claims))
        }
        other => Err(Denial::new(Reason::UnsupportedTee, format!("no verifier for TEE {other}"))),
    }
}

/// Where the evidence carries no VCEK (or VLEK) and none is configured: AMD KDS's, when
/// the broker may ask it.
async fn add_vcek_from_kds(report: &[u8], certs: &mut Vec<snp::CertIn>, trust: &Trust) -> Result<(), Denial> {
    let has_key = certs.iter().any(|c| c.kind == "vcek" || c.kind == "vlek") || trust.snp.vcek.is_some();
    if let (false, Some(kds)) = (has_key, &trust.snp_kds) {
        if let Some(der) = kds.vcek_for(report).await? {
            certs.push(snp::CertIn { kind: "vcek".into(), data: der });
        }
    }
    Ok(())
}

fn tdx_collateral(trust: &Trust) -> Result<&Arc<CollateralSource>, Denial> {
    trust.tdx.collateral.as_ref().ok_or_else(|| {
        Denial::new(
            Reason::CollateralUnavailable,
            "no TDX collateral source is configured (tdx.pccs_url or tdx.collateral_dir)",
        )
    })
}

/// The expected report_data zero-padded to the 64-byte field SNP and TDX use.
/// Checks that a report's report_data (hex, as in the claims) is the expected
/// runtime-data hash, zero-padded to 64 bytes; compared in constant time.
pub fn check_report_data(tee: &str, report_data_hex: &str, expected: &[u8]) -> Result<(), Denial> {
    use subtle::ConstantTimeEq;
    let want = padded64(expected)
        .ok_or_else(|| Denial::new(Reason::ReportDataMismatch, "expected report_data too long"))?;
    let have = hex::decode(report_data_hex).unwrap_or_default();
    if !bool::from(have.ct_eq(&want[..])) {
        return Err(Denial::new(
            Reason::ReportDataMismatch,
            format!("{tee} report_data does not match the hash of the runtime data"),
        ));
    }
    Ok(())
}

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
