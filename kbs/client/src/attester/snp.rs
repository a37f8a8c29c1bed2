//! AMD SEV-SNP evidence: the attestation report from configfs-tsm (provider
//! `sev_guest`, with the certificate table in `auxblob`), falling back to the
//! `SNP_GET_REPORT` ioctl on `/dev/sev-guest` on kernels without configfs-tsm.

use std::path::PathBuf;

use base64::prelude::{Engine, BASE64_STANDARD};
use serde_json::{json, Value};

use super::{sev_guest_ioctl, tsm, Attester, Tee};
use crate::error::AttesterError;
use ocicrypt::keywrap::BoxFuture;

/// Size of an SNP attestation report (ABI spec, table "ATTESTATION_REPORT").
pub(crate) const SNP_REPORT_LEN: usize = 1184;

/// Collects SEV-SNP attestation reports.
#[derive(Debug, Clone)]
pub struct SnpAttester {
    tsm_root: PathBuf,
    device: PathBuf,
}

impl SnpAttester {
    pub fn new(tsm_root: PathBuf, device: PathBuf) -> Self {
        SnpAttester { tsm_root, device }
    }

    fn collect(&self, report_data: &[u8; 64]) -> Result<Value, AttesterError> {
        let tsm_err = match tsm::get_report(&self.tsm_root, "sev_guest", report_data, None) {
            Ok(r) => {
                let certs = match r.auxblob {
                    Some(aux) => Some(parse_cert_table(&aux)?),
                    None => None,
                };
                return Ok(evidence_json(&r.outblob, certs, "configfs-tsm"));
            }
            Err(e) => e,
        };
        if !self.device.exists() {
            return Err(tsm_err);
        }
        let report = sev_guest_ioctl::get_report(&self.device, report_data)?;
        Ok(evidence_json(&report, None, "sev-guest-ioctl"))
    }
}

fn evidence_json(report: &[u8], certs: Option<Vec<CertEntry>>, source: &str) -> Value {
    let chain = certs.map(|cs| {
        cs.into_iter()
            .map(|c| {
                json!({
                    "guid": c.guid,
                    "cert_type": c.cert_type,
                    "data": BASE64_STANDARD.encode(&c.data),
                })
            })
            .collect::<Vec<_>>()
    });
    json!({
        "attestation_report": BASE64_STANDARD.encode(report),
        "cert_chain": chain,
        "source": source,
    })
}

impl Attester for SnpAttester {
    fn tee(&self) -> Tee {
        Tee::Snp
    }

    fn evidence<'a>(&'a self, report_data: &'a [u8; 64]) -> BoxFuture<'a, Result<Value, AttesterError>> {
        let this = self.clone();
        let rd = *report_data;
        super::collect_blocking("SNP", move || this.collect(&rd))
    }
}

/// One certificate of the SNP extended-report certificate table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertEntry {
    /// The table GUID in canonical text form.
    pub guid: String,
    /// `vcek`, `vlek`, `ask`, `ark`, `crl` or `other`.
    pub cert_type: &'static str,
    /// DER bytes.
    pub data: Vec<u8>,
}

fn guid_text(b: &[u8; 16]) -> String {
    // GUIDs are stored mixed-endian: the first three fields little-endian.
    format!(
        "{:02x}{:02x}{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        b[3], b[2], b[1], b[0], b[5], b[4], b[7], b[6], b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]
    )
}

