//! Azure confidential VMs (`az-snp-vtpm`, `az-tdx-vtpm`): the guest runs above
//! Microsoft's paravisor (the HCL) and cannot ask the hardware for a report itself. The
//! HCL puts one in the vTPM (NV index 0x01400001, the "HCL report") and the guest adds a
//! TPM2 quote by the vTPM's attestation key (AK) for freshness.
//!
//! The chain of trust, each link checked here:
//! 1. the hardware report is genuine: the SNP report's VCEK chain to AMD's ARK
//!    ([`super::snp::verify_report`]), or the TD quote's DCAP verification with
//!    collateral ([`super::tdx::verify_quote`]);
//! 2. the hardware report's report_data starts with the hash of the HCL's variable data
//!    (a JSON document holding the AK's public key, `HCLAkPub`), so the AK is the
//!    one this hardware's paravisor made;
//! 3. the TPM quote (TPMS_ATTEST) is signed by that AK (RSASSA-PKCS1-v1_5, SHA-256);
//! 4. its `extraData` is the runtime-data hash of this attestation (nonce and TEE key),
//!    exactly, as Trustee compares it;
//! 5. its PCR digest is SHA-256 over the PCR values the evidence carries, in the order
//!    of the quote's selection (the SHA-256 bank only);
//! 6. evidence v2 also carries the runtime-data hash in the variable data's
//!    `user-data` (written to NV 0x01400002 before the report was fetched): it must
//!    hold the same bytes, zero-padded.
//!
//! The init-data binding is PCR 8, which attestation-agent extends once with the
//! init-data's SHA-256 digest (see [`crate::initdata`]).
//!
//! Evidence JSON, every version CoCo's attestation-agent has emitted:
//! - SNP v0: `{"quote": {"signature": [..], "message": [..], "pcrs": [[32 bytes] x24]},
//!   "report": [HCL report bytes], "vcek": "<PEM>"}`;
//! - SNP v1/v2: `{"version": 1|2, "tpm_quote": {"signature": "<hex>", "message": "<hex>",
//!   "pcrs": ["<hex>" x24]}, "hcl_report": "<base64url>", "vcek": "<base64url DER>"}`;
//! - TDX v0: `{"tpm_quote": {arrays as SNP v0}, "hcl_report": [..], "td_quote": [..]}`;
//! - TDX v1/v2: `{"version": .., "tpm_quote": {hex}, "hcl_report": "<base64url>",
//!   "td_quote": "<base64url>"}`.
//!
//! SNP evidence without a VCEK (cloak's attester sends none when the Azure instance
//! metadata service cannot be reached) falls back to the broker's VCEK sources.
//!
//! Own parsers rather than `tss-esapi` and the `az-*-vtpm` crates: both pull in libtss2
//! (C) for two fixed structures, and neither bounds its input as the broker must. The
//! HCL report's layout is read by the same parser the guest's attester uses
//! (`kbs_client::attester::azure::parse_hcl_report`); the TPMS_ATTEST parser is here.

use std::collections::BTreeMap;

use openssl::bn::BigNum;
use openssl::hash::MessageDigest;
use openssl::pkey::PKey;
use openssl::rsa::Rsa;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Digest as _;
use subtle::ConstantTimeEq;

use crate::claims::{SnpClaims, TdxClaims};
use crate::policy::{Denial, Reason};

/// A TPMS_ATTEST for a quote over 24 PCRs is ~150 bytes.
pub const MAX_TPM_MESSAGE: usize = 1024;
/// RSA signatures up to 4096-bit keys.
const MAX_SIGNATURE: usize = 512;
const PCR_COUNT: usize = 24;
/// The PCR attestation-agent extends with the init-data digest.
pub const INITDATA_PCR: u8 = 8;

/// `TPM_GENERATED_VALUE`.
const TPM_MAGIC: u32 = 0xff54_4347;
/// `TPM_ST_ATTEST_QUOTE`.
const TPM_ST_ATTEST_QUOTE: u16 = 0x8018;
/// `TPM_ALG_SHA256`.
const TPM_ALG_SHA256: u16 = 0x000B;

