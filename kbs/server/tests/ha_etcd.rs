//! cloak-kbs replicas sharing their state in a real etcd cluster (Debian's etcd 3.4,
//! installed by ci/install-peers.sh): 3 etcd members and 3 `cloak-kbs serve` processes
//! on loopback, guests spread over the replicas by a round-robin TCP balancer (each new
//! connection goes to the next live replica: no affinity), nodes killed with SIGKILL.

#![allow(clippy::unwrap_used)]

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use common::*;
use serde_json::json;
use test_support::free_port;

const BIN: &str = env!("CARGO_BIN_EXE_cloak-kbs");

/// One cluster at a time within this binary (`cargo test` runs tests on threads;
/// nextest runs them one at a time through the `etcd-cluster` group in .config/nextest.toml).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn etcd_bin() -> PathBuf {
    let p = std::env::var_os("CLOAK_ETCD").map(PathBuf::from).unwrap_or_else(|| "/usr/bin/etcd".into());
    assert!(
        p.exists(),
        "etcd is not installed ({}): run ci/install-peers.sh (Debian etcd-server)",
        p.display()
    );
    p
}

/// Where a test's etcd members (and its brokers' files) live: tmpfs when the machine has
/// one. Each member preallocates a 64 MiB WAL segment and fsyncs every raft entry; on a
/// shared disk that is nearly full or busy, a cluster on disk may not form within the
/// tests' deadlines (CI once saw all five tests time out waiting for healthy members).
/// Durability across a machine crash is not what these tests check; kills and restarts
/// of members keep their data on tmpfs as on disk.
fn etcd_tempdir() -> tempfile::TempDir {
    let shm = Path::new("/dev/shm");
    if shm.is_dir() {
        if let Ok(d) = tempfile::Builder::new().prefix("cloak-etcd-test-").tempdir_in(shm) {
            return d;
        }
    }
    tempfile::tempdir().unwrap()
}

/// The last lines of a log, for a failure message that must say why a peer did not come up.
fn log_tail(path: &Path) -> String {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| format!("(no log at {}: {e})", path.display()));
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

struct Member {
    name: String,
    client: u16,
    peer: u16,
    dir: PathBuf,
    child: Option<Child>,
}

struct Etcd {
    members: Vec<Member>,
    cluster: String,
}

