//! AMD SEV-SNP: the 1184-byte attestation report (versions 2 to 5, Milan/Genoa TCB
//! layout), its ECDSA P-384 signature by the VCEK, and the VCEK -> ASK -> ARK chain
//! (RSA-PSS) rooted in the ARK the operator configured.
//!
//! Evidence JSON: `{"attestation_report": <base64 or byte array of the raw report>,
//! "cert_chain": [{"cert_type": "vcek"|"ask"|"ark"|<GUID>, "data": <base64/bytes, DER or PEM>}] | null}`.
//! The VCEK comes from `cert_chain`, else from the configuration; the ARK only ever
//! comes from the configuration (it is the trust anchor).

use openssl::bn::BigNum;
use openssl::ecdsa::EcdsaSig;
use openssl::x509::X509;
use serde_json::Value;
use subtle::ConstantTimeEq;

use crate::claims::{SnpClaims, SnpTcb};
use crate::policy::{Denial, Reason};

pub const REPORT_LEN: usize = 0x4A0;
const SIGNED_LEN: usize = 0x2A0;
const VCEK_GUID: &str = "63da758d-e664-4564-adc5-f4b93be8accd";
const ASK_GUID: &str = "4ab7b379-bbac-4fe4-a02f-05aef327c782";

/// Trust material from the configuration.
#[derive(Clone, Default)]
pub struct SnpTrust {
    pub ark: Option<X509>,
    pub ask: Option<X509>,
    pub vcek: Option<X509>,
}

impl std::fmt::Debug for SnpTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnpTrust")
            .field("ark", &self.ark.is_some())
            .field("ask", &self.ask.is_some())
            .field("vcek", &self.vcek.is_some())
            .finish()
    }
}

/// Fields of the report the verifier and the policy need (offsets from the SNP ABI spec).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub version: u32,
    pub guest_svn: u32,
    pub policy: u64,
    pub family_id: [u8; 16],
    pub image_id: [u8; 16],
    pub vmpl: u32,
    pub sig_algo: u32,
    pub report_data: [u8; 64],
    pub measurement: [u8; 48],
    pub host_data: [u8; 32],
    pub reported_tcb: SnpTcb,
    pub chip_id: [u8; 64],
    /// Signature r and s as big-endian integers (the report stores them little-endian).
    pub sig_r: Vec<u8>,
    pub sig_s: Vec<u8>,
}

fn arr<const N: usize>(b: &[u8], off: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&b[off..off + N]);
    out
}

fn le_u32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(arr::<4>(b, off))
}

impl Report {
    pub fn parse(b: &[u8]) -> Result<Self, Denial> {
        if b.len() != REPORT_LEN {
            return Err(Denial::new(
                Reason::MalformedEvidence,
                format!("SNP report is {} bytes, expected {REPORT_LEN}", b.len()),
            ));
        }
        let version = le_u32(b, 0);
        if !(2..=5).contains(&version) {
            return Err(Denial::new(
                Reason::MalformedEvidence,
                format!("SNP report version {version} is not supported (2 to 5)"),
            ));
        }
        let tcb = arr::<8>(b, 0x180);
        let be = |le: &[u8]| {
            let mut v: Vec<u8> = le.iter().rev().copied().collect();
            while v.len() > 1 && v[0] == 0 {
                v.remove(0);
            }
            v
        };
        Ok(Report {
            version,
            guest_svn: le_u32(b, 4),
            policy: u64::from_le_bytes(arr::<8>(b, 8)),
            family_id: arr(b, 0x10),
            image_id: arr(b, 0x20),
            vmpl: le_u32(b, 0x30),
            sig_algo: le_u32(b, 0x34),
            report_data: arr(b, 0x50),
            measurement: arr(b, 0x90),
            host_data: arr(b, 0xC0),
            reported_tcb: SnpTcb { bootloader: tcb[0], tee: tcb[1], snp: tcb[6], microcode: tcb[7] },
            chip_id: arr(b, 0x1A0),
            sig_r: be(&b[0x2A0..0x2A0 + 72]),
            sig_s: be(&b[0x2E8..0x2E8 + 72]),
        })
    }

    pub fn debug_allowed(&self) -> bool {
        self.policy & (1 << 19) != 0
    }
}

fn parse_cert(der_or_pem: &[u8]) -> Option<X509> {
    X509::from_der(der_or_pem).or_else(|_| X509::from_pem(der_or_pem)).ok()
}