fn malformed(d: impl Into<String>) -> Denial {
    Denial::new(Reason::MalformedEvidence, d)
}

// ---- the HCL report ---------------------------------------------------------------

pub use kbs_client::attester::azure::{AzureKind, HclReport, MAX_HCL_REPORT};

/// Parses an HCL report with the layout parser the guest's attester uses
/// (`kbs_client::attester::azure`): header, hardware report, IGVM request data,
/// variable data, bounded to [`MAX_HCL_REPORT`].
pub fn parse_hcl_report(b: &[u8]) -> Result<HclReport<'_>, Denial> {
    kbs_client::attester::azure::parse_hcl_report(b).map_err(|e| malformed(format!("HCL report: {e}")))
}

/// Checks that `report_data` (the hardware report's field) starts with the hash of
/// the HCL report's variable data.
pub fn check_bound_by(hcl: &HclReport<'_>, report_data: &[u8], what: &str) -> Result<(), Denial> {
    let h = hcl.var_data_hash();
    if report_data.len() < h.len() || !bool::from(report_data[..h.len()].ct_eq(&h)) {
        return Err(Denial::new(
            Reason::ReportDataMismatch,
            format!(
                "{what} report_data is not the hash of the HCL variable data (the vTPM key is not bound)"
            ),
        ));
    }
    Ok(())
}

/// The variable data's fields the verifier uses.
pub fn var_data(hcl: &HclReport<'_>) -> Result<VarData, Denial> {
    let v: VarDataJson = serde_json::from_slice(hcl.var_data)
        .map_err(|e| malformed(format!("HCL variable data is not the expected JSON: {e}")))?;
    let ak = v
        .keys
        .iter()
        .find(|k| k.kid == "HCLAkPub")
        .ok_or_else(|| malformed("HCL variable data has no HCLAkPub key"))?;
    let user_data = match &v.user_data {
        None => None,
        Some(h) => {
            Some(hex::decode(h.trim()).map_err(|_| malformed("HCL variable data user-data is not hex"))?)
        }
    };
    let mut vm = v.vm_configuration.unwrap_or_default();
    vm.vm_unique_id = vm.vm_unique_id.map(|s| s.chars().take(64).collect());
    Ok(VarData {
        ak_n: b64url(&ak.n, "HCLAkPub n")?,
        ak_e: b64url(&ak.e, "HCLAkPub e")?,
        ak_kty: ak.kty.clone(),
        user_data,
        vm,
    })
}

fn b64url(s: &str, what: &str) -> Result<Vec<u8>, Denial> {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|_| malformed(format!("{what} is not base64url")))
}

#[derive(Deserialize)]
struct VarDataJson {
    #[serde(default)]
    keys: Vec<JwkJson>,
    #[serde(rename = "vm-configuration")]
    vm_configuration: Option<VmConfiguration>,
    #[serde(rename = "user-data")]
    user_data: Option<String>,
}

#[derive(Deserialize)]
struct JwkJson {
    #[serde(default)]
    kid: String,
    #[serde(default)]
    kty: String,
    #[serde(default)]
    n: String,
    #[serde(default)]
    e: String,
}

/// What the variable data says.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VarData {
    ak_kty: String,
    ak_n: Vec<u8>,
    ak_e: Vec<u8>,
    pub user_data: Option<Vec<u8>>,
    pub vm: VmConfiguration,
}

impl VarData {
    /// The AK's public key.
    fn ak(&self) -> Result<PKey<openssl::pkey::Public>, Denial> {
        if self.ak_kty != "RSA"
            || self.ak_n.len() < 256
            || self.ak_n.len() > MAX_SIGNATURE
            || self.ak_e.len() > 8
        {
            return Err(malformed(format!(
                "HCLAkPub is not an RSA key of 2048 to 4096 bits (kty {:?}, {} modulus bytes)",
                self.ak_kty.chars().take(16).collect::<String>(),
                self.ak_n.len()
            )));
        }
        let key = BigNum::from_slice(&self.ak_n)
            .and_then(|n| Ok((n, BigNum::from_slice(&self.ak_e)?)))
            .and_then(|(n, e)| Rsa::from_public_components(n, e))
            .and_then(PKey::from_rsa)
            .map_err(|e| malformed(format!("HCLAkPub is not a usable RSA key: {e}")))?;
        Ok(key)
    }
}

