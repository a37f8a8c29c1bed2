//! End-to-end tests of `cloak encrypt / decrypt / inspect` against the real
//! peers: images encrypted by skopeo 1.9.3 and 1.18 (golden vectors under
//! testdata/golden, made by testdata/make-golden.sh), live skopeo runs, and the
//! real docker-registry for layout→registry and registry→registry copies.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{ensure, Context, Result};
use serde_json::Value;
use test_support::*;

fn golden() -> PathBuf {
    workspace_root().join("testdata/golden")
}

fn cloak() -> Command {
    Command::new(bin("cloak"))
}

/// Every layer digest reachable from `tag` of a layout (through an index too).
fn layout_layer_digests(dir: &Path, tag: &str) -> Result<BTreeSet<String>> {
    let top = layout_manifest(dir, tag)?;
    let mut out = BTreeSet::new();
    let manifests: Vec<Value> = match top["manifests"].as_array() {
        Some(children) => children
            .iter()
            .map(|c| blob_json(dir, c["digest"].as_str().unwrap_or_default()))
            .collect::<Result<_>>()?,
        None => vec![top],
    };
    for m in manifests {
        out.extend(layer_digests(&m));
    }
    Ok(out)
}

/// Media types of every layer reachable from `tag`.
fn layout_layer_types(dir: &Path, tag: &str) -> Result<Vec<String>> {
    let top = layout_manifest(dir, tag)?;
    Ok(top["layers"]
        .as_array()
        .map(|ls| ls.iter().filter_map(|l| l["mediaType"].as_str().map(String::from)).collect())
        .unwrap_or_default())
}

fn oci_ref(dir: &Path, tag: &str) -> String {
    format!("oci:{}:{tag}", dir.display())
}

#[test]
fn golden_images_encrypted_by_skopeo_decrypt_to_identical_layers() -> Result<()> {
    let mut checked = 0;
    for entry in std::fs::read_dir(golden())? {
        let vdir = entry?.path();
        let Ok(bytes) = std::fs::read(vdir.join("vector.json")) else { continue };
        let vector: Value = serde_json::from_slice(&bytes)?;
        let keys: Vec<PathBuf> = vector["keys"]
            .as_array()
            .context("vector without keys")?
            .iter()
            .filter_map(|k| k.as_str())
            .filter(|k| k.contains("priv"))
            .map(|k| vdir.join("keys").join(k))
            .collect();
        for enc in vector["encryptions"].as_array().context("no encryptions")? {
            let layout = vdir.join(enc["layout"].as_str().context("layout")?);
            let tag = enc["tag"].as_str().context("tag")?;
            let mut plain = BTreeSet::new();
            for m in enc["manifests"].as_array().context("manifests")? {
                for l in m["layers"].as_array().context("layers")? {
                    plain.insert(l["plain"]["digest"].as_str().context("plain digest")?.to_string());
                }
            }
            // Each private key alone must open every encrypted layer.
            for key in &keys {
                let out = tempfile::tempdir()?;
                let dst = out.path().join("dec");
                run_ok(
                    cloak()
                        .args(["decrypt", "--quiet", "--all", "--key"])
                        .arg(key)
                        .arg(oci_ref(&layout, tag))
                        .arg(oci_ref(&dst, "dec")),
                )
                .with_context(|| format!("{} with {}", layout.display(), key.display()))?;
                let got = layout_layer_digests(&dst, "dec")?;
                assert_eq!(got, plain, "{} decrypted with {}", layout.display(), key.display());
                checked += 1;
            }
        }
    }
    assert!(checked >= 15, "only {checked} golden decryptions ran: testdata/golden is incomplete");
    Ok(())
}

