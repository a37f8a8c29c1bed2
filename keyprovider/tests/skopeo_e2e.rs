//! Issue 4 item 8 with the real peers: skopeo 1.18 encrypts through
//! cloak-keyprovider (gRPC and cmd), pushes to a real registry, and decrypts
//! through cloak-keyprovider attesting (sample evidence) to the real cloak-kbs.
//! A policy denial makes skopeo fail.
//!
//! Peers: docker-registry and skopeo 1.18 per the PEERS CONTRACT; the broker at
//! `<repo>/target/debug/cloak-kbs` (`cargo build -p cloak-kbs-server`). Missing → skip,
//! unless CLOAK_REQUIRE_PEERS=1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use test_support::{free_port, layout_manifest, peers_required, wait_for_port, Daemon, Registry};

const BIN: &str = env!("CARGO_BIN_EXE_cloak-keyprovider");
const PLAIN_LAYER: &str = "sha256:3c4b0491ad42ed94682815ca7a46e4a5595792d857cec1410833a9d226bb948e";

fn broker() -> Option<PathBuf> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/cloak-kbs");
    if p.exists() {
        return Some(p);
    }
    assert!(!peers_required(), "{} missing (cargo build -p cloak-kbs-server)", p.display());
    eprintln!("SKIP: {} missing (cargo build -p cloak-kbs-server)", p.display());
    None
}

struct Env {
    dir: tempfile::TempDir,
    registry: Registry,
    skopeo: PathBuf,
    kbs_url: String,
    admin_key: PathBuf,
    policy: PathBuf,
    _kbs: Daemon,
}

const ALLOW: &str =
    "default_policy: {required_attestation: {sample: {allow: true}}, released_resources: [\"default/*\"]}\n";
const DENY: &str =
    "default_policy: {required_attestation: {sample: {allow: true}}, released_resources: [\"other/*\"]}\n";

fn setup() -> Option<Env> {
    let skopeo = test_support::skopeo_118()?;
    let kbs_bin = broker()?;
    let registry = Registry::start()?;
    let dir = tempfile::tempdir().unwrap();
    let admin_key = dir.path().join("admin.pem");
    let admin_pub = dir.path().join("admin.pub");
    ok(Command::new(&kbs_bin)
        .arg("gen-admin-key")
        .arg("--out")
        .arg(&admin_key)
        .arg("--public-out")
        .arg(&admin_pub));
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, ALLOW).unwrap();
    let resources = dir.path().join("resources");
    std::fs::create_dir(&resources).unwrap();
    let port = free_port();
    let log = std::fs::File::create(dir.path().join("kbs.log")).unwrap();
    let kbs = Daemon::spawn(
        "cloak-kbs",
        Command::new(&kbs_bin)
            .arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--policy")
            .arg(&policy)
            .arg("--resources")
            .arg(&resources)
            .arg("--admin-public-key")
            .arg(&admin_pub)
            .stdout(log.try_clone().unwrap())
            .stderr(log),
    )
    .unwrap();
    wait_for_port(port, Duration::from_secs(20)).unwrap();
    Some(Env {
        dir,
        registry,
        skopeo,
        kbs_url: format!("http://127.0.0.1:{port}"),
        admin_key,
        policy,
        _kbs: kbs,
    })
}