/// The paravisor's description of the VM, from the variable data's
/// `vm-configuration` (read under the paravisor's names, written in the claims
/// under these).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmConfiguration {
    #[serde(default, alias = "secure-boot", skip_serializing_if = "Option::is_none")]
    pub secure_boot: Option<bool>,
    #[serde(default, alias = "tpm-enabled", skip_serializing_if = "Option::is_none")]
    pub tpm_enabled: Option<bool>,
    #[serde(default, alias = "console-enabled", skip_serializing_if = "Option::is_none")]
    pub console_enabled: Option<bool>,
    #[serde(default, alias = "vmUniqueId", skip_serializing_if = "Option::is_none")]
    pub vm_unique_id: Option<String>,
}

// ---- the TPM quote ----------------------------------------------------------------

/// A TPM quote as the evidence carries it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TpmQuote {
    /// The raw signature (the TPMT_SIGNATURE's RSA signature bytes).
    pub signature: Vec<u8>,
    /// TPMS_ATTEST, as signed.
    pub message: Vec<u8>,
    /// SHA-256 PCRs 0 to 23.
    pub pcrs: Vec<[u8; 32]>,
}

/// A TPMS_ATTEST of type quote, parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuoteInfo {
    pub qualified_signer: Vec<u8>,
    pub extra_data: Vec<u8>,
    pub reset_count: u32,
    pub restart_count: u32,
    pub firmware_version: u64,
    /// `(hash algorithm, PCR indices selected in ascending order)` per bank.
    pub selection: Vec<(u16, Vec<u8>)>,
    pub pcr_digest: Vec<u8>,
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], Denial> {
        if self.b.len() - self.at < n {
            return Err(malformed(format!("TPM quote message ends inside {what}")));
        }
        let s = &self.b[self.at..self.at + n];
        self.at += n;
        Ok(s)
    }
    fn u8(&mut self, what: &str) -> Result<u8, Denial> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &str) -> Result<u16, Denial> {
        let s = self.take(2, what)?;
        Ok(u16::from_be_bytes([s[0], s[1]]))
    }
    fn u32(&mut self, what: &str) -> Result<u32, Denial> {
        let s = self.take(4, what)?;
        Ok(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
    }
    fn u64(&mut self, what: &str) -> Result<u64, Denial> {
        Ok(((self.u32(what)? as u64) << 32) | self.u32(what)? as u64)
    }
    /// A TPM2B: 16-bit size, then that many bytes (at most `max`).
    fn sized(&mut self, max: usize, what: &str) -> Result<&'a [u8], Denial> {
        let n = self.u16(what)? as usize;
        if n > max {
            return Err(malformed(format!("TPM quote {what} is {n} bytes, more than {max}")));
        }
        self.take(n, what)
    }
}

