//! Azure confidential VMs (SEV-SNP or TDX under Microsoft's paravisor, the "HCL"):
//! the guest cannot ask the hardware for a report itself. The paravisor puts one
//! into the vTPM's NV index 0x01400001 (the "HCL report": the hardware report plus
//! a JSON blob whose hash is its report data and which carries the vTPM's AK), and
//! the binding to our runtime data is a TPM2_Quote by that AK over the PCRs with
//! the runtime-data hash as its nonce.
//!
//! Collection, in the order CoCo's attestation-agent uses (evidence version 2):
//! 0. with init-data: PCR 8 must hold its SHA-256 digest extended once into a zero
//!    PCR (what attestation-agent's `bind_init_data` does at start-up, and what the
//!    broker checks); a zero PCR 8 is extended here, once per boot;
//! 1. write the 64-byte report data to NV index 0x01400002 (the paravisor's
//!    "user data"; defined under the owner hierarchy if absent, as the az-cvm-vtpm
//!    crate does), so the paravisor regenerates the HCL report with it;
//! 2. read the HCL report from 0x01400001 (owner auth, like az-cvm-vtpm);
//! 3. quote SHA-256 PCR 0..23 with the AK at 0x81000003, nonce = the 48-byte
//!    runtime-data hash; read the 24 PCRs;
//! 4. SNP: the VCEK from Azure IMDS (THIM); TDX: the TD quote from IMDS, made from
//!    the TDREPORT inside the HCL report.
//!
//! Evidence JSON (hex lowercase; base64url *with* padding, byte for byte what
//! attestation-agent's serde_with `Base64<UrlSafe>` emits, see Trustee's samples):
//! - `az-snp-vtpm`: `{"version":2,"tpm_quote":{"signature":"<hex>","message":"<hex TPMS_ATTEST>",
//!   "pcrs":["<hex 32 bytes>" x 24]},"hcl_report":"<b64url>","vcek":"<b64url DER>"}`;
//!   `vcek` is left out when IMDS cannot be reached (the broker then finds the VCEK itself).
//! - `az-tdx-vtpm`: the same with `"td_quote":"<b64url>"` instead of `vcek` (required:
//!   without a TD quote there is no evidence).

use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::prelude::{Engine, BASE64_STANDARD, BASE64_URL_SAFE, BASE64_URL_SAFE_NO_PAD};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use super::tpm::{self, nv_attr, Quote, Tpm, TpmError, TpmTarget};
use super::{Attester, AttesterOptions, Tee};
use crate::error::AttesterError;
use crate::protocol::RUNTIME_DATA_HASH_LEN;
use ocicrypt::keywrap::BoxFuture;

/// The HCL report (written by the paravisor).
pub const HCL_REPORT_INDEX: u32 = 0x0140_0001;
/// The user data the paravisor puts into the next HCL report.
pub const USER_DATA_INDEX: u32 = 0x0140_0002;
/// The vTPM attestation key (its public part is `HCLAkPub` in the HCL report).
pub const AK_HANDLE: u32 = 0x8100_0003;
/// Azure IMDS, where the VCEK and TD quotes come from.
pub const DEFAULT_IMDS_URL: &str = "http://169.254.169.254";
/// Overrides [`DEFAULT_IMDS_URL`] (tests point it at 127.0.0.1).
pub const IMDS_URL_ENV: &str = "CLOAK_AZURE_IMDS_URL";
/// Overrides the TPM device (a path, or `tcp:127.0.0.1:PORT` for swtpm).
pub const TPM_DEVICE_ENV: &str = "CLOAK_TPM_DEVICE";

