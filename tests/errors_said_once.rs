//! Every error says once what failed and what to do (issue 27).
//!
//! Each test drives one binary into its common failures (missing layout, wrong key
//! type, no key source, broker down, broker denying, registry 401, bad flag values)
//! and checks the message a user reads:
//!
//! - no clause appears twice (`report::repeated_clause`: an error's `Display` that
//!   repeats its cause, or a printer that walks the chain twice, both show here);
//! - it names what was wrong and, where there is one, the next step (a flag, a file,
//!   the broker's URL).
//!
//! The real binaries run against the real registry (Debian's docker-registry) and a
//! real `cloak-kbs`. A missing docker-registry skips the registry cases with a
//! printed reason, unless `CLOAK_REQUIRE_PEERS=1` (set by `ci/test.sh`).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Result};
use test_support::*;

const LIMIT: Duration = Duration::from_secs(120);

fn golden(rel: &str) -> PathBuf {
    workspace_root().join("testdata/golden").join(rel)
}

/// An image whose one JWE recipient is an EC P-256 key (made by skopeo).
fn ec_image() -> String {
    format!("oci:{}:enc", golden("ec-p256/enc-oci").display())
}

fn plain_image() -> String {
    format!("oci:{}:v1", golden("three-layers/plain-oci").display())
}

/// The lines of stderr that carry the failure: from the first the binary prints as
/// its final word (`error: …`, `cloak-pull: …`, …) to the end (clap's usage errors go
/// on over a few lines), not the log lines before it.
fn error_lines<'a>(stderr: &'a str, prefixes: &[&str]) -> Vec<&'a str> {
    let lines: Vec<&str> = stderr.lines().collect();
    match lines.iter().position(|l| prefixes.iter().any(|p| l.starts_with(p))) {
        Some(first) => lines[first..].iter().copied().filter(|l| !l.trim().is_empty()).collect(),
        None => Vec::new(),
    }
}

/// Runs `cmd`, which must fail, and checks what it printed. `names`: what the message
/// must contain (the thing that was wrong, the next step).
fn fails_saying_once(what: &str, cmd: &mut Command, prefixes: &[&str], names: &[&str]) -> Result<()> {
    let ran = run_bounded(cmd.env("NO_COLOR", "1"), LIMIT)?;
    ensure!(!ran.ok(), "{what}: succeeded: {}", ran.describe());
    let lines = error_lines(&ran.stderr, prefixes);
    ensure!(!lines.is_empty(), "{what}: no error line starting with {prefixes:?}: {}", ran.describe());
    let message = lines.join("\n");
    eprintln!("{what}:\n  {}", lines.join("\n  "));
    for l in &lines {
        if let Some(c) = report::repeated_clause(l) {
            anyhow::bail!("{what}: the message says {c:?} twice:\n{l}");
        }
    }
    for n in names {
        ensure!(message.contains(n), "{what}: the message does not name {n:?}:\n{message}");
    }
    Ok(())
}

fn cloak() -> Command {
    Command::new(bin("cloak"))
}

fn pull_cmd(tmp: &Path) -> Command {
    let mut c = Command::new(bin("cloak-pull"));
    c.args(["--quiet", "--src-tls-verify=false"]).env("TMPDIR", tmp);
    c
}

/// A layout encrypted for a KEK registered in `broker` as `kek`.
fn kbs_image(broker: &LocalBroker, dir: &Path, kek: &str) -> Result<String> {
    let image = format!("oci:{}:enc", dir.display());
    broker.encrypt(kek, &plain_image(), &image)?;
    Ok(image)
}