fn ok(cmd: &mut Command) -> Output {
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn plain_layout(dir: &Path) -> PathBuf {
    let dst = dir.join("plain");
    test_support::copy_tree(&PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata/plain-oci"), &dst)
        .unwrap();
    dst
}

fn skopeo(env: &Env, config: &Path) -> Command {
    let mut c = Command::new(&env.skopeo);
    c.env("OCICRYPT_KEYPROVIDER_CONFIG", config).arg("--insecure-policy").arg("--tmpdir").arg(env.dir.path());
    c
}

fn encrypt(env: &Env, config: &Path, recipient: &str, tag: &str) -> String {
    let plain = plain_layout(env.dir.path());
    let dst = env.registry.docker_ref(&format!("enc:{tag}"));
    ok(skopeo(env, config)
        .arg("copy")
        .arg("--dest-tls-verify=false")
        .arg("--encryption-key")
        .arg(recipient)
        .arg(format!("oci:{}:v1", plain.display()))
        .arg(&dst));
    dst
}

fn decrypt(env: &Env, config: &Path, src: &str, out: &str) -> Result<PathBuf, String> {
    let dst = env.dir.path().join(out);
    let o = skopeo(env, config)
        .arg("copy")
        .arg("--src-tls-verify=false")
        .arg("--decryption-key")
        .arg("provider:attestation-agent")
        .arg(src)
        .arg(format!("oci:{}:v1", dst.display()))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    if o.status.success() {
        Ok(dst)
    } else {
        Err(String::from_utf8_lossy(&o.stderr).into_owned())
    }
}

fn check_pushed_is_encrypted(env: &Env, src: &str, kid: &str) {
    let inspect =
        ok(Command::new(&env.skopeo).arg("inspect").arg("--raw").arg("--tls-verify=false").arg(src));
    let m: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let layer = &m["layers"][0];
    assert_eq!(layer["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip+encrypted");
    let ann = layer["annotations"]["org.opencontainers.image.enc.keys.provider.attestation-agent"]
        .as_str()
        .unwrap();
    use base64::Engine as _;
    let packet = base64::engine::general_purpose::STANDARD.decode(ann).unwrap();
    let p = keyprovider::AnnotationPacket::parse(&packet).unwrap();
    assert_eq!(p.kid, kid);
    assert_eq!(p.wrap_type, "A256GCM");
}

fn decrypted_layer(dir: &Path) -> String {
    let m = layout_manifest(dir, "v1").unwrap();
    assert!(m["layers"][0]["annotations"].get("org.opencontainers.image.enc.pubopts").is_none());
    m["layers"][0]["digest"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_grpc_encrypt_and_decrypt_through_kbs_then_policy_denial() {
    let Some(env) = setup() else { return };
    let kid = "kbs:///default/key/1";
    let kek = env.dir.path().join("kek");
    let kek_bytes: [u8; 32] = rand::random();
    std::fs::write(&kek, kek_bytes).unwrap();
    // The KEK is provisioned out of band (as with coco_keyprovider's keypath flow):
    // straight into the broker's file store.
    let res = env.dir.path().join("resources/default/key");
    std::fs::create_dir_all(&res).unwrap();
    std::fs::write(res.join("1"), kek_bytes).unwrap();

    let (_kp, cfg) = start_grpc_kp(&env, "kp1");
    let src = encrypt(
        &env,
        &cfg,
        &format!("provider:attestation-agent:keyid={kid}::keypath={}::algorithm=A256GCM", kek.display()),
        "grpc",
    );
    check_pushed_is_encrypted(&env, &src, kid);
    let out = decrypt(&env, &cfg, &src, "dec-grpc").unwrap();
    assert_eq!(decrypted_layer(&out), PLAIN_LAYER, "decrypted layer is identical to the source");

    // Policy no longer releases default/*: a fresh provider (empty KEK cache) must fail.
    std::fs::write(&env.policy, DENY).unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (_kp2, cfg2) = start_grpc_kp(&env, "kp2");
    let err = decrypt(&env, &cfg2, &src, "dec-denied").unwrap_err();
    assert!(err.contains("PermissionDenied") || err.contains("denied"), "skopeo error: {err}");
    assert!(
        !env.dir.path().join("dec-denied/index.json").exists()
            || layout_manifest(&env.dir.path().join("dec-denied"), "v1").is_err(),
        "nothing decrypted is written"
    );
    let log = std::fs::read_to_string(env.dir.path().join("kp2.log")).unwrap();
    assert!(!log.contains(&hex::encode(kek_bytes)), "the KEK never appears in logs");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_cmd_encrypt_with_generated_kek_and_decrypt() {
    let Some(env) = setup() else { return };
    let cfg = env.dir.path().join("cmd.json");
    let config = serde_json::json!({"key-providers": {"attestation-agent": {"cmd": {"path": BIN, "args": [
        "exec", "--kbs-url", env.kbs_url, "--attester", "sample", "--kbs-admin-key", env.admin_key]}}}});
    std::fs::write(&cfg, config.to_string()).unwrap();
    // No keypath: cloak-keyprovider generates the KEK and registers it through the admin API.
    let kid = "kbs:///default/image-kek/cmd-test";
    let src = encrypt(&env, &cfg, &format!("provider:attestation-agent:keyid={kid}"), "cmd");
    check_pushed_is_encrypted(&env, &src, kid);
    let out = decrypt(&env, &cfg, &src, "dec-cmd").unwrap();
    assert_eq!(decrypted_layer(&out), PLAIN_LAYER);
}

/// `keygen` registers the private JWK; fetched back after (sample) attestation it
/// is the same key. Needs only the broker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keygen_private_key_comes_back_from_the_kbs_after_attestation() {
    let Some(kbs_bin) = broker() else { return };
    let dir = tempfile::tempdir().unwrap();
    let (admin_key, admin_pub) = (dir.path().join("admin.pem"), dir.path().join("admin.pub"));
    ok(Command::new(&kbs_bin)
        .arg("gen-admin-key")
        .arg("--out")
        .arg(&admin_key)
        .arg("--public-out")
        .arg(&admin_pub));
    std::fs::write(dir.path().join("policy.yaml"), ALLOW).unwrap();
    let port = free_port();
    let _kbs = Daemon::spawn(
        "cloak-kbs",
        Command::new(&kbs_bin)
            .arg("serve")
            .arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--policy")
            .arg(dir.path().join("policy.yaml"))
            .arg("--resources")
            .arg(dir.path().join("res"))
            .arg("--admin-public-key")
            .arg(&admin_pub)
            .stderr(Stdio::null()),
    )
    .unwrap();
    wait_for_port(port, Duration::from_secs(20)).unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let admin = kbs_client::AdminClient::new(&url, &std::fs::read(&admin_key).unwrap()).unwrap();
    let uri: kbs_client::ResourceUri = "kbs:///default/image-key/app".parse().unwrap();
    let key = keyprovider::keygen(&admin, &uri, false).await.unwrap();
    let attester = kbs_client::make_attester(
        kbs_client::AttesterKind::Sample,
        &kbs_client::AttesterOptions { allow_sample: true, ..Default::default() },
    )
    .unwrap();
    let client = kbs_client::KbsClient::new(&url, attester, kbs_client::ClientConfig::default()).unwrap();
    let fetched = client.get_resource(&uri).await.unwrap();
    assert_eq!(fetched.as_slice(), key.private_jwk.as_bytes());
    assert_eq!(client.attestation_count(), 1);
}

/// An OCI layout (tag `v1`) of `n` small random gzip'd tar layers, built with the
/// system `tar` and `gzip` (no extra crates). Returns the layout and its layer digests.
fn random_layout(dir: &Path, name: &str, n: usize) -> (PathBuf, Vec<String>) {
    let dst = dir.join(name);
    let blobs = dst.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let put = |bytes: &[u8]| -> String {
        let d = test_support::sha256_digest(bytes);
        std::fs::write(test_support::blob_path(&dst, &d), bytes).unwrap();
        d
    };
    let (mut layers, mut diff_ids, mut digests) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        let src = dir.join(format!("{name}-src-{i}"));
        std::fs::create_dir_all(&src).unwrap();
        let content: Vec<u8> = (0..4096).map(|_| rand::random::<u8>()).collect();
        std::fs::write(src.join(format!("file-{i}")), content).unwrap();
        let tar = ok(Command::new("tar")
            .args([
                "--format=ustar",
                "--mtime=@0",
                "--owner=0",
                "--group=0",
                "--numeric-owner",
                "-cf",
                "-",
                "-C",
            ])
            .arg(&src)
            .arg(format!("file-{i}")))
        .stdout;
        let tar_path = dir.join(format!("{name}-{i}.tar"));
        std::fs::write(&tar_path, &tar).unwrap();
        let gz = ok(Command::new("gzip").args(["-n", "-c"]).arg(&tar_path)).stdout;
        diff_ids.push(test_support::sha256_digest(&tar));
        let d = put(&gz);
        layers.push(serde_json::json!({"digest": d, "size": gz.len(), "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip"}));
        digests.push(d);
    }
    let config =
        serde_json::json!({"created": "1970-01-01T00:00:00Z", "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/bin/sh"]}, "rootfs": {"type": "layers", "diff_ids": diff_ids}})
        .to_string();
    let config_digest = put(config.as_bytes());
    let manifest = serde_json::json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"digest": config_digest, "size": config.len(), "mediaType": "application/vnd.oci.image.config.v1+json"},
        "layers": layers}).to_string();
    let manifest_digest = put(manifest.as_bytes());
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{"digest": manifest_digest, "size": manifest.len(),
        "mediaType": "application/vnd.oci.image.manifest.v1+json", "annotations": {"org.opencontainers.image.ref.name": "v1"}}]});
    std::fs::write(dst.join("index.json"), index.to_string()).unwrap();
    std::fs::write(dst.join("oci-layout"), r#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    (dst, digests)
}