fn cert_type(guid: &str) -> &'static str {
    match guid {
        "63da758d-e664-4564-adc5-f4b93be8accd" => "vcek",
        "a8074bc2-a25a-483e-aae6-39c045a0b8a1" => "vlek",
        "4ab7b379-bbac-4fe4-a02f-05aef327c782" => "ask",
        "c0b406a4-a803-4952-9743-3fb6014cd0ae" => "ark",
        "92f81bc3-5811-4d3d-97ff-d19f88dc67ea" => "crl",
        _ => "other",
    }
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// Parses the GHCB certificate table: 24-byte entries `{guid[16], offset u32,
/// length u32}` ended by an all-zero entry; offsets count from the table start.
pub fn parse_cert_table(table: &[u8]) -> Result<Vec<CertEntry>, AttesterError> {
    let bad = |why: String| AttesterError::Other(format!("malformed SNP certificate table: {why}"));
    let mut out = Vec::new();
    let mut at = 0usize;
    loop {
        let entry = table
            .get(at..at + 24)
            .ok_or_else(|| bad(format!("entry at {at} runs past the end (no terminator)")))?;
        if entry.iter().all(|&b| b == 0) {
            return Ok(out);
        }
        let mut g = [0u8; 16];
        g.copy_from_slice(&entry[..16]);
        let off = u32_at(entry, 16).ok_or_else(|| bad("short entry".into()))? as usize;
        let len = u32_at(entry, 20).ok_or_else(|| bad("short entry".into()))? as usize;
        let end = off
            .checked_add(len)
            .filter(|&e| e <= table.len())
            .ok_or_else(|| bad(format!("certificate at {off}+{len} outside the table")))?;
        let guid = guid_text(&g);
        out.push(CertEntry { cert_type: cert_type(&guid), guid, data: table[off..end].to_vec() });
        at += 24;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn guid_bytes(text: &str) -> [u8; 16] {
        let h: Vec<u8> = hex::decode(text.replace('-', "")).unwrap();
        let mut b = [0u8; 16];
        b[0..4].copy_from_slice(&[h[3], h[2], h[1], h[0]]);
        b[4..6].copy_from_slice(&[h[5], h[4]]);
        b[6..8].copy_from_slice(&[h[7], h[6]]);
        b[8..].copy_from_slice(&h[8..]);
        b
    }

    #[test]
    fn cert_table_round_trip() {
        let vcek = "63da758d-e664-4564-adc5-f4b93be8accd";
        let ark = "c0b406a4-a803-4952-9743-3fb6014cd0ae";
        let header_len = 24 * 3;
        let mut t = Vec::new();
        for (g, off, len) in [(vcek, header_len, 3), (ark, header_len + 3, 2)] {
            t.extend_from_slice(&guid_bytes(g));
            t.extend_from_slice(&(off as u32).to_le_bytes());
            t.extend_from_slice(&(len as u32).to_le_bytes());
        }
        t.extend_from_slice(&[0u8; 24]);
        t.extend_from_slice(b"abcde");
        let certs = parse_cert_table(&t).unwrap();
        assert_eq!(certs.len(), 2);
        assert_eq!(certs[0].guid, vcek);
        assert_eq!(certs[0].cert_type, "vcek");
        assert_eq!(certs[0].data, b"abc");
        assert_eq!(certs[1].cert_type, "ark");
        assert_eq!(certs[1].data, b"de");
    }

    #[test]
    fn cert_table_rejects_out_of_bounds_and_missing_terminator() {
        let mut t = Vec::new();
        t.extend_from_slice(&[1u8; 16]);
        t.extend_from_slice(&1000u32.to_le_bytes());
        t.extend_from_slice(&10u32.to_le_bytes());
        t.extend_from_slice(&[0u8; 24]);
        assert!(parse_cert_table(&t).is_err());
        assert!(parse_cert_table(&t[..30]).is_err());
        assert!(parse_cert_table(&[]).is_err());
        let huge = {
            let mut t = Vec::new();
            t.extend_from_slice(&[1u8; 16]);
            t.extend_from_slice(&u32::MAX.to_le_bytes());
            t.extend_from_slice(&u32::MAX.to_le_bytes());
            t.extend_from_slice(&[0u8; 24]);
            t
        };
        assert!(parse_cert_table(&huge).is_err());
    }

    #[tokio::test]
    async fn falls_back_to_device_and_reports_its_error() {
        let dir = tempfile::tempdir().unwrap();
        // A regular file is not the SNP device: the ioctl must fail with a clear error.
        let dev = dir.path().join("sev-guest");
        std::fs::write(&dev, b"").unwrap();
        let a = SnpAttester::new(dir.path().join("no-tsm"), dev);
        let err = a.evidence(&[0u8; 64]).await.unwrap_err();
        assert!(matches!(err, AttesterError::SevGuest { .. }), "{err}");
    }
}
