//! `cloak-cdh` end to end, as kata-agent uses it: the real daemon binary on a
//! unix socket, a ttRPC client (the `ttrpc` crate, the same generated services
//! kata links), the real registry (Debian's docker-registry) and the real
//! broker (`cloak-kbs`, sample evidence), images encrypted by `cloak` for a KEK
//! held in the broker.
//!
//! Needs root (overlay mounts); skipped with a reason otherwise, and when
//! docker-registry is missing outside CI (`CLOAK_REQUIRE_PEERS=1` makes that fail).

use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use base64::Engine;
use guest_puller::cdh::pb::{api, api_ttrpc, keyprovider as kp, keyprovider_ttrpc};
use test_support::{
    bin, free_port, http_get, list_tree, run_ok, workspace_root, HttpAnswer, LocalBroker, Registry,
    ALLOW_SAMPLE,
};

fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

fn plain_layout() -> String {
    format!("oci:{}:v1", workspace_root().join("testdata/golden/three-layers/plain-oci").display())
}

/// `cloak-kbs serve` with its state in a private directory.
/// A running `cloak-cdh`.
struct Cdh {
    socket: PathBuf,
    root: PathBuf,
    store: PathBuf,
    log: PathBuf,
    child: std::process::Child,
}

impl Cdh {
    fn start(dir: &Path, kbs_url: &str, registry: &str, extra: &[&str]) -> Result<Cdh> {
        let cdh = Self::spawn(dir, kbs_url, registry, extra)?;
        let t = Instant::now();
        while !cdh.socket.exists() {
            ensure!(
                t.elapsed() < Duration::from_secs(6),
                "no socket after 6 s (kata's launch timeout):\n{}",
                cdh.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(cdh)
    }

    /// Starts the daemon without waiting for its socket.
    fn spawn(dir: &Path, kbs_url: &str, registry: &str, extra: &[&str]) -> Result<Cdh> {
        let socket = dir.join("run/cdh.sock");
        let root = dir.join("bundles");
        let store = dir.join("store");
        let log = dir.join("cdh.log");
        std::fs::create_dir_all(dir)?;
        let child = Command::new(bin("cloak-cdh"))
            .arg("--socket")
            .arg(format!("unix://{}", socket.display()))
            .args(["--kbs", kbs_url, "--attester", "sample", "--kbs-timeout", "4"])
            .arg("--store")
            .arg(&store)
            .arg("--bundle-root")
            .arg(&root)
            .args(["--insecure-registry", registry])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting cloak-cdh")?;
        Ok(Cdh { socket, root, store, log, child })
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn addr(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    fn bundle(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// Stored layer entries.
    fn store_entries(&self) -> Vec<String> {
        std::fs::read_dir(self.store.join("layers/sha256"))
            .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default()
    }

    /// SIGTERM, wait, and the log.
    fn terminate(mut self) -> Result<String> {
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(self.child.id() as i32).context("pid")?,
            rustix::process::Signal::TERM,
        )?;
        let t = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait()? {
                ensure!(st.success(), "cloak-cdh exited {st} after SIGTERM:\n{}", self.log());
                break;
            }
            ensure!(t.elapsed() < Duration::from_secs(20), "cloak-cdh ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(self.log())
    }
}

impl Drop for Cdh {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Leave no mounts behind in the temp dir.
        if let Ok(rd) = std::fs::read_dir(&self.root) {
            for e in rd.flatten() {
                let _ = rustix::mount::unmount(e.path().join("rootfs"), rustix::mount::UnmountFlags::DETACH);
            }
        }
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime")
}

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_duration(Duration::from_secs(300))
}

async fn client(addr: &str) -> Result<ttrpc::r#async::Client> {
    ttrpc::r#async::Client::connect(addr).await.map_err(|e| anyhow::anyhow!("connect {addr}: {e}"))
}

async fn pull_image(addr: &str, image: &str, bundle: &Path) -> Result<String, ttrpc::Error> {
    let c = api_ttrpc::ImagePullServiceClient::new(
        client(addr).await.map_err(|e| ttrpc::Error::Others(e.to_string()))?,
    );
    let mut req = api::ImagePullRequest::new();
    req.image_url = image.to_owned();
    req.bundle_path = bundle.display().to_string();
    c.pull_image(ctx(), &req).await.map(|r| r.manifest_digest)
}

async fn get_resource(addr: &str, path: &str) -> Result<Vec<u8>, ttrpc::Error> {
    let c = api_ttrpc::GetResourceServiceClient::new(
        client(addr).await.map_err(|e| ttrpc::Error::Others(e.to_string()))?,
    );
    let mut req = api::GetResourceRequest::new();
    req.ResourcePath = path.to_owned();
    c.get_resource(ctx(), &req).await.map(|r| r.Resource)
}

async fn unseal(addr: &str, secret: &str) -> Result<Vec<u8>, ttrpc::Error> {
    let c = api_ttrpc::SealedSecretServiceClient::new(
        client(addr).await.map_err(|e| ttrpc::Error::Others(e.to_string()))?,
    );
    let mut req = api::UnsealSecretInput::new();
    req.secret = secret.as_bytes().to_vec();
    c.unseal_secret(ctx(), &req).await.map(|r| r.plaintext)
}

/// The message of an RPC error status (panics on success).
fn status_of<T: std::fmt::Debug>(r: Result<T, ttrpc::Error>) -> (ttrpc::Code, String) {
    match r {
        Err(ttrpc::Error::RpcStatus(s)) => (s.code(), s.message().to_owned()),
        other => panic!("expected an RPC error status, got {other:?}"),
    }
}

fn vault_secret(name: &str) -> String {
    let payload = format!(
        r#"{{"version":"0.1.0","type":"vault","name":"{name}","provider":"kbs","provider_settings":{{}},"annotations":{{}}}}"#
    );
    format!(
        "sealed.fakejwsheader.{}.fakesignature",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(payload)
    )
}

/// The reference tree: the plain image pulled by cloak-pull (copy mode).
fn reference_tree(dir: &Path) -> Result<PathBuf> {
    let bundle = dir.join("reference");
    run_ok(Command::new(bin("cloak-pull")).arg("--quiet").arg(plain_layout()).arg(&bundle))?;
    Ok(bundle.join("rootfs"))
}

/// Relative path → (kind, content) of every entry.
fn snapshot(root: &Path) -> Result<Vec<(PathBuf, String)>> {
    let mut out = Vec::new();
    for p in list_tree(root) {
        let full = root.join(&p);
        let m = full.symlink_metadata()?;
        let what = if m.file_type().is_symlink() {
            format!("link {}", std::fs::read_link(&full)?.display())
        } else if m.is_dir() {
            format!("dir {:o}", m.mode() & 0o7777)
        } else if m.is_file() {
            format!("file {:o} {}", m.mode() & 0o7777, hex::encode(sha2_256(&std::fs::read(&full)?)))
        } else {
            format!("other {:o}", m.mode())
        };
        out.push((p, what));
    }
    out.sort();
    Ok(out)
}

fn sha2_256(b: &[u8]) -> Vec<u8> {
    use sha2::Digest;
    sha2::Sha256::digest(b).to_vec()
}

fn is_mount_point(p: &Path) -> bool {
    match (p.metadata(), p.parent().and_then(|q| q.metadata().ok())) {
        (Ok(a), Some(b)) => a.dev() != b.dev(),
        _ => false,
    }
}

struct Env {
    _dir: tempfile::TempDir,
    dir: PathBuf,
    registry: Registry,
    broker: LocalBroker,
}

fn setup() -> Result<Option<Env>> {
    if !is_root() {
        eprintln!("SKIP: cloak-cdh mounts overlays and needs root");
        return Ok(None);
    }
    let Some(registry) = Registry::start() else { return Ok(None) };
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path().to_path_buf();
    std::fs::create_dir_all(dir.join("kbs"))?;
    let broker = LocalBroker::start(&dir.join("kbs"), free_port(), ALLOW_SAMPLE)?;
    Ok(Some(Env { _dir: tmp, dir, registry, broker }))
}

impl Env {
    /// kata's form of an image in the test registry.
    fn image(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.registry.host())
    }
    fn push_encrypted(&self, kek: &str, repo_tag: &str) -> Result<String> {
        self.broker.encrypt(kek, &plain_layout(), &self.registry.docker_ref(repo_tag))?;
        Ok(self.image(repo_tag))
    }
    fn cdh(&self, extra: &[&str]) -> Result<Cdh> {
        Cdh::start(&self.dir.join("cdh"), &self.broker.url(), &self.registry.host(), extra)
    }
}

#[test]
fn pull_image_mounts_the_verified_rootfs_isolates_writes_and_reuses_the_store() -> Result<()> {
    let Some(mut env) = setup()? else { return Ok(()) };
    let image = env.push_encrypted("kbs:///default/image-kek/cdh-pull", "cdh/enc:v1")?;
    let reference = snapshot(&reference_tree(&env.dir)?)?;
    ensure!(reference.len() > 3, "reference tree too small: {reference:?}");
    let cdh = env.cdh(&[])?;
    let addr = cdh.addr();
    let rt = rt();

    let b1 = cdh.bundle("c1");
    let digest =
        rt.block_on(pull_image(&addr, &image, &b1)).map_err(|e| anyhow::anyhow!("{e:?}\n{}", cdh.log()))?;
    ensure!(digest.starts_with("sha256:") && digest.len() == 71, "manifest digest {digest:?}");
    let rootfs = b1.join("rootfs");
    ensure!(is_mount_point(&rootfs), "rootfs is not a mount");
    assert_eq!(snapshot(&rootfs)?, reference, "the mounted rootfs differs from the reference tree");
    let spec: serde_json::Value = serde_json::from_slice(&std::fs::read(b1.join("config.json"))?)?;
    assert_eq!(spec["root"]["path"], "rootfs");
    ensure!(spec["process"]["args"].as_array().is_some_and(|a| !a.is_empty()), "no args in {spec}");

    // Writes stay in the bundle's private upper directory.
    std::fs::write(rootfs.join("written-by-container"), b"x")?;
    let store_files: Vec<PathBuf> = list_tree(&cdh.store);
    ensure!(
        !store_files.iter().any(|p| p.ends_with("written-by-container")),
        "a container write reached the store"
    );
    let entries = cdh.store_entries();
    assert_eq!(entries.len(), 3, "three layers in the store: {entries:?}");

    // kata's cleanup: umount leaves an empty directory.
    rustix::mount::unmount(&rootfs, rustix::mount::UnmountFlags::empty())?;
    ensure!(rootfs.is_dir() && std::fs::read_dir(&rootfs)?.next().is_none(), "rootfs not empty after umount");

    // A second pull into a new bundle is served from the store: with the broker
    // down it still works, as no key is needed for stored layers.
    env.broker.stop();
    let b2 = cdh.bundle("c2");
    let d2 =
        rt.block_on(pull_image(&addr, &image, &b2)).map_err(|e| anyhow::anyhow!("{e:?}\n{}", cdh.log()))?;
    assert_eq!(d2, digest);
    assert_eq!(snapshot(&b2.join("rootfs"))?, reference);
    ensure!(!b2.join("rootfs/written-by-container").exists(), "one container's write is seen by another");
    assert_eq!(cdh.store_entries().len(), 3);
    rustix::mount::unmount(b2.join("rootfs"), rustix::mount::UnmountFlags::empty())?;
    let log = cdh.terminate()?;
    ensure!(log.contains("\"attestations\":1"), "expected exactly one attestation:\n{log}");
    Ok(())
}

#[test]
fn resources_secrets_and_unwrap_share_one_attestation() -> Result<()> {
    let Some(env) = setup()? else { return Ok(()) };
    env.broker.put_resource("kbs:///default/secret/db", b"s3cret-db-password")?;
    let kek = keyprovider::Kek::generate();
    env.broker.put_resource("kbs:///default/kek/unwrap", kek.as_bytes())?;
    let rest_port = free_port();
    let rest = format!("127.0.0.1:{rest_port}");
    let cdh = env.cdh(&["--rest", &rest])?;
    let addr = cdh.addr();
    let rt = rt();

    let got =
        rt.block_on(get_resource(&addr, "kbs:///default/secret/db")).map_err(|e| anyhow::anyhow!("{e:?}"))?;
    assert_eq!(got, b"s3cret-db-password");
    let got = rt
        .block_on(unseal(&addr, &vault_secret("kbs:///default/secret/db")))
        .map_err(|e| anyhow::anyhow!("{e:?}"))?;
    assert_eq!(got, b"s3cret-db-password");

    // UnWrapKey of a CoCo AnnotationPacket, keyprovider JSON over ttRPC.
    let packet =
        keyprovider::AnnotationPacket::seal("kbs:///default/kek/unwrap", &kek, b"{\"layer\":\"opts\"}")?;
    let input =
        keyprovider::protocol::KeyProviderInput::unwrap(Default::default(), &packet.to_v1_json()).to_vec()?;
    let out = rt.block_on(async {
        let c = keyprovider_ttrpc::KeyProviderServiceClient::new(client(&addr).await?);
        let mut req = kp::KeyProviderKeyWrapProtocolInput::new();
        req.KeyProviderKeyWrapProtocolInput = input;
        c.un_wrap_key(ctx(), &req).await.map_err(|e| anyhow::anyhow!("{e:?}"))
    })?;
    let out = keyprovider::protocol::KeyProviderOutput::from_slice(&out.KeyProviderKeyWrapProtocolOutput)?;
    let opts = out.keyunwrapresults.optsdata.context("no optsdata")?;
    assert_eq!(opts.as_bytes(), b"{\"layer\":\"opts\"}");

    // Errors name the cause.
    let (code, msg) = status_of(rt.block_on(get_resource(&addr, "kbs:///default/secret/missing")));
    assert_eq!(code, ttrpc::Code::NOT_FOUND, "{msg}");
    let (code, msg) = status_of(rt.block_on(get_resource(&addr, "/etc/passwd")));
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{msg}");
    let envelope = format!(
        "sealed.fakejwsheader.{}.fakesignature",
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(r#"{"version":"0.1.0","type":"envelope","provider":"aliyun"}"#)
    );
    let (code, msg) = status_of(rt.block_on(unseal(&addr, &envelope)));
    assert_eq!(code, ttrpc::Code::UNIMPLEMENTED);
    ensure!(msg.contains("envelope"), "{msg}");
    let (code, msg) = status_of(rt.block_on(async {
        let c = api_ttrpc::SecureMountServiceClient::new(
            client(&addr).await.map_err(|e| ttrpc::Error::Others(e.to_string()))?,
        );
        let mut req = api::SecureMountRequest::new();
        req.volume_type = "BlockDevice".into();
        c.secure_mount(ctx(), &req).await
    }));
    assert_eq!(code, ttrpc::Code::UNIMPLEMENTED);
    ensure!(msg.contains("unsupported volume type"), "{msg}");

    // The pod-facing endpoint, from loopback.
    let HttpAnswer { status, body } = http_get(rest_port, "/cdh/resource/default/secret/db", None)?;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(body, b"s3cret-db-password");
    let status = http_get(rest_port, "/cdh/resource/default/secret/missing", None)?.status;
    assert_eq!(status, 404);

    let log = cdh.terminate()?;
    ensure!(log.contains("\"attestations\":1"), "expected one attestation for all calls:\n{log}");
    ensure!(!log.contains("s3cret-db-password"), "a secret reached the log");
    Ok(())
}

#[test]
fn kbs_down_fails_clearly_without_mount_then_kbs_back_works_and_wrong_key_is_refused() -> Result<()> {
    let Some(mut env) = setup()? else { return Ok(()) };
    let image = env.push_encrypted("kbs:///default/image-kek/cdh-down", "cdh/down:v1")?;
    let wrong = env.push_encrypted("kbs:///default/image-kek/cdh-wrong", "cdh/wrong:v1")?;
    // Replace the KEK of the second image: its layers cannot be opened.
    env.broker.put_resource("kbs:///default/image-kek/cdh-wrong", &[7u8; 32])?;
    let cdh = env.cdh(&[])?;
    let addr = cdh.addr();
    let rt = rt();

    let port = env.broker.port;
    env.broker.stop();
    let t = Instant::now();
    let b = cdh.bundle("down");
    let (code, msg) = status_of(rt.block_on(pull_image(&addr, &image, &b)));
    ensure!(t.elapsed() < Duration::from_secs(30), "took {:?}", t.elapsed());
    ensure!(msg.contains("KBS unavailable"), "{code:?}: {msg}");
    ensure!(!b.join("rootfs").exists(), "a failed pull left a rootfs");
    ensure!(cdh.store_entries().is_empty(), "a failed pull left store entries");

    env.broker = LocalBroker::start(&env.dir.join("kbs"), port, ALLOW_SAMPLE)?;
    let b = cdh.bundle("back");
    rt.block_on(pull_image(&addr, &image, &b)).map_err(|e| anyhow::anyhow!("{e:?}\n{}", cdh.log()))?;
    ensure!(is_mount_point(&b.join("rootfs")));
    rustix::mount::unmount(b.join("rootfs"), rustix::mount::UnmountFlags::empty())?;
    let stored = cdh.store_entries();

    // The wrong key: no mount, nothing new in the store. (Same plain layers as
    // above, so a fresh store is used to see it.)
    drop(cdh);
    std::fs::remove_dir_all(env.dir.join("cdh"))?;
    let cdh = env.cdh(&[])?;
    let b = cdh.bundle("wrong");
    let (_, msg) = status_of(rt.block_on(pull_image(&cdh.addr(), &wrong, &b)));
    ensure!(
        msg.contains("layer") && msg.contains("kbs:///default/image-kek/cdh-wrong"),
        "the error names neither layer nor key: {msg}"
    );
    ensure!(!b.join("rootfs").exists(), "a wrong key left a rootfs");
    ensure!(cdh.store_entries().is_empty(), "a wrong key left store entries");
    ensure!(!stored.is_empty());
    Ok(())
}

#[test]
fn four_concurrent_pulls_of_different_images_all_succeed() -> Result<()> {
    let Some(env) = setup()? else { return Ok(()) };
    let reference = snapshot(&reference_tree(&env.dir)?)?;
    let mut images = Vec::new();
    for i in 0..4 {
        images.push(
            env.push_encrypted(&format!("kbs:///default/image-kek/conc{i}"), &format!("cdh/conc{i}:v1"))?,
        );
    }
    let cdh = env.cdh(&[])?;
    let addr = cdh.addr();
    let rt = rt();
    let results = rt.block_on(async {
        let mut tasks = Vec::new();
        for (i, image) in images.iter().enumerate() {
            let (addr, image, bundle) = (addr.clone(), image.clone(), cdh.bundle(&format!("conc{i}")));
            tasks.push(tokio::spawn(async move { pull_image(&addr, &image, &bundle).await }));
        }
        let mut out = Vec::new();
        for t in tasks {
            out.push(t.await);
        }
        out
    });
    for (i, r) in results.into_iter().enumerate() {
        r?.map_err(|e| anyhow::anyhow!("pull {i}: {e:?}\n{}", cdh.log()))?;
        assert_eq!(snapshot(&cdh.bundle(&format!("conc{i}")).join("rootfs"))?, reference, "image {i}");
    }
    // The four images share their plain layers: each was unpacked once.
    assert_eq!(cdh.store_entries().len(), 3);
    Ok(())
}

#[test]
fn bad_bundle_paths_and_bad_frames_are_refused_and_the_daemon_keeps_serving() -> Result<()> {
    if !is_root() {
        eprintln!("SKIP: needs root");
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    // No KBS, no registry needed: every request here is refused before either.
    let cdh = Cdh::start(tmp.path(), "http://127.0.0.1:9", "127.0.0.1:9", &[])?;
    let addr = cdh.addr();
    let rt = rt();
    let outside = tmp.path().join("elsewhere");
    for bundle in [outside.clone(), cdh.root.join("a/../../elsewhere"), PathBuf::from("relative/b")] {
        let (code, msg) = status_of(rt.block_on(pull_image(&addr, "127.0.0.1:9/x:v1", &bundle)));
        assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{bundle:?}: {msg}");
        ensure!(msg.contains("bundle_path"), "{msg}");
    }
    ensure!(!outside.exists(), "a refused bundle path was created");
    let (code, msg) = status_of(rt.block_on(pull_image(&addr, "oci:/etc:x", &cdh.bundle("o"))));
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{msg}");

    // Garbage, a header announcing 4 GiB, and an oversized (5 MiB) frame.
    let mut garbage = UnixStream::connect(&cdh.socket)?;
    garbage.write_all(&[0xde; 4096])?;
    let mut huge = UnixStream::connect(&cdh.socket)?;
    huge.write_all(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 1, 1, 0])?;
    let mut big = UnixStream::connect(&cdh.socket)?;
    let mut frame = vec![0x00, 0x50, 0x00, 0x00, 0, 0, 0, 3, 1, 0];
    frame.extend(vec![0x0a; 5 << 20]);
    let _ = big.write_all(&frame);
    let mut half = UnixStream::connect(&cdh.socket)?;
    half.write_all(&[0, 0, 0, 5, 0, 0])?;
    drop(half);
    drop(garbage);

    // The daemon still answers a well-formed call on a new connection.
    let (code, msg) = status_of(rt.block_on(get_resource(&addr, "not-a-uri")));
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{msg}");
    drop(huge);
    drop(big);
    let (code, _) = status_of(rt.block_on(get_resource(&addr, "kbs:///a/b")));
    assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT);
    cdh.terminate()?;
    Ok(())
}

/// kata-agent connects as soon as `cdh.sock` exists. The socket used to appear at
/// bind(), before listen(), so a connection in between was refused ("Connection
/// refused"), and the agent then has no CDH client; it was also 0755 until a later
/// chmod. Each start is watched without sleeping, so those windows would be hit.
#[test]
fn cdh_socket_appears_only_when_listening_and_private() -> Result<()> {
    if !is_root() {
        eprintln!("SKIP: needs root");
        return Ok(());
    }
    for round in 0..10 {
        let tmp = tempfile::tempdir()?;
        let cdh = Cdh::spawn(tmp.path(), "http://127.0.0.1:9", "127.0.0.1:9", &[])?;
        let t = Instant::now();
        while !cdh.socket.exists() {
            ensure!(t.elapsed() < Duration::from_secs(6), "no socket after 6 s:\n{}", cdh.log());
            std::hint::spin_loop();
        }
        let connected = UnixStream::connect(&cdh.socket);
        ensure!(connected.is_ok(), "round {round}: the socket existed but refused: {connected:?}");
        let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&cdh.socket)?.permissions());
        ensure!(mode & 0o077 == 0, "round {round}: the socket appeared with mode {mode:o}");
        drop(cdh);
    }
    Ok(())
}