const DENY_SAMPLE: &str = "\
default_policy:
  required_attestation:
    sample: {allow: false}
  released_resources: [\"default/*\"]
";

#[test]
fn cloak_failures_say_each_cause_once_and_the_next_step() -> Result<()> {
    let t = tempfile::tempdir()?;
    let out = |name: &str| format!("oci:{}:x", t.path().join(name).display());
    let p = &["error:"];

    fails_saying_once(
        "cloak inspect, missing layout",
        cloak().args(["inspect", "oci:/nonexistent/layout:tag"]),
        p,
        &["/nonexistent/layout", "oci-layout"],
    )?;
    fails_saying_once(
        "cloak decrypt, RSA key for an EC recipient",
        cloak()
            .arg("decrypt")
            .arg("--key")
            .arg(golden("three-layers/keys/rsa.priv.pem"))
            .arg(ec_image())
            .arg(out("wrong-key")),
        p,
        &["layer 0", "ECDH-ES+A256KW", "needs an EC key"],
    )?;
    fails_saying_once(
        "cloak decrypt, no key",
        cloak().arg("decrypt").arg(ec_image()).arg(out("no-key")),
        p,
        &["--key"],
    )?;
    fails_saying_once(
        "cloak encrypt, unknown recipient scheme",
        cloak().args(["encrypt", "--recipient", "bogus:thing"]).arg(plain_image()).arg(out("bad-flag")),
        p,
        &["bogus:thing"],
    )?;

    // Broker down: the URL and the step, once.
    let port = free_port();
    let admin = t.path().join("admin.pem");
    run_bounded_ok(
        Command::new(bin("cloak-kbs"))
            .args(["gen-admin-key", "--out"])
            .arg(&admin)
            .arg("--public-out")
            .arg(t.path().join("admin.pub.pem")),
    )?;
    let url = format!("http://127.0.0.1:{port}");
    fails_saying_once(
        "cloak encrypt, broker down",
        cloak()
            .args(["encrypt", "--quiet", "--recipient", "kbs:///default/image-kek/down", "--kbs-url", &url])
            .arg("--kbs-admin-key")
            .arg(&admin)
            .arg(plain_image())
            .arg(out("down")),
        p,
        &[&url],
    )?;

    // Registry 401: the registry is named, and how to give credentials.
    if let Some(reg) = Registry::start_with_basic_auth("alice", "s3cret-pass") {
        fails_saying_once(
            "cloak inspect, registry 401",
            cloak().args(["inspect", "--tls-verify=false"]).arg(reg.docker_ref("app:v1")),
            p,
            &[&reg.host(), "--creds"],
        )?;
    }
    Ok(())
}

#[test]
fn cloak_pull_failures_say_each_cause_once_and_the_next_step() -> Result<()> {
    let t = tempfile::tempdir()?;
    let tmp = t.path().join("tmp");
    std::fs::create_dir_all(&tmp)?;
    let bundle = |name: &str| t.path().join(name);
    let p = &["cloak-pull:", "error:"];

    fails_saying_once(
        "cloak-pull, missing layout",
        pull_cmd(&tmp).arg("oci:/nonexistent/layout:tag").arg(bundle("b0")),
        p,
        &["/nonexistent/layout"],
    )?;
    fails_saying_once(
        "cloak-pull, no key source for a JWE layer",
        pull_cmd(&tmp).arg(ec_image()).arg(bundle("b1")),
        p,
        &["layer 0", "ECDH-ES+A256KW", "--key"],
    )?;
    fails_saying_once(
        "cloak-pull, RSA key for an EC recipient",
        pull_cmd(&tmp)
            .arg("--key")
            .arg(golden("three-layers/keys/rsa.priv.pem"))
            .arg(ec_image())
            .arg(bundle("b2")),
        p,
        &["needs an EC key"],
    )?;
    fails_saying_once(
        "cloak-pull, bad --platform",
        pull_cmd(&tmp).args(["--platform", "foo"]).arg(ec_image()).arg(bundle("b3")),
        p,
        &["--platform", "OS/ARCH"],
    )?;

    // Broker down, then a broker that denies the sample evidence.
    let host = tempfile::tempdir()?;
    let image = {
        let mut setup = LocalBroker::start(host.path(), free_port(), ALLOW_SAMPLE)?;
        let image = kbs_image(&setup, &t.path().join("kbs-enc"), "kbs:///default/image-kek/errors")?;
        setup.stop();
        image
    };
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    fails_saying_once(
        "cloak-pull, broker down",
        pull_cmd(&tmp)
            .args(["--kbs", &url, "--attester", "sample", "--kbs-timeout", "2"])
            .arg(&image)
            .arg(bundle("b4")),
        p,
        &[&url, "2 s"],
    )?;
    let broker = LocalBroker::start(host.path(), port, DENY_SAMPLE)?;
    fails_saying_once(
        "cloak-pull, broker denies the evidence",
        pull_cmd(&tmp).args(["--kbs", &broker.url(), "--attester", "sample"]).arg(&image).arg(bundle("b5")),
        p,
        &[&broker.url(), "policy"],
    )?;

    if let Some(reg) = Registry::start_with_basic_auth("alice", "s3cret-pass") {
        fails_saying_once(
            "cloak-pull, registry 401",
            pull_cmd(&tmp).arg(reg.docker_ref("app:v1")).arg(bundle("b6")),
            p,
            &[&reg.host(), "--creds"],
        )?;
    }
    Ok(())
}

#[test]
fn broker_and_daemon_failures_say_each_cause_once() -> Result<()> {
    let t = tempfile::tempdir()?;
    let kbs = |args: &[&str]| {
        let mut c = Command::new(bin("cloak-kbs"));
        c.args(args);
        c
    };
    let p = &["cloak-kbs:", "error:"];
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    fails_saying_once(
        "cloak-kbs get-resource, broker down",
        &mut kbs(&["get-resource", "--attester", "sample", "--url", &url, "kbs:///default/k/x"]),
        p,
        &[&url],
    )?;
    fails_saying_once(
        "cloak-kbs serve, missing policy file",
        &mut kbs(&["serve", "--listen", "127.0.0.1:0", "--policy", "/nonexistent/policy.yaml"]),
        p,
        &["/nonexistent/policy.yaml"],
    )?;
    fails_saying_once(
        "cloak-kbs serve, bad --store",
        &mut kbs(&["serve", "--store", "bogus:"]),
        p,
        &["--store", "local:DIR"],
    )?;
    let cca = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/attestation/cca");
    let token = cca.join("rust-ccatoken__cca-token-01.cbor");
    let bad_store = cca.join("rust-ccatoken__ta-02-bad__NEGATIVE.json");
    fails_saying_once(
        "cloak-kbs verify-evidence --tee cca, a trust anchor off its curve",
        kbs(&["verify-evidence", "--tee", "cca", "--evidence"])
            .arg(&token)
            .arg("--cca-trust-anchors")
            .arg(&bad_store),
        p,
        &["--cca-trust-anchors", "not on the curve"],
    )?;
    fails_saying_once(
        "cloak-kbs verify-evidence --tee cca, no key for the platform",
        kbs(&["verify-evidence", "--tee", "cca", "--evidence"])
            .arg(&token)
            .arg("--cca-trust-anchors")
            .arg(cca.join("rust-ccatoken__ta-02-ok.json")),
        p,
        &["unknown_platform_key", "--cca-trust-anchors"],
    )?;

    let cdh = |args: &[&str]| {
        let mut c = Command::new(bin("cloak-cdh"));
        c.args(["--log-format", "text"]).args(args);
        c
    };
    let p = &["cloak-cdh:", "error:"];
    fails_saying_once(
        "cloak-cdh, missing config file",
        &mut cdh(&["--config", "/nonexistent/cdh.toml"]),
        p,
        &["/nonexistent/cdh.toml"],
    )?;
    let bad = t.path().join("cdh.toml");
    std::fs::write(&bad, "[kbc]\nname = \"cc_kbc\"\nurl = 17\n")?;
    fails_saying_once("cloak-cdh, bad config value", cdh(&["--config"]).arg(&bad), p, &["url"])?;

    let p = &["cloak-keyprovider:", "error:"];
    fails_saying_once(
        "cloak-keyprovider, missing --keypath-dir",
        Command::new(bin("cloak-keyprovider")).args([
            "serve",
            "--grpc",
            "127.0.0.1:0",
            "--keypath-dir",
            "/nonexistent/keys",
        ]),
        p,
        &["/nonexistent/keys"],
    )?;
    Ok(())
}