const HCL_SIGNATURE: u32 = 0x414C_4348; // "HCLA", little-endian
const HCL_HEADER_LEN: usize = 32;
const HW_REPORT_LEN: usize = 1184;
const TD_REPORT_LEN: usize = 1024;
const IGVM_OFFSET: usize = HCL_HEADER_LEN + HW_REPORT_LEN;
const IGVM_HEADER_LEN: usize = 20;
const REPORT_TYPE_SNP: u32 = 2;
const REPORT_TYPE_TDX: u32 = 4;
/// Real HCL reports are 2600 bytes (the NV index's size); more is not a report.
pub const MAX_HCL_REPORT: usize = 8192;
const USER_DATA_LEN: u16 = 64;
/// The PCR attestation-agent binds init-data in (its `INIT_DATA_PCR`).
pub const INITDATA_PCR: u32 = 8;
/// The evidence shape version attestation-agent emits (and Trustee reads).
const EVIDENCE_VERSION: u32 = 2;
/// IMDS answers are small (a VCEK plus chain, or a TD quote of ~5-8 KiB).
const IMDS_MAX_BODY: usize = 64 * 1024;
const IMDS_TIMEOUT: Duration = Duration::from_secs(5);
/// Per-command deadline while detecting: a TPM that does not answer quickly is
/// not the Azure vTPM we are looking for.
const DETECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the paravisor may take to regenerate the HCL report after the user
/// data is written. az-cvm-vtpm sleeps this long unconditionally; we stop as soon
/// as the report carries our user data (newer paravisors echo it as `user-data`).
pub const DEFAULT_REPORT_SETTLE: Duration = Duration::from_secs(3);

/// Which Azure CVM flavour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AzureKind {
    Snp,
    Tdx,
}

impl AzureKind {
    fn name(self) -> &'static str {
        match self {
            AzureKind::Snp => "az-snp-vtpm",
            AzureKind::Tdx => "az-tdx-vtpm",
        }
    }
}

/// An HCL report, parsed (borrowing the bytes): what the attester looks at, and the
/// layout the broker's verifier (`kbs_server::verifier::azure`) reads too.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HclReport<'a> {
    /// Header version (1 or 2 seen on Azure).
    pub version: u32,
    pub kind: AzureKind,
    /// The SNP ATTESTATION_REPORT (1184 bytes) or the TDREPORT (1024 bytes).
    pub hw_report: &'a [u8],
    /// How `var_data` is hashed into the hardware report's report_data: 1 SHA-256,
    /// 2 SHA-384, 3 SHA-512.
    pub hash_type: u32,
    /// The JSON runtime data whose hash the hardware report binds.
    pub var_data: &'a [u8],
}

impl HclReport<'_> {
    /// The hex `user-data` field of the var data, if this paravisor writes one.
    fn user_data(&self) -> Option<String> {
        let end = self.var_data.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
        let v: Value = serde_json::from_slice(&self.var_data[..end]).ok()?;
        v.get("user-data")?.as_str().map(str::to_owned)
    }

    /// The hash of the variable data that the hardware report's report_data must
    /// start with, by `hash_type`.
    pub fn var_data_hash(&self) -> Vec<u8> {
        match self.hash_type {
            2 => sha2::Sha384::digest(self.var_data).to_vec(),
            3 => sha2::Sha512::digest(self.var_data).to_vec(),
            _ => Sha256::digest(self.var_data).to_vec(),
        }
    }
}

/// Parses the HCL report layout (header, hardware report, IGVM request data, var
/// data), bounded to [`MAX_HCL_REPORT`] bytes; the contents are the broker's to verify.
pub fn parse_hcl_report(bytes: &[u8]) -> Result<HclReport<'_>, String> {
    let fixed = IGVM_OFFSET + IGVM_HEADER_LEN;
    if bytes.len() < fixed || bytes.len() > MAX_HCL_REPORT {
        return Err(format!("{} bytes, expected {fixed} to {MAX_HCL_REPORT}", bytes.len()));
    }
    let u32_at =
        |off: usize| u32::from_le_bytes([bytes[off], bytes[off + 1], bytes[off + 2], bytes[off + 3]]);
    let sig = u32_at(0);
    if sig != HCL_SIGNATURE {
        return Err(format!("signature {sig:#010x} is not \"HCLA\" ({HCL_SIGNATURE:#010x})"));
    }
    let version = u32_at(4);
    if !(1..=2).contains(&version) {
        return Err(format!("version {version} is not supported (1 or 2)"));
    }
    let (kind, hw_len) = match u32_at(IGVM_OFFSET + 8) {
        REPORT_TYPE_SNP => (AzureKind::Snp, HW_REPORT_LEN),
        REPORT_TYPE_TDX => (AzureKind::Tdx, TD_REPORT_LEN),
        other => return Err(format!("report type {other} is neither SNP (2) nor TDX (4)")),
    };
    let hash_type = u32_at(IGVM_OFFSET + 12);
    if !(1..=3).contains(&hash_type) {
        return Err(format!("report data hash type {hash_type} is not SHA-256/384/512"));
    }
    let var_len = u32_at(IGVM_OFFSET + 16) as usize;
    let var_data = bytes.get(fixed..fixed.saturating_add(var_len)).ok_or_else(|| {
        format!("variable data of {var_len} bytes runs past the report's {} bytes", bytes.len())
    })?;
    Ok(HclReport {
        version,
        kind,
        hw_report: &bytes[HCL_HEADER_LEN..HCL_HEADER_LEN + hw_len],
        hash_type,
        var_data,
    })
}