/// Issue 21, finding 3: a caller of the daemon's socket named any guest file with
/// `keypath=` in WrapKey; the daemon read it whole (`/dev/zero` until memory ran
/// out) and answered with the file's size.
#[test]
fn cdh_wrapkey_keypath_reads_no_guest_file() -> Result<()> {
    if !is_root() {
        eprintln!("SKIP: needs root");
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let cdh = Cdh::start(tmp.path(), "http://127.0.0.1:9", "127.0.0.1:9", &[])?;
    let addr = cdh.addr();
    let rt = rt();
    let probe = tmp.path().join("probe-698-bytes");
    std::fs::write(&probe, [7u8; 698])?;
    let mut answers = Vec::new();
    for path in [probe.display().to_string(), "/dev/zero".into(), "/nonexistent/kek".into()] {
        let params = base64::engine::general_purpose::STANDARD.encode(format!("keypath={path}"));
        let input = format!(
            r#"{{"op":"keywrap","keywrapparams":{{"ec":{{"Parameters":{{"attestation-agent":["{params}"]}}}},"optsdata":"e30="}}}}"#
        );
        let r = rt.block_on(async {
            let c = keyprovider_ttrpc::KeyProviderServiceClient::new(client(&addr).await?);
            let mut req = kp::KeyProviderKeyWrapProtocolInput::new();
            req.KeyProviderKeyWrapProtocolInput = input.into_bytes();
            anyhow::Ok(c.wrap_key(ctx(), &req).await)
        })?;
        let (code, msg) = status_of(r);
        assert_eq!(code, ttrpc::Code::INVALID_ARGUMENT, "{path}: {msg}");
        ensure!(msg.contains("keypath"), "{msg}");
        ensure!(!msg.contains("698"), "the answer reveals the file's size: {msg}");
        answers.push(msg);
    }
    ensure!(answers.iter().all(|a| a == &answers[0]), "answers differ by file: {answers:?}");
    cdh.terminate()?;
    Ok(())
}

#[test]
fn rest_endpoint_refuses_non_loopback_peers() -> Result<()> {
    let paths = ["/cdh/resource/default/secret/db"];
    let Some(codes) = test_support::rest_codes_from_far_and_near(&bin("cloak-cdh"), &paths)? else {
        return Ok(());
    };
    if codes[0].far == "000" {
        bail!("the non-loopback client could not connect: {codes:?}");
    }
    ensure!(codes[0].far == "403", "a non-loopback peer was not refused: {codes:?}");
    // Loopback is let through (then fails at the unreachable KBS: 502, not 403).
    ensure!(codes[0].near == "502", "loopback peer: {codes:?}");
    Ok(())
}

/// imgsig's test keys: a cosign 2.5 key pair (password `cloak-test`).
fn cosign_key(name: &str) -> PathBuf {
    workspace_root().join("imgsig/testdata").join(name)
}

/// `cloak sign` of `docker://HOST/REPO:TAG` in the test registry.
fn cloak_sign(env: &Env, repo_tag: &str) -> Result<()> {
    run_ok(
        Command::new(bin("cloak"))
            .env("COSIGN_PASSWORD", "cloak-test")
            .args(["sign", "--dest-tls-verify=false", "--key"])
            .arg(cosign_key("cosign.key"))
            .arg(env.registry.docker_ref(repo_tag)),
    )?;
    Ok(())
}

/// Refused with `code`, `needles` in the message, no rootfs and the store unchanged.
fn assert_pull_refused(
    cdh: &Cdh,
    rt: &tokio::runtime::Runtime,
    image: &str,
    bundle: &str,
    code: ttrpc::Code,
    needles: &[&str],
) -> Result<()> {
    let before = cdh.store_entries();
    let b = cdh.bundle(bundle);
    let (got, msg) = status_of(rt.block_on(pull_image(&cdh.addr(), image, &b)));
    assert_eq!(got, code, "{msg}\n{}", cdh.log());
    for n in needles {
        ensure!(msg.contains(n), "expected {n:?} in the refusal: {msg}");
    }
    ensure!(!b.join("rootfs").exists(), "a refused pull left a rootfs: {msg}");
    ensure!(!b.join("config.json").exists(), "a refused pull left a config.json");
    assert_eq!(cdh.store_entries(), before, "a refused pull changed the store");
    Ok(())
}

#[test]
fn signature_policy_is_enforced_on_every_pull_cached_or_not_from_a_file_or_the_kbs() -> Result<()> {
    let Some(env) = setup()? else { return Ok(()) };
    let repo = "cdh/signed";
    let image = env.push_encrypted("kbs:///default/image-kek/cdh-signed", &format!("{repo}:v1"))?;
    let reference = snapshot(&reference_tree(&env.dir)?)?;
    let scope = format!("{}/{repo}", env.registry.host());
    let signed_by = |key_path: &str| {
        format!(
            r#"{{"default":[{{"type":"reject"}}],"transports":{{"docker":{{"{scope}":[{{"type":"sigstoreSigned","keyPath":"{key_path}","signedIdentity":{{"type":"matchRepository"}}}}]}}}}}}"#
        )
    };
    let policy = env.dir.join("policy.json");
    std::fs::write(&policy, signed_by(&cosign_key("cosign.pub").display().to_string()))?;
    let rt = rt();

    // Unsigned: refused on the manifest digest, before any key or layer is fetched.
    let cdh = env.cdh(&["--signature-policy", &policy.display().to_string()])?;
    assert_pull_refused(
        &cdh,
        &rt,
        &image,
        "unsigned",
        ttrpc::Code::PERMISSION_DENIED,
        &["signature policy refused", &scope, "not signed"],
    )?;
    ensure!(cdh.store_entries().is_empty(), "an unsigned image reached the store");

    // Signed by the policy's key: pulled, the rootfs is the image.
    cloak_sign(&env, &format!("{repo}:v1"))?;
    let b = cdh.bundle("signed");
    let digest = rt
        .block_on(pull_image(&cdh.addr(), &image, &b))
        .map_err(|e| anyhow::anyhow!("{e:?}\n{}", cdh.log()))?;
    ensure!(is_mount_point(&b.join("rootfs")), "rootfs is not a mount");
    assert_eq!(snapshot(&b.join("rootfs"))?, reference, "the mounted rootfs differs from the reference tree");
    rustix::mount::unmount(b.join("rootfs"), rustix::mount::UnmountFlags::empty())?;
    assert_eq!(cdh.store_entries().len(), 3);
    let log = cdh.terminate()?;
    ensure!(log.contains("signature policy accepted the image"), "{log}");

    // The layers are now in the store; a daemon on the same store whose policy
    // rejects the repository still refuses: the cached path is checked too.
    let reject = env.dir.join("reject.json");
    std::fs::write(
        &reject,
        format!(
            r#"{{"default":[{{"type":"insecureAcceptAnything"}}],"transports":{{"docker":{{"{scope}":[{{"type":"reject"}}]}}}}}}"#
        ),
    )?;
    let cdh = env.cdh(&["--signature-policy", &reject.display().to_string()])?;
    assert_pull_refused(
        &cdh,
        &rt,
        &image,
        "cached-rejected",
        ttrpc::Code::PERMISSION_DENIED,
        &["signature policy refused", &digest, &scope, "reject"],
    )?;
    assert_eq!(cdh.store_entries().len(), 3);
    cdh.terminate()?;

    // The policy and its key as KBS resources, named by cdh.toml's
    // image_security_policy_uri: fetched after the daemon's one attestation.
    env.broker
        .put_resource("kbs:///default/cosign-public-key/cdh", &std::fs::read(cosign_key("cosign.pub"))?)?;
    env.broker.put_resource(
        "kbs:///default/security-policy/cdh",
        signed_by("kbs:///default/cosign-public-key/cdh").as_bytes(),
    )?;
    let toml = env.dir.join("cdh.toml");
    std::fs::write(&toml, "[image]\nimage_security_policy_uri = \"kbs:///default/security-policy/cdh\"\n")?;
    let cdh = env.cdh(&["-c", &toml.display().to_string()])?;
    let b = cdh.bundle("kbs-policy");
    let d = rt
        .block_on(pull_image(&cdh.addr(), &image, &b))
        .map_err(|e| anyhow::anyhow!("{e:?}\n{}", cdh.log()))?;
    assert_eq!(d, digest);
    assert_eq!(snapshot(&b.join("rootfs"))?, reference);
    rustix::mount::unmount(b.join("rootfs"), rustix::mount::UnmountFlags::empty())?;
    // An unsigned image under the same KBS policy is refused.
    let unsigned =
        env.push_encrypted("kbs:///default/image-kek/cdh-signed-2", &format!("{repo}:unsigned"))?;
    assert_pull_refused(
        &cdh,
        &rt,
        &unsigned,
        "kbs-policy-unsigned",
        ttrpc::Code::PERMISSION_DENIED,
        &["signature policy refused", "not signed"],
    )?;
    let log = cdh.terminate()?;
    ensure!(
        log.contains("\"attestations\":1"),
        "expected one attestation for policy, key and layers:\n{log}"
    );

    // A policy, or a policy's key, that the KBS does not have: NOT_FOUND, as the KBS
    // answered (UNAVAILABLE is for a KBS that cannot be reached, which is worth a retry).
    env.broker.put_resource(
        "kbs:///default/security-policy/cdh-absent-key",
        signed_by("kbs:///default/cosign-public-key/absent").as_bytes(),
    )?;
    for (n, (uri, needle)) in [
        ("kbs:///default/security-policy/absent", "kbs:///default/security-policy/absent"),
        ("kbs:///default/security-policy/cdh-absent-key", "kbs:///default/cosign-public-key/absent"),
    ]
    .into_iter()
    .enumerate()
    {
        std::fs::write(&toml, format!("[image]\nimage_security_policy_uri = \"{uri}\"\n"))?;
        let cdh = env.cdh(&["-c", &toml.display().to_string()])?;
        let bundle = format!("kbs-absent-{n}");
        assert_pull_refused(
            &cdh,
            &rt,
            &image,
            &bundle,
            ttrpc::Code::NOT_FOUND,
            &["signature policy", needle],
        )?;
        cdh.terminate()?;
    }
    Ok(())
}

#[test]
fn signature_policy_that_cannot_be_loaded_refuses_start_or_the_pull() -> Result<()> {
    if !is_root() {
        eprintln!("SKIP: needs root");
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    // A missing policy file or a bad cdh.toml value: the daemon does not start.
    for (args, needle) in [
        (
            vec!["--signature-policy".to_owned(), dir.join("missing.json").display().to_string()],
            "missing.json",
        ),
        (vec!["--signature-policy".to_owned(), "https://x/policy.json".to_owned()], "--signature-policy"),
    ] {
        let out = Command::new(bin("cloak-cdh"))
            .arg("--socket")
            .arg(format!("unix://{}", dir.join("never.sock").display()))
            .arg("--store")
            .arg(dir.join("store"))
            .args(&args)
            .output()?;
        let err = String::from_utf8_lossy(&out.stderr);
        ensure!(!out.status.success(), "started with {args:?}");
        ensure!(err.contains(needle), "{args:?}: {err}");
    }
    let toml = dir.join("cdh.toml");
    std::fs::write(&toml, "[image]\nimage_security_policy_uri = \"kbs://kbs.example/default/p/t\"\n")?;
    let out = Command::new(bin("cloak-cdh")).arg("-c").arg(&toml).output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success() && err.contains("image.image_security_policy_uri"), "{err}");
    ensure!(!dir.join("never.sock").exists());

    // A kbs:/// policy the KBS cannot serve (down): the pull fails closed, UNAVAILABLE.
    std::fs::write(&toml, "[image]\nimage_security_policy_uri = \"kbs:///default/security-policy/x\"\n")?;
    let cdh = Cdh::start(dir, "http://127.0.0.1:9", "127.0.0.1:9", &["-c", &toml.display().to_string()])?;
    let rt = rt();
    assert_pull_refused(
        &cdh,
        &rt,
        "127.0.0.1:9/app:v1",
        "kbs-down",
        ttrpc::Code::UNAVAILABLE,
        &["signature policy", "kbs:///default/security-policy/x"],
    )?;
    cdh.terminate()?;
    Ok(())
}

/// Issue 24: a private registry as production has them (TLS with a private CA,
/// htpasswd authentication) behind a real proxy (tinyproxy), reached with
/// cdh.toml's `[image]` keys as CoCo spells them: the auth.json comes from the
/// KBS through the daemon's one session at each pull (a replaced one applies at
/// the next pull), the CA from `extra_root_certificates`, the proxy from
/// `image_pull_proxy`, which the KBS connection does not use.
#[test]
fn private_registry_credentials_from_the_kbs_private_ca_and_proxy_from_cdh_toml() -> Result<()> {
    let Some(env) = setup()? else { return Ok(()) };
    let pki = env.dir.join("pki");
    std::fs::create_dir_all(&pki)?;
    let ca = test_support::TestCa::new(&pki, "registry")?;
    let cert = ca.issue("registry", "IP:127.0.0.1")?;
    let (user, password) = ("cdh-puller", "Cdh-reg-pw-24-never-shown");
    let Some(private) = Registry::start_private(user, password, &cert) else { return Ok(()) };
    let Some(proxy) = test_support::Proxy::start() else { return Ok(()) };
    // The encrypted image goes to the plain registry (cloak encrypt), then to the
    // private one with skopeo (its credentials from a file, never argv).
    let image = env.push_encrypted("kbs:///default/image-kek/cdh-private", "cdh/private:v1")?;
    let auth = |u: &str, p: &str| {
        let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"));
        format!(r#"{{"auths":{{"{}":{{"auth":"{b64}"}}}}}}"#, private.host())
    };
    let push_auth = env.dir.join("push-auth.json");
    std::fs::write(&push_auth, auth(user, password))?;
    let certs = pki.join("certs.d");
    std::fs::create_dir_all(&certs)?;
    std::fs::copy(&ca.cert, certs.join("ca.crt"))?;
    run_ok(
        Command::new(test_support::skopeo_193().context("skopeo")?)
            .args(["copy", "--quiet", "--src-tls-verify=false", "--dest-authfile"])
            .arg(&push_auth)
            .arg("--dest-cert-dir")
            .arg(&certs)
            .arg(format!("docker://{image}"))
            .arg(private.docker_ref("cdh/private:v1")),
    )?;
    let private_image = format!("{}/cdh/private:v1", private.host());
    const CREDS: &str = "kbs:///default/credential/cdh";
    env.broker.put_resource(CREDS, auth(user, "Wrong-pw-24-never-shown").as_bytes())?;
    let toml = env.dir.join("cdh.toml");
    std::fs::write(
        &toml,
        format!(
            "[image]\nauthenticated_registry_credentials_uri = \"{CREDS}\"\n\
             image_pull_proxy = {{ https_proxy = \"{}\" }}\n\
             extra_root_certificates = ['''{}''']\n",
            proxy.url(),
            std::fs::read_to_string(&ca.cert)?
        ),
    )?;
    let rt = rt();
    // Without extra_root_certificates: refused, saying the CA is unknown and where to add it.
    let no_ca = env.dir.join("cdh-no-ca.toml");
    std::fs::write(&no_ca, format!("[image]\nauthenticated_registry_credentials_uri = \"{CREDS}\"\n"))?;
    let cdh0 = Cdh::start(
        &env.dir.join("cdh0"),
        &env.broker.url(),
        &env.registry.host(),
        &["-c", &no_ca.display().to_string()],
    )?;
    assert_pull_refused(
        &cdh0,
        &rt,
        &private_image,
        "no-ca",
        ttrpc::Code::INTERNAL,
        &[&private.host(), "unknown CA", "extra_root_certificates"],
    )?;
    drop(cdh0);
    let cdh = env.cdh(&["-c", &toml.display().to_string()])?;
    // The password is in the daemon's memory only: never on its command line.
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", cdh.child.id()))?;
    ensure!(!String::from_utf8_lossy(&cmdline).contains("never-shown"), "a password on the command line");

    // Wrong password: refused naming the registry, no mount, no password anywhere.
    assert_pull_refused(
        &cdh,
        &rt,
        &private_image,
        "wrong",
        ttrpc::Code::INTERNAL,
        &[&private.host(), "401", "were refused", CREDS],
    )?;
    // The right one, replaced in the KBS: read again at the next pull.
    env.broker.put_resource(CREDS, auth(user, password).as_bytes())?;
    let b = cdh.bundle("ok");
    rt.block_on(pull_image(&cdh.addr(), &private_image, &b))
        .map_err(|e| anyhow::anyhow!("{e:?}\n{}", cdh.log()))?;
    ensure!(is_mount_point(&b.join("rootfs")), "rootfs is not a mount");
    let connects: Vec<String> = proxy.connects();
    ensure!(
        connects.iter().any(|l| l.contains(&format!("CONNECT {}", private.host()))),
        "the registry was not reached through the proxy:\n{}",
        proxy.log()
    );
    let kbs_port = format!(":{}", env.broker.port);
    ensure!(!proxy.log().contains(&kbs_port), "the KBS went through the image proxy:\n{}", proxy.log());
    rustix::mount::unmount(b.join("rootfs"), rustix::mount::UnmountFlags::empty())?;

    // image_pull_proxy's no_proxy naming the registry: the same pull goes direct.
    let direct_toml = env.dir.join("cdh-no-proxy.toml");
    std::fs::write(
        &direct_toml,
        std::fs::read_to_string(&toml)?.replace(
            &format!("https_proxy = \"{}\" }}", proxy.url()),
            &format!("https_proxy = \"{}\", no_proxy = \"192.0.2.1,127.0.0.1\" }}", proxy.url()),
        ),
    )?;
    ensure!(std::fs::read_to_string(&direct_toml)?.contains("no_proxy"), "the no_proxy edit did not apply");
    let before = proxy.connects().len();
    let direct = Cdh::start(
        &env.dir.join("cdh-direct"),
        &env.broker.url(),
        &env.registry.host(),
        &["-c", &direct_toml.display().to_string()],
    )?;
    let bd = direct.bundle("direct");
    rt.block_on(pull_image(&direct.addr(), &private_image, &bd))
        .map_err(|e| anyhow::anyhow!("{e:?}\n{}", direct.log()))?;
    ensure!(is_mount_point(&bd.join("rootfs")), "rootfs is not a mount");
    ensure!(
        proxy.connects().len() == before,
        "no_proxy names the registry, yet the proxy saw it:\n{}",
        proxy.log()
    );
    rustix::mount::unmount(bd.join("rootfs"), rustix::mount::UnmountFlags::empty())?;
    drop(direct);

    // No entry for this registry: the 401 says so and where it looked.
    env.broker.put_resource(CREDS, br#"{"auths":{"other.example":{"auth":"eDp5"}}}"#)?;
    assert_pull_refused(
        &cdh,
        &rt,
        &private_image,
        "none",
        ttrpc::Code::INTERNAL,
        &["401", &format!("no credentials were found for {}", private.host())],
    )?;
    // Nor on disk: not in the store, the bundles or anything else the daemon wrote.
    let cdh_dir = env.dir.join("cdh");
    for f in list_tree(&cdh_dir) {
        let p = cdh_dir.join(&f);
        if p.is_file() && !p.is_symlink() {
            let bytes = std::fs::read(&p).unwrap_or_default();
            ensure!(
                !bytes.windows(11).any(|w| w == b"never-shown"),
                "a password is on disk in {}",
                p.display()
            );
        }
    }
    let log = cdh.terminate()?;
    ensure!(!log.contains("never-shown"), "a password is in cloak-cdh's log");
    Ok(())
}
