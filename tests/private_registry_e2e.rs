//! Private registries end to end (issue 24), against real peers only: Debian's
//! `docker-registry` with htpasswd (bcrypt) authentication served over TLS with a
//! CA made here, a second plain registry as a mirror holding the same content,
//! Debian's `tinyproxy` on loopback (its own log shows the CONNECT), the broker
//! (`cloak-kbs`, sample evidence) holding the auth.json, and the real
//! `cloak-pull`.
//!
//! Every pull also checks that the password is in none of cloak-pull's output
//! (debug logs included), its errors, or the files it wrote.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{ensure, Context, Result};
use base64::Engine;
use test_support::*;

const USER: &str = "puller";
/// Never expected anywhere cloak writes: output, errors, bundles.
const PASSWORD: &str = "Reg-pw-24-never-shown";
const WRONG: &str = "Wrong-pw-24-never-shown";

fn plain_image() -> String {
    format!("oci:{}:v1", workspace_root().join("testdata/golden/three-layers/plain-oci").display())
}

fn auth_json(host: &str, user: &str, pass: &str) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
    format!(r#"{{"auths":{{"{host}":{{"auth":"{b64}"}}}}}}"#)
}

/// A TLS + htpasswd registry, its CA as a `--cert-dir`, and a workspace.
struct Private {
    reg: Registry,
    /// skopeo's and cloak-pull's `--cert-dir`: `<dir>/127.0.0.1:PORT/ca.crt`.
    cert_dir: PathBuf,
    /// The CA's certificate (PEM).
    ca_pem: PathBuf,
    /// The CA, to issue more certificates.
    ca: TestCa,
    /// Fixtures the test writes (auth files): not scanned for the password.
    fixtures: tempfile::TempDir,
    /// Where cloak-pull writes: scanned for the password.
    work: tempfile::TempDir,
}

impl Private {
    fn start() -> Result<Option<Private>> {
        let fixtures = tempfile::tempdir()?;
        let ca = TestCa::new(fixtures.path(), "registry")?;
        let cert = ca.issue("registry", "IP:127.0.0.1")?;
        let Some(reg) = Registry::start_private(USER, PASSWORD, &cert) else { return Ok(None) };
        let cert_dir = fixtures.path().join("certs.d");
        std::fs::create_dir_all(cert_dir.join(reg.host()))?;
        std::fs::copy(&ca.cert, cert_dir.join(reg.host()).join("ca.crt"))?;
        let ca_pem = ca.cert.clone();
        Ok(Some(Private { reg, cert_dir, ca_pem, ca, fixtures, work: tempfile::tempdir()? }))
    }

    /// A fixture file.
    fn fixture(&self, name: &str, content: &str) -> Result<PathBuf> {
        let p = self.fixtures.path().join(name);
        std::fs::write(&p, content)?;
        Ok(p)
    }

    /// skopeo copies `src` to `repo_tag` in this registry (credentials from an auth
    /// file, the CA from the cert dir).
    fn push(&self, src: &str, repo_tag: &str) -> Result<()> {
        let auth = self.fixture("push-auth.json", &auth_json(&self.reg.host(), USER, PASSWORD))?;
        run_bounded_ok(
            Command::new(skopeo_193().context("skopeo")?)
                .args(["copy", "--quiet", "--dest-authfile"])
                .arg(&auth)
                .arg("--dest-cert-dir")
                .arg(self.cert_dir.join(self.reg.host()))
                .arg(src)
                .arg(self.reg.docker_ref(repo_tag)),
        )?;
        Ok(())
    }

    /// `cloak-pull --quiet ARGS IMAGE WORK/BUNDLE` with debug logs on.
    fn pull(&self, bundle: &str, args: &[&str], image: &str) -> Result<Ran> {
        let r = run_bounded(
            Command::new(bin("cloak-pull"))
                .env("CLOAK_LOG", "debug")
                .env_remove("REGISTRY_AUTH_FILE")
                .env_remove("https_proxy")
                .env_remove("HTTPS_PROXY")
                .args(["--quiet", "--registry-connect-timeout", "5", "--registry-idle-timeout", "10"])
                .args(args)
                .arg(image)
                .arg(self.work.path().join(bundle)),
            CMD_LIMIT,
        )?;
        self.assert_never_shown(&r);
        Ok(r)
    }