fn encrypt_layout(env: &Env, config: &Path, recipient: &str, tag: &str, layout: &Path) -> String {
    let dst = env.registry.docker_ref(&format!("enc:{tag}"));
    ok(skopeo(env, config)
        .arg("copy")
        .arg("--dest-tls-verify=false")
        .arg("--encryption-key")
        .arg(recipient)
        .arg(format!("oci:{}:v1", layout.display()))
        .arg(&dst));
    dst
}

/// Every pushed layer is encrypted and names `kid`; returns how many layers there are.
fn check_all_pushed_layers_encrypted(env: &Env, src: &str, kid: &str) -> usize {
    let inspect =
        ok(Command::new(&env.skopeo).arg("inspect").arg("--raw").arg("--tls-verify=false").arg(src));
    let m: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    let layers = m["layers"].as_array().unwrap();
    use base64::Engine as _;
    for layer in layers {
        assert_eq!(layer["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip+encrypted");
        let ann = layer["annotations"]["org.opencontainers.image.enc.keys.provider.attestation-agent"]
            .as_str()
            .unwrap();
        let packet = base64::engine::general_purpose::STANDARD.decode(ann).unwrap();
        let p = keyprovider::AnnotationPacket::parse(&packet).unwrap();
        assert_eq!(p.kid, kid);
    }
    layers.len()
}

/// The decrypted layout's layers: none still carries encryption annotations.
fn decrypted_layers(dir: &Path) -> Vec<String> {
    let m = layout_manifest(dir, "v1").unwrap();
    for l in m["layers"].as_array().unwrap() {
        assert_eq!(l["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip");
        assert!(l["annotations"].get("org.opencontainers.image.enc.pubopts").is_none());
    }
    test_support::layer_digests(&m)
}

fn start_grpc_kp(env: &Env, name: &str) -> (Daemon, PathBuf) {
    let port = free_port();
    let log = std::fs::File::create(env.dir.path().join(format!("{name}.log"))).unwrap();
    let d = Daemon::spawn(
        name,
        Command::new(BIN)
            .args([
                "serve",
                "--grpc",
                &format!("127.0.0.1:{port}"),
                "--kbs-url",
                &env.kbs_url,
                "--attester",
                "sample",
            ])
            .arg("--kbs-admin-key")
            .arg(&env.admin_key)
            .stdout(log.try_clone().unwrap())
            .stderr(log),
    )
    .unwrap();
    wait_for_port(port, Duration::from_secs(20)).unwrap();
    let cfg = env.dir.path().join(format!("{name}.json"));
    std::fs::write(
        &cfg,
        format!(r#"{{"key-providers":{{"attestation-agent":{{"grpc":"127.0.0.1:{port}"}}}}}}"#),
    )
    .unwrap();
    (d, cfg)
}

async fn read_back_kek(env: &Env, kid: &str) -> Option<Vec<u8>> {
    let admin = kbs_client::AdminClient::new(&env.kbs_url, &std::fs::read(&env.admin_key).unwrap()).unwrap();
    let uri: kbs_client::ResourceUri = kid.parse().unwrap();
    admin.read_back(&uri).await.unwrap().map(|k| k.to_vec())
}

/// skopeo's cmd mode runs one `cloak-keyprovider exec` per layer: every one of them
/// must use the one KEK registered under the id, or the image cannot be decrypted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_cmd_generated_kek_on_a_five_layer_image_decrypts() {
    let Some(env) = setup() else { return };
    let cfg = env.dir.path().join("cmd.json");
    let config = serde_json::json!({"key-providers": {"attestation-agent": {"cmd": {"path": BIN, "args": [
        "exec", "--kbs-url", env.kbs_url, "--attester", "sample", "--kbs-admin-key", env.admin_key]}}}});
    std::fs::write(&cfg, config.to_string()).unwrap();
    let (plain, originals) = random_layout(env.dir.path(), "five", 5);
    assert_eq!(originals.len(), 5);
    let kid = "kbs:///default/key/generated";
    assert!(read_back_kek(&env, kid).await.is_none(), "no KEK before the first encryption");
    let src =
        encrypt_layout(&env, &cfg, &format!("provider:attestation-agent:keyid={kid}"), "cmd-five", &plain);
    assert_eq!(check_all_pushed_layers_encrypted(&env, &src, kid), 5);
    let kek = read_back_kek(&env, kid).await.expect("the generated KEK is registered");
    assert_eq!(kek.len(), 32);
    let out = decrypt(&env, &cfg, &src, "dec-cmd-five").unwrap();
    assert_eq!(decrypted_layers(&out), originals, "all 5 layers decrypt to the originals");
    for d in &originals {
        assert_eq!(
            std::fs::read(test_support::blob_path(&out, d)).unwrap(),
            std::fs::read(test_support::blob_path(&plain, d)).unwrap()
        );
    }
    assert_eq!(read_back_kek(&env, kid).await.unwrap(), kek, "the registered KEK was never replaced");
}

/// A restarted gRPC provider (empty caches) encrypting under the same generated-KEK
/// id reuses the registered KEK, so images encrypted before the restart still decrypt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn skopeo_grpc_provider_restarted_between_two_encryptions_reuses_the_kek() {
    let Some(env) = setup() else { return };
    let kid = "kbs:///default/image-kek/restart";
    let recipient = format!("provider:attestation-agent:keyid={kid}");

    let (mut kp1, cfg1) = start_grpc_kp(&env, "kp-restart-1");
    let src_a = encrypt(&env, &cfg1, &recipient, "restart-a");
    check_pushed_is_encrypted(&env, &src_a, kid);
    let kek_before = read_back_kek(&env, kid).await.expect("the generated KEK is registered");
    kp1.stop();

    let (_kp2, cfg2) = start_grpc_kp(&env, "kp-restart-2");
    let (plain_b, originals_b) = random_layout(env.dir.path(), "image-b", 3);
    let src_b = encrypt_layout(&env, &cfg2, &recipient, "restart-b", &plain_b);
    assert_eq!(check_all_pushed_layers_encrypted(&env, &src_b, kid), 3);
    let kek_after = read_back_kek(&env, kid).await.unwrap();
    assert_eq!(kek_before, kek_after, "the restarted provider reused the registered KEK");

    let out_a = decrypt(&env, &cfg2, &src_a, "dec-restart-a").expect("image A (before the restart) decrypts");
    assert_eq!(decrypted_layer(&out_a), PLAIN_LAYER);
    let out_b = decrypt(&env, &cfg2, &src_b, "dec-restart-b").expect("image B (after the restart) decrypts");
    assert_eq!(decrypted_layers(&out_b), originals_b);
    for log in ["kp-restart-1.log", "kp-restart-2.log"] {
        let log = std::fs::read_to_string(env.dir.path().join(log)).unwrap();
        assert!(!log.contains(&hex::encode(&kek_before)), "the KEK never appears in logs");
    }
}
