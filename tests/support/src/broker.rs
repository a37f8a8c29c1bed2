//! `cloak-kbs serve` for tests: the built broker binary (see [`crate::bin`]) on a
//! loopback port, plain or on TLS, with its policy, resources, admin key and log in one directory.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::net::{http_get, wait_for_port};
use crate::process::{run_bounded_ok, Daemon};
use crate::workspace::bin;

/// `cloak-kbs serve` on a resource directory, for tests. Everything lives under `dir`:
/// the admin key pair (made on first use), `policy.yaml`, `resources/` (kept across a
/// restart on the same `dir`) and the log, `kbs.log`.
pub struct LocalBroker {
    pub port: u16,
    pub dir: PathBuf,
    /// On TLS: the CA bundle clients are given (`--kbs-cert`).
    pub ca: Option<PathBuf>,
    daemon: Daemon,
}

/// The broker's TLS certificate and key, and the CA its clients trust.
pub struct BrokerTls<'a> {
    pub cert: &'a Path,
    pub key: &'a Path,
    pub ca: &'a Path,
}

impl LocalBroker {
    pub fn policy_path(dir: &Path) -> PathBuf {
        dir.join("policy.yaml")
    }

    /// Starts a broker on 127.0.0.1:`port` with `policy` and waits until `/healthz`
    /// answers 200.
    pub fn start(dir: &Path, port: u16, policy: &str) -> Result<LocalBroker> {
        Self::start_with(dir, port, policy, None)
    }

    /// [`LocalBroker::start`] serving TLS (`--tls-cert`, `--tls-key`); [`LocalBroker::url`]
    /// is then `https://127.0.0.1:PORT` and the admin helpers pass `--kbs-cert`.
    pub fn start_tls(dir: &Path, port: u16, policy: &str, tls: BrokerTls<'_>) -> Result<LocalBroker> {
        Self::start_with(dir, port, policy, Some(tls))
    }

    fn start_with(dir: &Path, port: u16, policy: &str, tls: Option<BrokerTls<'_>>) -> Result<LocalBroker> {
        let admin = dir.join("admin.pem");
        if !admin.exists() {
            run_bounded_ok(
                Command::new(bin("cloak-kbs"))
                    .args(["gen-admin-key", "--out"])
                    .arg(&admin)
                    .arg("--public-out")
                    .arg(dir.join("admin.pub.pem")),
            )?;
        }
        std::fs::create_dir_all(dir.join("resources"))?;
        std::fs::write(Self::policy_path(dir), policy)?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(dir.join("kbs.log"))?;
        let mut cmd = Command::new(bin("cloak-kbs"));
        cmd.arg("serve");
        if let Some(t) = &tls {
            cmd.arg("--tls-cert").arg(t.cert).arg("--tls-key").arg(t.key);
        }
        let daemon = Daemon::spawn(
            "cloak-kbs",
            cmd.arg("--listen")
                .arg(format!("127.0.0.1:{port}"))
                .arg("--policy")
                .arg(Self::policy_path(dir))
                .arg("--resources")
                .arg(dir.join("resources"))
                .arg("--admin-public-key")
                .arg(dir.join("admin.pub.pem"))
                .env("NO_COLOR", "1")
                .stdout(log.try_clone()?)
                .stderr(log),
        )?;
        let b = LocalBroker { port, dir: dir.to_path_buf(), ca: tls.map(|t| t.ca.to_path_buf()), daemon };
        wait_for_port(port, Duration::from_secs(60))?;
        if b.ca.is_some() {
            // The port is bound only once the broker serves (TLS included).
            return Ok(b);
        }
        let start = Instant::now();
        while http_get(port, "/healthz", None).ok().map(|a| a.status) != Some(200) {
            if start.elapsed() > Duration::from_secs(60) {
                bail!("cloak-kbs on {port} never became healthy:\n{}", b.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(b)
    }

    pub fn url(&self) -> String {
        let scheme = if self.ca.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// `--kbs-cert CA` when the broker is on TLS, else nothing.
    pub fn kbs_cert_args(&self) -> Vec<std::ffi::OsString> {
        match &self.ca {
            Some(ca) => vec!["--kbs-cert".into(), ca.clone().into_os_string()],
            None => Vec::new(),
        }
    }

    pub fn admin_key(&self) -> PathBuf {
        self.dir.join("admin.pem")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("kbs.log")).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.daemon.pid()
    }

    /// Kills the broker now (a broker going down mid-test).
    pub fn stop(&mut self) {
        self.daemon.stop();
    }

    /// `cloak encrypt` of the layout `src` (`oci:DIR:TAG`) for a KEK that cloak generates
    /// and registers in this broker as `kek_uri`, pushed to `dest`.
    pub fn encrypt(&self, kek_uri: &str, src: &str, dest: &str) -> Result<()> {
        run_bounded_ok(
            Command::new(bin("cloak"))
                .args(["encrypt", "--quiet", "--recipient", kek_uri, "--kbs-url"])
                .arg(self.url())
                .arg("--kbs-admin-key")
                .arg(self.admin_key())
                .args(self.kbs_cert_args())
                .arg("--dest-tls-verify=false")
                .arg(src)
                .arg(dest),
        )?;
        Ok(())
    }

    /// Registers (or replaces) `bytes` as `uri` through the admin API
    /// (`cloak-kbs put-resource --replace`).
    pub fn put_resource(&self, uri: &str, bytes: &[u8]) -> Result<()> {
        let file = tempfile::NamedTempFile::new_in(&self.dir)?;
        std::fs::write(file.path(), bytes)?;
        run_bounded_ok(
            Command::new(bin("cloak-kbs"))
                .args(["put-resource", "--replace", "--url"])
                .arg(self.url())
                .arg("--admin-key")
                .arg(self.admin_key())
                .args(self.kbs_cert_args())
                .arg(uri)
                .arg(file.path()),
        )?;
        Ok(())
    }
}

/// The broker policy of the demo and the tests: sample evidence accepted, every
/// `default/*` resource released.
pub const ALLOW_SAMPLE: &str = "\
# TEST ONLY: sample evidence comes from no hardware.
default_policy:
  required_attestation:
    sample: {allow: true}
  released_resources: [\"default/*\"]
";