/// cloak encrypts; the given skopeo decrypts; layers must be byte-identical.
fn cloak_encrypts_skopeo_decrypts(skopeo: &Path, pub_key: &Path, priv_key: &Path) -> Result<()> {
    let src = golden().join("three-layers/plain-oci");
    let work = tempfile::tempdir()?;
    let enc = work.path().join("enc");
    let dec = work.path().join("dec");
    run_ok(
        cloak()
            .args(["encrypt", "--quiet", "--recipient"])
            .arg(format!("jwe:{}", pub_key.display()))
            .arg(oci_ref(&src, "v1"))
            .arg(oci_ref(&enc, "enc")),
    )?;
    assert!(layout_layer_types(&enc, "enc")?.iter().all(|t| t.ends_with("+encrypted")));
    run_ok(
        Command::new(skopeo)
            .args(["copy", "--quiet", "--decryption-key"])
            .arg(priv_key)
            .arg(oci_ref(&enc, "enc"))
            .arg(oci_ref(&dec, "dec")),
    )?;
    assert_eq!(layout_layer_digests(&dec, "dec")?, layout_layer_digests(&src, "v1")?);
    Ok(())
}

#[test]
fn skopeo_1_9_decrypts_what_cloak_encrypts_rsa_and_ec() -> Result<()> {
    let Some(skopeo) = skopeo_193() else { return Ok(()) };
    let keys = golden().join("multi-recipient-rsa-ec/keys");
    cloak_encrypts_skopeo_decrypts(&skopeo, &keys.join("rsa.pub.pem"), &keys.join("rsa.priv.pem"))?;
    cloak_encrypts_skopeo_decrypts(&skopeo, &keys.join("ec.pub.pem"), &keys.join("ec.priv.pem"))
}

#[test]
fn skopeo_1_18_decrypts_what_cloak_encrypts_rsa_and_ec() -> Result<()> {
    let Some(skopeo) = skopeo_118() else { return Ok(()) };
    let keys = golden().join("multi-recipient-rsa-ec/keys");
    cloak_encrypts_skopeo_decrypts(&skopeo, &keys.join("rsa.pub.pem"), &keys.join("rsa.priv.pem"))?;
    cloak_encrypts_skopeo_decrypts(&skopeo, &keys.join("ec.pub.pem"), &keys.join("ec.priv.pem"))
}

#[test]
fn several_recipients_each_decrypt_alone_and_inspect_lists_them() -> Result<()> {
    let keys = golden().join("multi-recipient-rsa-ec/keys");
    let src = golden().join("three-layers/plain-oci");
    let work = tempfile::tempdir()?;
    let enc = work.path().join("enc");
    run_ok(
        cloak()
            .args(["encrypt", "--quiet"])
            .arg(format!("--recipient=jwe:{}", keys.join("rsa.pub.pem").display()))
            .arg(format!("--recipient=jwe:{}", keys.join("ec.pub.pem").display()))
            .arg(oci_ref(&src, "v1"))
            .arg(oci_ref(&enc, "enc")),
    )?;
    let out = run_ok(cloak().args(["inspect", "--json"]).arg(oci_ref(&enc, "enc")))?;
    let report: Value = serde_json::from_slice(&out.stdout)?;
    let layers = report["manifests"][0]["layers"].as_array().context("layers")?;
    assert_eq!(layers.len(), 3);
    for l in layers {
        assert_eq!(l["encrypted"], true);
        let algs: BTreeSet<&str> = l["jwe_recipients"]
            .as_array()
            .context("recipients")?
            .iter()
            .filter_map(|r| r["alg"].as_str())
            .collect();
        assert_eq!(algs, BTreeSet::from(["RSA-OAEP", "ECDH-ES+A256KW"]));
    }
    for key in ["rsa.priv.pem", "ec.priv.pem"] {
        let dec = work.path().join(format!("dec-{key}"));
        run_ok(
            cloak()
                .args(["decrypt", "--quiet", "--key"])
                .arg(keys.join(key))
                .arg(oci_ref(&enc, "enc"))
                .arg(oci_ref(&dec, "d")),
        )?;
        assert_eq!(layout_layer_digests(&dec, "d")?, layout_layer_digests(&src, "v1")?);
    }
    Ok(())
}