/// Reads the HCL report out of the vTPM.
fn read_hcl_report(tpm: &mut Tpm) -> Result<Vec<u8>, TpmError> {
    let public = tpm.nv_read_public(HCL_REPORT_INDEX)?;
    let auth = read_auth(public.attributes, HCL_REPORT_INDEX);
    tpm.nv_read_all(HCL_REPORT_INDEX, auth, public.data_size)
}

/// Owner authorization where the index allows it (what Azure's paravisor and the
/// az-cvm-vtpm crate use), else the index's own (empty) auth.
fn read_auth(attributes: u32, index: u32) -> u32 {
    if attributes & nv_attr::OWNERREAD != 0 || attributes & nv_attr::AUTHREAD == 0 {
        tpm::TPM_RH_OWNER
    } else {
        index
    }
}

fn write_auth(attributes: u32, index: u32) -> u32 {
    if attributes & nv_attr::OWNERWRITE != 0 || attributes & nv_attr::AUTHWRITE == 0 {
        tpm::TPM_RH_OWNER
    } else {
        index
    }
}

/// Detects an Azure CVM: a vTPM whose HCL report index holds an "HCLA" report.
/// Cheap and bounded (a few commands, each with a short deadline); the error says
/// what was found instead.
pub fn detect(target: &TpmTarget) -> Result<AzureKind, String> {
    if !target.present() {
        return Err(format!("vTPM {target} does not exist"));
    }
    let mut tpm = target.open_with_timeout(DETECT_TIMEOUT).map_err(|e| e.to_string())?;
    let bytes = read_hcl_report(&mut tpm).map_err(|e| {
        if e.is_missing_handle() {
            format!("vTPM {target} has no HCL report (NV index {HCL_REPORT_INDEX:#010x} is not defined)")
        } else {
            format!("reading the HCL report from {target}: {e}")
        }
    })?;
    parse_hcl_report(&bytes).map(|r| r.kind).map_err(|e| format!("HCL report in {target}: {e}"))
}

/// Evidence from an Azure CVM's vTPM.
#[derive(Debug, Clone)]
pub struct AzureVtpmAttester {
    kind: AzureKind,
    tpm: TpmTarget,
    imds_url: String,
    settle: Duration,
    initdata_digest: Option<Vec<u8>>,
}

/// What the TPM gave.
struct TpmParts {
    hcl_report: Vec<u8>,
    quote: Quote,
    pcrs: Vec<[u8; 32]>,
}

impl AzureVtpmAttester {
    pub fn new(kind: AzureKind, opts: &AttesterOptions) -> Self {
        AzureVtpmAttester {
            kind,
            tpm: opts.tpm_device.clone(),
            imds_url: opts.azure_imds_url.trim_end_matches('/').to_owned(),
            settle: opts.azure_report_settle,
            initdata_digest: opts.initdata_digest.clone(),
        }
    }

    fn err(&self, reason: impl std::fmt::Display) -> AttesterError {
        AttesterError::AzureVtpm { target: self.tpm.to_string(), reason: reason.to_string() }
    }

    /// Steps 1-3 (blocking TPM I/O).
    fn collect_tpm(&self, report_data: &[u8; 64]) -> Result<TpmParts, AttesterError> {
        let mut tpm = self.tpm.open().map_err(|e| self.err(e))?;
        if let Some(digest) = &self.initdata_digest {
            self.bind_initdata(&mut tpm, digest)?;
        }
        write_user_data(&mut tpm, report_data)
            .map_err(|e| self.err(format!("writing the user data: {e}")))?;
        let hcl_report = self.fresh_hcl_report(&mut tpm, report_data)?;
        let quote = tpm.quote(AK_HANDLE, &report_data[..RUNTIME_DATA_HASH_LEN]).map_err(|e| {
            if e.is_missing_handle() {
                self.err(format!("no attestation key at persistent handle {AK_HANDLE:#010x}: {e}"))
            } else {
                self.err(e)
            }
        })?;
        let pcrs = tpm.pcr_read_sha256().map_err(|e| self.err(e))?;
        Ok(TpmParts { hcl_report, quote, pcrs })
    }