fn cert_kind(entry: &Value) -> Option<String> {
    let t = entry.get("cert_type").or_else(|| entry.get("guid"))?;
    let s = match t {
        Value::String(s) => s.to_ascii_lowercase(),
        Value::Object(m) => m.keys().next()?.to_ascii_lowercase(),
        _ => return None,
    };
    Some(match s.as_str() {
        VCEK_GUID => "vcek".into(),
        ASK_GUID => "ask".into(),
        _ => s,
    })
}

pub fn verify(evidence: &Value, expected: &[u8], trust: &SnpTrust) -> Result<SnpClaims, Denial> {
    let malformed = |d: &str| Denial::new(Reason::MalformedEvidence, d);
    let raw = evidence
        .get("attestation_report")
        .or_else(|| evidence.get("report"))
        .ok_or_else(|| malformed("SNP evidence has no attestation_report"))?;
    let raw = super::json_bytes(raw).ok_or_else(|| {
        malformed("SNP attestation_report must be the raw report as base64 or a byte array")
    })?;
    let report = Report::parse(&raw)?;

    let mut vcek = None;
    let mut ask = None;
    if let Some(Value::Array(entries)) = evidence.get("cert_chain") {
        for e in entries {
            let kind = cert_kind(e);
            let data = e.get("data").and_then(super::json_bytes);
            let (Some(kind), Some(data)) = (kind, data) else {
                return Err(malformed("SNP cert_chain entry needs cert_type and data"));
            };
            let cert = parse_cert(&data)
                .ok_or_else(|| malformed("SNP cert_chain entry is not a DER or PEM certificate"))?;
            match kind.as_str() {
                "vcek" => vcek = Some(cert),
                "ask" => ask = Some(cert),
                _ => {}
            }
        }
    }
    let chain_err = |d: &str| Denial::new(Reason::CertChainInvalid, d);
    let ark =
        trust.ark.as_ref().ok_or_else(|| chain_err("no AMD ARK certificate is configured (snp.ark)"))?;
    let ask = trust
        .ask
        .as_ref()
        .or(ask.as_ref())
        .ok_or_else(|| chain_err("no ASK certificate configured or sent"))?;
    let vcek = vcek
        .as_ref()
        .or(trust.vcek.as_ref())
        .ok_or_else(|| chain_err("no VCEK in the evidence cert_chain or the configuration"))?;
    let ark_key = ark.public_key().map_err(|_| chain_err("ARK public key unreadable"))?;
    if !ark.verify(&ark_key).unwrap_or(false) {
        return Err(chain_err("ARK is not self-signed"));
    }
    if !ask.verify(&ark_key).unwrap_or(false) {
        return Err(chain_err("ASK is not signed by the configured ARK"));
    }
    let ask_key = ask.public_key().map_err(|_| chain_err("ASK public key unreadable"))?;
    if !vcek.verify(&ask_key).unwrap_or(false) {
        return Err(chain_err("VCEK is not signed by the ASK"));
    }

    if report.sig_algo != 1 {
        return Err(Denial::new(
            Reason::SignatureInvalid,
            format!("signature algorithm {} is not ECDSA P-384 SHA-384 (1)", report.sig_algo),
        ));
    }
    let sig_ok = (|| -> Result<bool, openssl::error::ErrorStack> {
        let key = vcek.public_key()?.ec_key()?;
        let sig = EcdsaSig::from_private_components(
            BigNum::from_slice(&report.sig_r)?,
            BigNum::from_slice(&report.sig_s)?,
        )?;
        let digest = openssl::sha::sha384(&raw[..SIGNED_LEN]);
        sig.verify(&digest, &key)
    })()
    .unwrap_or(false);
    if !sig_ok {
        return Err(Denial::new(
            Reason::SignatureInvalid,
            "SNP report signature does not verify with the VCEK",
        ));
    }

    let want = super::padded64(expected)
        .ok_or_else(|| Denial::new(Reason::ReportDataMismatch, "expected report_data too long"))?;
    if !bool::from(report.report_data.ct_eq(&want)) {
        return Err(Denial::new(
            Reason::ReportDataMismatch,
            "SNP report_data does not match the hash of the runtime data",
        ));
    }

    Ok(SnpClaims {
        version: report.version,
        measurement: hex::encode(report.measurement),
        reported_tcb: report.reported_tcb,
        family_id: hex::encode(report.family_id),
        image_id: hex::encode(report.image_id),
        host_data: hex::encode(report.host_data),
        chip_id: hex::encode(report.chip_id),
        vmpl: report.vmpl,
        policy_debug_allowed: report.debug_allowed(),
        policy_migrate_ma: report.policy & (1 << 18) != 0,
        policy_smt_allowed: report.policy & (1 << 16) != 0,
        guest_svn: report.guest_svn,
    })
}