#[test]
fn layer_selection_encrypts_only_the_chosen_layer() -> Result<()> {
    let keys = golden().join("three-layers/keys");
    let src = golden().join("three-layers/plain-oci");
    let work = tempfile::tempdir()?;
    let enc = work.path().join("enc");
    run_ok(
        cloak()
            .args(["encrypt", "--quiet", "--layer", "-1", "--recipient"])
            .arg(format!("jwe:{}", keys.join("rsa.pub.pem").display()))
            .arg(oci_ref(&src, "v1"))
            .arg(oci_ref(&enc, "enc")),
    )?;
    let types = layout_layer_types(&enc, "enc")?;
    assert_eq!(types.iter().filter(|t| t.ends_with("+encrypted")).count(), 1);
    assert!(types.last().is_some_and(|t| t.ends_with("+encrypted")));
    // Encrypting again is refused, naming the layer.
    let again = run(cloak()
        .args(["encrypt", "--quiet", "--recipient"])
        .arg(format!("jwe:{}", keys.join("rsa.pub.pem").display()))
        .arg(oci_ref(&enc, "enc"))
        .arg(oci_ref(&work.path().join("twice"), "x")))?;
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already encrypted"));
    assert!(!work.path().join("twice").exists(), "a refused encryption left a layout behind");
    Ok(())
}

#[test]
fn out_of_range_layer_is_a_usage_error_naming_the_flag_and_count() -> Result<()> {
    let keys = golden().join("three-layers/keys");
    let src = golden().join("three-layers/plain-oci");
    let work = tempfile::tempdir()?;
    let out = run(cloak()
        .args(["encrypt", "--quiet", "--layer", "3", "--recipient"])
        .arg(format!("jwe:{}", keys.join("rsa.pub.pem").display()))
        .arg(oci_ref(&src, "v1"))
        .arg(oci_ref(&work.path().join("enc"), "enc")))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("--layer: layer index 3 is out of range") && stderr.contains("3 layer(s)"),
        "{stderr}"
    );
    assert!(!work.path().join("enc").exists(), "a refused encryption left a layout behind");
    Ok(())
}

#[test]
fn two_platform_index_encrypts_platform_by_platform() -> Result<()> {
    let vdir = golden().join("index-two-platforms");
    let src = vdir.join("plain-oci");
    let work = tempfile::tempdir()?;
    let enc = work.path().join("enc");
    run_ok(
        cloak()
            .args(["encrypt", "--quiet", "--all", "--recipient"])
            .arg(format!("jwe:{}", vdir.join("keys/rsa.pub.pem").display()))
            .arg(oci_ref(&src, "v1"))
            .arg(oci_ref(&enc, "enc")),
    )?;
    let top = layout_manifest(&enc, "enc")?;
    assert_eq!(top["mediaType"], "application/vnd.oci.image.index.v1+json");
    let platforms: BTreeSet<String> = top["manifests"]
        .as_array()
        .context("manifests")?
        .iter()
        .map(|m| {
            format!(
                "{}/{}",
                m["platform"]["os"].as_str().unwrap_or(""),
                m["platform"]["architecture"].as_str().unwrap_or("")
            )
        })
        .collect();
    assert_eq!(platforms, BTreeSet::from(["linux/amd64".to_string(), "linux/arm64".to_string()]));
    let dec = work.path().join("dec");
    if let Some(skopeo) = skopeo_193() {
        run_ok(
            Command::new(skopeo)
                .args(["copy", "--quiet", "--all", "--decryption-key"])
                .arg(vdir.join("keys/rsa.priv.pem"))
                .arg(oci_ref(&enc, "enc"))
                .arg(oci_ref(&dec, "dec")),
        )?;
        assert_eq!(layout_layer_digests(&dec, "dec")?, layout_layer_digests(&src, "v1")?);
    }
    Ok(())
}

