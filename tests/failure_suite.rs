//! The end-to-end failure suite (issue 6, item 2): one test per failure mode of a
//! confidential deployment, each run against the real binaries (`cloak`,
//! `cloak-kbs`, `cloak-pull`) and the real registry (Debian's docker-registry).
//!
//! Every test asserts two things: the error an operator sees says clearly what went
//! wrong, and nothing was left behind (no `BUNDLE/rootfs`, no stray files in the
//! bundle or in `$TMPDIR`). Where the threat model says a key must not even be
//! requested, the broker's `/metrics` are the witness.
//!
//! A missing docker-registry skips a test with a printed reason, unless
//! `CLOAK_REQUIRE_PEERS=1` (set by `ci/test.sh`), where it fails.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use test_support::*;

fn plain_image() -> String {
    format!("oci:{}:v1", workspace_root().join("testdata/golden/three-layers/plain-oci").display())
}

/// Sum of every sample of a Prometheus counter (all label sets); 0 when absent.
fn metric_total(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            if !(rest.starts_with('{') || rest.starts_with(' ')) {
                return None;
            }
            l.rsplit(' ').next()?.parse::<f64>().ok()
        })
        .sum()
}

/// A `cloak-kbs serve` with its policy file, resource directory and admin key in a
/// private "host" directory (never one a guest-side check looks into).
/// The broker of these tests, with what they ask of it besides what every test's has.
type Broker = LocalBroker;

trait BrokerOps {
    fn metrics(&self) -> Result<String>;
    fn replace_policy(&self, policy: &str) -> Result<()>;
}

impl BrokerOps for LocalBroker {
    fn metrics(&self) -> Result<String> {
        let a = http_get(self.port, "/metrics", None)?;
        ensure!(a.status == 200, "/metrics answered {}", a.status);
        Ok(String::from_utf8_lossy(&a.body).into_owned())
    }

