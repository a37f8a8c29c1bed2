//! The guest's own check of its init-data against its report, before attesting, as
//! CoCo's attestation-agent does at start-up (`bind_init_data`): the host put the
//! digest of the init-data it launched the guest with into the report (SNP `HOST_DATA`,
//! 32 bytes; TDX `MRCONFIGID`, 48; zero-padded or cut); a guest about to send other
//! init-data stops here with an error that says so, instead of a broker denial.
//!
//! The broker makes the same comparison on verified evidence; this one only fails
//! early and clearly. Other TEEs (the sample attester among them) are not checked here.

use base64::prelude::{Engine, BASE64_STANDARD};
use serde_json::Value;

use super::Tee;
use crate::error::AttesterError;
use crate::initdata::Initdata;

/// SEV-SNP ATTESTATION_REPORT: `HOST_DATA` at 0xC0.
const SNP_HOST_DATA: usize = 0xC0;
/// TD report body: `MRCONFIGID` after TEE_TCB_SVN(16) MRSEAM(48) MRSIGNERSEAM(48)
/// SEAM_ATTRIBUTES, TD_ATTRIBUTES, XFAM (3x8) and MRTD(48).
const TD_MRCONFIGID: usize = 184;
/// Quote header; a v5 quote then has a body descriptor (type u16, size u32).
const QUOTE_HEADER: usize = 48;
const QUOTE_V5_BODY_DESCRIPTOR: usize = 6;

/// Checks the init-data field of `evidence` (as the SNP or TDX attester produced it)
/// against `init`'s digest.
pub fn check_initdata(tee: Tee, evidence: &Value, init: &Initdata) -> Result<(), AttesterError> {
    let (key, tee_name, field, len) = match tee {
        Tee::Snp => ("attestation_report", "SNP", "HOST_DATA", 32),
        Tee::Tdx => ("quote", "TDX", "MRCONFIGID", 48),
        _ => return Ok(()),
    };
    let unreadable = || AttesterError::InitdataField { tee: tee_name, field };
    let raw = evidence.get(key).and_then(Value::as_str).ok_or_else(unreadable)?;
    let raw = BASE64_STANDARD.decode(raw).map_err(|_| unreadable())?;
    let offset = match tee {
        Tee::Tdx => match raw.get(..2).map(|v| u16::from_le_bytes([v[0], v[1]])) {
            Some(4) => QUOTE_HEADER + TD_MRCONFIGID,
            Some(5) => QUOTE_HEADER + QUOTE_V5_BODY_DESCRIPTOR + TD_MRCONFIGID,
            _ => return Err(unreadable()),
        },
        _ => SNP_HOST_DATA,
    };
    let have = raw.get(offset..offset + len).ok_or_else(unreadable)?;
    if have != init.field(len).as_slice() {
        return Err(AttesterError::InitdataMismatch { tee: tee_name, field, report: hex::encode(have) });
    }
    Ok(())
}

/// Where the init-data field of a raw SNP report or TDX quote is, for tests that
/// build or patch one: `(offset, len)`.
pub fn initdata_field_range(tee: Tee, raw: &[u8]) -> Option<(usize, usize)> {
    match tee {
        Tee::Snp => Some((SNP_HOST_DATA, 32)),
        Tee::Tdx => match raw.get(..2).map(|v| u16::from_le_bytes([v[0], v[1]])) {
            Some(4) => Some((QUOTE_HEADER + TD_MRCONFIGID, 48)),
            Some(5) => Some((QUOTE_HEADER + QUOTE_V5_BODY_DESCRIPTOR + TD_MRCONFIGID, 48)),
            _ => None,
        },
        _ => None,
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    fn testdata(rel: &str) -> Vec<u8> {
        std::fs::read(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata").join(rel))
            .unwrap()
    }

    fn init() -> Initdata {
        Initdata::read_file(
            &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/initdata/initdata.toml"),
        )
        .unwrap()
    }

    /// The genuine samples were launched without init-data (fields all zeros): a guest
    /// with init-data refuses to attest with them; the same report carrying the digest
    /// passes.
    #[test]
    fn genuine_reports_with_zero_fields_refuse_this_guests_initdata() {
        let init = init();
        for (tee, rel, key) in [
            (Tee::Snp, "attestation/snp/trustee-test-report.bin", "attestation_report"),
            (Tee::Tdx, "attestation/tdx/tdx_quote", "quote"),
            (Tee::Tdx, "attestation/tdx/tdx_quote_outdated", "quote"),
        ] {
            let mut raw = testdata(rel);
            let (off, len) = initdata_field_range(tee, &raw).unwrap();
            assert!(raw[off..off + len].iter().all(|&b| b == 0), "{rel}: field not zero");
            let e = check_initdata(tee, &json!({key: BASE64_STANDARD.encode(&raw)}), &init).unwrap_err();
            assert!(matches!(e, AttesterError::InitdataMismatch { .. }), "{rel}: {e}");
            assert!(e.to_string().contains("other init-data"), "{e}");
            raw[off..off + len].copy_from_slice(&init.field(len));
            check_initdata(tee, &json!({key: BASE64_STANDARD.encode(&raw)}), &init).unwrap();
        }
        // Nothing to read: said, not guessed.
        let e = check_initdata(Tee::Snp, &json!({}), &init).unwrap_err();
        assert!(matches!(e, AttesterError::InitdataField { .. }), "{e}");
        check_initdata(Tee::Sample, &json!({}), &init).unwrap();
    }
}
