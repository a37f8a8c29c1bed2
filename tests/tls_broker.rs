//! The broker on TLS (issue 25): `cloak-kbs serve --tls-cert/--tls-key` with a test CA,
//! and every client verifying it with `--kbs-cert`. A certificate the client cannot
//! trust (unknown issuer, another host name) is refused with the broker's URL and the
//! reason; plain HTTP on a network address needs `--insecure-http`; SIGHUP swaps in a
//! renewed certificate without a restart.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use test_support::*;

const SECRET: &[u8] = b"tls-broker-secret";
const URI: &str = "default/tls/secret";

fn plain_image() -> String {
    format!("oci:{}:v1", workspace_root().join("testdata/golden/three-layers/plain-oci").display())
}

/// `cloak-kbs get-resource --attester sample` against `url`, trusting `ca` if given.
fn get_resource(url: &str, ca: Option<&Path>) -> Result<Ran> {
    let mut cmd = Command::new(bin("cloak-kbs"));
    cmd.args(["get-resource", "--url", url, "--attester", "sample"]);
    if let Some(ca) = ca {
        cmd.arg("--kbs-cert").arg(ca);
    }
    run_bounded(cmd.arg(URI), CMD_LIMIT)
}

fn refused_naming(r: &Ran, url: &str, reason: &str) {
    assert!(!r.ok(), "the client trusted a certificate it must refuse: {}", r.describe());
    eprintln!("refused as expected: {}", r.stderr.trim().replace('\n', " | "));
    assert!(r.stderr.contains(url), "the error does not name the broker {url}: {}", r.describe());
    assert!(r.stderr.contains(reason), "the error does not say {reason:?}: {}", r.describe());
    assert_eq!(report_repeats(&r.stderr), None, "{}", r.describe());
}

/// A clause said twice in the printed line (the errors-said-once rule).
fn report_repeats(stderr: &str) -> Option<String> {
    let line = stderr.lines().rfind(|l| !l.trim().is_empty())?;
    report::repeated_clause(line)
}

fn tls_broker(host: &Path, ca: &TestCa, cert: &ServerCert) -> Result<LocalBroker> {
    LocalBroker::start_tls(
        host,
        free_port(),
        ALLOW_SAMPLE,
        BrokerTls { cert: &cert.cert, key: &cert.key, ca: &ca.cert },
    )
}

#[test]
fn pull_from_a_tls_broker_passes_with_its_ca_and_is_refused_as_unknown_issuer_without_it() -> Result<()> {
    let host = tempfile::tempdir()?;
    let ca = TestCa::new(host.path(), "broker")?;
    let other = TestCa::new(host.path(), "other")?;
    let cert = ca.issue("kbs", "IP:127.0.0.1,DNS:localhost")?;
    let broker = tls_broker(host.path(), &ca, &cert)?;
    assert!(broker.url().starts_with("https://"));

    // The admin side (cloak encrypt registers the KEK) and the guest side both on TLS.
    let work = tempfile::tempdir()?;
    let image = format!("oci:{}:enc", work.path().join("enc").display());
    broker.encrypt("kbs:///default/image-kek/tls", &plain_image(), &image)?;
    let pull = |bundle: &str, extra: &[&std::ffi::OsStr]| {
        run_bounded(
            Command::new(bin("cloak-pull"))
                .args(["--quiet", "--kbs", &broker.url(), "--attester", "sample", "--kbs-timeout", "5"])
                .args(extra)
                .arg(&image)
                .arg(work.path().join(bundle)),
            CMD_LIMIT,
        )
    };
    let r = pull("ok", &["--kbs-cert".as_ref(), ca.cert.as_os_str()])?;
    assert!(r.ok(), "pull over TLS with --kbs-cert failed: {}\n{}", r.describe(), broker.log());
    assert!(!list_tree(&work.path().join("ok/rootfs")).is_empty());

    let r = pull("no-ca", &[])?;
    refused_naming(&r, &broker.url(), "unknown issuer");
    assert!(r.stderr.contains("--kbs-cert"), "the error does not say how to fix it: {}", r.describe());
    let r = pull("wrong-ca", &["--kbs-cert".as_ref(), other.cert.as_os_str()])?;
    refused_naming(&r, &broker.url(), "unknown issuer");

    // The admin and guest commands of cloak-kbs verify the same way.
    broker.put_resource(URI, SECRET)?;
    let r = get_resource(&broker.url(), Some(&ca.cert))?;
    assert!(r.ok(), "{}", r.describe());
    assert_eq!(r.stdout.as_slice(), SECRET);
    refused_naming(&get_resource(&broker.url(), None)?, &broker.url(), "unknown issuer");
    Ok(())
}