    fn assert_never_shown(&self, r: &Ran) {
        for secret in [PASSWORD, WRONG] {
            assert!(!r.stderr.contains(secret), "a password is in cloak-pull's output: {}", r.describe());
            assert!(!String::from_utf8_lossy(&r.stdout).contains(secret), "a password is on stdout");
            for f in list_tree(self.work.path()) {
                let p = self.work.path().join(&f);
                if p.is_file() && !p.is_symlink() {
                    let bytes = std::fs::read(&p).unwrap_or_default();
                    assert!(
                        !bytes.windows(secret.len()).any(|w| w == secret.as_bytes()),
                        "a password is on disk in {}",
                        p.display()
                    );
                }
            }
        }
    }

    fn rootfs(&self, bundle: &str) -> Vec<PathBuf> {
        list_tree(&self.work.path().join(bundle).join("rootfs"))
    }
}

/// The last non-empty line of stderr (cloak-pull's one error line).
fn error_line(r: &Ran) -> String {
    r.stderr.lines().rfind(|l| !l.trim().is_empty()).unwrap_or_default().to_owned()
}

fn args(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

fn refused(r: &Ran, what: &str) -> String {
    assert!(!r.ok(), "{what}: the pull succeeded: {}", r.describe());
    let line = error_line(r);
    eprintln!("{what}: refused as expected: {line}");
    assert_eq!(report::repeated_clause(&line), None, "{line}");
    line
}

#[test]
fn credentials_from_the_kbs_pull_a_private_encrypted_image_and_401s_say_what_was_found() -> Result<()> {
    let Some(p) = Private::start()? else { return Ok(()) };
    let host = tempfile::tempdir()?;
    let broker = LocalBroker::start(host.path(), free_port(), ALLOW_SAMPLE)?;
    let enc = format!("oci:{}:enc", host.path().join("enc").display());
    broker.encrypt("kbs:///default/image-kek/private", &plain_image(), &enc)?;
    p.push(&enc, "private/app:enc")?;
    let reg = p.reg.host();
    broker.put_resource("default/credential/test", auth_json(&reg, USER, PASSWORD).as_bytes())?;
    broker.put_resource("default/credential/wrong", auth_json(&reg, USER, WRONG).as_bytes())?;
    broker.put_resource("default/credential/other", auth_json("other.example", USER, PASSWORD).as_bytes())?;
    let image = p.reg.docker_ref("private/app:enc");
    let cert_dir = p.cert_dir.display().to_string();
    let kbs = broker.url();
    let with_auth = |uri: &'static str| {
        vec!["--kbs", &kbs, "--attester", "sample", "--kbs-timeout", "5", "--cert-dir", &cert_dir]
            .into_iter()
            .map(str::to_owned)
            .chain(["--authfile".to_owned(), uri.to_owned()])
            .collect::<Vec<String>>()
    };

    let ok = with_auth("kbs:///default/credential/test");
    let r = p.pull("ok", &args(&ok), &image)?;
    ensure!(r.ok(), "pull with credentials from the KBS failed: {}\n{}", r.describe(), broker.log());
    assert!(!p.rootfs("ok").is_empty(), "no rootfs");

    // No entry for this registry in the KBS's auth.json: a 401 naming the registry and
    // where credentials were looked for; nothing left at the bundle.
    let none = with_auth("kbs:///default/credential/other");
    let line = refused(&p.pull("none", &args(&none), &image)?, "no credentials");
    for part in ["401", &format!("no credentials were found for {reg}"), "kbs:///default/credential/other"] {
        assert!(line.contains(part), "{part:?} missing: {line}");
    }
    assert!(p.rootfs("none").is_empty(), "a rootfs was left after a refused pull");

    // Wrong password: says credentials were found and refused, never their value.
    let wrong = with_auth("kbs:///default/credential/wrong");
    let line = refused(&p.pull("wrong", &args(&wrong), &image)?, "wrong credentials");
    assert!(line.contains(&format!("the credentials for {reg}")) && line.contains("were refused"), "{line}");
    assert!(line.contains(USER), "the user name (not secret) helps: {line}");

    // A kbs:/// auth file needs the KBS.
    let r = p.pull("no-kbs", &["--authfile", "kbs:///default/credential/test"], &image)?;
    let line = refused(&r, "kbs:/// auth file without --kbs");
    assert!(line.contains("--kbs URL"), "{line}");

    // A missing KBS resource names it.
    let missing = with_auth("kbs:///default/credential/absent");
    let line = refused(&p.pull("absent", &args(&missing), &image)?, "absent auth file");
    assert!(line.contains("kbs:///default/credential/absent"), "{line}");
    Ok(())
}

