//! The interface from issue 3, through the real binary: gen-admin-key, serve,
//! put-resource, get-resource (stdout and --out), and the deny policy.

#![allow(clippy::unwrap_used)]

use std::process::{Child, Command, Stdio};

use test_support::free_port;

const BIN: &str = env!("CARGO_BIN_EXE_cloak-kbs");

struct Kill(Child);
impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn interface_commands_round_trip() {
    let d = tempfile::tempdir().unwrap();
    let p = |n: &str| d.path().join(n);
    let st = Command::new(BIN)
        .args(["gen-admin-key", "--out"])
        .arg(p("admin.pem"))
        .arg("--public-out")
        .arg(p("admin.pub.pem"))
        .status()
        .unwrap();
    assert!(st.success());
    assert!(std::fs::read_to_string(p("admin.pem")).unwrap().contains("BEGIN PRIVATE KEY"));
    std::fs::write(
        p("policy.yaml"),
        "default_policy:\n  required_attestation:\n    sample: {allow: true}\n  released_resources: [\"default/*\"]\n",
    )
    .unwrap();
    std::fs::write(p("kek.bin"), b"the-kek-bytes").unwrap();
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let _srv = Kill(
        Command::new(BIN)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--policy"])
            .arg(p("policy.yaml"))
            .arg("--resources")
            .arg(p("res"))
            .arg("--admin-public-key")
            .arg(p("admin.pub.pem"))
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let mut up = false;
    for _ in 0..100 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            up = true;
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert!(up, "broker did not start");
    let st = Command::new(BIN)
        .args(["put-resource", "--url", &url, "--admin-key"])
        .arg(p("admin.pem"))
        .arg("default/image-kek/1")
        .arg(p("kek.bin"))
        .status()
        .unwrap();
    assert!(st.success());
    // A second put-resource without --replace fails and leaves the stored bytes.
    std::fs::write(p("other.bin"), b"other-bytes").unwrap();
    let put_other = |replace: bool| {
        let mut c = Command::new(BIN);
        c.args(["put-resource", "--url", &url, "--admin-key"]).arg(p("admin.pem"));
        if replace {
            c.arg("--replace");
        }
        c.arg("default/image-kek/1").arg(p("other.bin")).output().unwrap()
    };
    let refused = put_other(false);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("already exists") && err.contains("--replace"), "{err}");
    assert_eq!(std::fs::read(p("res/default/image-kek/1")).unwrap(), b"the-kek-bytes");
    let out = Command::new(BIN)
        .args(["get-resource", "--url", &url, "--attester", "sample", "default/image-kek/1"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout, b"the-kek-bytes");
    let st = Command::new(BIN)
        .args(["get-resource", "--url", &url, "--attester", "sample", "kbs:///default/image-kek/1", "--out"])
        .arg(p("got.bin"))
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(std::fs::read(p("got.bin")).unwrap(), b"the-kek-bytes");
    let replaced = put_other(true);
    assert!(replaced.status.success(), "{}", String::from_utf8_lossy(&replaced.stderr));
    assert_eq!(std::fs::read(p("res/default/image-kek/1")).unwrap(), b"other-bytes");
    // allow: false denies, without restart.
    std::fs::write(
        p("policy.yaml"),
        "default_policy:\n  required_attestation:\n    sample: {allow: false}\n  released_resources: [\"default/*\"]\n",
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let out = Command::new(BIN)
        .args(["get-resource", "--url", &url, "--attester", "sample", "default/image-kek/1"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("sample_not_allowed"));
}