    /// Makes PCR 8 hold `digest` extended once into zero, or finds it there already.
    /// A PCR 8 holding anything else fails here, clearly, instead of at the broker:
    /// other init-data was bound since boot, or the boot chain measures into PCR 8.
    /// Extending is not undoable, so the read-and-extend is serialized in this process.
    fn bind_initdata(&self, tpm: &mut Tpm, digest: &[u8]) -> Result<(), AttesterError> {
        static BIND: Mutex<()> = Mutex::new(());
        let d: [u8; 32] = digest.try_into().map_err(|_| {
            self.err(format!(
                "the init-data digest is {} bytes; on an Azure vTPM init-data is bound in PCR {INITDATA_PCR}, \
                 a SHA-256 register: use algorithm = \"sha256\" in the init-data",
                digest.len()
            ))
        })?;
        let expected: [u8; 32] = Sha256::new().chain_update([0u8; 32]).chain_update(d).finalize().into();
        let _guard = BIND.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let pcr8 = |tpm: &mut Tpm| -> Result<[u8; 32], AttesterError> {
            let pcrs = tpm.pcr_read_sha256().map_err(|e| self.err(e))?;
            Ok(pcrs[INITDATA_PCR as usize])
        };
        let current = pcr8(tpm)?;
        if current == expected {
            return Ok(());
        }
        if current != [0u8; 32] {
            return Err(self.err(format!(
                "PCR {INITDATA_PCR} is {}, neither zero nor this guest's init-data digest extended once: \
                 other init-data was bound since boot, or the boot chain measures into PCR {INITDATA_PCR}",
                hex::encode(current)
            )));
        }
        tpm.pcr_extend_sha256(INITDATA_PCR, &d)
            .map_err(|e| self.err(format!("binding the init-data: {e}")))?;
        let after = pcr8(tpm)?;
        if after != expected {
            return Err(self.err(format!(
                "PCR {INITDATA_PCR} is {} after extending it with the init-data digest, expected {}",
                hex::encode(after),
                hex::encode(expected)
            )));
        }
        tracing::info!(pcr = INITDATA_PCR, "init-data digest extended into the vTPM");
        Ok(())
    }

    /// Reads the HCL report until it carries our user data, or the settle time is
    /// over. A paravisor that does not echo `user-data` gets the full settle time
    /// once (what az-cvm-vtpm always waits); a report still without our data after
    /// that is sent anyway, with a warning: its binding to this request is the
    /// quote's nonce, which the broker checks.
    fn fresh_hcl_report(&self, tpm: &mut Tpm, report_data: &[u8; 64]) -> Result<Vec<u8>, AttesterError> {
        let want = hex::encode(report_data);
        let deadline = Instant::now() + self.settle;
        let mut waited_blind = false;
        loop {
            let bytes = read_hcl_report(tpm).map_err(|e| {
                if e.is_missing_handle() {
                    self.err(format!("no HCL report (NV index {HCL_REPORT_INDEX:#010x} is not defined): {e}"))
                } else {
                    self.err(format!("reading the HCL report: {e}"))
                }
            })?;
            let report = parse_hcl_report(&bytes).map_err(|e| self.err(format!("HCL report: {e}")))?;
            if report.kind != self.kind {
                return Err(self.err(format!(
                    "the HCL report is for {}, not {}",
                    report.kind.name(),
                    self.kind.name()
                )));
            }
            let now = Instant::now();
            match report.user_data() {
                Some(u) if u.eq_ignore_ascii_case(&want) => return Ok(bytes),
                Some(_) if now < deadline => {
                    std::thread::sleep(Duration::from_millis(200).min(deadline - now))
                }
                None if !waited_blind && now < deadline => {
                    waited_blind = true;
                    std::thread::sleep(deadline - now);
                }
                _ => {
                    tracing::warn!(
                        tpm = %self.tpm,
                        "the HCL report does not carry this request's user data after {:?}; sending it anyway \
                         (the TPM quote binds the request)",
                        self.settle
                    );
                    return Ok(bytes);
                }
            }
        }
    }