#[test]
fn layout_to_registry_to_registry_to_layout() -> Result<()> {
    let Some(reg) = Registry::start() else { return Ok(()) };
    let keys = golden().join("three-layers/keys");
    let src = golden().join("three-layers/plain-oci");
    let work = tempfile::tempdir()?;
    // layout → registry (encrypt), the interface line of issue 2.
    run_ok(
        cloak()
            .args(["encrypt", "--quiet", "--recipient"])
            .arg(format!("jwe:{}", keys.join("rsa.pub.pem").display()))
            .arg("--dest-tls-verify=false")
            .arg(oci_ref(&src, "v1"))
            .arg(reg.docker_ref("app:enc")),
    )?;
    // registry → registry (decrypt), then registry → layout (plain copy by skopeo).
    run_ok(
        cloak()
            .args(["decrypt", "--quiet", "--src-tls-verify=false", "--dest-tls-verify=false", "--key"])
            .arg(keys.join("rsa.priv.pem"))
            .arg(reg.docker_ref("app:enc"))
            .arg(reg.docker_ref("app:dec")),
    )?;
    let dec = work.path().join("dec");
    run_ok(
        cloak()
            .args(["decrypt", "--quiet", "--src-tls-verify=false", "--key"])
            .arg(keys.join("rsa.priv.pem"))
            .arg(reg.docker_ref("app:dec"))
            .arg(oci_ref(&dec, "dec")),
    )?;
    assert_eq!(layout_layer_digests(&dec, "dec")?, layout_layer_digests(&src, "v1")?);
    // registry → registry encryption, and skopeo reads it back from the registry.
    run_ok(
        cloak()
            .args(["encrypt", "--quiet", "--src-tls-verify=false", "--dest-tls-verify=false", "--recipient"])
            .arg(format!("jwe:{}", keys.join("rsa.pub.pem").display()))
            .arg(reg.docker_ref("app:dec"))
            .arg(reg.docker_ref("app:enc2")),
    )?;
    if let Some(skopeo) = skopeo_193() {
        let dec2 = work.path().join("dec2");
        run_ok(
            Command::new(skopeo)
                .args(["copy", "--quiet", "--src-tls-verify=false", "--decryption-key"])
                .arg(keys.join("rsa.priv.pem"))
                .arg(reg.docker_ref("app:enc2"))
                .arg(oci_ref(&dec2, "dec")),
        )?;
        assert_eq!(layout_layer_digests(&dec2, "dec")?, layout_layer_digests(&src, "v1")?);
    }
    Ok(())
}

// ------------------------------------------------------------------ bad input

/// A private copy of the golden RSA image encrypted by skopeo 1.9.3.
fn tamperable_copy(work: &Path) -> Result<(PathBuf, PathBuf)> {
    let vdir = golden().join("three-layers");
    let enc = work.join("enc");
    copy_tree(&vdir.join("enc-oci"), &enc)?;
    Ok((enc, vdir.join("keys/rsa.priv.pem")))
}

/// Rewrites the manifest of `tag` with `f` and repoints index.json, so every
/// registry-level digest stays consistent (only cloak's own checks can object).
fn rewrite_manifest(dir: &Path, tag: &str, f: impl FnOnce(&mut Value)) -> Result<()> {
    let mut m = layout_manifest(dir, tag)?;
    f(&mut m);
    let bytes = serde_json::to_vec(&m)?;
    let digest = sha256_digest(&bytes);
    std::fs::write(blob_path(dir, &digest), &bytes)?;
    let mut index: Value = serde_json::from_slice(&std::fs::read(dir.join("index.json"))?)?;
    for e in index["manifests"].as_array_mut().context("manifests")? {
        if e["annotations"]["org.opencontainers.image.ref.name"] == tag {
            e["digest"] = Value::from(digest.clone());
            e["size"] = Value::from(bytes.len());
        }
    }
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index)?)?;
    Ok(())
}

/// Replaces layer 0's blob with `f(blob)` under its new, consistent digest.
fn replace_layer0(dir: &Path, f: impl FnOnce(&mut Vec<u8>)) -> Result<()> {
    let m = layout_manifest(dir, "enc")?;
    let old = m["layers"][0]["digest"].as_str().context("digest")?.to_string();
    let mut blob = std::fs::read(blob_path(dir, &old))?;
    f(&mut blob);
    let digest = sha256_digest(&blob);
    std::fs::write(blob_path(dir, &digest), &blob)?;
    rewrite_manifest(dir, "enc", |m| {
        m["layers"][0]["digest"] = Value::from(digest);
        m["layers"][0]["size"] = Value::from(blob.len());
    })
}

