//! Shared helpers for cloak's end-to-end tests: find the workspace binaries and
//! the real peers (docker-registry, skopeo 1.9.3, skopeo 1.18), start a private
//! registry on a free loopback port, and compare layers.
//!
//! A missing peer skips a test with a printed reason, unless `CLOAK_REQUIRE_PEERS=1`
//! (set by `ci/test.sh`), where it fails: CI must never pass by skipping.

use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

/// The workspace root (this crate lives in `<root>/tests`).
pub fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.parent().map(Path::to_path_buf).unwrap_or(here)
}

/// `target/<profile>` of the running test binary (`.../target/debug/deps/x` → `.../target/debug`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| workspace_root().join("target/debug"))
}

/// Path of a workspace binary (`cloak`, `cloak-pull`, `cloak-kbs`, `cloak-keyprovider`).
/// `ci/test.sh` builds all of them before the tests run.
pub fn bin(name: &str) -> PathBuf {
    let p = target_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (ci/test.sh does)",
        p.display()
    );
    p
}

fn peers_required() -> bool {
    std::env::var("CLOAK_REQUIRE_PEERS").map(|v| v == "1").unwrap_or(false)
}

/// Returns `Some(path)` for a peer, `None` to skip (printing why), or panics in CI.
fn peer(path: PathBuf, what: &str) -> Option<PathBuf> {
    if path.exists() {
        return Some(path);
    }
    let msg = format!("{what} not found at {} (run ci/install-peers.sh)", path.display());
    assert!(!peers_required(), "{msg}; CLOAK_REQUIRE_PEERS=1 forbids skipping");
    eprintln!("SKIP: {msg}");
    None
}

fn which(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join(name)).find(|p| p.exists()))
        .unwrap_or_else(|| PathBuf::from(format!("/usr/bin/{name}")))
}

fn peers_dir() -> PathBuf {
    std::env::var_os("CLOAK_PEERS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".work/peers"))
}

/// Debian bookworm's skopeo 1.9.3 (ocicrypt 1.0.3: JWE only).
pub fn skopeo_193() -> Option<PathBuf> {
    peer(which("skopeo"), "skopeo 1.9.3")
}

/// skopeo 1.18 (ocicrypt 1.1.10: JWE and keyprovider), unpacked from trixie.
pub fn skopeo_118() -> Option<PathBuf> {
    peer(peers_dir().join("bin/skopeo-1.18"), "skopeo 1.18")
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(0)
}

/// Waits until `127.0.0.1:port` accepts connections.
pub fn wait_for_port(port: u16, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("nothing listening on 127.0.0.1:{port} after {timeout:?}")
}

/// A child process killed when dropped.
pub struct Daemon {
    child: Child,
    pub name: String,
}

impl Daemon {
    pub fn spawn(name: &str, cmd: &mut Command) -> Result<Daemon> {
        let child = cmd.stdin(Stdio::null()).spawn().with_context(|| format!("starting {name}"))?;
        Ok(Daemon { child, name: name.to_string() })
    }
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    /// Stops the process now (the registry or broker going down mid-test).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Upper bound for one command; generous because the machine is small and shared.
pub const CMD_LIMIT: Duration = Duration::from_secs(180);

/// What a finished command produced.
pub struct Ran {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Ran {
    pub fn ok(&self) -> bool {
        self.status.success()
    }
    pub fn describe(&self) -> String {
        format!(
            "exit {} after {:?}\nstdout: {}\nstderr: {}",
            self.status,
            self.elapsed,
            String::from_utf8_lossy(&self.stdout),
            self.stderr
        )
    }
}

/// Runs `cmd` to completion, killing it after `limit` (a hung pull must fail the
/// test, not the CI job). Output is drained on threads so a full pipe cannot stall it.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> Result<Ran> {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let mut so = child.stdout.take().context("no stdout pipe")?;
    let mut se = child.stderr.take().context("no stderr pipe")?;
    let t_out = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = so.read_to_end(&mut b);
        b
    });
    let t_err = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = se.read_to_end(&mut b);
        b
    });
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{cmd:?} still running after {limit:?}: killed");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = t_out.join().unwrap_or_default();
    let stderr = String::from_utf8_lossy(&t_err.join().unwrap_or_default()).into_owned();
    Ok(Ran { status, stdout, stderr, elapsed: start.elapsed() })
}

/// [`run_bounded`] with [`CMD_LIMIT`], failing unless the command succeeded.
pub fn run_bounded_ok(cmd: &mut Command) -> Result<Ran> {
    let r = run_bounded(cmd, CMD_LIMIT)?;
    ensure!(r.ok(), "{cmd:?} failed: {}", r.describe());
    Ok(r)
}

/// `cloak-kbs serve` on a resource directory, for tests. Everything lives under `dir`:
/// the admin key pair (made on first use), `policy.yaml`, `resources/` (kept across a
/// restart on the same `dir`) and the log, `kbs.log`.
pub struct LocalBroker {
    pub port: u16,
    pub dir: PathBuf,
    daemon: Daemon,
}

impl LocalBroker {
    pub fn policy_path(dir: &Path) -> PathBuf {
        dir.join("policy.yaml")
    }

