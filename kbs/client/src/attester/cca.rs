//! Arm CCA evidence: a realm attestation token from configfs-tsm (provider
//! `arm_cca_guest`), in CoCo attestation-agent's evidence shape.
//!
//! The 64-byte `report_data` (the runtime-data hash zero-padded to 64, as CoCo pads it)
//! is the realm challenge: RMM puts `inblob` into the realm token's challenge claim, and
//! the broker compares the two. The token (the CBOR collection of the platform and the
//! realm token) is sent as it came, after a check that it looks like one, so that a
//! guest with a misbehaving driver says so here rather than as a broker refusal.

use std::path::PathBuf;

use serde_json::{json, Value};

use super::{tsm, Attester, Tee};
use crate::error::AttesterError;
use ocicrypt::keywrap::BoxFuture;

/// The configfs-tsm provider of the Arm CCA guest driver.
pub(crate) const PROVIDER: &str = "arm_cca_guest";

/// The CBOR head of a CCA token: tag 399 (the collection of platform and realm token).
const COLLECTION_TAG_HEAD: [u8; 3] = [0xd9, 0x01, 0x8f];

/// Collects CCA realm tokens.
#[derive(Debug, Clone)]
pub struct CcaAttester {
    tsm_root: PathBuf,
}

impl CcaAttester {
    pub fn new(tsm_root: PathBuf) -> Self {
        CcaAttester { tsm_root }
    }

    fn collect(&self, report_data: &[u8; 64]) -> Result<Value, AttesterError> {
        let r = tsm::get_report(&self.tsm_root, PROVIDER, report_data, None)?;
        evidence(&self.tsm_root, r.outblob)
    }
}

/// The evidence JSON around a token from `root`'s provider.
fn evidence(root: &std::path::Path, token: Vec<u8>) -> Result<Value, AttesterError> {
    if !token.starts_with(&COLLECTION_TAG_HEAD) {
        return Err(AttesterError::Tsm {
            path: root.display().to_string(),
            reason: "outblob is not a CCA attestation token (no CBOR tag 399)".into(),
        });
    }
    Ok(json!({ "token": token }))
}

impl Attester for CcaAttester {
    fn tee(&self) -> Tee {
        Tee::Cca
    }

    fn evidence<'a>(&'a self, report_data: &'a [u8; 64]) -> BoxFuture<'a, Result<Value, AttesterError>> {
        let this = self.clone();
        let rd = *report_data;
        super::collect_blocking("CCA", move || this.collect(&rd))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::fs;

    /// A report entry as configfs shows it after the RMM answered: the provider, the
    /// token and a generation of one write.
    fn entry(dir: &std::path::Path, provider: &str, outblob: &[u8]) {
        fs::create_dir_all(dir).unwrap();
        fs::write(dir.join("provider"), format!("{provider}\n")).unwrap();
        fs::write(dir.join("outblob"), outblob).unwrap();
        fs::write(dir.join("generation"), "1\n").unwrap();
    }

    fn token() -> Vec<u8> {
        let mut t = COLLECTION_TAG_HEAD.to_vec();
        t.extend_from_slice(&[0xa0]);
        t
    }

    #[test]
    fn the_challenge_goes_to_inblob_and_the_token_comes_back_as_cocos_json() {
        let dir = tempfile::tempdir().unwrap();
        let e = dir.path().join("report/e");
        entry(&e, PROVIDER, &token());
        let mut rd = [0u8; 64];
        rd[..48].copy_from_slice(&[0x5a; 48]);
        let r = tsm::get_report_in(&e, PROVIDER, &rd, None).unwrap();
        assert_eq!(fs::read(e.join("inblob")).unwrap(), rd, "the 64-byte challenge, zero-padded");
        let v = evidence(&e, r.outblob).unwrap();
        assert_eq!(v, json!({ "token": token() }));
        assert!(v["token"].is_array(), "Trustee reads the token as Vec<u8>: a number array");
    }

    #[test]
    fn another_provider_a_raced_slot_or_a_non_token_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let rd = [1u8; 64];
        let e = dir.path().join("tdx");
        entry(&e, "tdx_guest", &token());
        let err = tsm::get_report_in(&e, PROVIDER, &rd, None).err().unwrap();
        assert!(err.to_string().contains("expected \"arm_cca_guest\""), "{err}");
        let e = dir.path().join("raced");
        entry(&e, PROVIDER, &token());
        fs::write(e.join("generation"), "2\n").unwrap();
        let err = tsm::get_report_in(&e, PROVIDER, &rd, None).err().unwrap();
        assert!(err.to_string().contains("another writer"), "{err}");
        let e = dir.path().join("junk");
        entry(&e, PROVIDER, b"not a token");
        let r = tsm::get_report_in(&e, PROVIDER, &rd, None).unwrap();
        let err = evidence(&e, r.outblob).unwrap_err();
        assert!(err.to_string().contains("tag 399"), "{err}");
    }

    #[tokio::test]
    async fn without_configfs_the_attester_says_where_it_looked() {
        let dir = tempfile::tempdir().unwrap();
        let a = CcaAttester::new(dir.path().join("none"));
        let err = a.evidence(&[0; 64]).await.unwrap_err();
        assert!(err.to_string().contains("none"), "{err}");
    }
}