/// Runs `cloak decrypt` and asserts: exit 1, stderr mentions `needle`, nothing at DST.
fn decrypt_fails(enc: &Path, key: &Path, needle: &str) -> Result<()> {
    let dst = enc.parent().context("parent")?.join("out");
    let out = run(cloak()
        .args(["decrypt", "--quiet", "--key"])
        .arg(key)
        .arg(oci_ref(enc, "enc"))
        .arg(oci_ref(&dst, "d")))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in: {stderr}");
    assert!(!dst.exists(), "a failed decrypt left {} behind: {:?}", dst.display(), list_tree(&dst));
    Ok(())
}

#[test]
fn wrong_key_lists_the_attempts_and_writes_nothing() -> Result<()> {
    let work = tempfile::tempdir()?;
    let (enc, _) = tamperable_copy(work.path())?;
    let wrong = golden().join("multi-recipient-rsa-ec/keys/ec.priv.pem");
    decrypt_fails(&enc, &wrong, "could not unwrap the layer key")
}

#[test]
fn flipped_byte_with_consistent_digests_fails_the_hmac() -> Result<()> {
    let work = tempfile::tempdir()?;
    let (enc, key) = tamperable_copy(work.path())?;
    replace_layer0(&enc, |b| {
        let mid = b.len() / 2;
        b[mid] ^= 0x01;
    })?;
    decrypt_fails(&enc, &key, "HMAC")
}

#[test]
fn flipped_byte_in_place_fails_the_blob_digest() -> Result<()> {
    let work = tempfile::tempdir()?;
    let (enc, key) = tamperable_copy(work.path())?;
    let m = layout_manifest(&enc, "enc")?;
    let p = blob_path(&enc, m["layers"][1]["digest"].as_str().context("digest")?);
    let mut blob = std::fs::read(&p)?;
    blob[0] ^= 0x80;
    std::fs::write(&p, &blob)?;
    decrypt_fails(&enc, &key, "digest")
}

/// The source digest is checked in the encryptor's combined hashing pass: a
/// corrupted plain layer is refused, and nothing is written to DST.
#[test]
fn encrypting_a_corrupted_source_layer_fails_and_writes_nothing() -> Result<()> {
    let work = tempfile::tempdir()?;
    let src = work.path().join("plain");
    copy_tree(&golden().join("three-layers/plain-oci"), &src)?;
    let m = layout_manifest(&src, "v1")?;
    let p = blob_path(&src, m["layers"][2]["digest"].as_str().context("digest")?);
    let mut blob = std::fs::read(&p)?;
    let last = blob.len() - 1;
    blob[last] ^= 0x01;
    std::fs::write(&p, &blob)?;
    let dst = work.path().join("enc");
    let key = golden().join("three-layers/keys/rsa.pub.pem");
    let out = run(cloak()
        .args(["encrypt", "--quiet", "--recipient"])
        .arg(format!("jwe:{}", key.display()))
        .arg(oci_ref(&src, "v1"))
        .arg(oci_ref(&dst, "enc")))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(stderr.contains("digest mismatch"), "stderr: {stderr}");
    assert!(!dst.exists(), "a failed encrypt left {} behind: {:?}", dst.display(), list_tree(&dst));
    Ok(())
}

#[test]
fn truncated_blob_with_consistent_digests_fails() -> Result<()> {
    let work = tempfile::tempdir()?;
    let (enc, key) = tamperable_copy(work.path())?;
    replace_layer0(&enc, |b| b.truncate(b.len() - 7))?;
    decrypt_fails(&enc, &key, "HMAC")
}

#[test]
fn malformed_annotations_are_named() -> Result<()> {
    let work = tempfile::tempdir()?;
    let (enc, key) = tamperable_copy(work.path())?;
    rewrite_manifest(&enc, "enc", |m| {
        m["layers"][0]["annotations"]["org.opencontainers.image.enc.keys.jwe"] =
            Value::from("%%% not base64 %%%");
    })?;
    decrypt_fails(&enc, &key, "org.opencontainers.image.enc.keys.jwe")
}

#[test]
fn malformed_jwe_is_reported() -> Result<()> {
    let work = tempfile::tempdir()?;
    let (enc, key) = tamperable_copy(work.path())?;
    // Valid base64 of a JSON object that is not a JWE.
    rewrite_manifest(&enc, "enc", |m| {
        m["layers"][0]["annotations"]["org.opencontainers.image.enc.keys.jwe"] =
            Value::from("eyJoZWxsbyI6MX0=");
    })?;
    decrypt_fails(&enc, &key, "jwe")
}

