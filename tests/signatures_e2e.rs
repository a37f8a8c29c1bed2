//! Image signatures end to end, against signers and verifiers nobody here
//! wrote: cosign 2.5 (Debian trixie) signs and cloak verifies, cloak signs and
//! cosign verifies; skopeo 1.18 under a sigstoreSigned policy accepts a
//! cloak-signed image and cloak accepts a skopeo-signed one; skopeo 1.9.3
//! `--sign-by` (GPG, lookaside) verifies under signedBy. Then the refusals:
//! each one fails `cloak-pull` and leaves no rootfs.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{bail, Context, Result};
use test_support::*;

const PASSWORD: &str = "cloak-test";

fn cosign() -> Option<PathBuf> {
    peers::peer(peers::peers_dir().join("bin/cosign"), "cosign")
}

fn testdata() -> PathBuf {
    workspace_root().join("imgsig/testdata")
}

fn plain_layout() -> String {
    format!("oci:{}:v1", workspace_root().join("testdata/golden/three-layers/plain-oci").display())
}

fn ok(out: Output, what: &str) -> Result<Output> {
    if !out.status.success() {
        bail!(
            "{what} failed ({}):\n{}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}

/// Pushes the plain test image to `repo_tag` with skopeo 1.9.3; returns its manifest digest.
fn push(reg: &Registry, repo_tag: &str) -> Result<String> {
    let skopeo = skopeo_193().context("skopeo 1.9.3")?;
    ok(
        Command::new(&skopeo)
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .arg(plain_layout())
            .arg(reg.docker_ref(repo_tag))
            .output()?,
        "skopeo copy",
    )?;
    manifest_digest(reg, repo_tag)
}

fn manifest_digest(reg: &Registry, repo_ref: &str) -> Result<String> {
    let out = ok(
        Command::new(skopeo_193().context("skopeo")?)
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(reg.docker_ref(repo_ref))
            .output()?,
        "skopeo inspect --raw",
    )?;
    Ok(sha256_digest(&out.stdout))
}

fn policy(dir: &Path, json: &str) -> Result<PathBuf> {
    let p = dir.join(format!("policy-{}.json", sha256_digest(json.as_bytes()).get(7..19).unwrap_or("x")));
    std::fs::write(&p, json)?;
    Ok(p)
}

fn sigstore_policy(dir: &Path, scope: &str, key: &Path, identity: Option<&str>) -> Result<PathBuf> {
    let id = identity.map(|i| format!(r#","signedIdentity":{i}"#)).unwrap_or_default();
    policy(
        dir,
        &format!(
            r#"{{"default":[{{"type":"reject"}}],"transports":{{"docker":{{"{scope}":[{{"type":"sigstoreSigned","keyPath":"{}"{id}}}]}}}}}}"#,
            key.display()
        ),
    )
}

fn cloak_verify(policy: &Path, image: &str) -> Result<Output> {
    Ok(Command::new(bin("cloak"))
        .args(["verify", "--src-tls-verify=false", "--signature-policy"])
        .arg(policy)
        .arg(image)
        .output()?)
}

fn cloak_sign(key: &Path, image: &str, extra: &[&str]) -> Result<Output> {
    ok(
        Command::new(bin("cloak"))
            .env("COSIGN_PASSWORD", PASSWORD)
            .args(["sign", "--dest-tls-verify=false", "--key"])
            .arg(key)
            .args(extra)
            .arg(image)
            .output()?,
        "cloak sign",
    )
}

fn pull(policy: &Path, image: &str, bundle: &Path, extra: &[&str]) -> Result<Output> {
    Ok(Command::new(bin("cloak-pull"))
        .args(["--quiet", "--src-tls-verify=false", "--signature-policy"])
        .arg(policy)
        .args(extra)
        .arg(image)
        .arg(bundle)
        .output()?)
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A pull refused with `needle` in the error and nothing at BUNDLE/rootfs.
fn assert_refused(policy: &Path, image: &str, bundle: &Path, extra: &[&str], needle: &str) -> Result<()> {
    let out = pull(policy, image, bundle, extra)?;
    let err = stderr(&out);
    assert!(!out.status.success(), "pull of {image} should be refused");
    assert!(err.contains("signature policy refused"), "{err}");
    assert!(err.contains(needle), "expected {needle:?} in: {err}");
    assert!(!bundle.join("rootfs").exists(), "a refused pull left a rootfs");
    Ok(())
}

#[test]
fn cosign_signs_cloak_verifies_and_pulls() -> Result<()> {
    let (Some(reg), Some(cosign)) = (Registry::start(), cosign()) else { return Ok(()) };
    let tmp = tempfile::tempdir()?;
    let digest = push(&reg, "app/hello:v1")?;
    ok(
        Command::new(&cosign)
            .env("COSIGN_PASSWORD", PASSWORD)
            .env("HOME", tmp.path())
            .args(["sign", "--key"])
            .arg(testdata().join("cosign.key"))
            .args(["--tlog-upload=false", "--yes", "--allow-http-registry"])
            .arg(format!("{}/app/hello@{digest}", reg.host()))
            .output()?,
        "cosign sign",
    )?;
    let pol =
        sigstore_policy(tmp.path(), &format!("{}/app", reg.host()), &testdata().join("cosign.pub"), None)?;
    let image = reg.docker_ref("app/hello:v1");
    let v = cloak_verify(&pol, &image)?;
    assert!(v.status.success(), "cloak verify refused a cosign-signed image: {}", stderr(&v));
    let bundle = tmp.path().join("bundle");
    let out = pull(&pol, &image, &bundle, &[])?;
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(bundle.join("rootfs").is_dir());

    // The same image under another key is refused, naming the key tried.
    let other =
        sigstore_policy(tmp.path(), &format!("{}/app", reg.host()), &testdata().join("p384.pub"), None)?;
    assert_refused(&other, &image, &tmp.path().join("b2"), &[], "not made by any of the keys tried")?;
    let e = stderr(&cloak_verify(&other, &image)?);
    assert!(e.contains("ECDSA P-384"), "{e}");
    Ok(())
}

#[test]
fn cloak_signs_cosign_verifies() -> Result<()> {
    let (Some(reg), Some(cosign)) = (Registry::start(), cosign()) else { return Ok(()) };
    let tmp = tempfile::tempdir()?;
    let digest = push(&reg, "app/signed:v1")?;
    // cosign's encrypted key, then a plain PKCS#8 key, appended as a second layer.
    cloak_sign(&testdata().join("cosign.key"), &reg.docker_ref(&format!("app/signed@{digest}")), &[])?;
    cloak_sign(&testdata().join("p384.key"), &reg.docker_ref("app/signed:v1"), &[])?;
    for public in ["cosign.pub", "p384.pub"] {
        ok(
            Command::new(&cosign)
                .env("HOME", tmp.path())
                .args(["verify", "--key"])
                .arg(testdata().join(public))
                .args(["--insecure-ignore-tlog=true", "--allow-http-registry"])
                .arg(format!("{}/app/signed@{digest}", reg.host()))
                .output()?,
            &format!("cosign verify --key {public}"),
        )?;
    }
    Ok(())
}

/// skopeo 1.18 under `--policy` with the given policy, copying `image` into an OCI layout.
/// `--remove-signatures`: an `oci:` destination cannot store signatures ("Pushing
/// signatures for OCI images is not supported"); the policy is still evaluated on the
/// source, before any blob is copied.
fn skopeo_118_copy(skopeo: &Path, policy: &Path, rd: &Path, image: &str, dest: &Path) -> Result<Output> {
    Ok(Command::new(skopeo)
        .args(["copy", "--quiet", "--remove-signatures", "--src-tls-verify=false", "--policy"])
        .arg(policy)
        .arg("--registries.d")
        .arg(rd)
        .arg(image)
        .arg(format!("oci:{}:x", dest.display()))
        .output()?)
}

/// Why this test once failed (skopeo: `Signature for identity "HOST/app/by-cloak" is not
/// accepted`): containers/image reads an omitted `signedIdentity` on `sigstoreSigned` as
/// `matchRepoDigestOrExact`, which refuses any name-only identity, and a name-only
/// identity (the repository, no tag) is what cosign and cloak write. cloak reads the same
/// omission as `matchRepository`. So a policy meant for skopeo/podman names
/// `matchRepository`, or the signer claims the tagged reference (`--identity HOST/REPO:TAG`).
#[test]
fn skopeo_118_and_cloak_accept_each_others_signatures() -> Result<()> {
    let (Some(reg), Some(skopeo)) = (Registry::start(), skopeo_118()) else { return Ok(()) };
    let tmp = tempfile::tempdir()?;
    let host = reg.host();
    let rd = tmp.path().join("registries.d");
    std::fs::create_dir_all(&rd)?;
    std::fs::write(rd.join("sigstore.yaml"), "default-docker:\n  use-sigstore-attachments: true\n")?;
    let scope = format!("{host}/app");
    let public = testdata().join("cosign.pub");
    let repo_pol = sigstore_policy(tmp.path(), &scope, &public, Some(r#"{"type":"matchRepository"}"#))?;
    let omitted = sigstore_policy(tmp.path(), &scope, &public, None)?;
    let out = |n: &str| tmp.path().join(n);

    // cloak signs (cosign's name-only identity), skopeo 1.18 verifies while copying out,
    // by digest and by tag.
    let digest = push(&reg, "app/by-cloak:v1")?;
    cloak_sign(&testdata().join("cosign.key"), &reg.docker_ref(&format!("app/by-cloak@{digest}")), &[])?;
    for (n, image) in [("by-digest", format!("app/by-cloak@{digest}")), ("by-tag", "app/by-cloak:v1".into())]
    {
        ok(
            skopeo_118_copy(&skopeo, &repo_pol, &rd, &reg.docker_ref(&image), &out(n))?,
            &format!("skopeo 1.18 copy of {image} under sigstoreSigned + matchRepository"),
        )?;
        assert!(out(n).join("index.json").is_file(), "skopeo accepted {image} but wrote no layout");
    }
    // Under an omitted signedIdentity containers/image refuses that identity, cloak accepts it.
    let e = skopeo_118_copy(&skopeo, &omitted, &rd, &reg.docker_ref("app/by-cloak:v1"), &out("omitted"))?;
    assert!(!e.status.success(), "skopeo 1.18 accepted a name-only identity under matchRepoDigestOrExact");
    let e = stderr(&e);
    assert!(
        e.contains("Signature for identity")
            && e.contains(&format!("{host}/app/by-cloak"))
            && e.contains("is not accepted"),
        "expected skopeo to refuse the identity {host}/app/by-cloak: {e}"
    );
    let v = cloak_verify(&omitted, &reg.docker_ref("app/by-cloak:v1"))?;
    assert!(v.status.success(), "cloak reads an omitted signedIdentity as matchRepository: {}", stderr(&v));
    // A second signature claiming the tagged reference satisfies containers/image's default.
    cloak_sign(
        &testdata().join("cosign.key"),
        &reg.docker_ref("app/by-cloak:v1"),
        &["--identity", &format!("{host}/app/by-cloak:v1")],
    )?;
    ok(
        skopeo_118_copy(&skopeo, &omitted, &rd, &reg.docker_ref("app/by-cloak:v1"), &out("tagged"))?,
        "skopeo 1.18 copy under an omitted signedIdentity of an image signed with a tagged identity",
    )?;
    // ...and refuses what nobody signed (so the acceptances above meant something).
    push(&reg, "app/unsigned:v1")?;
    let refused =
        skopeo_118_copy(&skopeo, &repo_pol, &rd, &reg.docker_ref("app/unsigned:v1"), &out("unsigned"))?;
    assert!(!refused.status.success(), "skopeo accepted an unsigned image");
    assert!(
        stderr(&refused).contains("A signature was required, but no signature exists"),
        "{}",
        stderr(&refused)
    );

    // skopeo 1.18 signs while pushing, cloak verifies (identity with the tag, optional.creator set).
    let pw = tmp.path().join("pw");
    std::fs::write(&pw, PASSWORD)?;
    let insecure = policy(tmp.path(), r#"{"default":[{"type":"insecureAcceptAnything"}]}"#)?;
    ok(
        Command::new(&skopeo)
            .args(["copy", "--quiet", "--dest-tls-verify=false", "--policy"])
            .arg(&insecure)
            .arg("--registries.d")
            .arg(&rd)
            .arg("--sign-by-sigstore-private-key")
            .arg(testdata().join("cosign.key"))
            .arg("--sign-passphrase-file")
            .arg(&pw)
            .arg(plain_layout())
            .arg(reg.docker_ref("app/by-skopeo:v1"))
            .output()?,
        "skopeo 1.18 copy --sign-by-sigstore-private-key",
    )?;
    let by_skopeo = reg.docker_ref("app/by-skopeo:v1");
    for (pol, what) in [(&omitted, "omitted (matchRepository)"), (&repo_pol, "matchRepository")] {
        let v = cloak_verify(pol, &by_skopeo)?;
        assert!(v.status.success(), "cloak refused a skopeo-signed image under {what}: {}", stderr(&v));
    }
    let exact = sigstore_policy(tmp.path(), &scope, &public, Some(r#"{"type":"matchExact"}"#))?;
    let v = cloak_verify(&exact, &by_skopeo)?;
    assert!(v.status.success(), "skopeo signs the tagged reference, so matchExact holds: {}", stderr(&v));
    let bundle = out("bundle");
    let p = pull(&exact, &by_skopeo, &bundle, &[])?;
    assert!(p.status.success(), "cloak-pull refused a skopeo-signed image: {}", stderr(&p));
    assert!(bundle.join("rootfs").is_dir());
    // The same signature does not admit another tag: matchExact compares the tag too.
    retag(&reg, "app/by-skopeo:v1", "app/by-skopeo:v2")?;
    assert_refused(&exact, &reg.docker_ref("app/by-skopeo:v2"), &out("b-v2"), &[], "claims identity")?;
    // And skopeo 1.18 accepts its own signature under the same policy (the peer agrees).
    ok(
        skopeo_118_copy(&skopeo, &exact, &rd, &by_skopeo, &out("by-skopeo"))?,
        "skopeo 1.18 verifying its own signature",
    )?;
    Ok(())
}

/// Tags the manifest `from` points at as `to` too (the same bytes, so the same digest
/// and the same `sha256-<hex>.sig` signatures).
fn retag(reg: &Registry, from: &str, to: &str) -> Result<()> {
    let raw = ok(
        Command::new(skopeo_193().context("skopeo")?)
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(reg.docker_ref(from))
            .output()?,
        "skopeo inspect --raw",
    )?
    .stdout;
    put_manifest(reg, to, &raw)
}

#[test]
fn refusals_leave_no_rootfs() -> Result<()> {
    let Some(reg) = Registry::start() else { return Ok(()) };
    let tmp = tempfile::tempdir()?;
    let key = testdata().join("cosign.key");
    let host = reg.host();
    // containers/image refuses a name-only signed identity (what cosign and cloak write)
    // under its default matchRepoDigestOrExact; cosign users name matchRepository, which is
    // also what cloak means when signedIdentity is omitted.
    let pol = sigstore_policy(
        tmp.path(),
        &format!("{}/app", reg.host()),
        &testdata().join("cosign.pub"),
        Some(r#"{"type":"matchRepository"}"#),
    )?;
    let b = |n: &str| tmp.path().join(n);

    // Unsigned image under a signing policy.
    push(&reg, "app/unsigned:v1")?;
    assert_refused(&pol, &reg.docker_ref("app/unsigned:v1"), &b("unsigned"), &[], "not signed")?;

    // Signature by another key.
    let d_other = push(&reg, "app/other-key:v1")?;
    cloak_sign(&testdata().join("p384.key"), &reg.docker_ref(&format!("app/other-key@{d_other}")), &[])?;
    assert_refused(
        &pol,
        &reg.docker_ref("app/other-key:v1"),
        &b("other-key"),
        &[],
        "not made by any of the keys",
    )?;

    // Signature for another digest: image A's signature manifest re-tagged onto image B
    // (same repository; B is the same image as a Docker v2s2 manifest, so another digest).
    let d_a = push(&reg, "app/retag:a")?;
    cloak_sign(&key, &reg.docker_ref(&format!("app/retag@{d_a}")), &[])?;
    ok(
        Command::new(skopeo_193().context("skopeo")?)
            .args(["copy", "--quiet", "--dest-tls-verify=false", "--format", "v2s2"])
            .arg(plain_layout())
            .arg(reg.docker_ref("app/retag:b"))
            .output()?,
        "skopeo push of B (v2s2)",
    )?;
    let d_b = manifest_digest(&reg, "app/retag:b")?;
    assert_ne!(d_a, d_b);
    let sig_a = ok(
        Command::new(skopeo_193().context("skopeo")?)
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(reg.docker_ref(&format!("app/retag:{}.sig", d_a.replace(':', "-"))))
            .output()?,
        "reading A's signature manifest",
    )?
    .stdout;
    put_manifest(&reg, &format!("app/retag:{}.sig", d_b.replace(':', "-")), &sig_a)?;
    assert_refused(&pol, &reg.docker_ref("app/retag:b"), &b("retag"), &[], &format!("signs manifest {d_a}"))?;

    // Identity mismatch with signedIdentity omitted: a signature for app-a presented for app-b.
    let d_id = push(&reg, "app/app-b:v1")?;
    cloak_sign(
        &key,
        &reg.docker_ref(&format!("app/app-b@{d_id}")),
        &["--identity", &format!("{host}/app/app-a")],
    )?;
    assert_refused(&pol, &reg.docker_ref("app/app-b:v1"), &b("identity"), &[], "claims identity")?;

    // A reject scope.
    let reject = policy(tmp.path(), r#"{"default":[{"type":"reject"}]}"#)?;
    let d_ok = push(&reg, "app/good:v1")?;
    cloak_sign(&key, &reg.docker_ref(&format!("app/good@{d_ok}")), &[])?;
    assert_refused(&reject, &reg.docker_ref("app/good:v1"), &b("reject"), &[], "rejects every image")?;

    // A cached image whose policy now rejects it: pulled once into a store, then refused.
    let store = tmp.path().join("store");
    let store_s = store.display().to_string();
    let out = pull(&pol, &reg.docker_ref("app/good:v1"), &b("cached-1"), &["--store", &store_s])?;
    assert!(out.status.success(), "{}", stderr(&out));
    let other_key = sigstore_policy(tmp.path(), &format!("{host}/app"), &testdata().join("rsa.pub"), None)?;
    assert_refused(
        &other_key,
        &reg.docker_ref("app/good:v1"),
        &b("cached-2"),
        &["--store", &store_s],
        "RSA-2048",
    )?;

    // A malformed signature manifest (a layer without the signature annotation).
    let d_bad = push(&reg, "app/malformed:v1")?;
    cloak_sign(&key, &reg.docker_ref(&format!("app/malformed@{d_bad}")), &[])?;
    let sig_tag = format!("app/malformed:{}.sig", d_bad.replace(':', "-"));
    let raw = ok(
        Command::new(skopeo_193().context("skopeo")?)
            .args(["inspect", "--raw", "--tls-verify=false"])
            .arg(reg.docker_ref(&sig_tag))
            .output()?,
        "reading the signature manifest",
    )?
    .stdout;
    let broken = String::from_utf8(raw)?.replace("dev.cosignproject.cosign/signature", "dev.example/nothing");
    put_manifest(&reg, &sig_tag, broken.as_bytes())?;
    assert_refused(
        &pol,
        &reg.docker_ref("app/malformed:v1"),
        &b("malformed"),
        &[],
        "annotation dev.cosignproject.cosign/signature is missing",
    )?;

    // An oversized one (more signature layers than allowed).
    let mut m: serde_json::Value = serde_json::from_str(&broken)?;
    let layer = m["layers"][0].clone();
    m["layers"] = serde_json::Value::Array(vec![layer; 65]);
    put_manifest(&reg, &sig_tag, m.to_string().as_bytes())?;
    assert_refused(
        &pol,
        &reg.docker_ref("app/malformed:v1"),
        &b("oversized"),
        &[],
        "more than the 64 allowed",
    )?;
    Ok(())
}

/// PUT a manifest with curl (the registry is plain HTTP on loopback).
fn put_manifest(reg: &Registry, repo_tag: &str, bytes: &[u8]) -> Result<()> {
    let (repo, tag) = repo_tag.rsplit_once(':').context("repo:tag")?;
    let f = tempfile::NamedTempFile::new()?;
    std::fs::write(f.path(), bytes)?;
    ok(
        Command::new("curl")
            .args([
                "-fsS",
                "-X",
                "PUT",
                "-H",
                "Content-Type: application/vnd.oci.image.manifest.v1+json",
                "--data-binary",
            ])
            .arg(format!("@{}", f.path().display()))
            .arg(format!("http://{}/v2/{repo}/manifests/{tag}", reg.host()))
            .output()?,
        "curl PUT manifest",
    )?;
    Ok(())
}

#[test]
fn gpg_signed_by_skopeo_193_verifies_under_signed_by() -> Result<()> {
    let (Some(reg), Some(skopeo)) = (Registry::start(), skopeo_193()) else { return Ok(()) };
    let tmp = tempfile::tempdir()?;
    let gnupg = tmp.path().join("gnupg");
    std::fs::create_dir_all(&gnupg)?;
    let gpg = |args: &[&str]| -> Result<Output> {
        ok(
            Command::new("gpg")
                .arg("--homedir")
                .arg(&gnupg)
                .args(["--batch", "--quiet"])
                .args(args)
                .output()?,
            "gpg",
        )
    };
    gpg(&[
        "--pinentry-mode",
        "loopback",
        "--passphrase",
        "",
        "--quick-gen-key",
        "cloak test <cloak@example.invalid>",
        "ed25519",
        "sign",
        "never",
    ])?;
    let public = gpg(&["--armor", "--export", "cloak@example.invalid"])?.stdout;
    let key = tmp.path().join("signer.gpg");
    std::fs::write(&key, &public)?;

    let store = tmp.path().join("sigstore");
    let rd = tmp.path().join("registries.d");
    std::fs::create_dir_all(&rd)?;
    std::fs::write(
        rd.join("lookaside.yaml"),
        format!("docker:\n  {}:\n    lookaside: file://{}\n", reg.host(), store.display()),
    )?;
    let insecure = policy(tmp.path(), r#"{"default":[{"type":"insecureAcceptAnything"}]}"#)?;
    ok(
        Command::new(&skopeo)
            .env("GNUPGHOME", &gnupg)
            .args(["copy", "--quiet", "--dest-tls-verify=false", "--policy"])
            .arg(&insecure)
            .arg("--registries.d")
            .arg(&rd)
            .args(["--sign-by", "cloak@example.invalid"])
            .arg(plain_layout())
            .arg(reg.docker_ref("app/gpg:v1"))
            .output()?,
        "skopeo 1.9.3 copy --sign-by",
    )?;
    let pol = policy(
        tmp.path(),
        &format!(
            r#"{{"default":[{{"type":"reject"}}],"transports":{{"docker":{{"{}/app":[{{"type":"signedBy","keyType":"GPGKeys","keyPath":"{}"}}]}}}}}}"#,
            reg.host(),
            key.display()
        ),
    )?;
    let rd_s = rd.display().to_string();
    let v = Command::new(bin("cloak"))
        .args(["verify", "--src-tls-verify=false", "--registries-d", &rd_s, "--signature-policy"])
        .arg(&pol)
        .arg(reg.docker_ref("app/gpg:v1"))
        .output()?;
    assert!(v.status.success(), "cloak verify refused a GPG-signed image: {}", stderr(&v));
    let bundle = tmp.path().join("bundle");
    let out = pull(&pol, &reg.docker_ref("app/gpg:v1"), &bundle, &["--registries-d", &rd_s])?;
    assert!(out.status.success(), "{}", stderr(&out));

    // Without the lookaside there is nothing to verify: refused, no rootfs.
    assert_refused(&pol, &reg.docker_ref("app/gpg:v1"), &tmp.path().join("b2"), &[], "not signed")?;
    // A key that did not sign: refused.
    let gnupg2 = tmp.path().join("gnupg2");
    std::fs::create_dir_all(&gnupg2)?;
    let gpg2 = |args: &[&str]| -> Result<Output> {
        ok(
            Command::new("gpg")
                .arg("--homedir")
                .arg(&gnupg2)
                .args(["--batch", "--quiet"])
                .args(args)
                .output()?,
            "gpg",
        )
    };
    gpg2(&[
        "--pinentry-mode",
        "loopback",
        "--passphrase",
        "",
        "--quick-gen-key",
        "other <other@example.invalid>",
        "ed25519",
        "sign",
        "never",
    ])?;
    std::fs::write(&key, gpg2(&["--armor", "--export", "other@example.invalid"])?.stdout)?;
    assert_refused(
        &pol,
        &reg.docker_ref("app/gpg:v1"),
        &tmp.path().join("b3"),
        &["--registries-d", &rd_s],
        "signature-1",
    )?;
    // The agents key generation started for the two throw-away homedirs.
    for home in [&gnupg, &gnupg2] {
        let _ = Command::new("gpgconf").arg("--homedir").arg(home).args(["--kill", "gpg-agent"]).output();
    }
    Ok(())
}