    async fn collect(&self, report_data: [u8; 64]) -> Result<Value, AttesterError> {
        let this = self.clone();
        let parts = tokio::task::spawn_blocking(move || this.collect_tpm(&report_data))
            .await
            .map_err(|e| AttesterError::Other(format!("{} evidence task failed: {e}", self.kind.name())))??;
        let tpm_quote = json!({
            "signature": hex::encode(&parts.quote.signature),
            "message": hex::encode(&parts.quote.message),
            "pcrs": parts.pcrs.iter().map(hex::encode).collect::<Vec<_>>(),
        });
        let mut evidence = json!({
            "version": EVIDENCE_VERSION,
            "tpm_quote": tpm_quote,
            "hcl_report": BASE64_URL_SAFE.encode(&parts.hcl_report),
        });
        let imds = Imds::new(&self.imds_url)?;
        match self.kind {
            AzureKind::Snp => match imds.vcek().await {
                Ok(der) => evidence["vcek"] = Value::String(BASE64_URL_SAFE.encode(der)),
                Err(e) => tracing::warn!(
                    error = %e,
                    "no VCEK from Azure IMDS; sending the evidence without it (the broker looks the VCEK up itself)"
                ),
            },
            AzureKind::Tdx => {
                // The report was parsed (and its kind checked) when it was read.
                let td_report = parse_hcl_report(&parts.hcl_report)
                    .map_err(|e| self.err(format!("HCL report: {e}")))?
                    .hw_report;
                let quote = imds.td_quote(td_report).await?;
                evidence["td_quote"] = Value::String(BASE64_URL_SAFE.encode(quote));
            }
        }
        Ok(evidence)
    }
}

/// Writes the 64 bytes of user data, defining the index first when it is absent
/// or of another size (owner read/write, as az-cvm-vtpm defines it).
fn write_user_data(tpm: &mut Tpm, data: &[u8; 64]) -> Result<(), TpmError> {
    let define = |tpm: &mut Tpm| {
        tpm.nv_define_space(USER_DATA_INDEX, nv_attr::OWNERWRITE | nv_attr::OWNERREAD, USER_DATA_LEN)
    };
    let attributes = match tpm.nv_read_public(USER_DATA_INDEX) {
        Ok(p) if p.data_size == USER_DATA_LEN => p.attributes,
        Ok(p) => {
            tracing::info!(size = p.data_size, "redefining the vTPM user-data index with 64 bytes");
            tpm.nv_undefine_space(USER_DATA_INDEX)?;
            define(tpm)?;
            nv_attr::OWNERWRITE | nv_attr::OWNERREAD
        }
        Err(e) if e.is_missing_handle() => {
            define(tpm)?;
            nv_attr::OWNERWRITE | nv_attr::OWNERREAD
        }
        Err(e) => return Err(e),
    };
    tpm.nv_write(USER_DATA_INDEX, write_auth(attributes, USER_DATA_INDEX), data)
}

impl Attester for AzureVtpmAttester {
    fn tee(&self) -> Tee {
        match self.kind {
            AzureKind::Snp => Tee::AzSnpVtpm,
            AzureKind::Tdx => Tee::AzTdxVtpm,
        }
    }

    fn evidence<'a>(&'a self, report_data: &'a [u8; 64]) -> BoxFuture<'a, Result<Value, AttesterError>> {
        let rd = *report_data;
        Box::pin(self.collect(rd))
    }

    fn bind_init_data<'a>(&'a self, digest: &'a [u8]) -> Option<BoxFuture<'a, Result<(), AttesterError>>> {
        let this = self.clone();
        let digest = digest.to_vec();
        Some(Box::pin(async move {
            let name = this.kind.name();
            tokio::task::spawn_blocking(move || {
                let mut tpm = this.tpm.open().map_err(|e| this.err(e))?;
                this.bind_initdata(&mut tpm, &digest)
            })
            .await
            .map_err(|e| AttesterError::Other(format!("{name} init-data task failed: {e}")))?
        }))
    }
}

