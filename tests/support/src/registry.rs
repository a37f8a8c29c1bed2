//! A real distribution registry (Debian's `docker-registry` 2.8) for tests: started
//! on a free 127.0.0.1 port with a temporary storage directory, killed on drop. The one
//! launcher every crate's tests use.
//!
//! Basic-auth registries need `htpasswd` from Debian's `apache2-utils` to make the
//! bcrypt entry; it is a peer like the registry itself.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};

use crate::layout::sha256_digest;
use crate::net::{free_port, http_get};
use crate::peers::{peer, which};
use crate::process::Daemon;

/// A running registry; its storage and log stay reachable for tamper and
/// access-log tests.
pub struct Registry {
    pub port: u16,
    dir: tempfile::TempDir,
    _daemon: Daemon,
}

/// How a registry is started.
struct Setup {
    /// An htpasswd line: the registry then requires basic auth.
    htpasswd: Option<String>,
    /// `info` logs one line per request (the access log); `warn` otherwise.
    log_level: &'static str,
    /// Serve TLS with this certificate and key (PEM files).
    tls: Option<(PathBuf, PathBuf)>,
}

impl Registry {
    /// An anonymous registry, or `None` to skip when docker-registry is missing
    /// outside CI.
    pub fn start() -> Option<Registry> {
        Self::start_setup(Setup { htpasswd: None, log_level: "warn", tls: None })
    }

    /// An anonymous registry that logs every request ([`Registry::log`]), so a test
    /// can prove which blobs were fetched.
    pub fn start_with_access_log() -> Option<Registry> {
        Self::start_setup(Setup { htpasswd: None, log_level: "info", tls: None })
    }

    /// A registry that requires HTTP basic auth for `user`/`pass`, or `None` (skip).
    pub fn start_with_basic_auth(user: &str, pass: &str) -> Option<Registry> {
        let line = htpasswd_line(user, pass)?;
        Self::start_setup(Setup { htpasswd: Some(line), log_level: "warn", tls: None })
    }

    /// A private registry as production has them: HTTPS with `cert` (issued by a
    /// test CA), HTTP basic auth for `user`/`pass` (htpasswd), and the access log
    /// on. `None` (skip) when a peer is missing outside CI.
    pub fn start_private(user: &str, pass: &str, cert: &crate::pki::ServerCert) -> Option<Registry> {
        let line = htpasswd_line(user, pass)?;
        Self::start_setup(Setup {
            htpasswd: Some(line),
            log_level: "info",
            tls: Some((cert.cert.clone(), cert.key.clone())),
        })
    }

    fn start_setup(setup: Setup) -> Option<Registry> {
        let exe = peer(which("docker-registry"), "docker-registry")?;
        match Self::launch(&exe, &setup) {
            Ok(r) => Some(r),
            Err(e) => panic!("starting docker-registry: {e:#}"),
        }
    }

    fn launch(exe: &Path, setup: &Setup) -> Result<Registry> {
        let dir = tempfile::tempdir()?;
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data)?;
        let auth = match &setup.htpasswd {
            Some(line) => {
                let path = dir.path().join("htpasswd");
                std::fs::write(&path, line)?;
                format!("auth:\n  htpasswd:\n    realm: cloak-test\n    path: {}\n", path.display())
            }
            None => String::new(),
        };
        let tls = match &setup.tls {
            Some((cert, key)) => {
                format!("  tls:\n    certificate: {}\n    key: {}\n", cert.display(), key.display())
            }
            None => String::new(),
        };
        let cfg = dir.path().join("config.yml");
        let log_path = dir.path().join("registry.log");
        // Another process may take the free port before the registry binds it: retry.
        for _ in 0..5 {
            let port = free_port();
            std::fs::write(
                &cfg,
                format!(
                    "version: 0.1\nlog:\n  level: {}\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{tls}{auth}",
                    setup.log_level,
                    data.display()
                ),
            )?;
            let log = std::fs::File::create(&log_path)?;
            let mut daemon = Daemon::spawn(
                "docker-registry",
                Command::new(exe).arg("serve").arg(&cfg).stdout(log.try_clone()?).stderr(log),
            )?;
            if wait_ready(&mut daemon, port) {
                return Ok(Registry { port, dir, _daemon: daemon });
            }
        }
        let log = std::fs::read_to_string(&log_path).unwrap_or_default();
        anyhow::bail!("docker-registry did not start; log:\n{log}")
    }

    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `docker://127.0.0.1:PORT/<repo_tag>`
    pub fn docker_ref(&self, repo_tag: &str) -> String {
        format!("docker://{}/{repo_tag}", self.host())
    }

    /// The registry's temporary directory (config, storage under `data/`, log).
    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    /// Where the filesystem driver keeps the bytes of a blob (`sha256:<hex>` or the
    /// bare hex), for tamper tests.
    pub fn blob_data(&self, digest: &str) -> PathBuf {
        let hex = digest.trim_start_matches("sha256:");
        self.blobs_dir().join("sha256").join(hex.get(..2).unwrap_or("00")).join(hex).join("data")
    }

    fn blobs_dir(&self) -> PathBuf {
        self.dir.path().join("data/docker/registry/v2/blobs")
    }

    /// How many blobs the registry stores (in any repository).
    pub fn blob_count(&self) -> usize {
        fn count(dir: &Path) -> usize {
            let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
            entries
                .flatten()
                .map(|e| {
                    let p = e.path();
                    if p.is_dir() {
                        count(&p)
                    } else {
                        usize::from(e.file_name() == "data")
                    }
                })
                .sum()
        }
        count(&self.blobs_dir())
    }

    /// The registry's log so far (one line per request with
    /// [`Registry::start_with_access_log`]).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("registry.log")).unwrap_or_default()
    }

    /// The raw OCI manifest `repo:reference` and the digest of its bytes.
    pub fn manifest(&self, repo: &str, reference: &str) -> Result<(String, Vec<u8>)> {
        let a = http_get(
            self.port,
            &format!("/v2/{repo}/manifests/{reference}"),
            Some("application/vnd.oci.image.manifest.v1+json"),
        )?;
        ensure!(a.status == 200, "registry answered {} for {repo}:{reference}", a.status);
        Ok((sha256_digest(&a.body), a.body))
    }
}

/// A bcrypt htpasswd line for `user`/`pass` (`htpasswd -B`; the password goes
/// through stdin, never argv), or `None` (skip) without apache2-utils.
fn htpasswd_line(user: &str, pass: &str) -> Option<String> {
    use std::io::Write as _;
    let htpasswd = peer(which("htpasswd"), "htpasswd (apache2-utils)")?;
    let mut child = Command::new(htpasswd)
        .args(["-Bin", user])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("run htpasswd");
    child.stdin.take().expect("stdin").write_all(pass.as_bytes()).expect("write to htpasswd");
    let out = child.wait_with_output().expect("wait for htpasswd");
    assert!(out.status.success(), "htpasswd failed: {:?}", out.status);
    Some(String::from_utf8(out.stdout).expect("utf8 htpasswd line"))
}

/// Readiness: the port accepts connections (startup takes well under a second; the
/// bound only keeps a broken registry from hanging the suite). False if the process
/// died first (the port was taken) or the bound passed.
fn wait_ready(daemon: &mut Daemon, port: u16) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if daemon.exited() {
            return false;
        }
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}