/// Parses a TPMS_ATTEST that must be a quote (TPM 2.0 Part 2, 10.12); the whole
/// message, nothing after it.
pub fn parse_quote_message(b: &[u8]) -> Result<QuoteInfo, Denial> {
    if b.len() > MAX_TPM_MESSAGE {
        return Err(malformed(format!(
            "TPM quote message is {} bytes, more than {MAX_TPM_MESSAGE}",
            b.len()
        )));
    }
    let mut r = Reader { b, at: 0 };
    if r.u32("magic")? != TPM_MAGIC {
        return Err(malformed("TPM quote message is not TPM-generated (magic is not 0xff544347)"));
    }
    let ty = r.u16("type")?;
    if ty != TPM_ST_ATTEST_QUOTE {
        return Err(malformed(format!("TPM attestation type {ty:#06x} is not a quote (0x8018)")));
    }
    let qualified_signer = r.sized(68, "qualifiedSigner")?.to_vec();
    let extra_data = r.sized(64, "extraData")?.to_vec();
    let _clock = r.u64("clockInfo")?;
    let reset_count = r.u32("clockInfo")?;
    let restart_count = r.u32("clockInfo")?;
    let _safe = r.u8("clockInfo")?;
    let firmware_version = r.u64("firmwareVersion")?;
    let banks = r.u32("pcrSelect")?;
    if banks > 16 {
        return Err(malformed(format!("TPM quote selects {banks} PCR banks")));
    }
    let mut selection = Vec::new();
    for _ in 0..banks {
        let alg = r.u16("pcrSelect")?;
        let n = r.u8("pcrSelect")? as usize;
        if n > 4 {
            return Err(malformed(format!("TPM quote PCR bitmap of {n} bytes (at most 4)")));
        }
        let bits = r.take(n, "pcrSelect")?;
        let mut idx = Vec::new();
        for (byte, v) in bits.iter().enumerate() {
            for bit in 0..8 {
                if v & (1 << bit) != 0 {
                    idx.push((byte * 8 + bit) as u8);
                }
            }
        }
        selection.push((alg, idx));
    }
    let pcr_digest = r.sized(64, "pcrDigest")?.to_vec();
    if r.at != b.len() {
        return Err(malformed(format!("TPM quote message has {} bytes after the quote", b.len() - r.at)));
    }
    Ok(QuoteInfo {
        qualified_signer,
        extra_data,
        reset_count,
        restart_count,
        firmware_version,
        selection,
        pcr_digest,
    })
}

/// Checks the quote's signature by the AK, its PCR digest over the evidence's PCRs, and
/// returns the quoted PCRs (decimal index -> lowercase hex, as the claims carry them).
pub fn verify_quote(q: &TpmQuote, var: &VarData) -> Result<(QuoteInfo, BTreeMap<String, String>), Denial> {
    let info = parse_quote_message(&q.message)?;
    let ak = var.ak()?;
    let ok = openssl::sign::Verifier::new(MessageDigest::sha256(), &ak)
        .and_then(|mut v| {
            v.update(&q.message)?;
            v.verify(&q.signature)
        })
        .unwrap_or(false);
    if !ok {
        return Err(Denial::new(
            Reason::InvalidSignature,
            "the TPM quote is not signed by the vTPM's attestation key (HCLAkPub)",
        ));
    }
    let [(alg, indices)] = info.selection.as_slice() else {
        return Err(malformed(format!(
            "TPM quote selects {} PCR banks, expected the SHA-256 bank only",
            info.selection.len()
        )));
    };
    if *alg != TPM_ALG_SHA256 {
        return Err(malformed(format!("TPM quote PCR bank {alg:#06x} is not SHA-256")));
    }
    let mut h = sha2::Sha256::new();
    let mut quoted = BTreeMap::new();
    for &i in indices {
        let v = q.pcrs.get(i as usize).ok_or_else(|| {
            malformed(format!("TPM quote selects PCR {i}, which the evidence does not carry"))
        })?;
        h.update(v);
        quoted.insert(i.to_string(), hex::encode(v));
    }
    if !bool::from(h.finalize().as_slice().ct_eq(&info.pcr_digest)) {
        return Err(Denial::new(
            Reason::MeasurementMismatch,
            "the PCR values in the evidence are not the ones the TPM quoted (PCR digest differs)",
        ));
    }
    Ok((info, quoted))
}

// ---- evidence ---------------------------------------------------------------------

/// Azure vTPM evidence, either hardware.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AzEvidence {
    /// 0, 1 or 2.
    pub version: u32,
    pub tpm_quote: TpmQuote,
    pub hcl_report: Vec<u8>,
    /// SNP: the VCEK (DER), when sent.
    pub vcek: Option<Vec<u8>>,
    /// TDX: the TD quote.
    pub td_quote: Option<Vec<u8>>,
}

impl AzEvidence {
    /// The certificates the SNP verifier takes from the evidence: its VCEK, if sent.
    pub fn certs(&self) -> Vec<super::snp::CertIn> {
        self.vcek.iter().map(|d| super::snp::CertIn { kind: "vcek".into(), data: d.clone() }).collect()
    }
}

