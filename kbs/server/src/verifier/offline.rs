//! Offline verification of one piece of evidence, for operators and tests
//! (`cloak-kbs verify-evidence`): the same verifiers the broker runs, without the
//! report-data binding (there is no session), at a chosen instant, then the policy.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::{snp, tdx, SnpTrust};
use crate::claims::Claims;
use crate::policy::{
    AzSnpRequirement, AzTdxRequirement, BrokerPolicy, CcaRequirement, Denial, MeasurementMatch, Reason,
    SnpRequirement, TdxRequirement,
};

/// Which verifier.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OfflineTee {
    Tdx,
    Snp,
    Cca,
    AzSnpVtpm,
    AzTdxVtpm,
}

/// Inputs of one offline verification.
#[derive(Clone, Debug, Default)]
pub struct OfflineInputs {
    /// The evidence file: a raw TDX quote, a raw SNP report (binary or hex), or the
    /// evidence JSON a guest sends.
    pub evidence: Vec<u8>,
    /// TDX: `QuoteCollateralV3` JSON.
    pub collateral: Option<Vec<u8>>,
    /// TDX: Intel root CA override (DER).
    pub tdx_root_ca_der: Option<Vec<u8>>,
    pub snp: SnpTrust,
    /// CCA: the platform keys (`--cca-trust-anchors`).
    pub cca: super::cca::CcaTrust,
    /// Verification time, unix seconds.
    pub at: u64,
}

/// Parses `--at`: unix seconds or RFC 3339.
pub fn parse_instant(s: &str) -> Result<u64, String> {
    if let Ok(n) = s.trim().parse::<u64>() {
        return Ok(n);
    }
    let t = chrono::DateTime::parse_from_rfc3339(s.trim())
        .map_err(|e| format!("{s:?} is neither unix seconds nor RFC 3339: {e}"))?;
    u64::try_from(t.timestamp()).map_err(|_| format!("{s:?} is before 1970"))
}

fn as_json(bytes: &[u8]) -> Option<Value> {
    let v: Value = serde_json::from_slice(bytes).ok()?;
    v.is_object().then_some(v)
}

fn hex_text(bytes: &[u8]) -> Option<Vec<u8>> {
    let s = std::str::from_utf8(bytes).ok()?;
    let clean: String = s.chars().filter(|c| !c.is_ascii_whitespace()).collect();
    hex::decode(clean).ok()
}

/// Verifies the evidence; returns its claims.
pub fn verify(tee: OfflineTee, inp: &OfflineInputs) -> Result<Claims, Denial> {
    match tee {
        OfflineTee::Tdx => {
            let quote = match as_json(&inp.evidence) {
                Some(v) => tdx::parse_evidence(&v)?.quote,
                None => inp.evidence.clone(),
            };
            let root = inp.tdx_root_ca_der.as_deref().unwrap_or(tdx::INTEL_SGX_ROOT_CA_DER);
            let coll = tdx_collateral(inp, &quote, root)?;
            tdx::verify_quote(&quote, &coll, root, inp.at).map(Claims::Tdx)
        }
        OfflineTee::Snp => {
            let ev = match as_json(&inp.evidence) {
                Some(v) => snp::parse_evidence(&v)?,
                None if inp.evidence.len() == snp::REPORT_LEN => {
                    snp::SnpEvidence { report: inp.evidence.clone(), certs: Vec::new() }
                }
                None => snp::SnpEvidence {
                    report: hex_text(&inp.evidence).ok_or_else(|| {
                        Denial::new(
                            Reason::MalformedEvidence,
                            format!(
                                "SNP evidence is neither JSON, a {}-byte report nor its hex",
                                snp::REPORT_LEN
                            ),
                        )
                    })?,
                    certs: Vec::new(),
                },
            };
            snp::verify_report(&ev.report, &ev.certs, &inp.snp, inp.at).map(Claims::Snp)
        }
        OfflineTee::Cca => {
            // The token itself, or the evidence JSON a guest sends (`{"token": ...}`).
            let token = match as_json(&inp.evidence) {
                Some(v) => super::cca::parse_evidence(&v)?,
                None => inp.evidence.clone(),
            };
            if inp.cca.anchors.is_empty() {
                return Err(Denial::new(
                    Reason::UnknownPlatformKey,
                    "CCA verification needs the platform keys: --cca-trust-anchors FILE",
                ));
            }
            super::cca::verify_token(&token, &inp.cca).map(Claims::Cca).map_err(Denial::from)
        }
        // No session, so no runtime-data binding: the claims show the quote's extraData.
        OfflineTee::AzSnpVtpm => {
            let ev = super::azure::parse_evidence(
                &evidence_json(inp, "az-snp-vtpm")?,
                super::azure::AzureKind::Snp,
            )?;
            let certs = ev.certs();
            super::azure::verify_snp(&ev, &certs, &inp.snp, inp.at).map(Claims::AzSnpVtpm)
        }
        OfflineTee::AzTdxVtpm => {
            let ev = super::azure::parse_evidence(
                &evidence_json(inp, "az-tdx-vtpm")?,
                super::azure::AzureKind::Tdx,
            )?;
            let vtpm = super::azure::verify_tdx_vtpm(&ev)?;
            let root = inp.tdx_root_ca_der.as_deref().unwrap_or(tdx::INTEL_SGX_ROOT_CA_DER);
            let coll = tdx_collateral(inp, ev.td_quote.as_deref().unwrap_or_default(), root)?;
            super::azure::verify_tdx(vtpm, &ev, &coll, root, inp.at).map(Claims::AzTdxVtpm)
        }
    }
}

