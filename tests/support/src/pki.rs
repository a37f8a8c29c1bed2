//! A throwaway certificate authority for tests of TLS peers (the broker on TLS), made
//! with the `openssl` command line in a directory: no network, no crate of ours.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Result;

use crate::process::run_bounded_ok;

/// A CA (P-256 key, self-signed, valid two days) and the server certificates it issues.
pub struct TestCa {
    pub dir: PathBuf,
    /// The CA certificate (PEM): what a client is given to trust.
    pub cert: PathBuf,
    key: PathBuf,
}

/// A server certificate and its key.
pub struct ServerCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl TestCa {
    /// Makes a CA named `name` under `dir` (files `<name>.ca.pem`, `<name>.ca.key`).
    pub fn new(dir: &Path, name: &str) -> Result<TestCa> {
        let cert = dir.join(format!("{name}.ca.pem"));
        let key = dir.join(format!("{name}.ca.key"));
        run_bounded_ok(
            Command::new("openssl")
                .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
                .args(["-days", "2", "-subj", &format!("/CN={name} test CA")])
                .args(["-addext", "basicConstraints=critical,CA:TRUE"])
                .args(["-addext", "keyUsage=critical,keyCertSign,cRLSign"])
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&cert),
        )?;
        Ok(TestCa { dir: dir.to_path_buf(), cert, key })
    }

    /// Issues a server certificate `<file>.pem`/`<file>.key` for the subjectAltName
    /// entries `sans` (e.g. `IP:127.0.0.1,DNS:localhost`), valid one day.
    pub fn issue(&self, file: &str, sans: &str) -> Result<ServerCert> {
        self.issue_for_days(file, sans, 1)
    }

    /// As [`TestCa::issue`], but expired: its notAfter is a day ago (`openssl x509
    /// -days -1`), so a TLS client refuses it as expired, not as unknown.
    pub fn issue_expired(&self, file: &str, sans: &str) -> Result<ServerCert> {
        self.issue_for_days(file, sans, -1)
    }

    fn issue_for_days(&self, file: &str, sans: &str, days: i32) -> Result<ServerCert> {
        let cert = self.dir.join(format!("{file}.pem"));
        let key = self.dir.join(format!("{file}.key"));
        let csr = self.dir.join(format!("{file}.csr"));
        let ext = self.dir.join(format!("{file}.ext"));
        std::fs::write(
            &ext,
            format!(
                "subjectAltName={sans}\nbasicConstraints=critical,CA:FALSE\n\
                 keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n"
            ),
        )?;
        run_bounded_ok(
            Command::new("openssl")
                .args(["req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"])
                .args(["-subj", &format!("/CN={file}")])
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&csr),
        )?;
        run_bounded_ok(
            Command::new("openssl")
                .args(["x509", "-req", "-days", &days.to_string(), "-sha256", "-CAcreateserial"])
                .arg("-in")
                .arg(&csr)
                .arg("-CA")
                .arg(&self.cert)
                .arg("-CAkey")
                .arg(&self.key)
                .arg("-extfile")
                .arg(&ext)
                .arg("-out")
                .arg(&cert),
        )?;
        Ok(ServerCert { cert, key })
    }
}