/// Bytes from hex (v1/v2) or a number array (v0).
fn hex_or_array(v: &Value, max: usize, what: &str) -> Result<Vec<u8>, Denial> {
    let b = match v {
        Value::String(s) if s.len() <= 2 * max => hex::decode(s.trim()).ok(),
        Value::String(_) => None,
        Value::Array(a) if a.len() <= max => {
            a.iter().map(|x| x.as_u64().and_then(|n| u8::try_from(n).ok())).collect()
        }
        _ => None,
    };
    b.filter(|b| b.len() <= max)
        .ok_or_else(|| malformed(format!("{what} is not hex or a byte array of at most {max} bytes")))
}

fn parse_tpm_quote(v: &Value) -> Result<TpmQuote, Denial> {
    let o = v.as_object().ok_or_else(|| malformed("tpm_quote is not an object"))?;
    let field = |k: &str| o.get(k).ok_or_else(|| malformed(format!("tpm_quote has no {k}")));
    let signature = hex_or_array(field("signature")?, MAX_SIGNATURE, "tpm_quote.signature")?;
    let message = hex_or_array(field("message")?, MAX_TPM_MESSAGE, "tpm_quote.message")?;
    let list = field("pcrs")?.as_array().ok_or_else(|| malformed("tpm_quote.pcrs is not a list"))?;
    if list.len() != PCR_COUNT {
        return Err(malformed(format!("tpm_quote.pcrs has {} entries, expected {PCR_COUNT}", list.len())));
    }
    let pcrs = list
        .iter()
        .enumerate()
        .map(|(i, p)| {
            hex_or_array(p, 32, "a PCR")?
                .try_into()
                .map_err(|_| malformed(format!("tpm_quote.pcrs[{i}] is not 32 bytes")))
        })
        .collect::<Result<Vec<[u8; 32]>, Denial>>()?;
    Ok(TpmQuote { signature, message, pcrs })
}

fn bytes_field(o: &serde_json::Map<String, Value>, k: &str, max: usize) -> Result<Option<Vec<u8>>, Denial> {
    match o.get(k) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => super::json_bytes(v)
            .filter(|b| b.len() <= max)
            .map(Some)
            .ok_or_else(|| malformed(format!("{k} is not base64 or a byte array of at most {max} bytes"))),
    }
}

/// Reads the evidence JSON for `kind` (every version attestation-agent emits).
pub fn parse_evidence(evidence: &Value, kind: AzureKind) -> Result<AzEvidence, Denial> {
    let what = if kind == AzureKind::Snp { "az-snp-vtpm" } else { "az-tdx-vtpm" };
    let o = evidence.as_object().ok_or_else(|| malformed(format!("{what} evidence is not a JSON object")))?;
    let version =
        match o.get("version") {
            None => 0,
            Some(v) => v.as_u64().filter(|v| (1..=2).contains(v)).ok_or_else(|| {
                malformed(format!("{what} evidence version {v} is not supported (0, 1 or 2)"))
            })? as u32,
        };
    // SNP v0 names its parts `quote` and `report`.
    let quote_key = if kind == AzureKind::Snp && version == 0 { "quote" } else { "tpm_quote" };
    let report_key = if kind == AzureKind::Snp && version == 0 { "report" } else { "hcl_report" };
    let tpm_quote = parse_tpm_quote(
        o.get(quote_key).ok_or_else(|| malformed(format!("{what} evidence has no {quote_key}")))?,
    )?;
    let hcl_report = bytes_field(o, report_key, MAX_HCL_REPORT)?
        .ok_or_else(|| malformed(format!("{what} evidence has no {report_key}")))?;
    let (vcek, td_quote) = match kind {
        AzureKind::Snp => {
            let vcek = match o.get("vcek") {
                None | Some(Value::Null) => None,
                // v0: PEM text.
                Some(Value::String(s)) if s.contains("-----BEGIN") => Some(
                    openssl::x509::X509::from_pem(s.as_bytes())
                        .and_then(|c| c.to_der())
                        .map_err(|_| malformed("vcek is not a PEM certificate"))?,
                ),
                Some(_) => bytes_field(o, "vcek", 16 * 1024)?,
            };
            (vcek, None)
        }
        AzureKind::Tdx => {
            let q = bytes_field(o, "td_quote", 64 * 1024)?
                .ok_or_else(|| malformed(format!("{what} evidence has no td_quote")))?;
            (None, Some(q))
        }
    };
    Ok(AzEvidence { version, tpm_quote, hcl_report, vcek, td_quote })
}