/// The VCEK (DER) from IMDS's THIM answer (`{"vcekCert": PEM, ...}`). The answer
/// comes from the host's side: parsed as untrusted (the `tpm_response` fuzz target).
pub fn vcek_from_answer(body: &[u8]) -> Result<Vec<u8>, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("answer is not JSON: {e}"))?;
    let pem = v.get("vcekCert").and_then(Value::as_str).ok_or("answer has no \"vcekCert\"")?;
    let cert = openssl::x509::X509::from_pem(pem.as_bytes())
        .map_err(|e| format!("vcekCert is not a PEM certificate: {e}"))?;
    cert.to_der().map_err(|e| format!("vcekCert: {e}"))
}

/// The TD quote from IMDS's `/acc/tdquote` answer (`{"quote": base64 or base64url}`),
/// parsed as untrusted like [`vcek_from_answer`].
pub fn td_quote_from_answer(body: &[u8]) -> Result<Vec<u8>, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("answer is not JSON: {e}"))?;
    let q = v.get("quote").and_then(Value::as_str).ok_or("answer has no \"quote\"")?;
    let quote = BASE64_STANDARD
        .decode(q)
        .or_else(|_| BASE64_URL_SAFE_NO_PAD.decode(q.trim_end_matches('=')))
        .map_err(|e| format!("quote is neither base64 nor base64url: {e}"))?;
    if quote.is_empty() {
        return Err("empty quote".to_owned());
    }
    Ok(quote)
}

/// Azure IMDS: bounded requests (no proxy, 5 s, 64 KiB answers).
struct Imds<'a> {
    base: &'a str,
    http: reqwest::Client,
}

impl<'a> Imds<'a> {
    fn new(base: &'a str) -> Result<Self, AttesterError> {
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(IMDS_TIMEOUT)
            .connect_timeout(IMDS_TIMEOUT)
            .build()
            .map_err(|e| AttesterError::Imds { url: base.to_owned(), reason: e.to_string() })?;
        Ok(Imds { base, http })
    }

    /// The VCEK (DER) from THIM. Field names as in Microsoft's az-snp-vtpm crate
    /// (`imds.rs`: `vcekCert`, `certificateChain`, both PEM).
    async fn vcek(&self) -> Result<Vec<u8>, AttesterError> {
        let url = format!("{}/metadata/THIM/amd/certification", self.base);
        let bad = |reason: String| AttesterError::Imds { url: url.clone(), reason };
        let body =
            self.send(&url, self.http.get(&url)).await?.map_err(|status| bad(format!("HTTP {status}")))?;
        vcek_from_answer(&body).map_err(bad)
    }

    /// The TD quote for `td_report` (1024 bytes): POST `{"report": base64}` →
    /// `{"quote": base64}`. Microsoft's azure-guest-attestation-sdk (what
    /// attestation-agent uses now) sends standard base64 and, when IMDS refuses it,
    /// base64url without padding (what the older az-tdx-vtpm crate sent); it decodes
    /// the answer in either alphabet. So does this.
    async fn td_quote(&self, td_report: &[u8]) -> Result<Vec<u8>, AttesterError> {
        let url = format!("{}/acc/tdquote", self.base);
        let bad = |reason: String| AttesterError::Imds { url: url.clone(), reason };
        let mut refused = Vec::new();
        for report in [BASE64_STANDARD.encode(td_report), BASE64_URL_SAFE_NO_PAD.encode(td_report)] {
            let req = self.http.post(&url).json(&json!({ "report": report }));
            let body = match self.send(&url, req).await? {
                Ok(body) => body,
                Err(status) => {
                    refused.push(status.to_string());
                    continue;
                }
            };
            return td_quote_from_answer(&body).map_err(bad);
        }
        Err(bad(format!("HTTP {} (report as base64, then as base64url)", refused.join(", then "))))
    }

