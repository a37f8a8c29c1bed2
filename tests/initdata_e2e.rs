//! Init-data bound to the report, end to end (issue 25): the real `cloak-pull
//! --initdata` with the sample attester, whose evidence carries the init-data digest
//! the "host" launched the guest with, against the real `cloak-kbs`.
//!
//! - a guest launched with the init-data it sends gets its key, and the broker's
//!   `pod` / `namespace` labels are the ones its init-data names;
//! - one changed byte in the init-data's `cdh.toml` (the host launched the guest with
//!   the original: `CLOAK_SAMPLE_INIT_DATA_DIGEST`) is denied with `initdata_mismatch`;
//! - a policy that pins the KBS URL inside `cdh.toml` denies a correctly launched guest
//!   whose init-data names another broker.
//!
//! A missing docker-registry skips a test with a printed reason, unless
//! `CLOAK_REQUIRE_PEERS=1`, where it fails.

use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use test_support::*;

fn plain_image() -> String {
    format!("oci:{}:v1", workspace_root().join("testdata/golden/three-layers/plain-oci").display())
}

/// The value of the counter sample of `name` whose labels contain every one of `parts`
/// (0 when there is none).
fn metric(text: &str, name: &str, parts: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && parts.iter().all(|p| l.contains(p)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn metrics(broker: &LocalBroker) -> Result<String> {
    let a = http_get(broker.port, "/metrics", None)?;
    ensure!(a.status == 200, "/metrics answered {}", a.status);
    Ok(String::from_utf8_lossy(&a.body).into_owned())
}

/// Init-data as a Pod would carry it: the KBS URL in `cdh.toml`, and the pod and
/// namespace entries the broker takes its labels from.
fn initdata(kbs_url: &str) -> String {
    format!(
        "version = \"0.1.0\"\nalgorithm = \"sha384\"\n\n[data]\npod = \"web-1\"\nnamespace = \"shop\"\n\
         \"cdh.toml\" = '''\n[kbc]\nname = \"cc_kbc\"\nurl = \"{kbs_url}\"\n'''\n"
    )
}

/// The policy of these tests: sample evidence, `default/*` released, and init-data
/// required whose `cdh.toml` names `kbs_url`.
fn policy(kbs_url: &str) -> String {
    format!(
        "# TEST ONLY: sample evidence comes from no hardware.\n\
         default_policy:\n  required_attestation:\n    sample: {{allow: true}}\n  \
         released_resources: [\"default/*\"]\n  initdata:\n    required: true\n    \
         data:\n      \"cdh.toml\": {{\"kbc.url\": [\"{kbs_url}\"]}}\n"
    )
}

/// The digest `cloak initdata FILE --json` reports (what the host writes into the report).
fn digest_of(file: &Path) -> Result<String> {
    let out = run_ok(Command::new(bin("cloak")).arg("initdata").arg(file).arg("--json"))?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).context("cloak initdata --json")?;
    Ok(v["digest"].as_str().context("no digest")?.to_owned())
}

/// `cloak-pull --kbs URL --attester sample --initdata FILE IMAGE BUNDLE`, with the
/// host's init-data digest overridden when `host_digest` is given.
fn pull(
    kbs_url: &str,
    initdata: &Path,
    image: &str,
    bundle: &Path,
    host_digest: Option<&str>,
) -> Result<Ran> {
    let mut cmd = Command::new(bin("cloak-pull"));
    cmd.args(["--quiet", "--kbs", kbs_url, "--attester", "sample", "--src-tls-verify=false", "--initdata"])
        .arg(initdata)
        .arg(image)
        .arg(bundle)
        .env_remove("CLOAK_SAMPLE_INIT_DATA_DIGEST");
    if let Some(d) = host_digest {
        cmd.env("CLOAK_SAMPLE_INIT_DATA_DIGEST", d);
    }
    run_bounded(&mut cmd, CMD_LIMIT)
}

struct Setup {
    _reg: Registry,
    _host: tempfile::TempDir,
    guest: tempfile::TempDir,
    broker: LocalBroker,
    image: String,
}

/// A registry with an image encrypted for a KEK in a broker whose policy pins its own
/// URL in `cdh.toml`. `None`: no docker-registry here (skipped).
fn setup(kek: &str) -> Result<Option<Setup>> {
    let Some(reg) = Registry::start_with_access_log() else {
        return Ok(None);
    };
    let host = tempfile::tempdir()?;
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let broker = LocalBroker::start(host.path(), port, &policy(&url))?;
    let image = reg.docker_ref("app:enc");
    broker.encrypt(kek, &plain_image(), &image)?;
    Ok(Some(Setup { _reg: reg, _host: host, guest: tempfile::tempdir()?, broker, image }))
}

#[test]
fn matching_initdata_gets_the_key_and_labels_come_from_it() -> Result<()> {
    let Some(s) = setup("kbs:///default/image-kek/initdata-ok")? else { return Ok(()) };
    let file = s.guest.path().join("initdata.toml");
    std::fs::write(&file, initdata(&s.broker.url()))?;
    let bundle = s.guest.path().join("bundle");
    let r = pull(&s.broker.url(), &file, &s.image, &bundle, None)?;
    assert!(r.ok(), "a correctly launched guest was refused: {}\n{}", r.describe(), s.broker.log());
    assert!(!list_tree(&bundle.join("rootfs")).is_empty(), "no rootfs");
    let m = metrics(&s.broker)?;
    assert_eq!(
        metric(&m, "coco_attestation_success_total", &["pod=\"web-1\"", "namespace=\"shop\""]),
        1.0,
        "{m}"
    );
    assert_eq!(metric(&m, "coco_attestation_failure_total", &[]), 0.0, "{m}");
    Ok(())
}

#[test]
fn one_changed_byte_in_cdh_toml_is_denied_initdata_mismatch() -> Result<()> {
    let Some(s) = setup("kbs:///default/image-kek/initdata-changed")? else { return Ok(()) };
    let original = s.guest.path().join("launched.toml");
    std::fs::write(&original, initdata(&s.broker.url()))?;
    let launched = digest_of(&original)?;
    // The guest now sends a cdh.toml with one byte changed: `cc_kbc` -> `cc_kbd`.
    let changed = s.guest.path().join("initdata.toml");
    let text = initdata(&s.broker.url());
    ensure!(text.matches("cc_kbc").count() == 1);
    std::fs::write(&changed, text.replace("cc_kbc", "cc_kbd"))?;
    let bundle = s.guest.path().join("bundle");
    let r = pull(&s.broker.url(), &changed, &s.image, &bundle, Some(&launched))?;
    assert!(!r.ok(), "init-data other than the launched one got the key");
    assert!(r.stderr.contains("initdata_mismatch"), "unclear error: {}", r.describe());
    assert!(!bundle.join("rootfs").exists(), "a refused pull left a rootfs");
    let m = metrics(&s.broker)?;
    // Not bound: the labels its init-data names are not used.
    assert_eq!(
        metric(&m, "coco_attestation_failure_total", &["reason=\"initdata_mismatch\"", "pod=\"unknown\""]),
        1.0,
        "{m}"
    );
    assert!(!m.contains("pod=\"web-1\""), "unverified init-data made a label:\n{m}");
    assert_eq!(metric(&m, "coco_kbs_resource_releases_total", &[]), 0.0, "{m}");

    // Control: the host's digest of the very document sent binds it.
    let r = pull(&s.broker.url(), &original, &s.image, &s.guest.path().join("ok"), Some(&launched))?;
    assert!(r.ok(), "the launched init-data was refused: {}", r.describe());
    Ok(())
}

#[test]
fn policy_pinning_the_kbs_url_denies_a_guest_whose_initdata_names_another() -> Result<()> {
    let Some(s) = setup("kbs:///default/image-kek/initdata-url")? else { return Ok(()) };
    // Correctly launched (the evidence carries this document's digest), but its
    // cdh.toml sends the guest to another broker.
    let file = s.guest.path().join("initdata.toml");
    std::fs::write(&file, initdata("https://kbs.attacker.example"))?;
    let bundle = s.guest.path().join("bundle");
    let r = pull(&s.broker.url(), &file, &s.image, &bundle, None)?;
    assert!(!r.ok(), "a guest pointed at another KBS got the key");
    assert!(
        r.stderr.contains("initdata_not_allowed") && r.stderr.contains("kbs.attacker.example"),
        "unclear error: {}",
        r.describe()
    );
    let m = metrics(&s.broker)?;
    // Bound, so labelled as its init-data says, and refused by the policy.
    assert_eq!(
        metric(&m, "coco_attestation_failure_total", &["reason=\"initdata_not_allowed\"", "pod=\"web-1\""]),
        1.0,
        "{m}"
    );
    assert_eq!(metric(&m, "coco_kbs_resource_releases_total", &[]), 0.0, "{m}");
    Ok(())
}