// ---- claims -----------------------------------------------------------------------

/// What the vTPM half of the evidence shows.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VtpmClaims {
    /// The quoted PCRs (SHA-256 bank): decimal index ("0" to "23") -> lowercase hex.
    /// String keys, so the claims round-trip through the token's JSON.
    pub pcrs: BTreeMap<String, String>,
    /// The quote's extraData: the runtime-data hash it binds, lowercase hex.
    pub report_data: String,
    /// The evidence version (0, 1, 2).
    pub evidence_version: u32,
    /// The HCL report's header version.
    pub hcl_version: u32,
    /// TPM reset and restart counts at quote time.
    pub reset_count: u32,
    pub restart_count: u32,
    #[serde(default)]
    pub vm_configuration: VmConfiguration,
}

/// An Azure SEV-SNP confidential VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AzSnpClaims {
    pub sev_snp: SnpClaims,
    pub vtpm: VtpmClaims,
}

/// An Azure TDX confidential VM.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AzTdxClaims {
    pub tdx: TdxClaims,
    pub vtpm: VtpmClaims,
}

/// The checks common to both hardwares: the variable data bound by `hw_report_data`
/// (read from the hardware report before its signature is checked, which the caller
/// does next), the quote by the AK, the PCRs, and (v2) the user-data. Returns the
/// vTPM claims; the runtime-data binding is [`check_nonce`].
pub fn verify_vtpm(
    ev: &AzEvidence,
    hcl: &HclReport<'_>,
    hw_report_data: &[u8],
    what: &str,
) -> Result<VtpmClaims, Denial> {
    check_bound_by(hcl, hw_report_data, what)?;
    let var = var_data(hcl)?;
    let (info, pcrs) = verify_quote(&ev.tpm_quote, &var)?;
    if ev.version >= 2 {
        let user = var
            .user_data
            .as_deref()
            .ok_or_else(|| malformed("evidence v2 has no user-data in the HCL variable data"))?;
        let n = info.extra_data.len();
        let matches = user.len() >= n
            && bool::from(user[..n].ct_eq(&info.extra_data))
            && user[n..].iter().all(|b| *b == 0);
        if !matches {
            return Err(Denial::new(
                Reason::ReportDataMismatch,
                "the HCL variable data's user-data is not the quote's report data",
            ));
        }
    }
    Ok(VtpmClaims {
        pcrs,
        report_data: hex::encode(&info.extra_data),
        evidence_version: ev.version,
        hcl_version: hcl.version,
        reset_count: info.reset_count,
        restart_count: info.restart_count,
        vm_configuration: var.vm,
    })
}

/// The quote's extraData must be the runtime-data hash, exactly (as Trustee checks it).
pub fn check_nonce(c: &VtpmClaims, expected: &[u8]) -> Result<(), Denial> {
    let have = hex::decode(&c.report_data).unwrap_or_default();
    if !bool::from(have.ct_eq(expected)) {
        return Err(Denial::new(
            Reason::ReportDataMismatch,
            "the TPM quote's extraData is not the hash of the runtime data",
        ));
    }
    Ok(())
}

/// Verifies SNP evidence: the vTPM half first (so a tampered quote is named as such),
/// then the SNP report with `certs` (the evidence's VCEK, or one the caller found) and
/// the configured trust. The runtime-data binding is the caller's ([`check_nonce`]).
pub fn verify_snp(
    ev: &AzEvidence,
    certs: &[super::snp::CertIn],
    trust: &super::SnpTrust,
    now: u64,
) -> Result<AzSnpClaims, Denial> {
    let hcl = parse_hcl_report(&ev.hcl_report)?;
    let report = snp_report(&hcl)?;
    let parsed = super::snp::Report::parse(report)?;
    let vtpm = verify_vtpm(ev, &hcl, &parsed.report_data, "SNP")?;
    let sev_snp = super::snp::verify_report(report, certs, trust, now)?;
    Ok(AzSnpClaims { sev_snp, vtpm })
}