impl Etcd {
    fn start(root: &Path, n: usize) -> Self {
        let mut members: Vec<Member> = (0..n)
            .map(|i| Member {
                name: format!("m{i}"),
                client: free_port(),
                peer: free_port(),
                dir: root.join(format!("etcd-m{i}")),
                child: None,
            })
            .collect();
        let cluster = members
            .iter()
            .map(|m| format!("{}=http://127.0.0.1:{}", m.name, m.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut e = Self { members: Vec::new(), cluster };
        for m in &mut members {
            m.child = Some(e.spawn(m, "new"));
        }
        e.members = members;
        e.wait_healthy();
        e
    }

    fn spawn(&self, m: &Member, state: &str) -> Child {
        let log = std::fs::File::create(m.dir.with_extension("log")).unwrap();
        Command::new(etcd_bin())
            .args(["--name", &m.name, "--data-dir"])
            .arg(&m.dir)
            .args([
                "--listen-client-urls",
                &format!("http://127.0.0.1:{}", m.client),
                "--advertise-client-urls",
                &format!("http://127.0.0.1:{}", m.client),
                "--listen-peer-urls",
                &format!("http://127.0.0.1:{}", m.peer),
                "--initial-advertise-peer-urls",
                &format!("http://127.0.0.1:{}", m.peer),
                "--initial-cluster",
                &self.cluster,
                "--initial-cluster-state",
                state,
                "--initial-cluster-token",
                "cloak-test",
                // Loopback: elect quickly after a kill.
                "--heartbeat-interval",
                "50",
                "--election-timeout",
                "500",
            ])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap()
    }

    fn endpoints(&self) -> String {
        self.members.iter().map(|m| format!("127.0.0.1:{}", m.client)).collect::<Vec<_>>().join(",")
    }

    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    fn restart(&mut self, i: usize) {
        let c = self.spawn(&self.members[i], "existing");
        self.members[i].child = Some(c);
    }

    /// Every running member answers a linearizable read.
    fn wait_healthy(&self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        for m in self.members.iter().filter(|m| m.child.is_some()) {
            loop {
                let ok = Command::new("etcdctl")
                    .env("ETCDCTL_API", "3")
                    .args([
                        "--endpoints",
                        &format!("127.0.0.1:{}", m.client),
                        "--command-timeout=1s",
                        "get",
                        "x",
                    ])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false);
                if ok {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "etcd member {} did not become healthy within 30 s; the end of its log ({}):\n{}",
                    m.name,
                    m.dir.with_extension("log").display(),
                    log_tail(&m.dir.with_extension("log"))
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

impl Drop for Etcd {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}

struct Replica {
    port: u16,
    args: Vec<String>,
    log: PathBuf,
    child: Option<Child>,
}

impl Replica {
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        self.child = Some(
            Command::new(BIN)
                .arg("serve")
                .args(&self.args)
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap(),
        );
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }

    async fn wait_ready(&self) {
        let http = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(r) = http.get(format!("{}/readyz", self.url())).send().await {
                if r.status() == 200 {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "replica {} not ready: {}",
                self.port,
                std::fs::read_to_string(&self.log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A round-robin TCP balancer: each accepted connection goes to the next replica that
/// accepts a connection (a dead one is skipped).
async fn balancer(backends: Vec<u16>) -> SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let next = Arc::new(AtomicUsize::new(0));
    tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = l.accept().await else { continue };
            let (backends, next) = (backends.clone(), next.clone());
            tokio::spawn(async move {
                for _ in 0..backends.len() {
                    let i = next.fetch_add(1, Ordering::Relaxed) % backends.len();
                    if let Ok(mut out) = tokio::net::TcpStream::connect(("127.0.0.1", backends[i])).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                        return;
                    }
                }
            });
        }
    });
    addr
}

struct Setup {
    dir: tempfile::TempDir,
    etcd: Etcd,
    replicas: Vec<Replica>,
    admin_key: openssl::pkey::PKey<openssl::pkey::Private>,
    prefix: String,
}

impl Setup {
    /// 3 etcd members and 3 replicas; replica i gets `stale[i]` as --store-stale-secs.
    async fn start(stale: [u64; 3]) -> Self {
        let dir = etcd_tempdir();
        let etcd = Etcd::start(dir.path(), 3);
        std::fs::write(dir.path().join("policy.yaml"), SAMPLE_POLICY).unwrap();
        let admin_key = openssl::pkey::PKey::generate_ed25519().unwrap();
        std::fs::write(dir.path().join("admin.pub.pem"), admin_key.public_key_to_pem().unwrap()).unwrap();
        let mut mk = [0u8; 32];
        openssl::rand::rand_bytes(&mut mk).unwrap();
        std::fs::write(dir.path().join("master.key"), mk).unwrap();
        let prefix = "/cloak-test".to_string();
        let store = format!("etcd://{}{prefix}", etcd.endpoints());
        let mut replicas = Vec::new();
        for (i, stale) in stale.iter().enumerate() {
            let port = free_port();
            let p = |f: &str| dir.path().join(f).to_string_lossy().into_owned();
            let args = vec![
                "--listen".into(),
                format!("127.0.0.1:{port}"),
                "--store".into(),
                store.clone(),
                "--master-key".into(),
                p("master.key"),
                "--policy".into(),
                p("policy.yaml"),
                "--admin-public-key".into(),
                p("admin.pub.pem"),
                "--store-stale-secs".into(),
                stale.to_string(),
            ];
            let mut r = Replica { port, args, log: dir.path().join(format!("replica{i}.log")), child: None };
            r.spawn();
            replicas.push(r);
        }
        for r in &replicas {
            r.wait_ready().await;
        }
        Self { dir, etcd, replicas, admin_key, prefix }
    }

    fn admin(&self) -> String {
        admin_jwt(&self.admin_key, good_admin_claims())
    }

    async fn put(&self, replica: usize, path: &str, data: &[u8], create_only: bool) -> u16 {
        let mut r = reqwest::Client::new()
            .post(format!("{}/kbs/v0/resource/{path}", self.replicas[replica].url()))
            .bearer_auth(self.admin())
            .body(data.to_vec());
        if create_only {
            r = r.header("if-none-match", "*");
        }
        r.send().await.unwrap().status().as_u16()
    }

    async fn set_policy(&self, replica: usize, text: &str) -> u16 {
        let enc = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(text);
        reqwest::Client::new()
            .post(format!("{}/kbs/v0/resource-policy", self.replicas[replica].url()))
            .bearer_auth(self.admin())
            .json(&json!({ "policy": enc }))
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    async fn readyz(&self, replica: usize) -> u16 {
        match reqwest::Client::new()
            .get(format!("{}/readyz", self.replicas[replica].url()))
            .timeout(Duration::from_secs(3))
            .send()
            .await
        {
            Ok(r) => r.status().as_u16(),
            Err(_) => 0,
        }
    }
}

/// /auth on replica a, /attest on replica b: the token.
async fn attest_across(s: &Setup, a: usize, b: usize) -> (Rcar, String) {
    let mut rc = auth(&s.replicas[a].url(), "sample", json!({})).await;
    rc.url = s.replicas[b].url();
    let (st, v) = rc.attest(sample_evidence(&rc.report_data())).await;
    assert_eq!(st, 200, "{v}");
    (rc, v["token"].as_str().unwrap().to_string())
}

fn sample_attester() -> Arc<dyn kbs_client::Attester> {
    let opts = kbs_client::AttesterOptions { allow_sample: true, ..Default::default() };
    kbs_client::make_attester(kbs_client::AttesterKind::Sample, &opts).unwrap()
}

/// Guests through the balancer until `stop`: (successes, failures as text).
fn spawn_load(
    url: String,
    uri: &str,
    want: Vec<u8>,
    workers: usize,
) -> (Arc<std::sync::atomic::AtomicBool>, tokio::task::JoinHandle<(usize, Vec<String>)>) {
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let uri: kbs_client::ResourceUri = uri.parse().unwrap();
    let st = stop.clone();
    let h = tokio::spawn(async move {
        let mut tasks = Vec::new();
        for _ in 0..workers {
            let (url, uri, want, st) = (url.clone(), uri.clone(), want.clone(), st.clone());
            tasks.push(tokio::spawn(async move {
                let (mut ok, mut bad) = (0usize, Vec::new());
                while !st.load(Ordering::Relaxed) {
                    // A fresh client (fresh connections) per pull: the balancer spreads them.
                    let c = kbs_client::KbsClient::new(
                        &url,
                        sample_attester(),
                        kbs_client::ClientConfig::default(),
                    )
                    .unwrap();
                    match c.get_resource(&uri).await {
                        Ok(v) if v[..] == want[..] => ok += 1,
                        Ok(_) => bad.push("resource bytes changed".into()),
                        Err(e) => bad.push(format!("{e:#}")),
                    }
                }
                (ok, bad)
            }));
        }
        let (mut ok, mut bad) = (0, Vec::new());
        for t in tasks {
            let (o, b) = t.await.unwrap();
            ok += o;
            bad.extend(b);
        }
        (ok, bad)
    });
    (stop, h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_share_state_and_survive_node_loss() {
    let _one = SERIAL.lock().await;
    let mut s = Setup::start([0, 0, 0]).await;
    let mut kek = [0u8; 32];
    openssl::rand::rand_bytes(&mut kek).unwrap();

    // An admin write on replica 1 is served by replica 3; create-only is one transaction
    // for the whole cluster.
    assert_eq!(s.put(0, "default/image-kek/ha", &kek, true).await, 200);
    assert_eq!(s.put(1, "default/image-kek/ha", b"another kek", true).await, 412);
    let (rc, token) = attest_across(&s, 0, 1).await;
    let mut rc3 = rc;
    rc3.url = s.replicas[2].url();
    let deadline = Instant::now() + Duration::from_secs(1);
    let (st, v) = loop {
        let (st, v) = rc3.get(Some(&token), "default/image-kek/ha").await;
        if st == 200 || Instant::now() > deadline {
            break (st, v);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(st, 200, "{v}");
    assert_eq!(rc3.tee_key.decrypt(&v), kek);
    // The session cookie alone (no bearer) works on a third replica: the attested
    // session is in etcd.
    let (st, v) = rc3.get(None, "default/image-kek/ha").await;
    assert_eq!(st, 200, "{v}");
    // A replayed /attest, on yet another replica, answers the token the session got.
    rc3.url = s.replicas[0].url();
    let (st, v) = rc3.attest(sample_evidence(&rc3.report_data())).await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(v["token"].as_str(), Some(token.as_str()), "a replay must not mint a second token");
    let (st, v) = rc3.get(None, "default/image-kek/ha").await;
    assert_eq!(st, 200, "{v}");
    // A session cookie sealed by a broker with another token key opens on no replica.
    let other = start(SAMPLE_POLICY, |_, _| {}).await;
    let mut foreign = auth(&other.url, "sample", json!({})).await;
    for r in &s.replicas {
        foreign.url = r.url();
        let (st, v) = foreign.attest(sample_evidence(&foreign.report_data())).await;
        assert_eq!(st, 401, "{v}");
        assert!(v["detail"].as_str().unwrap().contains("another token key"), "{v}");
    }

    // Guests through a round-robin balancer: cloak's client and the independent
    // Python client (a new connection per request, so /auth, /attest and the resource
    // request land on different replicas).
    let lb = balancer(s.replicas.iter().map(|r| r.port).collect()).await;
    let lb_url = format!("http://{lb}");
    let c =
        kbs_client::KbsClient::new(&lb_url, sample_attester(), kbs_client::ClientConfig::default()).unwrap();
    assert_eq!(&c.get_resource(&"default/image-kek/ha".parse().unwrap()).await.unwrap()[..], &kek[..]);
    let py_ok =
        Command::new("python3").args(["-c", "import cryptography"]).status().is_ok_and(|s| s.success());
    if py_ok {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/independent_client.py");
        let (u, k) = (lb_url.clone(), hex::encode(kek));
        let out = tokio::task::spawn_blocking(move || {
            Command::new("python3").args([script, &u, "default/image-kek/ha", &k]).output().unwrap()
        })
        .await
        .unwrap();
        assert!(
            out.status.success(),
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    } else {
        assert!(!test_support::peers_required(), "python3-cryptography is required");
        eprintln!("SKIP (python part): python3-cryptography is not installed");
    }

    // A policy change through replica 2 denies on every replica within 1 s.
    let tokens: Vec<(Rcar, String)> = {
        let mut v = Vec::new();
        for i in 0..3 {
            v.push(attest_across(&s, i, i).await);
        }
        v
    };
    let t0 = Instant::now();
    assert_eq!(s.set_policy(1, &SAMPLE_POLICY.replace("allow: true", "allow: false")).await, 200);
    for (i, (rc, token)) in tokens.iter().enumerate() {
        loop {
            let (st, _) = rc.get(Some(token), "default/image-kek/ha").await;
            if st == 401 {
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(1),
                "replica {i} still serves 1 s after the policy change"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    assert!(t0.elapsed() < Duration::from_secs(1));
    assert_eq!(s.set_policy(2, SAMPLE_POLICY).await, 200);
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Steady load; kill -9 a replica and bring it back, then an etcd member and back.
    let (stop, load) = spawn_load(lb_url.clone(), "default/image-kek/ha", kek.to_vec(), 4);
    tokio::time::sleep(Duration::from_millis(700)).await;
    // A handshake half done on the replica that dies completes on another.
    let mut pending = auth(&s.replicas[1].url(), "sample", json!({})).await;
    s.replicas[1].kill();
    pending.url = s.replicas[2].url();
    let (st, v) = pending.attest(sample_evidence(&pending.report_data())).await;
    assert_eq!(st, 200, "/attest after the /auth replica died: {v}");
    tokio::time::sleep(Duration::from_millis(700)).await;
    s.replicas[1].spawn();
    s.replicas[1].wait_ready().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    s.etcd.kill(0);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    s.etcd.restart(0);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    let (ok, bad) = load.await.unwrap();
    assert!(
        bad.is_empty(),
        "{} guest requests failed (of {}): {:?}",
        bad.len(),
        ok + bad.len(),
        &bad[..bad.len().min(5)]
    );
    assert!(ok >= 10, "only {ok} pulls completed under load");
    eprintln!("{ok} pulls under load, all succeeded");
    // Nothing lost or changed.
    let c =
        kbs_client::KbsClient::new(&lb_url, sample_attester(), kbs_client::ClientConfig::default()).unwrap();
    assert_eq!(&c.get_resource(&"default/image-kek/ha".parse().unwrap()).await.unwrap()[..], &kek[..]);

    // Backend operations are measured per operation.
    let m = reqwest::get(format!("{}/metrics", s.replicas[0].url())).await.unwrap().text().await.unwrap();
    // (session_get: the cookie-only resource request and nothing else; /auth and
    // /attest make one session_create between them.)
    for op in ["session_create", "session_get", "resource_get", "resource_create"] {
        let line = m
            .lines()
            .find(|l| {
                l.starts_with(&format!(r#"cloak_kbs_store_op_seconds_count{{backend="etcd",op="{op}"}}"#))
            })
            .unwrap_or_else(|| panic!("no {op} latency in /metrics:\n{m}"));
        assert!(!line.ends_with(" 0"), "{line}");
    }

    // An etcd snapshot holds no resource plaintext (nor the policy text).
    s.etcd.wait_healthy();
    let snap = s.dir.path().join("snap.db");
    let st = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &format!("127.0.0.1:{}", s.etcd.members[0].client), "snapshot", "save"])
        .arg(&snap)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let db = std::fs::read(&snap).unwrap();
    let has = |needle: &[u8]| db.windows(needle.len()).any(|w| w == needle);
    assert!(
        has(format!("{}/resources/default/image-kek/ha", s.prefix).as_bytes()),
        "the snapshot is not of this store"
    );
    assert!(!has(&kek), "KEK plaintext in the etcd snapshot");
    assert!(!has(b"released_resources"), "policy plaintext in the etcd snapshot");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn quorum_loss_fails_closed_or_serves_bounded_stale_reads() {
    let _one = SERIAL.lock().await;
    // Replicas 1 and 2 fail closed (stale 0); replica 3 may serve 60 s of stale reads.
    let mut s = Setup::start([0, 0, 60]).await;
    assert_eq!(s.put(0, "default/key/q", b"quorum-kek", false).await, 200);
    let mut held = Vec::new();
    for i in 0..3 {
        held.push(attest_across(&s, i, i).await);
    }
    for (rc, t) in &held {
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            let (st, _) = rc.get(Some(t), "default/key/q").await;
            if st == 200 {
                break;
            }
            assert!(Instant::now() < deadline, "resource not visible on {}", rc.url);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    // Two of three members gone: no quorum.
    s.etcd.kill(1);
    s.etcd.kill(2);
    let t0 = Instant::now();
    for i in 0..3 {
        loop {
            if s.readyz(i).await == 503 {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(5), "replica {i} still ready without quorum");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    // Admin writes and new handshakes are refused with 503, on every replica.
    for i in 0..3 {
        assert_eq!(s.put(i, "default/key/new", b"x", false).await, 503, "replica {i}");
        let r = reqwest::Client::new()
            .post(format!("{}/kbs/v0/auth", s.replicas[i].url()))
            .json(&json!({"version": "0.4.0", "tee": "sample", "extra-params": ""}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 503, "replica {i}");
    }
    // Reads with tokens already issued: fail closed on 1 and 2, served (bounded) on 3.
    for (i, (rc, t)) in held.iter().enumerate() {
        let (st, v) = rc.get(Some(t), "default/key/q").await;
        if i == 2 {
            assert_eq!(st, 200, "stale-read replica: {v}");
            assert_eq!(rc.tee_key.decrypt(&v), b"quorum-kek");
        } else {
            assert_eq!(st, 503, "fail-closed replica {i}: {v}");
        }
    }

    // The failures are counted per backend operation.
    let m = reqwest::get(format!("{}/metrics", s.replicas[0].url())).await.unwrap().text().await.unwrap();
    assert!(m.contains(r#"cloak_kbs_store_op_errors_total{backend="etcd",op="resource_put"}"#), "{m}");
    assert!(m.contains(r#"cloak_kbs_store_op_errors_total{backend="etcd",op="resource_get"}"#), "{m}");

    // Quorum back: every replica recovers, writes and handshakes work again.
    s.etcd.restart(1);
    s.etcd.restart(2);
    s.etcd.wait_healthy();
    for r in &s.replicas {
        r.wait_ready().await;
    }
    assert_eq!(s.put(1, "default/key/after", b"after", true).await, 200);
    let (rc, t) = attest_across(&s, 2, 0).await;
    let mut rc = rc;
    rc.url = s.replicas[1].url();
    let (st, v) = rc.get(Some(&t), "default/key/q").await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(rc.tee_key.decrypt(&v), b"quorum-kek");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_local_to_etcd_and_back_and_reseal() {
    let _one = SERIAL.lock().await;
    let dir = etcd_tempdir();
    let etcd = Etcd::start(dir.path(), 1);
    let src = dir.path().join("src");
    for (p, v) in [("default/image-kek/a", &b"kek-a"[..]), ("team/key/b", b"kek-b")] {
        let f = src.join(p);
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, v).unwrap();
    }
    let mk = dir.path().join("mk");
    std::fs::write(&mk, [5u8; 32]).unwrap();
    let to = format!("etcd://{}/mig", etcd.endpoints());
    let run = |args: &[&str]| {
        let out = Command::new(BIN).args(args).output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let mkp = mk.to_str().unwrap();
    let (ok, err) =
        run(&["migrate", "--from", &format!("local:{}", src.display()), "--to", &to, "--master-key", mkp]);
    assert!(ok, "{err}");
    assert!(err.contains("2 copied"), "{err}");
    // Again: identical, nothing copied.
    let (ok, err) =
        run(&["migrate", "--from", &format!("local:{}", src.display()), "--to", &to, "--master-key", mkp]);
    assert!(ok && err.contains("0 copied, 2 already identical"), "{err}");
    // A differing resource in the target is a reported conflict, left unchanged.
    std::fs::write(src.join("team/key/b"), b"changed").unwrap();
    let (ok, err) =
        run(&["migrate", "--from", &format!("local:{}", src.display()), "--to", &to, "--master-key", mkp]);
    assert!(!ok && err.contains("team/key/b"), "{err}");
    // Without the master key the etcd side does not open.
    let back = dir.path().join("back");
    let (ok, err) = run(&["migrate", "--from", &to, "--to", &format!("local:{}", back.display())]);
    assert!(!ok && err.contains("master-key"), "{err}");

    // Rotation: re-seal under a new key (the old one given as --old-master-key), then
    // migrate back with the new key only.
    let mk2 = dir.path().join("mk2");
    std::fs::write(&mk2, [6u8; 32]).unwrap();
    let (ok, err) =
        run(&["reseal", "--store", &to, "--master-key", mk2.to_str().unwrap(), "--old-master-key", mkp]);
    assert!(ok && err.contains("re-sealed 3 value"), "{err}");
    let (ok, err) =
        run(&["migrate", "--from", &to, "--to", &format!("local:{}", back.display()), "--master-key", mkp]);
    assert!(!ok, "the old key alone must no longer open the store: {err}");
    let (ok, err) = run(&[
        "migrate",
        "--from",
        &to,
        "--to",
        &format!("local:{}", back.display()),
        "--master-key",
        mk2.to_str().unwrap(),
    ]);
    assert!(ok, "{err}");
    assert_eq!(std::fs::read(back.join("default/image-kek/a")).unwrap(), b"kek-a");
    assert_eq!(std::fs::read(back.join("team/key/b")).unwrap(), b"kek-b");
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().unwrap();
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

fn etcdctl(dir: &Path, endpoint: &str, tls: bool, args: &[&str]) {
    let mut c = Command::new("etcdctl");
    c.env("ETCDCTL_API", "3").current_dir(dir).args(["--endpoints", endpoint]);
    if tls {
        c.args(["--cacert", "ca.pem", "--cert", "client.pem", "--key", "client.key"]);
    }
    let out = c.args(args).output().unwrap();
    assert!(out.status.success(), "etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// A single etcd member with authentication enabled (root, and user `cloak` with
/// read-write on /authtest/), over TLS with client certificates required and JWT auth
/// tokens when `tls` (simple tokens otherwise).
fn etcd_with_auth(dir: &Path, tls: bool) -> (Child, String) {
    if tls {
        let sh = |a: &str| openssl(dir, &a.split(' ').collect::<Vec<_>>());
        sh("req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout ca.key -out ca.pem -days 2 -subj /CN=test-etcd-ca");
        // The client certificate has no CommonName: etcd 3.4's gateway refuses one that
        // has (it would not be used as the user name), so the user comes from
        // --etcd-user and the certificate only opens the TLS connection.
        for (name, subject, ext) in [
            ("server", "/CN=127.0.0.1", "subjectAltName=IP:127.0.0.1"),
            ("client", "/O=cloak-kbs", "extendedKeyUsage=clientAuth"),
        ] {
            sh(&format!("req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout {name}.key -out {name}.csr -subj {subject}"));
            std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
            sh(&format!("x509 -req -in {name}.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out {name}.pem -days 2 -extfile {name}.ext"));
        }
    }
    let (client, peer) = (free_port(), free_port());
    let scheme = if tls { "https" } else { "http" };
    let url = format!("{scheme}://127.0.0.1:{client}");
    let mut c = Command::new(etcd_bin());
    c.current_dir(dir)
        .args(["--name", "a", "--data-dir", "etcd-auth"])
        .args(["--listen-client-urls", &url, "--advertise-client-urls", &url])
        .args(["--listen-peer-urls", &format!("http://127.0.0.1:{peer}")])
        .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{peer}")])
        .args(["--initial-cluster", &format!("a=http://127.0.0.1:{peer}")]);
    if tls {
        c.args(["--cert-file", "server.pem", "--key-file", "server.key", "--trusted-ca-file", "ca.pem"])
            .arg("--client-cert-auth");
        // JWT tokens, which etcd recommends for production over its simple tokens: they
        // carry the auth revision they were issued at, so any user or role change voids
        // them ("revision of auth store is old").
        openssl(dir, &["genrsa", "-out", "jwt.key", "2048"]);
        openssl(dir, &["rsa", "-in", "jwt.key", "-pubout", "-out", "jwt.pub"]);
        c.args(["--auth-token", "jwt,pub-key=jwt.pub,priv-key=jwt.key,sign-method=RS256,ttl=10m"]);
    }
    let child = c
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("etcd-auth.log")).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let mut probe = Command::new("etcdctl");
        probe.env("ETCDCTL_API", "3").current_dir(dir).args(["--endpoints", &url, "--command-timeout=1s"]);
        if tls {
            probe.args(["--cacert", "ca.pem", "--cert", "client.pem", "--key", "client.key"]);
        }
        if probe.args(["get", "x"]).output().unwrap().status.success() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "etcd did not answer within 20 s; the end of its log:\n{}",
            log_tail(&dir.join("etcd-auth.log"))
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    for a in [
        &["user", "add", "root:rootpw"][..],
        &["user", "add", "cloak:cloak-pw"],
        &["role", "add", "kbs"],
        &["role", "grant-permission", "kbs", "--prefix=true", "readwrite", "/authtest/"],
        &["user", "grant-role", "cloak", "kbs"],
        &["auth", "enable"],
    ] {
        etcdctl(dir, &url, tls, a);
    }
    (child, format!("127.0.0.1:{client}"))
}

async fn broker_on_authenticated_etcd(tls: bool) {
    let dir = etcd_tempdir();
    let d = dir.path();
    let (mut etcd, ep) = etcd_with_auth(d, tls);
    std::fs::write(d.join("pw"), "cloak-pw\n").unwrap();
    std::fs::write(d.join("bad-pw"), "nope\n").unwrap();
    std::fs::write(d.join("mk"), [9u8; 32]).unwrap();
    std::fs::write(d.join("policy.yaml"), SAMPLE_POLICY).unwrap();
    let src = d.join("src/default/key");
    std::fs::create_dir_all(&src).unwrap();
    std::fs::write(src.join("auth"), b"kek-behind-auth").unwrap();
    let store = format!("etcd://{ep}/authtest");
    let p = |f: &str| d.join(f).to_string_lossy().into_owned();
    let mut etcd_flags: Vec<String> = vec!["--etcd-user".into(), "cloak".into()];
    if tls {
        for (f, v) in [("--etcd-ca", "ca.pem"), ("--etcd-cert", "client.pem"), ("--etcd-key", "client.key")] {
            etcd_flags.extend([f.to_string(), p(v)]);
        }
    }
    let migrate = |pw: &str, flags: &[String]| {
        let out = Command::new(BIN)
            .args([
                "migrate",
                "--from",
                &format!("local:{}", p("src")),
                "--to",
                &store,
                "--master-key",
                &p("mk"),
            ])
            .args(flags)
            .args(["--etcd-password-file", &p(pw)])
            .output()
            .unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    // A wrong password is refused, and says who could not authenticate.
    let (ok, err) = migrate("bad-pw", &etcd_flags);
    assert!(!ok && err.contains("authenticating as etcd user \"cloak\""), "{err}");
    if tls {
        // Without the client certificate the member refuses the connection.
        let (ok, err) = migrate("pw", &etcd_flags[..4]);
        assert!(!ok, "no client certificate, yet: {err}");
    }
    let (ok, err) = migrate("pw", &etcd_flags);
    assert!(ok && err.contains("1 copied"), "{err}");

    // A replica on the same store serves a guest: lease, transactions, watch and probe
    // all pass etcd's authentication.
    let port = free_port();
    let mut args: Vec<String> = vec![
        "--listen".into(),
        format!("127.0.0.1:{port}"),
        "--store".into(),
        store.clone(),
        "--master-key".into(),
        p("mk"),
        "--policy".into(),
        p("policy.yaml"),
        "--etcd-password-file".into(),
        p("pw"),
    ];
    args.extend(etcd_flags.iter().cloned());
    let mut r = Replica { port, args, log: d.join("replica.log"), child: None };
    r.spawn();
    r.wait_ready().await;
    let rc = auth(&r.url(), "sample", json!({})).await;
    let (st, v) = rc.attest(sample_evidence(&rc.report_data())).await;
    assert_eq!(st, 200, "{v}");
    let (st, v) = rc.get(v["token"].as_str(), "default/key/auth").await;
    assert_eq!(st, 200, "{v}");
    assert_eq!(rc.tee_key.decrypt(&v), b"kek-behind-auth");
    // A replay goes through the session's create-only transaction again.
    let (st, _) = rc.attest(sample_evidence(&rc.report_data())).await;
    assert_eq!(st, 200);
    // Tokens voided by etcd (auth disabled and enabled again drops them all): the
    // replica authenticates again and the next guest does not notice.
    let url = format!("{}://{ep}", if tls { "https" } else { "http" });
    etcdctl(d, &url, tls, &["--user", "root:rootpw", "auth", "disable"]);
    etcdctl(d, &url, tls, &["auth", "enable"]);
    let rc = auth(&r.url(), "sample", json!({})).await;
    let (st, v) = rc.attest(sample_evidence(&rc.report_data())).await;
    assert_eq!(st, 200, "after the token was voided: {v}");
    // With JWT tokens (the TLS member), any user or role change since a token was
    // issued voids it too ("revision of auth store is old", until it would expire):
    // renewed the same way. (etcd's simple tokens take the store's current revision.)
    etcdctl(d, &url, tls, &["--user", "root:rootpw", "role", "add", "unrelated"]);
    let rc = auth(&r.url(), "sample", json!({})).await;
    let (st, v) = rc.attest(sample_evidence(&rc.report_data())).await;
    assert_eq!(st, 200, "after an auth change in etcd: {v}");
    let (st, v) = rc.get(v["token"].as_str(), "default/key/auth").await;
    assert_eq!(st, 200, "{v}");
    r.kill();
    let log = std::fs::read_to_string(d.join("replica.log")).unwrap();
    let renewals = log.matches("authenticating again").count();
    assert!(renewals >= if tls { 2 } else { 1 }, "the voided tokens were not renewed ({renewals}):\n{log}");
    if tls {
        tls_replica_serves_guests_that_trust_its_ca(d, &r.args).await;
    }
    etcd.kill().unwrap();
    etcd.wait().unwrap();
}

/// A replica on the same etcd store serving its guests over TLS itself
/// (`--tls-cert`/`--tls-key`): the guest library with the CA (`--kbs-cert`) attests
/// and fetches; without it the guest is refused, naming the broker and the unknown issuer.
async fn tls_replica_serves_guests_that_trust_its_ca(d: &Path, replica_args: &[String]) {
    let sh = |a: &str| openssl(d, &a.split(' ').collect::<Vec<_>>());
    sh("req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout kbs.key -out kbs.csr -subj /CN=cloak-kbs");
    std::fs::write(d.join("kbs.ext"), "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n").unwrap();
    sh("x509 -req -in kbs.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out kbs.pem -days 2 -extfile kbs.ext");
    let port = free_port();
    let mut args = replica_args.to_vec();
    let at = args.iter().position(|a| a == "--listen").unwrap();
    args[at + 1] = format!("127.0.0.1:{port}");
    for (f, v) in [("--tls-cert", "kbs.pem"), ("--tls-key", "kbs.key")] {
        args.extend([f.to_string(), d.join(v).to_string_lossy().into_owned()]);
    }
    let mut r = Replica { port, args, log: d.join("tls-replica.log"), child: None };
    r.spawn();
    let url = format!("https://127.0.0.1:{port}");
    let ca = kbs_client::CaBundle::read(&d.join("ca.pem")).unwrap();
    let guest = |ca: Option<&kbs_client::CaBundle>| {
        kbs_client::KbsClient::with_http_client(
            &url,
            sample_attester(),
            kbs_client::ClientConfig::default(),
            kbs_client::tls::http_client(ca).unwrap(),
        )
        .unwrap()
    };
    let uri: kbs_client::ResourceUri = "kbs:///default/key/auth".parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let got = loop {
        match guest(Some(&ca)).get_resource(&uri).await {
            Ok(v) => break v,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!(
                "guest over TLS: {}\n{}",
                report::line(&e),
                std::fs::read_to_string(d.join("tls-replica.log")).unwrap_or_default()
            ),
        }
    };
    assert_eq!(&got[..], b"kek-behind-auth");
    let e = guest(None).get_resource(&uri).await.expect_err("a guest without the CA was served");
    let text = report::line(&e);
    assert!(text.contains(&url) && text.contains("unknown issuer"), "{text}");
    r.kill();
}

/// etcd with TLS, client certificates required and authentication enabled: migrate
/// and serve with --etcd-ca, --etcd-cert/--etcd-key and --etcd-user/--etcd-password-file
/// (the JSON gateway over https, and the transactions over gRPC on TLS).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_over_tls_with_client_certificate_and_password() {
    let _one = SERIAL.lock().await;
    broker_on_authenticated_etcd(true).await;
}

/// etcd with authentication over plain HTTP: the native gRPC transaction carries the
/// token as etcd's own clients do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_password_authentication_reaches_the_grpc_transactions() {
    let _one = SERIAL.lock().await;
    broker_on_authenticated_etcd(false).await;
}
