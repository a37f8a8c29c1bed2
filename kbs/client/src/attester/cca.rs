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

/// The environment variable naming a test RMM (see [`CcaAttester::with_test_rmm`]).
pub const TEST_RMM_ENV: &str = "CLOAK_CCA_TEST_RMM";
/// Largest token a test RMM may print (the broker's own cap).
const MAX_TOKEN: u64 = 64 * 1024;
/// How long a test RMM may take.
const TEST_RMM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Where tokens come from.
#[derive(Debug, Clone)]
enum Source {
    /// configfs-tsm: the realm's RMM through the kernel.
    Tsm(PathBuf),
    /// TEST ONLY: a program that signs tokens with the published CCA test keys.
    TestRmm(PathBuf),
}

/// Collects CCA realm tokens.
#[derive(Debug, Clone)]
pub struct CcaAttester {
    source: Source,
}

impl CcaAttester {
    pub fn new(tsm_root: PathBuf) -> Self {
        CcaAttester { source: Source::Tsm(tsm_root) }
    }

    /// TEST ONLY, the CCA counterpart of the `sample` attester: tokens from `program`,
    /// run as `program CHALLENGE_HEX` (the 64-byte challenge) and printing the CBOR
    /// token on stdout, instead of from an RMM. No realm hardware is public and no key
    /// belongs in this binary, so end-to-end tests of `cloak-pull --attester cca` use a
    /// program holding the published test keys; a broker trusts such tokens only if its
    /// trust-anchor store lists the test platform key. Chosen by `CLOAK_CCA_TEST_RMM`
    /// with an explicit `--attester cca` (never by `auto`), and said in the log.
    pub fn with_test_rmm(program: PathBuf) -> Self {
        tracing::warn!(
            program = %program.display(),
            "TEST ONLY: CCA tokens come from a test RMM program ({TEST_RMM_ENV}), not from realm hardware"
        );
        CcaAttester { source: Source::TestRmm(program) }
    }

    fn collect(&self, report_data: &[u8; 64]) -> Result<Value, AttesterError> {
        match &self.source {
            Source::Tsm(root) => {
                let r = tsm::get_report(root, PROVIDER, report_data, None)?;
                evidence(root, r.outblob)
            }
            Source::TestRmm(program) => evidence(program, run_test_rmm(program, report_data)?),
        }
    }
}

/// Runs a test RMM: bounded output, bounded time, its stderr in the error.
fn run_test_rmm(program: &std::path::Path, challenge: &[u8; 64]) -> Result<Vec<u8>, AttesterError> {
    use std::io::Read;
    use std::process::{Command, Stdio};
    let fail = |reason: String| AttesterError::Tsm { path: program.display().to_string(), reason };
    let mut child = Command::new(program)
        .arg(hex::encode(challenge))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| fail(format!("cannot run the test RMM: {e}")))?;
    let (Some(mut out), Some(mut err)) = (child.stdout.take(), child.stderr.take()) else {
        return Err(fail("no pipes to the test RMM".into()));
    };
    let reader = std::thread::spawn(move || {
        let mut token = Vec::new();
        let read = (&mut out).take(MAX_TOKEN + 1).read_to_end(&mut token);
        let mut text = Vec::new();
        let _ = (&mut err).take(4096).read_to_end(&mut text);
        (read.map(|_| token), String::from_utf8_lossy(&text).trim().to_owned())
    });
    let deadline = std::time::Instant::now() + TEST_RMM_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10))
            }
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(fail(format!("the test RMM did not answer within {TEST_RMM_TIMEOUT:?}")));
            }
            Err(e) => return Err(fail(format!("waiting for the test RMM: {e}"))),
        }
    };
    let (token, stderr) = reader.join().map_err(|_| fail("reading the test RMM's output failed".into()))?;
    let token = token.map_err(|e| fail(format!("reading the test RMM's output: {e}")))?;
    if !status.success() {
        return Err(fail(format!("the test RMM exited with {status}: {stderr}")));
    }
    if token.len() as u64 > MAX_TOKEN {
        return Err(fail(format!("the test RMM printed more than {MAX_TOKEN} bytes")));
    }
    Ok(token)
}

/// The evidence JSON around a token from `root` (the provider, or the test RMM).
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
    async fn a_test_rmm_gets_the_challenge_and_its_failures_are_named() {
        let dir = tempfile::tempdir().unwrap();
        // A "test RMM" that echoes the challenge it was given after a token head.
        let ok = dir.path().join("rmm-ok");
        fs::write(&ok, "#!/bin/sh\nprintf '\\331\\001\\217'; printf '%s' \"$1\"\n").unwrap();
        let bad = dir.path().join("rmm-bad");
        fs::write(&bad, "#!/bin/sh\necho 'no keys here' >&2; exit 3\n").unwrap();
        for p in [&ok, &bad] {
            use std::os::unix::fs::PermissionsExt;
            fs::set_permissions(p, fs::Permissions::from_mode(0o755)).unwrap();
        }
        let rd = [0xab; 64];
        let v = CcaAttester::with_test_rmm(ok).evidence(&rd).await.unwrap();
        let token: Vec<u8> =
            v["token"].as_array().unwrap().iter().map(|b| b.as_u64().unwrap() as u8).collect();
        assert_eq!(&token[..3], COLLECTION_TAG_HEAD);
        assert_eq!(&token[3..], hex::encode(rd).as_bytes());
        let err = CcaAttester::with_test_rmm(bad).evidence(&rd).await.unwrap_err().to_string();
        assert!(err.contains("exited") && err.contains("no keys here"), "{err}");
        let err = CcaAttester::with_test_rmm(dir.path().join("missing")).evidence(&rd).await.unwrap_err();
        assert!(err.to_string().contains("cannot run the test RMM"), "{err}");
    }

    #[tokio::test]
    async fn without_configfs_the_attester_says_where_it_looked() {
        let dir = tempfile::tempdir().unwrap();
        let a = CcaAttester::new(dir.path().join("none"));
        let err = a.evidence(&[0; 64]).await.unwrap_err();
        assert!(err.to_string().contains("none"), "{err}");
    }
}