#[test]
fn a_certificate_for_another_host_name_is_refused_as_a_name_mismatch() -> Result<()> {
    let host = tempfile::tempdir()?;
    let ca = TestCa::new(host.path(), "broker")?;
    let cert = ca.issue("elsewhere", "DNS:kbs.example.invalid")?;
    let broker = tls_broker(host.path(), &ca, &cert)?;
    let r = get_resource(&broker.url(), Some(&ca.cert))?;
    refused_naming(&r, &broker.url(), "not valid for the host name");
    Ok(())
}

#[test]
fn plain_http_on_a_network_address_is_refused_at_startup_naming_both_options() -> Result<()> {
    let host = tempfile::tempdir()?;
    // Refused before anything binds: no traffic, no listener on 0.0.0.0.
    let r = run_bounded(
        Command::new(bin("cloak-kbs"))
            .args(["serve", "--listen", "0.0.0.0:0", "--resources"])
            .arg(host.path().join("r")),
        CMD_LIMIT,
    )?;
    assert!(!r.ok(), "plain HTTP on 0.0.0.0 started: {}", r.describe());
    for part in ["0.0.0.0:0", "--tls-cert", "--insecure-http"] {
        assert!(r.stderr.contains(part), "{part} missing: {}", r.describe());
    }
    // Both at once is a usage error.
    let r = run_bounded(
        Command::new(bin("cloak-kbs")).args([
            "serve",
            "--insecure-http",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
        ]),
        CMD_LIMIT,
    )?;
    assert_eq!(r.status.code(), Some(2), "{}", r.describe());
    Ok(())
}

#[test]
fn sighup_reloads_a_renewed_certificate_and_keeps_the_old_one_when_the_new_is_bad() -> Result<()> {
    let host = tempfile::tempdir()?;
    let first = TestCa::new(host.path(), "first")?;
    let second = TestCa::new(host.path(), "second")?;
    let a = first.issue("a", "IP:127.0.0.1")?;
    let b = second.issue("b", "IP:127.0.0.1")?;
    // The broker serves whatever is at these two paths.
    let (cert, key) = (host.path().join("serving.pem"), host.path().join("serving.key"));
    std::fs::copy(&a.cert, &cert)?;
    std::fs::copy(&a.key, &key)?;
    let broker = LocalBroker::start_tls(
        host.path(),
        free_port(),
        ALLOW_SAMPLE,
        BrokerTls { cert: &cert, key: &key, ca: &first.cert },
    )?;
    broker.put_resource(URI, SECRET)?;
    assert!(get_resource(&broker.url(), Some(&first.cert))?.ok());

    let hup_and_wait = |what: &str| -> Result<()> {
        let before = broker.log().matches(what).count();
        run_bounded_ok(Command::new("kill").arg("-HUP").arg(broker.pid().to_string()))?;
        let start = Instant::now();
        while broker.log().matches(what).count() <= before {
            ensure!(start.elapsed() < Duration::from_secs(30), "no {what:?} after SIGHUP:\n{}", broker.log());
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(())
    };
    // A key that does not fit: refused, the first certificate still serves.
    std::fs::copy(&b.cert, &cert)?;
    hup_and_wait("new TLS certificate refused")?;
    assert!(get_resource(&broker.url(), Some(&first.cert))?.ok(), "{}", broker.log());

    std::fs::copy(&b.key, &key)?;
    hup_and_wait("TLS certificate reloaded")?;
    let r = get_resource(&broker.url(), Some(&second.cert))?;
    assert!(r.ok(), "the renewed certificate is not served: {}\n{}", r.describe(), broker.log());
    refused_naming(&get_resource(&broker.url(), Some(&first.cert))?, &broker.url(), "unknown issuer");
    Ok(())
}