/// TDX, first half: the vTPM links, bound by the TD quote's report_data as the quote
/// claims it (before any collateral is fetched, so a tampered quote is named as such).
pub fn verify_tdx_vtpm(ev: &AzEvidence) -> Result<VtpmClaims, Denial> {
    let hcl = parse_hcl_report(&ev.hcl_report)?;
    if hcl.kind != AzureKind::Tdx {
        return Err(malformed("the HCL report holds an SNP report, not a TDX one (use az-snp-vtpm)"));
    }
    verify_vtpm(ev, &hcl, &super::tdx::unverified_report_data(td_quote(ev)?)?, "TD quote")
}

/// TDX, second half: the quote's DCAP verification with `collateral`, which makes the
/// report_data that [`verify_tdx_vtpm`] bound true.
pub fn verify_tdx(
    vtpm: VtpmClaims,
    ev: &AzEvidence,
    collateral: &dcap_qvl::QuoteCollateralV3,
    root_ca_der: &[u8],
    now: u64,
) -> Result<AzTdxClaims, Denial> {
    let tdx = super::tdx::verify_quote(td_quote(ev)?, collateral, root_ca_der, now)?;
    Ok(AzTdxClaims { tdx, vtpm })
}

fn td_quote(ev: &AzEvidence) -> Result<&[u8], Denial> {
    ev.td_quote.as_deref().ok_or_else(|| malformed("az-tdx-vtpm evidence has no td_quote"))
}

/// SNP: the HCL report's SNP report, which the VCEK verifies.
pub fn snp_report<'a>(hcl: &HclReport<'a>) -> Result<&'a [u8], Denial> {
    if hcl.kind != AzureKind::Snp {
        return Err(malformed("the HCL report holds a TDX report, not an SNP one (use az-tdx-vtpm)"));
    }
    Ok(hcl.hw_report)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn attest(extra: &[u8], banks: &[(u16, &[u8])], digest: &[u8]) -> Vec<u8> {
        let mut m = Vec::new();
        m.extend(TPM_MAGIC.to_be_bytes());
        m.extend(TPM_ST_ATTEST_QUOTE.to_be_bytes());
        m.extend(2u16.to_be_bytes());
        m.extend([0, 11]);
        m.extend((extra.len() as u16).to_be_bytes());
        m.extend(extra);
        m.extend([0u8; 17]);
        m.extend([0u8; 8]);
        m.extend((banks.len() as u32).to_be_bytes());
        for (alg, bits) in banks {
            m.extend(alg.to_be_bytes());
            m.push(bits.len() as u8);
            m.extend(*bits);
        }
        m.extend((digest.len() as u16).to_be_bytes());
        m.extend(digest);
        m
    }

    #[test]
    fn quote_message_fields_and_selection() {
        let m = attest(b"nonce", &[(TPM_ALG_SHA256, &[0xff, 0xff, 0xff])], &[7; 32]);
        let q = parse_quote_message(&m).unwrap();
        assert_eq!(q.extra_data, b"nonce");
        assert_eq!(q.selection, vec![(TPM_ALG_SHA256, (0..24).collect::<Vec<u8>>())]);
        assert_eq!(q.pcr_digest, [7; 32]);
    }

    #[test]
    fn truncated_trailing_and_oversized_messages_are_refused() {
        let m = attest(b"nonce", &[(TPM_ALG_SHA256, &[1])], &[7; 32]);
        for cut in 0..m.len() {
            let e = parse_quote_message(&m[..cut]).unwrap_err();
            assert_eq!(e.reason, Reason::MalformedEvidence, "{cut}");
        }
        let mut long = m.clone();
        long.push(0);
        assert!(parse_quote_message(&long).unwrap_err().detail.contains("after the quote"));
        let big = attest(&[0; 65], &[], &[]);
        assert!(parse_quote_message(&big).unwrap_err().detail.contains("extraData is 65 bytes"));
        let mut wrong = m.clone();
        wrong[4] = 0x80;
        wrong[5] = 0x14;
        assert!(parse_quote_message(&wrong).unwrap_err().detail.contains("not a quote"));
    }
}
