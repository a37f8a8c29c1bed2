//! GPG simple-signing verification through the `gpg` program (GnuPG 2.2 on
//! Debian), the implementation containers/image reaches through gpgme. A
//! throw-away GNUPGHOME holds only the policy's keys, so any good signature it
//! reports was made by a trusted key; exactly one `VALIDSIG` is required.
//! Why a subprocess and not a crate: see the README (signatures section).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use crate::payload::MAX_PAYLOAD_SIZE;

/// Largest GPG signature blob accepted.
pub const MAX_GPG_SIGNATURE_SIZE: usize = 256 * 1024;

/// Why a GPG signature did not verify.
#[derive(Debug, thiserror::Error)]
pub enum GpgError {
    #[error("running gpg: {0} (is gnupg installed?)")]
    Run(String),
    #[error("none of the keys could be imported: {0}")]
    Import(String),
    #[error("signature blob of {0} bytes is too large")]
    TooLarge(usize),
    #[error("not a good signature by a trusted key (gpg: {0})")]
    Bad(String),
}

/// A verified GPG signature: the signed payload and the signing key.
#[derive(Debug, Clone)]
pub struct GpgVerified {
    pub payload: Vec<u8>,
    /// Fingerprint of the key that made the signature.
    pub fingerprint: String,
}

fn gpg(home: &Path) -> Command {
    let mut c = Command::new(std::env::var_os("CLOAK_GPG").unwrap_or_else(|| "gpg".into()));
    c.arg("--homedir").arg(home).args([
        "--batch",
        "--no-tty",
        "--quiet",
        "--no-auto-key-retrieve",
        "--no-permission-warning",
    ]);
    c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped());
    c
}

/// Verifies an OpenPGP signed message against the given keyrings (armored or binary).
pub fn verify(signature: &[u8], keyrings: &[Vec<u8>]) -> Result<GpgVerified, GpgError> {
    if signature.len() > MAX_GPG_SIGNATURE_SIZE {
        return Err(GpgError::TooLarge(signature.len()));
    }
    let home =
        tempfile::Builder::new().prefix("cloak-gpg-").tempdir().map_err(|e| GpgError::Run(e.to_string()))?;
    let run = |e: std::io::Error| GpgError::Run(e.to_string());
    let mut imported = 0;
    let mut import_errors = Vec::new();
    for ring in keyrings {
        let mut child = gpg(home.path()).arg("--import").stdin(Stdio::piped()).spawn().map_err(run)?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(ring).map_err(run)?;
        }
        let out = child.wait_with_output().map_err(run)?;
        if out.status.success() {
            imported += 1;
        } else {
            import_errors.push(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
    }
    if imported == 0 {
        return Err(GpgError::Import(import_errors.join("; ")));
    }
    let sig_path = home.path().join("signature");
    let payload_path = home.path().join("payload");
    let status_path = home.path().join("status");
    std::fs::write(&sig_path, signature).map_err(run)?;
    let out = gpg(home.path())
        .args(["--trust-model", "always", "--status-file"])
        .arg(&status_path)
        .arg("--output")
        .arg(&payload_path)
        .arg("--decrypt")
        .arg(&sig_path)
        .output()
        .map_err(run)?;
    let status = std::fs::read_to_string(&status_path).unwrap_or_default();
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    let validsig: Vec<&str> = status.lines().filter_map(|l| l.strip_prefix("[GNUPG:] VALIDSIG ")).collect();
    let bad = status.lines().any(|l| {
        l.starts_with("[GNUPG:] BADSIG")
            || l.starts_with("[GNUPG:] ERRSIG")
            || l.starts_with("[GNUPG:] EXPKEYSIG")
            || l.starts_with("[GNUPG:] REVKEYSIG")
    });
    if !out.status.success() || bad || validsig.len() != 1 {
        let why = if stderr.is_empty() { format!("{} valid signatures", validsig.len()) } else { stderr };
        return Err(GpgError::Bad(why));
    }
    let fingerprint = validsig[0].split_whitespace().next().unwrap_or_default().to_string();
    let meta = std::fs::metadata(&payload_path).map_err(run)?;
    if meta.len() > MAX_PAYLOAD_SIZE as u64 {
        return Err(GpgError::Bad(format!("signed payload of {} bytes is too large", meta.len())));
    }
    let payload = std::fs::read(&payload_path).map_err(run)?;
    Ok(GpgVerified { payload, fingerprint })
}
