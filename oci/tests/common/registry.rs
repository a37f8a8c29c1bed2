//! A real distribution registry (Debian's `docker-registry` 2.8) for tests: started
//! on a free 127.0.0.1 port with a temporary storage directory, killed on drop.
//!
//! Peers contract: if the binary is missing the test is skipped with a printed
//! reason, unless `CLOAK_REQUIRE_PEERS=1` (CI), in which case it fails.
//! Basic-auth registries need `htpasswd` from Debian's `apache2-utils`
//! (`apt-get install -y apache2-utils`) to make the bcrypt entry.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Registry {
    child: Child,
    pub port: u16,
    pub dir: tempfile::TempDir,
}

fn required() -> bool {
    std::env::var("CLOAK_REQUIRE_PEERS").is_ok_and(|v| !v.is_empty() && v != "0")
}

fn find(name: &str, fallback: &str) -> Option<PathBuf> {
    let fallback = PathBuf::from(fallback);
    if fallback.is_file() {
        return Some(fallback);
    }
    std::env::var_os("PATH")
        .and_then(|p| std::env::split_paths(&p).map(|d| d.join(name)).find(|c| c.is_file()))
}

/// Locate a peer tool, or decide to skip (returns None after printing why).
pub fn peer(name: &str, fallback: &str) -> Option<PathBuf> {
    match find(name, fallback) {
        Some(p) => Some(p),
        None if required() => panic!("{name} is required (CLOAK_REQUIRE_PEERS is set) but was not found"),
        None => {
            eprintln!(
                "SKIP: {name} not found (install it, or set CLOAK_REQUIRE_PEERS=1 to make this a failure)"
            );
            None
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

impl Registry {
    /// An anonymous registry, or None (skip).
    pub fn start() -> Option<Registry> {
        Self::start_inner(None)
    }

    /// A registry that requires HTTP basic auth for `user`/`pass`, or None (skip).
    pub fn start_with_basic_auth(user: &str, pass: &str) -> Option<Registry> {
        let htpasswd = peer("htpasswd", "/usr/bin/htpasswd")?;
        let out = Command::new(htpasswd).args(["-Bbn", user, pass]).output().expect("run htpasswd");
        assert!(out.status.success(), "htpasswd failed: {out:?}");
        Self::start_inner(Some(String::from_utf8(out.stdout).expect("utf8 htpasswd line")))
    }

    fn start_inner(htpasswd_line: Option<String>) -> Option<Registry> {
        let exe = peer("docker-registry", "/usr/bin/docker-registry")?;
        let dir = tempfile::tempdir().expect("temp dir");
        let data = dir.path().join("data");
        std::fs::create_dir_all(&data).expect("data dir");
        let auth = match htpasswd_line {
            Some(line) => {
                let path = dir.path().join("htpasswd");
                std::fs::write(&path, line).expect("write htpasswd");
                format!("auth:\n  htpasswd:\n    realm: cloak-test\n    path: {}\n", path.display())
            }
            None => String::new(),
        };
        // Port races with other tests are possible in theory; retry a few times.
        for _ in 0..5 {
            let port = free_port();
            let cfg = dir.path().join("config.yml");
            std::fs::write(
                &cfg,
                format!(
                    "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{auth}",
                    data.display()
                ),
            )
            .expect("write config");
            let log = std::fs::File::create(dir.path().join("registry.log")).expect("log file");
            let mut child = Command::new(&exe)
                .arg("serve")
                .arg(&cfg)
                .stdout(Stdio::from(log.try_clone().expect("dup log")))
                .stderr(Stdio::from(log))
                .spawn()
                .expect("spawn docker-registry");
            if wait_ready(&mut child, port) {
                return Some(Registry { child, port, dir });
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let log = std::fs::read_to_string(dir.path().join("registry.log")).unwrap_or_default();
        panic!("docker-registry did not start; log:\n{log}");
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `docker://127.0.0.1:PORT/<repo_tag>`
    pub fn docker_ref(&self, repo_tag: &str) -> String {
        format!("docker://{}/{repo_tag}", self.host())
    }

    /// Where the registry keeps the data of blob `hex` (sha256), for tamper tests.
    pub fn blob_data_path(&self, hex: &str) -> PathBuf {
        self.dir.path().join("data/docker/registry/v2/blobs/sha256").join(&hex[..2]).join(hex).join("data")
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }
}

/// Readiness wait: the port accepts connections (startup takes well under a
/// second; the bound is only there so a broken registry cannot hang the suite).
fn wait_ready(child: &mut Child, port: u16) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(20) {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