    /// Starts a broker on 127.0.0.1:`port` with `policy` and waits until `/healthz`
    /// answers 200.
    pub fn start(dir: &Path, port: u16, policy: &str) -> Result<LocalBroker> {
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
        let daemon = Daemon::spawn(
            "cloak-kbs",
            Command::new(bin("cloak-kbs"))
                .arg("serve")
                .arg("--listen")
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
        let b = LocalBroker { port, dir: dir.to_path_buf(), daemon };
        wait_for_port(port, Duration::from_secs(60))?;
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
        format!("http://127.0.0.1:{}", self.port)
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

/// An answer to [`http_get`].
pub struct HttpAnswer {
    pub status: u16,
    pub body: Vec<u8>,
}

/// A plain HTTP/1.0 `GET path` on 127.0.0.1:`port` (metrics, health, registry
/// manifests, cloak-cdh's REST endpoint), with an `Accept` header when given.
pub fn http_get(port: u16, path: &str, accept: Option<&str>) -> Result<HttpAnswer> {
    use std::io::Write;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port))
        .with_context(|| format!("connecting to 127.0.0.1:{port}"))?;
    s.set_read_timeout(Some(Duration::from_secs(60)))?;
    let accept = accept.map(|a| format!("Accept: {a}\r\n")).unwrap_or_default();
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\n{accept}Connection: close\r\n\r\n")?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("HTTP answer without a header/body separator")?;
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("bad status line in {head:?}"))?;
    Ok(HttpAnswer { status, body: raw[split + 4..].to_vec() })
}

/// A private distribution registry (Debian's docker-registry 2.8) on a free port.
pub struct Registry {
    pub port: u16,
    _dir: tempfile::TempDir,
    _daemon: Daemon,
}

impl Registry {
    /// Starts a registry, or `None` to skip when docker-registry is missing outside CI.
    pub fn start() -> Option<Registry> {
        let exe = peer(which("docker-registry"), "docker-registry")?;
        match Self::start_with(&exe) {
            Ok(r) => Some(r),
            Err(e) => panic!("starting docker-registry: {e:#}"),
        }
    }

    fn start_with(exe: &Path) -> Result<Registry> {
        let dir = tempfile::tempdir()?;
        let port = free_port();
        let cfg = dir.path().join("config.yml");
        std::fs::write(
            &cfg,
            format!(
                "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.path().join("data").display()
            ),
        )?;
        let log = std::fs::File::create(dir.path().join("registry.log"))?;
        let daemon = Daemon::spawn(
            "docker-registry",
            Command::new(exe).arg("serve").arg(&cfg).stdout(log.try_clone()?).stderr(log),
        )?;
        wait_for_port(port, Duration::from_secs(15))?;
        Ok(Registry { port, _dir: dir, _daemon: daemon })
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
        count(&self._dir.path().join("data/docker/registry/v2/blobs"))
    }

    /// `127.0.0.1:PORT`
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `docker://127.0.0.1:PORT/<repo_tag>`
    pub fn docker_ref(&self, repo_tag: &str) -> String {
        format!("docker://{}/{repo_tag}", self.host())
    }
}

/// Runs a command, returning its output; never panics on a non-zero exit.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    Ok(out)
}

/// Runs a command and fails with its stderr when it exits non-zero.
pub fn run_ok(cmd: &mut Command) -> Result<Output> {
    let out = run(cmd)?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// Copies a directory tree (for copying golden layouts into a temp dir).
pub fn copy_tree(src: &Path, dst: &Path) -> Result<()> {
    std::fs::create_dir_all(dst)?;
    for entry in std::fs::read_dir(src).with_context(|| format!("reading {}", src.display()))? {
        let entry = entry?;
        let to = dst.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &to)?;
        } else {
            std::fs::copy(entry.path(), &to)?;
        }
    }
    Ok(())
}

/// The manifest of tag `tag` in an OCI layout (following index.json; one level).
pub fn layout_manifest(dir: &Path, tag: &str) -> Result<serde_json::Value> {
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(dir.join("index.json"))?)?;
    let entries = index["manifests"].as_array().context("index.json has no manifests")?;
    let entry = entries
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .with_context(|| format!("tag {tag} not in {}", dir.display()))?;
    let digest = entry["digest"].as_str().context("entry without digest")?;
    blob_json(dir, digest)
}

/// A JSON blob of an OCI layout by digest.
pub fn blob_json(dir: &Path, digest: &str) -> Result<serde_json::Value> {
    Ok(serde_json::from_slice(&std::fs::read(blob_path(dir, digest))?)?)
}

/// `blobs/<alg>/<hex>` of a layout.
pub fn blob_path(dir: &Path, digest: &str) -> PathBuf {
    let (alg, hex) = digest.split_once(':').unwrap_or(("sha256", digest));
    dir.join("blobs").join(alg).join(hex)
}

/// `sha256:<hex>` of bytes.
pub fn sha256_digest(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    format!("sha256:{}", hex::encode(sha2::Sha256::digest(bytes)))
}

/// The layer digests listed by a manifest.
pub fn layer_digests(manifest: &serde_json::Value) -> Vec<String> {
    manifest["layers"]
        .as_array()
        .map(|ls| ls.iter().filter_map(|l| l["digest"].as_str().map(String::from)).collect())
        .unwrap_or_default()
}

/// Lists every path under `dir` (relative), to prove a failed run left nothing behind.
pub fn list_tree(dir: &Path) -> Vec<PathBuf> {
    fn walk(base: &Path, d: &Path, out: &mut Vec<PathBuf>) {
        if let Ok(rd) = std::fs::read_dir(d) {
            for e in rd.flatten() {
                let p = e.path();
                out.push(p.strip_prefix(base).map(Path::to_path_buf).unwrap_or_else(|_| p.clone()));
                if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                    walk(base, &p, out);
                }
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out.sort();
    out
}
