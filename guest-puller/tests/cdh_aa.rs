//! Issue 25: `cloak-cdh` as attestation-agent. Its ttRPC API answers with the
//! service, method and field numbers CoCo defines (checked both through the
//! generated client and with hand-encoded protobuf), `/aa/token` and `/aa/evidence`
//! answer as api-server-rest does (parsed by an HTTP client) and only to loopback
//! peers, and the daemon starts under the names kata-agent launches
//! (`attestation-agent`, `confidential-data-hub`, `api-server-rest`).
//!
//! Real broker (`cloak-kbs`, sample evidence); no registry and no mounts.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{ensure, Context, Result};
use base64::prelude::{Engine, BASE64_STANDARD, BASE64_URL_SAFE_NO_PAD};
use guest_puller::cdh::pb::{attestation_agent as pb, attestation_agent_ttrpc as svc};
use test_support::{bin, free_port, LocalBroker, ALLOW_SAMPLE};

/// A running `cloak-cdh` with the attestation-agent socket and the REST endpoint.
struct Daemon {
    aa: PathBuf,
    rest: u16,
    log: PathBuf,
    child: std::process::Child,
}

impl Daemon {
    fn start(dir: &Path, kbs: &str, extra: &[&str]) -> Result<Daemon> {
        std::fs::create_dir_all(dir)?;
        let aa = dir.join("run/aa/attestation-agent.sock");
        let log = dir.join("cdh.log");
        let rest = free_port();
        let child = Command::new(bin("cloak-cdh"))
            .arg("--socket")
            .arg(format!("unix://{}", dir.join("run/cdh.sock").display()))
            .arg("--aa-socket")
            .arg(format!("unix://{}", aa.display()))
            .args(["--kbs", kbs, "--attester", "sample", "--kbs-timeout", "4"])
            .arg("--store")
            .arg(dir.join("store"))
            .arg("--bundle-root")
            .arg(dir.join("bundles"))
            .args(["--rest", &format!("127.0.0.1:{rest}")])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("starting cloak-cdh")?;
        let d = Daemon { aa, rest, log, child };
        wait_for(&d.aa, &d.log)?;
        test_support::wait_for_port(rest, Duration::from_secs(10))?;
        Ok(d)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn addr(&self) -> String {
        format!("unix://{}", self.aa.display())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits as kata-agent does (6 s) for a socket path to appear.
fn wait_for(path: &Path, log: &Path) -> Result<()> {
    let t = Instant::now();
    while !path.exists() {
        ensure!(
            t.elapsed() < Duration::from_secs(6),
            "no {} after 6 s (kata's launch timeout):\n{}",
            path.display(),
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("runtime")
}

fn ctx() -> ttrpc::context::Context {
    ttrpc::context::with_duration(Duration::from_secs(60))
}

async fn aa_client(addr: &str) -> Result<svc::AttestationAgentServiceClient> {
    let c =
        ttrpc::r#async::Client::connect(addr).await.map_err(|e| anyhow::anyhow!("connect {addr}: {e}"))?;
    Ok(svc::AttestationAgentServiceClient::new(c))
}

fn code_of<T: std::fmt::Debug>(r: Result<T, ttrpc::Error>) -> (ttrpc::Code, String) {
    match r {
        Err(ttrpc::Error::RpcStatus(s)) => (s.code(), s.message().to_owned()),
        other => panic!("expected an RPC status, got {other:?}"),
    }
}

/// One ttRPC call with a hand-encoded payload: the wire contract, independent of
/// the generated code.
async fn raw_call(addr: &str, method: &str, payload: Vec<u8>) -> Result<Vec<u8>> {
    let c = ttrpc::r#async::Client::connect(addr).await.map_err(|e| anyhow::anyhow!("connect: {e}"))?;
    let mut req = ttrpc::Request::new();
    req.service = "attestation_agent.AttestationAgentService".to_owned();
    req.method = method.to_owned();
    req.timeout_nano = 60_000_000_000;
    req.payload = payload;
    let resp = c.request(req).await.map_err(|e| anyhow::anyhow!("{method}: {e}"))?;
    Ok(resp.payload)
}

/// protobuf field 1, length-delimited (bytes or string).
fn field1(data: &[u8]) -> Vec<u8> {
    assert!(data.len() < 128);
    let mut v = vec![0x0a, data.len() as u8];
    v.extend_from_slice(data);
    v
}

fn setup() -> Result<(tempfile::TempDir, LocalBroker)> {
    let tmp = tempfile::tempdir()?;
    std::fs::create_dir_all(tmp.path().join("kbs"))?;
    let broker = LocalBroker::start(&tmp.path().join("kbs"), free_port(), ALLOW_SAMPLE)?;
    Ok((tmp, broker))
}

#[test]
fn attestation_agent_ttrpc_methods_answer_as_coco_defines() -> Result<()> {
    let (tmp, broker) = setup()?;
    let d = Daemon::start(&tmp.path().join("cdh"), &broker.url(), &[])?;
    let addr = d.addr();
    let mode = std::fs::metadata(&d.aa)?;
    ensure!(std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777 == 0o600, "socket not 0600");
    rt().block_on(async {
        let c = aa_client(&addr).await?;

        let tee = c.get_tee_type(ctx(), &pb::GetTeeTypeRequest::new()).await?;
        ensure!(tee.tee == "sample", "{}", tee.tee);

        let mut req = pb::GetEvidenceRequest::new();
        req.RuntimeData = b"workload nonce".to_vec();
        let ev = c.get_evidence(ctx(), &req).await?;
        let v: serde_json::Value = serde_json::from_slice(&ev.Evidence)?;
        ensure!(v["report_data"] == BASE64_STANDARD.encode(b"workload nonce"), "{v}");
        ensure!(v["svn"] == "1", "{v}");

        req.RuntimeData = vec![7; 65];
        let (code, msg) = code_of(c.get_evidence(ctx(), &req).await);
        ensure!(code == ttrpc::Code::INVALID_ARGUMENT && msg.contains("at most 64 bytes"), "{code:?} {msg}");

        let mut req = pb::GetTokenRequest::new();
        req.TokenType = "kbs".to_owned();
        let tok = c.get_token(ctx(), &req).await?;
        let v: serde_json::Value = serde_json::from_slice(&tok.Token)?;
        let jwt = v["token"].as_str().context("token")?;
        ensure!(jwt.split('.').count() == 3, "not a JWT");
        let pem = v["tee_keypair"].as_str().context("tee_keypair")?;
        ensure!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "not PKCS#8 PEM");
        // The daemon's one session: a second token call does not attest again.
        let again = c.get_token(ctx(), &req).await?;
        let v2: serde_json::Value = serde_json::from_slice(&again.Token)?;
        ensure!(v2["token"] == v["token"], "a second GetToken attested again");

        req.TokenType = "coco_as".to_owned();
        let (code, msg) = code_of(c.get_token(ctx(), &req).await);
        ensure!(code == ttrpc::Code::INVALID_ARGUMENT && msg.contains("token_type=kbs"), "{code:?} {msg}");

        let mut req = pb::BindInitDataRequest::new();
        req.Digest = vec![1; 32];
        let (code, msg) = code_of(c.bind_init_data(ctx(), &req).await);
        ensure!(code == ttrpc::Code::UNIMPLEMENTED && msg.contains("sample TEE"), "{code:?} {msg}");

        let mut req = pb::ExtendRuntimeMeasurementRequest::new();
        req.Domain = "d".into();
        req.Operation = "o".into();
        req.Content = "c".into();
        let (code, msg) = code_of(c.extend_runtime_measurement(ctx(), &req).await);
        ensure!(code == ttrpc::Code::UNIMPLEMENTED && msg.contains("runtime measurement"), "{code:?} {msg}");

        let t = c.get_additional_tees(ctx(), &pb::GetAdditionalTeesRequest::new()).await?;
        ensure!(t.additional_tees.is_empty());

        // The wire contract by hand: GetTeeTypeResponse { string tee = 1 },
        // GetEvidenceRequest { bytes RuntimeData = 1 }, GetTokenRequest { string TokenType = 1 }.
        ensure!(raw_call(&addr, "GetTeeType", Vec::new()).await? == field1(b"sample"));
        let ev = raw_call(&addr, "GetEvidence", field1(b"abc")).await?;
        ensure!(ev[0] == 0x0a, "GetEvidenceResponse field 1");
        let text = String::from_utf8_lossy(&ev);
        ensure!(text.contains(&BASE64_STANDARD.encode(b"abc")), "{text}");
        let tok = raw_call(&addr, "GetToken", field1(b"kbs")).await?;
        ensure!(tok[0] == 0x0a && String::from_utf8_lossy(&tok).contains("\"token\""));
        anyhow::Ok(())
    })?;
    let log = d.log();
    ensure!(!log.contains("PRIVATE KEY"), "the TEE key reached the log");
    Ok(())
}

#[test]
fn aa_rest_endpoints_answer_as_api_server_rest() -> Result<()> {
    let (tmp, broker) = setup()?;
    let d = Daemon::start(&tmp.path().join("cdh"), &broker.url(), &[])?;
    let base = format!("http://127.0.0.1:{}", d.rest);
    rt().block_on(async {
        let http = reqwest::Client::new();
        let get = |path: &str| http.get(format!("{base}{path}")).send();

        let r = get("/aa/token?token_type=kbs").await?;
        ensure!(r.status() == 200, "{}", r.status());
        ensure!(r.headers()["content-type"] == "application/octet-stream");
        let v: serde_json::Value = serde_json::from_slice(&r.bytes().await?)?;
        ensure!(v["token"].as_str().is_some_and(|t| t.split('.').count() == 3), "{v}");
        ensure!(v.get("tee_keypair").is_none(), "the TEE key left on REST without --rest-tee-key");

        let r = get("/aa/evidence?runtime_data=hello%20world").await?;
        ensure!(r.status() == 200 && r.headers()["content-type"] == "application/octet-stream");
        let v: serde_json::Value = serde_json::from_slice(&r.bytes().await?)?;
        ensure!(v["report_data"] == BASE64_STANDARD.encode(b"hello world"), "{v}");

        let data = [0xfbu8; 40];
        let r = get(&format!(
            "/aa/evidence?runtime_data={}&encoding=base64",
            BASE64_URL_SAFE_NO_PAD.encode(data)
        ))
        .await?;
        ensure!(r.status() == 200);
        let v: serde_json::Value = serde_json::from_slice(&r.bytes().await?)?;
        ensure!(v["report_data"] == BASE64_STANDARD.encode(data), "{v}");

        for bad in [
            "/aa/evidence",
            "/aa/evidence?runtime_data=a&encoding=hex",
            "/aa/evidence?runtime_data=***&encoding=base64",
            "/aa/token",
        ] {
            let r = get(bad).await?;
            ensure!(r.status() == 400, "{bad}: {}", r.status());
            ensure!(r.text().await? == "BAD REQUEST", "{bad}");
        }
        let long = "x".repeat(65);
        let r = get(&format!("/aa/evidence?runtime_data={long}")).await?;
        ensure!(r.status() == 400 && r.text().await?.contains("at most 64 bytes"));
        let r = get(&format!("/aa/evidence?runtime_data={}", "x".repeat(5000))).await?;
        ensure!(r.status() == 400, "an unbounded query was read");
        let r = get("/aa/token?token_type=coco_as").await?;
        ensure!(r.status() == 400);
        let r = get("/nowhere").await?;
        ensure!(r.status() == 404 && r.text().await? == "URL NOT FOUND");
        anyhow::Ok(())
    })?;
    ensure!(!d.log().contains("PRIVATE KEY"));
    Ok(())
}

#[test]
fn rest_tee_key_and_features_are_honoured() -> Result<()> {
    let (tmp, broker) = setup()?;
    let d = Daemon::start(&tmp.path().join("cdh"), &broker.url(), &["--rest-tee-key"])?;
    let a = test_support::http_get(d.rest, "/aa/token?token_type=kbs", None)?;
    ensure!(a.status == 200);
    let v: serde_json::Value = serde_json::from_slice(&a.body)?;
    ensure!(v["tee_keypair"].as_str().is_some_and(|k| k.contains("PRIVATE KEY")), "{v}");
    ensure!(!d.log().contains("PRIVATE KEY"), "the TEE key reached the log");
    drop(d);
    let d = Daemon::start(&tmp.path().join("cdh2"), &broker.url(), &["--rest-features", "resource"])?;
    let a = test_support::http_get(d.rest, "/aa/token?token_type=kbs", None)?;
    ensure!(a.status == 404 && a.body == b"Attestation Feature Not Enabled", "{}", a.status);
    Ok(())
}

#[test]
fn aa_rest_endpoints_refuse_non_loopback_peers() -> Result<()> {
    // As the /cdh/resource test. The KBS is unreachable, so a loopback token request
    // gets 500 (not 403); evidence needs no KBS.
    let paths = ["/aa/token?token_type=kbs", "/aa/evidence?runtime_data=x"];
    let Some(codes) = test_support::rest_codes_from_far_and_near(&bin("cloak-cdh"), &paths)? else {
        return Ok(());
    };
    for (p, c) in paths.iter().zip(&codes) {
        ensure!(c.far == "403", "a non-loopback peer was not refused on {p}: {c:?}");
    }
    ensure!(codes[0].near == "500" && codes[1].near == "200", "loopback peer: {codes:?}");
    Ok(())
}

/// kata-agent's default plan with cloak installed under the three names: in a
/// private mount namespace (its own /run and /proc/cmdline) and network namespace,
/// `attestation-agent` starts the daemon and its sockets, kata removes `cdh.sock`
/// and launches `confidential-data-hub`, which finds the daemon, sees `cdh.sock`
/// published again and exits 0; `api-server-rest` does the same while the daemon
/// answers on 127.0.0.1:8006. Both exit 0: the one daemon serves everything.
#[test]
fn kata_launch_names_start_one_daemon_and_its_sockets() -> Result<()> {
    let is_root = rustix::process::geteuid().is_root();
    if !is_root
        || Command::new("unshare").arg("--help").output().is_err()
        || Command::new("curl").arg("--version").output().is_err()
    {
        eprintln!("SKIP: needs root, unshare and curl");
        return Ok(());
    }
    let tmp = tempfile::tempdir()?;
    let d = tmp.path();
    for name in ["attestation-agent", "confidential-data-hub", "api-server-rest"] {
        std::os::unix::fs::symlink(bin("cloak-cdh"), d.join(name))?;
    }
    std::fs::write(d.join("aa.toml"), "[token_configs.kbs]\nurl = \"http://127.0.0.1:9\"\n")?;
    std::fs::write(d.join("cmdline"), "quiet cloak.attester=sample agent.guest_components_rest_api=all\n")?;
    let script = format!(
        r#"set -e
mount --make-rprivate /
mount -t tmpfs tmpfs /run
mount --bind {d}/cmdline /proc/cmdline
ip link set lo up
AA=/run/confidential-containers/attestation-agent/attestation-agent.sock
CDH=/run/confidential-containers/cdh.sock
{d}/attestation-agent --attestation_sock unix://$AA -c {d}/aa.toml 2>{d}/aa.log &
pid=$!
for i in $(seq 1 120); do [ -S $AA ] && break; sleep 0.05; done
[ -S $AA ] && echo aa_sock=ok
rm -f $CDH
set +e
{d}/confidential-data-hub 2>{d}/cdh.log; echo cdh_exit=$?
[ -S $CDH ] && echo cdh_sock=ok
{d}/api-server-rest --features all 2>{d}/rest.log; echo rest_exit=$?
echo "evidence=$(curl -s -o /dev/null -w '%{{http_code}}' 'http://127.0.0.1:8006/aa/evidence?runtime_data=x')"
kill $pid; wait $pid
echo "aa_exit=$?"
"#,
        d = d.display()
    );
    let out = Command::new("unshare").args(["-m", "-n", "sh", "-c", &script]).output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let logs = || {
        ["aa.log", "cdh.log", "rest.log"]
            .map(|f| format!("{f}:\n{}", std::fs::read_to_string(d.join(f)).unwrap_or_default()))
            .join("\n")
    };
    if !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("Operation not permitted") {
        eprintln!("SKIP: cannot make mount and network namespaces here");
        return Ok(());
    }
    ensure!(
        out.status.success(),
        "script failed: {text}\n{}\n{}",
        String::from_utf8_lossy(&out.stderr),
        logs()
    );
    for want in ["aa_sock=ok", "cdh_exit=0", "cdh_sock=ok", "rest_exit=0", "evidence=200", "aa_exit=0"] {
        ensure!(text.contains(want), "missing {want}: {text}\n{}", logs());
    }
    Ok(())
}

/// aa.toml's `[token_configs.kbs] cert` (what kata-agent's `attestation-agent -c
/// aa.toml` hands over as `--aa-config`): the daemon attests to a broker on TLS whose
/// CA only aa.toml names; without it, the token request is refused naming the unknown
/// issuer.
#[test]
fn aa_toml_cert_lets_the_daemon_attest_to_a_tls_broker() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let kbs_dir = tmp.path().join("kbs");
    std::fs::create_dir_all(&kbs_dir)?;
    let ca = test_support::TestCa::new(tmp.path(), "kbs")?;
    let cert = ca.issue("kbs", "IP:127.0.0.1")?;
    let tls = test_support::BrokerTls { cert: &cert.cert, key: &cert.key, ca: &ca.cert };
    let broker = LocalBroker::start_tls(&kbs_dir, free_port(), ALLOW_SAMPLE, tls)?;
    let url = broker.url();
    ensure!(url.starts_with("https://"), "{url}");
    let aa_toml = tmp.path().join("aa.toml");
    std::fs::write(
        &aa_toml,
        format!(
            "[token_configs.kbs]\nurl = \"{url}\"\ncert = '''\n{}'''\n",
            std::fs::read_to_string(&ca.cert)?
        ),
    )?;
    let token = |d: &Daemon| {
        rt().block_on(async {
            let c = aa_client(&d.addr()).await?;
            let mut req = pb::GetTokenRequest::new();
            req.TokenType = "kbs".to_owned();
            anyhow::Ok(match c.get_token(ctx(), &req).await {
                Ok(_) => (ttrpc::Code::OK, String::new()),
                other => code_of(other),
            })
        })
    };
    let with =
        Daemon::start(&tmp.path().join("with"), &url, &["--aa-config", &aa_toml.display().to_string()])?;
    let (code, msg) = token(&with)?;
    ensure!(code == ttrpc::Code::OK, "with aa.toml's cert: {code:?} {msg}\n{}", with.log());
    let without = Daemon::start(&tmp.path().join("without"), &url, &[])?;
    let (code, msg) = token(&without)?;
    ensure!(code != ttrpc::Code::OK && msg.contains("unknown issuer"), "without the cert: {code:?} {msg}");
    Ok(())
}