#[test]
fn the_private_ca_is_needed_and_a_refused_certificate_says_why() -> Result<()> {
    let Some(p) = Private::start()? else { return Ok(()) };
    p.push(&plain_image(), "private/app:v1")?;
    let auth = p.fixture("auth.json", &auth_json(&p.reg.host(), USER, PASSWORD))?;
    let auth = auth.display().to_string();
    let image = p.reg.docker_ref("private/app:v1");
    // Without the CA: refused, naming the registry and what to do.
    let line = refused(&p.pull("no-ca", &["--authfile", &auth], &image)?, "unknown CA");
    for part in [p.reg.host().as_str(), "unknown CA", "--cert-dir"] {
        assert!(line.contains(part), "{part:?} missing: {line}");
    }
    // The CA flat in a cert dir (every registry), then per registry.
    let flat = p.fixtures.path().join("flat");
    std::fs::create_dir_all(&flat)?;
    std::fs::copy(&p.ca_pem, flat.join("ca.crt"))?;
    // A certificate from the right CA for another name: said so, with the names it lists.
    let Some(misnamed) =
        Registry::start_private(USER, PASSWORD, &p.ca.issue("misnamed", "DNS:registry.example.invalid")?)
    else {
        return Ok(());
    };
    let certs = flat.display().to_string();
    let line = refused(
        &p.pull("misnamed", &["--cert-dir", &certs], &misnamed.docker_ref("private/app:v1"))?,
        "certificate for another name",
    );
    for part in [misnamed.host().as_str(), "for another name", "registry.example.invalid"] {
        assert!(line.contains(part), "{part:?} missing: {line}");
    }
    // A certificate from the right CA for the right name, expired: said so.
    let Some(expired) =
        Registry::start_private(USER, PASSWORD, &p.ca.issue_expired("expired", "IP:127.0.0.1")?)
    else {
        return Ok(());
    };
    let line = refused(
        &p.pull("expired", &["--cert-dir", &certs], &expired.docker_ref("private/app:v1"))?,
        "expired certificate",
    );
    for part in [expired.host().as_str(), "expired"] {
        assert!(line.contains(part), "{part:?} missing: {line}");
    }
    assert!(!line.contains("unknown CA") && !line.contains("another name"), "{line}");
    for (bundle, dir) in [("flat", flat.clone()), ("per-host", p.cert_dir.clone())] {
        let dir = dir.display().to_string();
        let r = p.pull(bundle, &["--authfile", &auth, "--cert-dir", &dir], &image)?;
        ensure!(r.ok(), "pull with --cert-dir {dir} failed: {}", r.describe());
        assert!(!p.rootfs(bundle).is_empty());
    }
    Ok(())
}

#[test]
fn pulls_go_through_the_proxy_unless_no_proxy_names_the_registry() -> Result<()> {
    let Some(p) = Private::start()? else { return Ok(()) };
    let Some(proxy) = Proxy::start() else { return Ok(()) };
    p.push(&plain_image(), "private/app:v1")?;
    let auth = p.fixture("auth.json", &auth_json(&p.reg.host(), USER, PASSWORD))?.display().to_string();
    let certs = p.cert_dir.display().to_string();
    let image = p.reg.docker_ref("private/app:v1");
    let url = proxy.url();
    let base = ["--authfile", auth.as_str(), "--cert-dir", certs.as_str(), "--proxy", url.as_str()];
    let r = p.pull("proxied", &base, &image)?;
    ensure!(r.ok(), "pull through the proxy failed: {}\nproxy log:\n{}", r.describe(), proxy.log());
    let want = format!("CONNECT {}", p.reg.host());
    let connects = proxy.connects();
    assert!(connects.iter().any(|l| l.contains(&want)), "the proxy's log shows no {want}:\n{}", proxy.log());

    // no_proxy naming the registry's IP: straight to the registry.
    let before = connects.len();
    let mut direct = base.to_vec();
    direct.extend(["--no-proxy", "127.0.0.1"]);
    let r = p.pull("direct", &direct, &image)?;
    ensure!(r.ok(), "pull with --no-proxy failed: {}", r.describe());
    assert_eq!(proxy.connects().len(), before, "no_proxy was ignored:\n{}", proxy.log());

    // A proxy that is down fails the pull (no silent direct connection).
    drop(proxy);
    let r = p.pull("proxy-down", &base, &image)?;
    let line = refused(&r, "proxy down");
    assert!(line.contains(&format!("through the proxy {url}")), "the proxy is not named: {line}");
    Ok(())
}

