//! The cmd protocol through the built binary, and the cmd client against the
//! Python provider skopeo 1.18 actually talked to when the fixtures were made.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Arc;

use keyprovider::client::{KeyProviderConfig, ProviderUnwrapper, ProviderWrapper};
use keyprovider::protocol::KeyProviderOutput;
use keyprovider::AnnotationPacket;
use keyprovider::Kek;
use ocicrypt::keywrap::{KeyUnwrapper, KeyWrapper};

const BIN: &str = env!("CARGO_BIN_EXE_cloak-keyprovider");

fn run(args: &[&str], stdin: &[u8]) -> std::process::Output {
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn exec_wraps_a_skopeo_request_with_a_kek_file() {
    let dir = tempfile::tempdir().unwrap();
    let kek = dir.path().join("kek");
    std::fs::write(&kek, [5u8; 32]).unwrap();
    // skopeo's request from the fixture, re-targeted at attestation-agent with coco params.
    let mut req: serde_json::Value =
        serde_json::from_slice(include_bytes!("../testdata/keyprovider-exec/keywrap.request.json")).unwrap();
    let params = format!("keyid=kbs:///default/key/1::keypath={}::algorithm=A256GCM", kek.display());
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD.encode(params);
    req["keywrapparams"]["ec"]["Parameters"] = serde_json::json!({"attestation-agent": [b64]});
    let out = run(&["exec"], req.to_string().as_bytes());
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let answer = KeyProviderOutput::from_slice(&out.stdout).unwrap();
    let raw: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(raw["keyunwrapresults"]["optsdata"].is_null(), "Go shape: the unused half is null");
    let packet = AnnotationPacket::parse(answer.keywrapresults.annotation.unwrap().as_bytes()).unwrap();
    assert_eq!(packet.kid, "kbs:///default/key/1");
    let opts = packet.open(&Kek::from_slice(&[5u8; 32]).unwrap()).unwrap();
    let expected = base64::engine::general_purpose::STANDARD
        .decode(req["keywrapparams"]["optsdata"].as_str().unwrap())
        .unwrap();
    assert_eq!(opts.as_slice(), expected.as_slice());
}

#[test]
fn exec_errors_exit_non_zero_with_json_on_stderr() {
    for (input, field, code) in [
        (&b"{nope"[..], "request JSON", 2),
        (
            br#"{"op":"keyunwrap","keywrapparams":null,"keyunwrapparams":{"dc":null,"annotation":null}}"#,
            "keyunwrapparams.annotation",
            2,
        ),
        (br#"{"op":"rewrap"}"#, "op", 2),
    ] {
        let out = run(&["exec"], input);
        assert_eq!(out.status.code(), Some(code), "stderr: {}", String::from_utf8_lossy(&out.stderr));
        assert!(out.stdout.is_empty());
        let err: serde_json::Value = serde_json::from_slice(out.stderr.trim_ascii()).unwrap();
        assert_eq!(err["error"]["code"], "InvalidArgument");
        assert!(err["error"]["message"].as_str().unwrap().contains(field), "{err}");
    }
    // A valid packet but no KBS configured: a clear refusal, not a panic.
    let packet = AnnotationPacket::seal("kbs:///default/key/1", &Kek::generate(), b"x").unwrap().to_v1_json();
    use base64::Engine as _;
    let req = serde_json::json!({"op":"keyunwrap","keywrapparams":{"ec":null,"optsdata":null},
        "keyunwrapparams":{"dc":{"Parameters":{}},"annotation": base64::engine::general_purpose::STANDARD.encode(packet)}});
    let out = run(&["exec"], req.to_string().as_bytes());
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("FailedPrecondition"));
}

#[tokio::test]
async fn cmd_client_drives_the_binary() {
    let dir = tempfile::tempdir().unwrap();
    let kek = dir.path().join("kek");
    std::fs::write(&kek, [6u8; 32]).unwrap();
    let cfg: KeyProviderConfig = serde_json::from_value(serde_json::json!(
        {"key-providers": {"attestation-agent": {"cmd": {"path": BIN, "args": ["exec"]}}}}
    ))
    .unwrap();
    let w = ProviderWrapper::from_recipient(
        &cfg,
        &format!("attestation-agent:keyid=kbs:///a/b/c::keypath={}", kek.display()),
    )
    .unwrap();
    let packet = w.wrap(b"{\"symkey\":\"k\"}").await.unwrap();
    let p = AnnotationPacket::parse(&packet).unwrap();
    assert_eq!(p.open(&Kek::from_slice(&[6u8; 32]).unwrap()).unwrap().as_slice(), b"{\"symkey\":\"k\"}");
    // Unwrap through cmd without a KBS fails, and the provider's stderr is in the error.
    let u = ProviderUnwrapper::new(cfg.client("attestation-agent").unwrap(), vec![]);
    let e = report::line(&u.unwrap("provider.attestation-agent", &packet).await.unwrap_err());
    assert!(e.contains("FailedPrecondition") && e.contains("exited"), "{e}");
}

#[tokio::test]
async fn cmd_client_against_the_fixture_python_provider() {
    if Command::new("python3").arg("--version").output().is_err() {
        assert!(!test_support::peers_required(), "python3 missing");
        eprintln!("SKIP: python3 missing");
        return;
    }
    let log = tempfile::tempdir().unwrap();
    std::env::set_var("KP_LOG", log.path());
    let kp = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/keyprovider-exec/kp.py");
    let cfg: KeyProviderConfig = serde_json::from_value(serde_json::json!(
        {"key-providers": {"mykp": {"cmd": {"path": "python3", "args": [kp]}}}}
    ))
    .unwrap();
    let client = cfg.client("mykp").unwrap();
    // Unwrap the annotation skopeo stored in the fixture manifest.
    let manifest: serde_json::Value =
        serde_json::from_slice(include_bytes!("../testdata/keyprovider-exec/manifest.json")).unwrap();
    let ann = manifest["layers"][0]["annotations"]["org.opencontainers.image.enc.keys.provider.mykp"]
        .as_str()
        .unwrap();
    use base64::Engine as _;
    let wrapped = base64::engine::general_purpose::STANDARD.decode(ann).unwrap();
    let u = ProviderUnwrapper::new(client.clone(), vec![]);
    assert!(u.handles("provider.mykp"));
    let opts = u.unwrap("provider.mykp", &wrapped).await.unwrap();
    let expected: serde_json::Value =
        serde_json::from_slice(include_bytes!("../testdata/keyprovider-exec/keyunwrap.response.json"))
            .unwrap();
    let expected = base64::engine::general_purpose::STANDARD
        .decode(expected["keyunwrapresults"]["optsdata"].as_str().unwrap())
        .unwrap();
    assert_eq!(opts.as_slice(), expected.as_slice());
    // And our unwrap request is byte-identical to skopeo's.
    let sent: Vec<_> = std::fs::read_dir(log.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".in.json"))
        .collect();
    assert_eq!(sent.len(), 1);
    assert_eq!(
        std::fs::read(&sent[0]).unwrap(),
        include_bytes!("../testdata/keyprovider-exec/keyunwrap.request.json").trim_ascii_end()
    );
    // Wrap round trip through the same provider.
    let w = ProviderWrapper::new(Arc::clone(&client), vec![]);
    let again = w.wrap(&expected).await.unwrap();
    assert_eq!(u.unwrap("provider.mykp", &again).await.unwrap().as_slice(), expected.as_slice());
}

#[test]
fn serve_exits_cleanly_on_sigterm_and_removes_its_socket() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("kp.sock");
    let mut child = Command::new(BIN)
        .args(["serve", "--grpc", &format!("unix:{}", sock.display())])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut waited = 0;
    while !sock.exists() && waited < 200 {
        std::thread::sleep(std::time::Duration::from_millis(50));
        waited += 1;
    }
    assert!(sock.exists(), "server never created its socket");
    let st = Command::new("kill").args(["-TERM", &child.id().to_string()]).status().unwrap();
    assert!(st.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "exit status after SIGTERM: {status}");
    assert!(!sock.exists(), "socket removed on shutdown");
}