    /// One bounded request: the body of a 2xx answer, or the status of another.
    async fn send(
        &self,
        url: &str,
        req: reqwest::RequestBuilder,
    ) -> Result<Result<Vec<u8>, reqwest::StatusCode>, AttesterError> {
        let fail = |reason: String| AttesterError::Imds { url: url.to_owned(), reason };
        let mut resp = req
            .header("Metadata", "true")
            .header("Accept", "application/json")
            .send()
            .await
            .map_err(|e| fail(crate::client::describe_reqwest(&e)))?;
        if !resp.status().is_success() {
            return Ok(Err(resp.status()));
        }
        if resp.content_length().is_some_and(|n| n > IMDS_MAX_BODY as u64) {
            return Err(fail(format!("answer larger than {IMDS_MAX_BODY} bytes")));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(|e| fail(crate::client::describe_reqwest(&e)))? {
            if body.len() + chunk.len() > IMDS_MAX_BODY {
                return Err(fail(format!("answer larger than {IMDS_MAX_BODY} bytes")));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Ok(body))
    }
}
#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sample(report_type: u32, var: &[u8]) -> Vec<u8> {
        let mut v = vec![0u8; IGVM_OFFSET + IGVM_HEADER_LEN];
        v[..4].copy_from_slice(&HCL_SIGNATURE.to_le_bytes());
        v[4..8].copy_from_slice(&2u32.to_le_bytes());
        v[IGVM_OFFSET + 8..IGVM_OFFSET + 12].copy_from_slice(&report_type.to_le_bytes());
        v[IGVM_OFFSET + 12..IGVM_OFFSET + 16].copy_from_slice(&1u32.to_le_bytes());
        v[IGVM_OFFSET + 16..IGVM_OFFSET + 20].copy_from_slice(&(var.len() as u32).to_le_bytes());
        v.extend_from_slice(var);
        v
    }

    #[test]
    fn parses_the_layout_and_the_user_data() {
        let v = sample(4, br#"{"user-data":"AB"}"#);
        let r = parse_hcl_report(&v).unwrap();
        assert_eq!(r.kind, AzureKind::Tdx);
        // A TDX report's hardware part is the TDREPORT (what goes to IMDS for a quote).
        assert_eq!(r.hw_report.len(), TD_REPORT_LEN);
        assert_eq!(r.user_data().as_deref(), Some("AB"));
    }

    #[test]
    fn tdx_report_layout_and_bounds() {
        let mut b = vec![0u8; HCL_HEADER_LEN + HW_REPORT_LEN + IGVM_HEADER_LEN + 4];
        b[..4].copy_from_slice(&HCL_SIGNATURE.to_le_bytes());
        b[4] = 2;
        let igvm = IGVM_OFFSET;
        b[igvm + 8] = 4;
        b[igvm + 12] = 1;
        b[igvm + 16] = 4;
        b[igvm + 20..].copy_from_slice(b"{}  ");
        let r = parse_hcl_report(&b).unwrap();
        assert_eq!(r.kind, AzureKind::Tdx);
        assert_eq!(r.hw_report.len(), TD_REPORT_LEN);
        assert_eq!(r.var_data, b"{}  ");
        b[igvm + 16] = 5;
        assert!(parse_hcl_report(&b).unwrap_err().contains("runs past"));
        b[igvm + 16] = 4;
        b[igvm + 8] = 3;
        assert!(parse_hcl_report(&b).unwrap_err().contains("neither SNP"));
        b[igvm + 8] = 4;
        b[igvm + 12] = 4;
        assert!(parse_hcl_report(&b).unwrap_err().contains("hash type 4"));
        b[igvm + 12] = 1;
        b[4] = 3;
        assert!(parse_hcl_report(&b).unwrap_err().contains("version 3"));
        assert!(parse_hcl_report(&b[..100]).is_err());
        assert!(parse_hcl_report(&vec![0u8; MAX_HCL_REPORT + 1]).is_err());
    }

    #[test]
    fn truncated_or_foreign_reports_are_refused() {
        let v = sample(2, b"{}");
        for n in [0, 3, 32, IGVM_OFFSET + 11, v.len() - 1] {
            assert!(parse_hcl_report(&v[..n]).is_err(), "prefix {n}");
        }
        let mut bad = v.clone();
        bad[0] = b'X';
        assert!(parse_hcl_report(&bad).unwrap_err().contains("not \"HCLA\""));
        let e = parse_hcl_report(&sample(3, b"{}")).unwrap_err();
        assert!(e.contains("neither SNP"), "{e}");
        let mut huge = v.clone();
        huge[IGVM_OFFSET + 16..IGVM_OFFSET + 20].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(parse_hcl_report(&huge).is_err());
    }
}