    /// Replaces the policy file as an operator would (write + rename), sends SIGHUP
    /// and waits until the running broker logs that it reloaded: no restart.
    fn replace_policy(&self, policy: &str) -> Result<()> {
        let reloads = |s: &str| s.matches("policy reloaded").count();
        let before = reloads(&self.log());
        let path = LocalBroker::policy_path(&self.dir);
        let tmp = path.with_extension("yaml.new");
        std::fs::write(&tmp, policy)?;
        std::fs::rename(&tmp, &path)?;
        run_bounded_ok(Command::new("kill").arg("-HUP").arg(self.pid().to_string()))?;
        let start = Instant::now();
        while reloads(&self.log()) <= before {
            ensure!(
                start.elapsed() < Duration::from_secs(60),
                "the broker did not reload its policy after SIGHUP:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    }
}

// ---- the flow's steps -----------------------------------------------------------------

/// `cloak encrypt` of the plain three-layer image for a KEK that cloak generates and
/// registers in the broker as `kek_uri`.
fn encrypt_for_kbs(broker: &Broker, kek_uri: &str, dest: &str) -> Result<()> {
    broker.encrypt(kek_uri, &plain_image(), dest)
}

/// The guest side: `cloak-pull --kbs URL --attester KIND IMAGE BUNDLE`, with its
/// `$TMPDIR` pointed at `tmp` so stray temporary files would be seen.
fn pull(kbs_url: &str, attester: &str, image: &str, bundle: &Path, tmp: &Path) -> Result<Ran> {
    pull_with(kbs_url, attester, image, bundle, tmp, &[])
}

/// [`pull`] with extra `cloak-pull` options.
fn pull_with(
    kbs_url: &str,
    attester: &str,
    image: &str,
    bundle: &Path,
    tmp: &Path,
    extra: &[&str],
) -> Result<Ran> {
    std::fs::create_dir_all(tmp)?;
    run_bounded(
        Command::new(bin("cloak-pull"))
            .args(["--quiet", "--kbs", kbs_url, "--attester", attester, "--src-tls-verify=false"])
            .args(extra)
            .arg(image)
            .arg(bundle)
            .env("TMPDIR", tmp),
        CMD_LIMIT,
    )
}

/// A failed pull must leave no rootfs, nothing else in the bundle directory (it may
/// exist, empty, because the pull creates it first), and nothing in `$TMPDIR`.
fn assert_nothing_left(bundle: &Path, tmp: &Path) {
    assert!(!bundle.join("rootfs").exists(), "a failed pull left {}", bundle.join("rootfs").display());
    let left = list_tree(bundle);
    assert!(left.is_empty(), "a failed pull left files in the bundle {}: {left:?}", bundle.display());
    let left = list_tree(tmp);
    assert!(left.is_empty(), "a failed pull left files in TMPDIR {}: {left:?}", tmp.display());
}

/// A successful pull produced the image's files.
fn assert_rootfs(bundle: &Path) {
    let rootfs = bundle.join("rootfs");
    let files = list_tree(&rootfs);
    assert!(!files.is_empty(), "no rootfs content at {}", rootfs.display());
}

// ---- the suite -------------------------------------------------------------------------

/// Row 1: no TEE on the machine and `--attester auto` → "no TEE found", and the
/// broker never sees an attestation attempt nor releases anything.
#[test]
fn no_tee_with_attester_auto_fails_clearly_and_requests_no_key() -> Result<()> {
    for tee in ["/dev/sev-guest", "/sys/kernel/config/tsm/report", "/dev/tdx_guest"] {
        if Path::new(tee).exists() {
            eprintln!("SKIP: {tee} exists: this machine may have a TEE, so `auto` would not fail");
            return Ok(());
        }
    }
    let Some(reg) = Registry::start_with_access_log() else {
        return Ok(());
    };
    let host = tempfile::tempdir()?;
    let broker = Broker::start(host.path(), free_port(), ALLOW_SAMPLE)?;
    let image = reg.docker_ref("app:enc");
    encrypt_for_kbs(&broker, "kbs:///default/image-kek/notee", &image)?;

    let guest = tempfile::tempdir()?;
    let (bundle, tmp) = (guest.path().join("bundle"), guest.path().join("tmp"));
    let r = pull(&broker.url(), "auto", &image, &bundle, &tmp)?;
    assert!(!r.ok(), "the pull succeeded without a TEE: {}", r.describe());
    eprintln!("failed as expected: {}", r.stderr.trim());
    assert!(r.stderr.contains("no TEE found"), "unclear error: {}", r.describe());
    assert_nothing_left(&bundle, &tmp);

    let m = broker.metrics()?;
    for name in [
        "coco_attestation_attempts_total",
        "coco_attestation_success_total",
        "coco_attestation_failure_total",
        "coco_kbs_resource_releases_total",
        "coco_kbs_resource_denials_total",
    ] {
        assert_eq!(metric_total(&m, name), 0.0, "{name} moved although no key may be requested:\n{m}");
    }

    // Control: the same broker does count a real attempt, so the zeros above mean
    // "not asked", not "not measured".
    let ok_bundle = guest.path().join("bundle-sample");
    let r = pull(&broker.url(), "sample", &image, &ok_bundle, &tmp)?;
    assert!(r.ok(), "the control pull with sample evidence failed: {}", r.describe());
    assert_rootfs(&ok_bundle);
    let m = broker.metrics()?;
    assert!(metric_total(&m, "coco_attestation_attempts_total") >= 1.0, "{m}");
    assert!(metric_total(&m, "coco_kbs_resource_releases_total") >= 1.0, "{m}");
    Ok(())
}

/// Row 2: the broker is down → bounded retries within `--kbs-timeout`, then a
/// fail-closed error naming the KBS step; once the broker is up on that address the
/// same pull succeeds.
#[test]
fn broker_unavailable_fails_closed_after_bounded_retries_then_recovers() -> Result<()> {
    let Some(reg) = Registry::start_with_access_log() else {
        return Ok(());
    };
    let host = tempfile::tempdir()?;
    let image = reg.docker_ref("app:enc");
    {
        // Encryption registers the KEK through a broker that then goes away.
        let mut setup = Broker::start(host.path(), free_port(), ALLOW_SAMPLE)?;
        encrypt_for_kbs(&setup, "kbs:///default/image-kek/outage", &image)?;
        setup.stop();
    }

    // The guest's broker address: nothing listens there yet.
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let guest = tempfile::tempdir()?;
    let (bundle, tmp) = (guest.path().join("bundle"), guest.path().join("tmp"));
    let r = pull_with(&url, "sample", &image, &bundle, &tmp, &["--kbs-timeout", "3"])?;
    assert!(!r.ok(), "the pull succeeded with the broker down: {}", r.describe());
    eprintln!("failed as expected: {}", r.stderr.trim());
    // e.g. "KBS unavailable: the broker at http://127.0.0.1:PORT did not answer the auth
    // request within 3 s (9 attempts): ... Connection refused"
    let said = format!("KBS unavailable: the broker at {url} did not answer the auth request within 3 s (");
    assert!(
        r.stderr.contains(&said),
        "the error does not name the broker, the KBS step and the deadline: {}",
        r.describe()
    );
    let attempts: u32 = r
        .stderr
        .split(said.as_str())
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("no attempt count in: {}", r.stderr))?;
    assert!(attempts >= 2, "the client gave up without retrying: {}", r.describe());
    // Bounded: --kbs-timeout (3 s) ends the retries, so "KBS down" fails fast; the
    // bound leaves room for a loaded machine, far below the default 30 s deadline.
    assert!(
        r.elapsed < Duration::from_secs(15),
        "retries were not bounded by --kbs-timeout: {}",
        r.describe()
    );
    assert!(
        r.stderr.contains("layer 0"),
        "the error does not say which layer needed the key: {}",
        r.describe()
    );
    assert_nothing_left(&bundle, &tmp);

    // The broker comes back on the same address with the same resources.
    let broker = Broker::start(host.path(), port, ALLOW_SAMPLE)?;
    let r = pull(&broker.url(), "sample", &image, &bundle, &tmp)?;
    assert!(r.ok(), "the pull after the broker returned failed: {}", r.describe());
    assert_rootfs(&bundle);
    assert!(metric_total(&broker.metrics()?, "coco_kbs_resource_releases_total") >= 1.0);
    Ok(())
}

/// Row 3: after a firmware "upgrade" the policy in force no longer accepts the
/// guest's evidence → "attestation rejected"; the operator updates the policy file
/// (SIGHUP, no restart) → the same pull is allowed.
///
/// Sample evidence is fixed (`{"svn":"1",...}`) and the broker's policy has no field
/// that measures it (only `sample.allow`), so the upgrade is simulated the only way
/// the policy can express: the strict policy pins an SNP launch measurement (the
/// "old firmware") and does not accept the evidence the upgraded guest presents
/// (`sample.allow: false`); the updated policy accepts it (`sample.allow: true`).
#[test]
fn policy_too_strict_after_firmware_upgrade_denies_then_updated_policy_allows() -> Result<()> {
    let Some(reg) = Registry::start_with_access_log() else {
        return Ok(());
    };
    let host = tempfile::tempdir()?;
    let old_firmware = "a1".repeat(48);
    let strict = format!(
        "# Pins the launch measurement of the firmware the fleet ran before the upgrade.\n\
         default_policy:\n  required_attestation:\n    sev_snp: {{measurement: \"{old_firmware}\"}}\n    \
         sample: {{allow: false}}\n  released_resources: [\"default/*\"]\n"
    );
    let broker = Broker::start(host.path(), free_port(), &strict)?;
    let image = reg.docker_ref("app:enc");
    encrypt_for_kbs(&broker, "kbs:///default/image-kek/fw", &image)?;

    let guest = tempfile::tempdir()?;
    let (bundle, tmp) = (guest.path().join("bundle"), guest.path().join("tmp"));
    let r = pull(&broker.url(), "sample", &image, &bundle, &tmp)?;
    assert!(!r.ok(), "the strict policy let the upgraded guest in: {}", r.describe());
    eprintln!("failed as expected: {}", r.stderr.trim());
    assert!(r.stderr.contains("attestation rejected"), "unclear refusal: {}", r.describe());
    assert!(r.stderr.contains("sample_not_allowed"), "the refusal does not say why: {}", r.describe());
    assert_nothing_left(&bundle, &tmp);
    let m = broker.metrics()?;
    assert!(metric_total(&m, "coco_attestation_failure_total") >= 1.0, "{m}");
    assert_eq!(metric_total(&m, "coco_kbs_resource_releases_total"), 0.0, "a key was released:\n{m}");

    broker.replace_policy(&format!(
        "# Updated after the upgrade: the new evidence is accepted.\n\
         default_policy:\n  required_attestation:\n    sev_snp: {{measurement: \"{old_firmware}\"}}\n    \
         sample: {{allow: true}}\n  released_resources: [\"default/*\"]\n"
    ))?;
    // The very same pull (same command, same bundle directory) now succeeds.
    let r = pull(&broker.url(), "sample", &image, &bundle, &tmp)?;
    assert!(r.ok(), "the pull under the updated policy failed: {}", r.describe());
    assert_rootfs(&bundle);
    assert_eq!(
        broker.log().matches("cloak-kbs listening").count(),
        1,
        "the broker was restarted; the policy must apply without a restart"
    );
    assert!(metric_total(&broker.metrics()?, "coco_kbs_resource_releases_total") >= 1.0);
    Ok(())
}

/// Row 4: the KBS holds the wrong KEK for the image → the error names the layer
/// (index and digest) and the key id, and nothing is unpacked.
#[test]
fn wrong_kek_registered_error_names_the_layer_and_the_key_id() -> Result<()> {
    let Some(reg) = Registry::start_with_access_log() else {
        return Ok(());
    };
    let host = tempfile::tempdir()?;
    let broker = Broker::start(host.path(), free_port(), ALLOW_SAMPLE)?;
    let image = reg.docker_ref("app:enc");
    let kid = "kbs:///default/image-kek/x";
    encrypt_for_kbs(&broker, kid, &image)?;
    // Someone overwrites the KEK with 32 other bytes.
    let wrong: Vec<u8> = (0u8..32).map(|i| i.wrapping_mul(37).wrapping_add(11)).collect();
    broker.put_resource(kid, &wrong)?;

    let (_, manifest) = reg.manifest("app", "enc")?;
    let manifest: serde_json::Value = serde_json::from_slice(&manifest)?;
    let layers = layer_digests(&manifest);
    let first = layers.first().context("the encrypted image has no layers")?;

    let guest = tempfile::tempdir()?;
    let (bundle, tmp) = (guest.path().join("bundle"), guest.path().join("tmp"));
    let r = pull(&broker.url(), "sample", &image, &bundle, &tmp)?;
    assert!(!r.ok(), "the pull succeeded with the wrong KEK: {}", r.describe());
    eprintln!("failed as expected: {}", r.stderr.trim());
    assert!(
        r.stderr.contains(&format!("layer 0 ({first})")),
        "the error does not name the layer: {}",
        r.describe()
    );
    assert!(r.stderr.contains(kid), "the error does not name the key id: {}", r.describe());
    assert!(r.stderr.contains("wrong KEK"), "the error does not say what is wrong: {}", r.describe());
    assert!(!r.stderr.contains(&hex::encode(&wrong)), "the error leaks the KEK");
    assert_nothing_left(&bundle, &tmp);
    Ok(())
}

/// Row 5: a pull pinned by digest where the registry serves another manifest under
/// that digest → refused before any layer (or key) is fetched.
#[test]
fn substituted_manifest_under_pinned_digest_is_refused_before_any_layer_fetch() -> Result<()> {
    let Some(reg) = Registry::start_with_access_log() else {
        return Ok(());
    };
    let host = tempfile::tempdir()?;
    let broker = Broker::start(host.path(), free_port(), ALLOW_SAMPLE)?;
    encrypt_for_kbs(&broker, "kbs:///default/image-kek/approved", &reg.docker_ref("app:approved"))?;
    // The attacker's image: same files, its own key, hence another manifest.
    let attacker_key = workspace_root().join("testdata/golden/multi-recipient-rsa-ec/keys/rsa.pub.pem");
    run_bounded_ok(
        Command::new(bin("cloak"))
            .args(["encrypt", "--quiet", "--dest-tls-verify=false", "--recipient"])
            .arg(format!("jwe:{}", attacker_key.display()))
            .arg(plain_image())
            .arg(reg.docker_ref("app:evil")),
    )?;
    let (approved, approved_bytes) = reg.manifest("app", "approved")?;
    let (evil, evil_bytes) = reg.manifest("app", "evil")?;
    assert_ne!(approved, evil);
    let pinned = reg.docker_ref(&format!("app@{approved}"));

    let guest = tempfile::tempdir()?;
    let tmp = guest.path().join("tmp");
    // Control: the pinned pull of the genuine image works.
    let good = guest.path().join("bundle-good");
    let r = pull(&broker.url(), "sample", &pinned, &good, &tmp)?;
    assert!(r.ok(), "the pinned pull of the approved image failed: {}", r.describe());
    assert_rootfs(&good);
    let releases_before = metric_total(&broker.metrics()?, "coco_kbs_resource_releases_total");

    // Tamper with the registry's storage: the approved digest now serves the
    // attacker's manifest, and every layer blob is gone, so a layer fetch could
    // only fail with "blob unknown", never with a digest mismatch.
    let target = reg.blob_data(&approved);
    ensure!(target.exists(), "registry layout changed: {} missing", target.display());
    std::fs::write(&target, &evil_bytes)?;
    let evil_manifest: serde_json::Value = serde_json::from_slice(&evil_bytes)?;
    let approved_manifest: serde_json::Value = serde_json::from_slice(&approved_bytes)?;
    for d in layer_digests(&approved_manifest).iter().chain(&layer_digests(&evil_manifest)) {
        let p = reg.blob_data(d);
        ensure!(p.exists(), "layer blob {d} not at {}", p.display());
        std::fs::remove_file(&p)?;
    }
    let log_start = reg.log().len();

    let bundle = guest.path().join("bundle");
    let r = pull(&broker.url(), "sample", &pinned, &bundle, &tmp)?;
    assert!(!r.ok(), "a substituted manifest was accepted: {}", r.describe());
    eprintln!("failed as expected: {}", r.stderr.trim());
    assert!(r.stderr.contains("manifest digest mismatch"), "unclear refusal: {}", r.describe());
    assert!(r.stderr.contains(&approved), "the refusal does not name the pinned digest: {}", r.describe());
    assert!(r.stderr.contains(&evil), "the refusal does not name what was served: {}", r.describe());
    assert!(!r.stderr.contains("blob unknown"), "a layer was fetched: {}", r.describe());
    assert_nothing_left(&bundle, &tmp);

    // The registry writes its access log line after the answer is sent, so the
    // pull may exit first: wait for the manifest request to show up.
    let manifest_req = format!("/v2/app/manifests/{approved}");
    let waited = Instant::now();
    let mut log = reg.log();
    while !log.get(log_start..).unwrap_or_default().contains(&manifest_req)
        && waited.elapsed() < Duration::from_secs(20)
    {
        std::thread::sleep(Duration::from_millis(100));
        log = reg.log();
    }
    let requests = log.get(log_start..).unwrap_or_default();
    assert!(
        requests.contains(&manifest_req),
        "the registry log does not show the manifest request; cannot judge the blob requests:\n{requests}"
    );
    assert!(
        !requests.contains("/blobs/"),
        "blobs were requested after the substituted manifest:\n{requests}"
    );
    assert_eq!(
        metric_total(&broker.metrics()?, "coco_kbs_resource_releases_total"),
        releases_before,
        "a key was requested for a substituted image"
    );
    Ok(())
}

/// Row 6: `cloak-kbs get-resource` inside the "guest" prints the secret on stdout and
/// writes nothing to disk; only `--out FILE` makes a file, holding exactly the secret.
#[test]
fn get_resource_secret_goes_to_stdout_only_unless_out_names_a_file() -> Result<()> {
    let host = tempfile::tempdir()?;
    let broker = Broker::start(host.path(), free_port(), ALLOW_SAMPLE)?;
    // Unique per run so a match can only come from this secret.
    let secret = format!(
        "db-password-{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
    );
    broker.put_resource("kbs:///default/app-secret/db", secret.as_bytes())?;

    let (cwd, home, tmp) = (tempfile::tempdir()?, tempfile::tempdir()?, tempfile::tempdir()?);
    let get = |extra: &[&str]| -> Result<Ran> {
        run_bounded(
            Command::new(bin("cloak-kbs"))
                .args(["get-resource", "--url", &broker.url(), "--attester", "sample"])
                .args(extra)
                .arg("default/app-secret/db")
                .current_dir(cwd.path())
                .env("HOME", home.path())
                .env("TMPDIR", tmp.path())
                .env("XDG_CACHE_HOME", home.path().join(".cache"))
                .env("XDG_RUNTIME_DIR", tmp.path().join("run")),
            CMD_LIMIT,
        )
    };
    let r = get(&[])?;
    assert!(r.ok(), "get-resource failed: {}", r.describe());
    assert_eq!(r.stdout, secret.as_bytes(), "stdout is not exactly the secret");
    assert!(!r.stderr.contains(&secret), "the secret was printed on stderr");
    for (what, dir) in [("working directory", cwd.path()), ("HOME", home.path()), ("TMPDIR", tmp.path())] {
        let left = list_tree(dir);
        assert!(left.is_empty(), "get-resource wrote to its {what}: {left:?}");
    }

    let r = get(&["--out", "secret.bin"])?;
    assert!(r.ok(), "get-resource --out failed: {}", r.describe());
    assert!(
        !String::from_utf8_lossy(&r.stdout).contains(&secret),
        "with --out the secret still went to stdout"
    );
    assert!(!r.stderr.contains(&secret), "the secret was printed on stderr");
    let out = cwd.path().join("secret.bin");
    assert_eq!(std::fs::read(&out)?, secret.as_bytes(), "--out does not hold exactly the secret");
    let mode = std::fs::metadata(&out)?.permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "--out file mode is {mode:o}, not 600");
    assert_eq!(
        list_tree(cwd.path()),
        vec![PathBuf::from("secret.bin")],
        "get-resource --out wrote more than the file"
    );
    assert!(
        list_tree(home.path()).is_empty() && list_tree(tmp.path()).is_empty(),
        "stray files in HOME or TMPDIR"
    );
    assert!(!broker.log().contains(&secret), "the broker logged the secret");
    Ok(())
}

/// Issue 10: every release re-encrypted with the same `kbs:///` id must reuse the KEK
/// already in the KBS, so the images built earlier still start. Before the fix, the
/// second `cloak encrypt` replaced the KEK and the v1 pull failed with "wrong KEK".
#[test]
fn reencrypting_with_the_same_kbs_id_keeps_earlier_images_pullable() -> Result<()> {
    let Some(reg) = Registry::start_with_access_log() else {
        return Ok(());
    };
    let host = tempfile::tempdir()?;
    let broker = Broker::start(host.path(), free_port(), ALLOW_SAMPLE)?;
    let kid = "kbs:///default/image-kek/app";
    let (v1, v2) = (reg.docker_ref("app:v1"), reg.docker_ref("app:v2"));
    encrypt_for_kbs(&broker, kid, &v1)?;
    let kek_file = host.path().join("resources/default/image-kek/app");
    let first = std::fs::read(&kek_file).context("the KEK was not registered")?;
    encrypt_for_kbs(&broker, kid, &v2)?;
    assert_eq!(std::fs::read(&kek_file)?, first, "the second encryption replaced the KEK");

    pull_each_with_sample(&broker, &[&v1, &v2])?;

    // Rotation registers a new version and names the images that still need the old KEK.
    let out = Command::new(bin("cloak"))
        .args(["rotate-kek", "--kbs-url"])
        .arg(broker.url())
        .arg("--kbs-admin-key")
        .arg(broker.admin_key())
        .arg("--tls-verify=false")
        .arg(kid)
        .arg(&v1)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success(), "rotate-kek failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains("kbs:///default/image-kek/app.v2"), "{text}");
    assert!(text.contains(&format!("{v1}: still needs {kid}")), "{text}");
    assert_eq!(std::fs::read(&kek_file)?, first, "rotation touched the old KEK");
    let rotated = std::fs::read(host.path().join("resources/default/image-kek/app.v2"))?;
    assert_eq!(rotated.len(), 32);
    assert_ne!(rotated, first);
    Ok(())
}

/// Issue 10: two CI jobs encrypting with the same fresh id at once end with one KEK in
/// the KBS that both images were wrapped with (create-only write, re-read on conflict).
#[test]
fn concurrent_first_encryptions_with_a_fresh_id_share_one_kek() -> Result<()> {
    let Some(reg) = Registry::start_with_access_log() else {
        return Ok(());
    };
    let host = tempfile::tempdir()?;
    let broker = Broker::start(host.path(), free_port(), ALLOW_SAMPLE)?;
    let kid = "kbs:///default/image-kek/fresh";
    let (a, b) = (reg.docker_ref("app:job-a"), reg.docker_ref("app:job-b"));
    std::thread::scope(|s| -> Result<()> {
        let ja = s.spawn(|| encrypt_for_kbs(&broker, kid, &a));
        let jb = s.spawn(|| encrypt_for_kbs(&broker, kid, &b));
        ja.join().map_err(|_| anyhow::anyhow!("job a panicked"))??;
        jb.join().map_err(|_| anyhow::anyhow!("job b panicked"))??;
        Ok(())
    })?;
    pull_each_with_sample(&broker, &[&a, &b])?;
    Ok(())
}

/// Pulls every image with the sample attester into a fresh bundle; each must succeed
/// and leave a rootfs.
fn pull_each_with_sample(broker: &Broker, images: &[&str]) -> Result<()> {
    let guest = tempfile::tempdir()?;
    for (i, image) in images.iter().enumerate() {
        let bundle = guest.path().join(format!("bundle-{i}"));
        let r = pull(&broker.url(), "sample", image, &bundle, &guest.path().join("tmp"))?;
        assert!(r.ok(), "pulling {image} failed: {}", r.describe());
        assert_rootfs(&bundle);
    }
    Ok(())
}