#[test]
fn unknown_transport_is_a_usage_error() -> Result<()> {
    let work = tempfile::tempdir()?;
    let key = golden().join("three-layers/keys/rsa.priv.pem");
    let dst = work.path().join("out");
    let out =
        run(cloak().args(["decrypt", "--key"]).arg(&key).arg("dir:/tmp/nothing").arg(oci_ref(&dst, "x")))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr: {stderr}");
    assert!(stderr.contains("dir"), "the transport is not named: {stderr}");
    assert!(!dst.exists());
    Ok(())
}

#[test]
fn missing_recipient_is_a_usage_error() -> Result<()> {
    let out = run(cloak().args(["encrypt", "oci:a:b", "oci:c:d"]))?;
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--recipient"));
    Ok(())
}

/// A broker that answers every request with a bare 404, as Trustee answers cloak's
/// admin read-back route. Returns its port and the request lines it saw.
fn broker_without_read_back() -> Result<(u16, std::sync::Arc<std::sync::Mutex<Vec<String>>>)> {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    let port = listener.local_addr()?.port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen2 = std::sync::Arc::clone(&seen);
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let Ok(read) = conn.try_clone() else { return };
            let mut reader = BufReader::new(read);
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            if let Ok(mut s) = seen2.lock() {
                s.push(line.trim().to_string());
            }
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
                    break;
                }
            }
            let _ =
                conn.write_all(b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n");
        }
    });
    Ok((port, seen))
}

/// Issue 21, finding 11: `cloak encrypt --recipient kbs:///…` against a broker
/// without read-back (Trustee) failed only after pushing the config and two layers,
/// which stayed in the registry unreferenced, and printed its sentence four times.
#[test]
fn kbs_recipient_without_read_back_pushes_nothing_and_says_it_once() -> Result<()> {
    let Some(reg) = Registry::start() else { return Ok(()) };
    let (port, seen) = broker_without_read_back()?;
    let work = tempfile::tempdir()?;
    let admin = work.path().join("admin.pem");
    run_ok(Command::new("openssl").args(["genpkey", "-algorithm", "ed25519", "-out"]).arg(&admin))?;
    let src = golden().join("three-layers/plain-oci");
    let out = run(cloak()
        .args([
            "encrypt",
            "--quiet",
            "--dest-tls-verify=false",
            "--recipient",
            "kbs:///default/image-kek/app",
        ])
        .arg(format!("--kbs-url=http://127.0.0.1:{port}"))
        .arg("--kbs-admin-key")
        .arg(&admin)
        .arg(oci_ref(&src, "v1"))
        .arg(reg.docker_ref("app:enc")))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(!out.status.success(), "encrypt succeeded: {stderr}");
    ensure!(stderr.contains("--kek-file"), "the error does not name the way out: {stderr}");
    let line = stderr.lines().find(|l| l.starts_with("error:")).unwrap_or_default();
    let sentence = "cannot register a generated KEK";
    ensure!(line.matches(sentence).count() == 1, "said {} times: {line}", line.matches(sentence).count());
    ensure!(reg.blob_count() == 0, "{} blobs were pushed before the refusal", reg.blob_count());
    let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
    ensure!(seen.iter().all(|l| l.starts_with("GET ")), "something was written to the broker: {seen:?}");

    // Without an admin key, the error names both ways to give a KEK.
    let out = run(cloak()
        .args([
            "encrypt",
            "--quiet",
            "--dest-tls-verify=false",
            "--recipient",
            "kbs:///default/image-kek/app",
        ])
        .arg(oci_ref(&src, "v1"))
        .arg(reg.docker_ref("app:enc2")))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    ensure!(out.status.code() == Some(2), "not a usage error: {stderr}");
    ensure!(stderr.contains("--kek-file") && stderr.contains("--kbs-admin-key"), "{stderr}");
    ensure!(reg.blob_count() == 0, "blobs were pushed");
    Ok(())
}