/// The collateral for `quote`; without `--collateral`, the refusal says what of the
/// quote could be verified without it and what its TCB status needs.
fn tdx_collateral(
    inp: &OfflineInputs,
    quote: &[u8],
    root: &[u8],
) -> Result<dcap_qvl::QuoteCollateralV3, Denial> {
    match inp.collateral.as_deref() {
        Some(coll) => super::collateral::parse_collateral_json(coll),
        None => Err(match tdx::verify_without_collateral(quote, root, inp.at) {
            Err(d) => d,
            Ok(c) => Denial::new(
                Reason::CollateralUnavailable,
                format!(
                    "the quote's signature, its QE report and the PCK chain to Intel's root verify (MRTD {}); \
                     its TCB status needs Intel's collateral for FMSPC {} (TCB info, QE identity, PCK and \
                     root CA CRLs, from a PCCS or Intel PCS): --collateral COLLATERAL.json",
                    c.mr_td, c.fmspc
                ),
            ),
        }),
    }
}

fn evidence_json(inp: &OfflineInputs, tee: &str) -> Result<Value, Denial> {
    as_json(&inp.evidence).ok_or_else(|| {
        Denial::new(
            Reason::MalformedEvidence,
            format!("{tee} evidence must be the evidence JSON a guest sends"),
        )
    })
}

/// The policy `verify-evidence` applies without `--policy`: any measurement and VMPL,
/// no debug, TCB status UpToDate for TDX, a `secured` platform for CCA.
pub fn default_policy() -> BrokerPolicy {
    BrokerPolicy {
        snp: Some(SnpRequirement { max_vmpl: u32::MAX, ..Default::default() }),
        tdx: Some(TdxRequirement::default()),
        cca: Some(CcaRequirement::default()),
        az_snp: Some(AzSnpRequirement {
            snp: SnpRequirement { max_vmpl: u32::MAX, ..Default::default() },
            pcrs: Default::default(),
        }),
        az_tdx: Some(AzTdxRequirement { tdx: TdxRequirement::default(), pcrs: Default::default() }),
        sample_allowed: false,
        released: Vec::new(),
        initdata: Default::default(),
    }
}

/// Verifies, then checks the claims against `policy` (or [`default_policy`]).
pub fn verify_with_policy(
    tee: OfflineTee,
    inp: &OfflineInputs,
    policy: Option<&BrokerPolicy>,
) -> Result<(Claims, MeasurementMatch), Denial> {
    let claims = verify(tee, inp)?;
    let default;
    let policy = match policy {
        Some(p) => p,
        None => {
            default = default_policy();
            &default
        }
    };
    let m = policy.check_claims(&claims)?;
    Ok((claims, m))
}

/// Reads a file for the CLI, naming it in the error.
pub fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// Loads a certificate file (PEM or DER) for the CLI.
pub fn read_cert(path: &Path) -> Result<openssl::x509::X509, String> {
    let b = read(path)?;
    openssl::x509::X509::from_der(&b)
        .or_else(|_| openssl::x509::X509::from_pem(&b))
        .map_err(|_| format!("{} is not a PEM or DER X.509 certificate", path.display()))
}

/// `--vcek FILE` checked up front, so a bad file gets its own clear error.
pub fn read_vcek(path: &Path) -> Result<openssl::x509::X509, String> {
    let b = read(path)?;
    snp::check_vcek_file(&b).map(|(c, _)| c).map_err(|e| format!("{}: {e}", path.display()))
}

/// `--vcek-dir DIR` must be a readable directory.
pub fn check_dir(path: &Path) -> Result<PathBuf, String> {
    if path.is_dir() {
        Ok(path.to_owned())
    } else {
        Err(format!("{} is not a directory", path.display()))
    }
}