/// Lines of a registry's access log that are requests (`/v2/...`).
fn requests(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.contains("/v2/")).collect()
}

#[test]
fn mirrors_are_tried_first_but_cannot_change_the_image_and_blocked_registries_get_no_request() -> Result<()> {
    let Some(p) = Private::start()? else { return Ok(()) };
    let Some(mirror) = Registry::start_with_access_log() else { return Ok(()) };
    p.push(&plain_image(), "private/app:v1")?;
    // The mirror holds the same image (same manifest bytes), and another one.
    let skopeo = skopeo_193().context("skopeo")?;
    for (src, dest) in [(plain_image(), "private/app:v1"), (other_image(&p)?, "private/other:v1")] {
        run_bounded_ok(
            Command::new(&skopeo)
                .args(["copy", "--quiet", "--dest-tls-verify=false"])
                .arg(&src)
                .arg(mirror.docker_ref(dest)),
        )?;
    }
    let (digest, _) = mirror.manifest("private/app", "v1")?;
    let auth = p.fixture("auth.json", &auth_json(&p.reg.host(), USER, PASSWORD))?.display().to_string();
    let certs = p.cert_dir.display().to_string();
    let conf = p.fixture(
        "registries.conf",
        &format!(
            "[[registry]]\nprefix = \"{reg}/private\"\nlocation = \"{reg}/private\"\n\
             [[registry.mirror]]\nlocation = \"{m}/private\"\ninsecure = true\n",
            reg = p.reg.host(),
            m = mirror.host()
        ),
    )?;
    let conf = conf.display().to_string();
    let args =
        ["--authfile", auth.as_str(), "--cert-dir", certs.as_str(), "--registries-conf", conf.as_str()];

    let primary_before = requests(&p.reg.log()).len();
    // The access log is on: the push shows there, so an absent request is meaningful.
    assert!(primary_before > 0, "the primary's access log shows no request:\n{}", p.reg.log());
    let r = p.pull("mirrored", &args, &p.reg.docker_ref("private/app:v1"))?;
    ensure!(r.ok(), "pull through the mirror failed: {}", r.describe());
    assert!(!p.rootfs("mirrored").is_empty());
    assert!(
        mirror.log().contains("/v2/private/app/manifests/v1"),
        "the mirror was not asked first:\n{}",
        mirror.log()
    );
    assert_eq!(
        requests(&p.reg.log()).len(),
        primary_before,
        "the primary was asked although the mirror answered"
    );

    // The signature policy is checked against the reference as given, not the mirror's
    // name: a policy admitting only the registry's scope accepts the mirrored pull, one
    // admitting only the mirror's refuses it.
    let policy = |name: &str, scope: &str| {
        p.fixture(
            name,
            &format!(
                r#"{{"default":[{{"type":"reject"}}],"transports":{{"docker":{{"{scope}":[{{"type":"insecureAcceptAnything"}}]}}}}}}"#
            ),
        )
        .map(|f| f.display().to_string())
    };
    let ours = policy("policy-registry.json", &format!("{}/private", p.reg.host()))?;
    let mut with_policy = args.to_vec();
    with_policy.extend(["--signature-policy", ours.as_str()]);
    let r = p.pull("policy-registry", &with_policy, &p.reg.docker_ref("private/app:v1"))?;
    ensure!(r.ok(), "the registry's scope did not admit the mirrored pull: {}", r.describe());
    let theirs = policy("policy-mirror.json", &format!("{}/private", mirror.host()))?;
    let mut with_policy = args.to_vec();
    with_policy.extend(["--signature-policy", theirs.as_str()]);
    let line = refused(
        &p.pull("policy-mirror", &with_policy, &p.reg.docker_ref("private/app:v1"))?,
        "mirror-scoped policy",
    );
    assert!(
        line.contains(&p.reg.docker_ref("private/app:v1")),
        "the refusal names another reference: {line}"
    );

    // A remap: a name that resolves nowhere is pulled from the location its prefix maps to
    // (credentials and CA looked up for that location).
    let remap = p.fixture(
        "remap.conf",
        &format!(
            "[[registry]]\nprefix = \"registry.example.invalid/apps\"\nlocation = \"{}/private\"\n",
            p.reg.host()
        ),
    )?;
    let remap = remap.display().to_string();
    let r = p.pull(
        "remapped",
        &["--authfile", &auth, "--cert-dir", &certs, "--registries-conf", &remap],
        "docker://registry.example.invalid/apps/app:v1",
    )?;
    ensure!(r.ok(), "a remapped pull failed: {}", r.describe());
    assert!(!p.rootfs("remapped").is_empty());

    // A mirror that is down: the next location (here the registry itself) is used.
    let dead = p.fixture(
        "dead-mirror.conf",
        &format!(
            "[[registry]]\nprefix = \"{reg}/private\"\nlocation = \"{reg}/private\"\n\
             [[registry.mirror]]\nlocation = \"127.0.0.1:{port}/private\"\ninsecure = true\n",
            reg = p.reg.host(),
            port = free_port()
        ),
    )?;
    let dead = dead.display().to_string();
    let r = p.pull(
        "dead-mirror",
        &["--authfile", &auth, "--cert-dir", &certs, "--registries-conf", &dead],
        &p.reg.docker_ref("private/app:v1"),
    )?;
    ensure!(r.ok(), "a dead mirror was not skipped: {}", r.describe());
    assert!(
        requests(&p.reg.log()).len() > primary_before,
        "the registry was not asked after the dead mirror"
    );

    // The mirror now serves another manifest under the pinned digest: refused, and the
    // primary is not silently used instead.
    let (_, other_manifest) = mirror.manifest("private/other", "v1")?;
    std::fs::write(mirror.blob_data(&digest), &other_manifest)?;
    let pinned = p.reg.docker_ref(&format!("private/app@{digest}"));
    let line = refused(&p.pull("tampered", &args, &pinned)?, "mirror with another manifest");
    assert!(line.contains(&mirror.host()) && line.contains("another manifest"), "{line}");
    assert!(p.rootfs("tampered").is_empty());

    // A blocked registry: refused naming the registries.conf entry, no request sent.
    let blocked = p.fixture(
        "blocked.conf",
        &format!("[[registry]]\nlocation = \"{}\"\nblocked = true\n", p.reg.host()),
    )?;
    let before = requests(&p.reg.log()).len();
    let r = p.pull(
        "blocked",
        &["--authfile", &auth, "--cert-dir", &certs, "--registries-conf", &blocked.display().to_string()],
        &p.reg.docker_ref("private/app:v1"),
    )?;
    let line = refused(&r, "blocked registry");
    for part in ["blocked", &format!("prefix \"{}\"", p.reg.host()), "blocked.conf", "no request was sent"] {
        assert!(line.contains(part), "{part:?} missing: {line}");
    }
    assert_eq!(requests(&p.reg.log()).len(), before, "a blocked registry got a request:\n{}", p.reg.log());
    Ok(())
}

/// An image other than [`plain_image`]: its first layer only (another manifest).
fn other_image(p: &Private) -> Result<String> {
    let dir = p.fixtures.path().join("other");
    copy_tree(&workspace_root().join("testdata/golden/three-layers/plain-oci"), &dir)?;
    let index_path = dir.join("index.json");
    let index: serde_json::Value = serde_json::from_slice(&std::fs::read(&index_path)?)?;
    let m = &index["manifests"][0];
    let digest = m["digest"].as_str().context("manifest digest")?;
    let mut manifest = blob_json(&dir, digest)?;
    manifest["annotations"] = serde_json::json!({"cloak.test": "other"});
    let bytes = serde_json::to_vec(&manifest)?;
    let new_digest = sha256_digest(&bytes);
    std::fs::write(blob_path(&dir, &new_digest), &bytes)?;
    let mut index = index.clone();
    index["manifests"][0]["digest"] = new_digest.into();
    index["manifests"][0]["size"] = bytes.len().into();
    std::fs::write(&index_path, serde_json::to_vec(&index)?)?;
    Ok(format!("oci:{}:v1", dir.display()))
}
