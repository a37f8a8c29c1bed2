//! `BUNDLE/config.json`: an OCI runtime spec made from the image config (env,
//! entrypoint + cmd, working directory, user, labels). kata-agent replaces it
//! with the host's spec, but a bundle is complete only with one, and tools
//! (runc, crun) can run what cloak-cdh pulled as it is.

use std::path::Path;

use serde_json::{json, Value};

/// Why the runtime spec could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("image config is not JSON: {0}")]
    Config(String),
    #[error("image config user {user:?}: {reason}")]
    User { user: String, reason: String },
}

const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Builds the runtime spec for an image config (`rootfs` is the mounted image,
/// read for `/etc/passwd` and `/etc/group` when the user is given by name).
pub fn runtime_spec(config_bytes: &[u8], rootfs: &Path) -> Result<Value, SpecError> {
    let config: Value = serde_json::from_slice(config_bytes).map_err(|e| SpecError::Config(e.to_string()))?;
    let c = config.get("config").cloned().unwrap_or(Value::Null);
    let strings = |v: Option<&Value>| -> Vec<String> {
        v.and_then(Value::as_array)
            .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_owned)).collect())
            .unwrap_or_default()
    };
    let mut args = strings(c.get("Entrypoint"));
    args.extend(strings(c.get("Cmd")));
    if args.is_empty() {
        args.push("sh".into());
    }
    let mut env = strings(c.get("Env"));
    if !env.iter().any(|e| e.starts_with("PATH=")) {
        env.insert(0, DEFAULT_PATH.into());
    }
    let cwd = c.get("WorkingDir").and_then(Value::as_str).filter(|s| s.starts_with('/')).unwrap_or("/");
    let user = c.get("User").and_then(Value::as_str).unwrap_or("");
    let (uid, gid) = resolve_user(user, rootfs)?;
    let annotations: serde_json::Map<String, Value> = c
        .get("Labels")
        .and_then(Value::as_object)
        .map(|m| m.iter().filter(|(_, v)| v.is_string()).map(|(k, v)| (k.clone(), v.clone())).collect())
        .unwrap_or_default();
    Ok(json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": uid, "gid": gid},
            "args": args,
            "env": env,
            "cwd": cwd,
            "noNewPrivileges": true,
        },
        "root": {"path": "rootfs", "readonly": false},
        "hostname": "cloak",
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
        ],
        "annotations": annotations,
        "linux": {
            "namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"}],
        },
    }))
}

/// `uid[:gid]` or `name[:group]` (names looked up in the image's files).
fn resolve_user(user: &str, rootfs: &Path) -> Result<(u32, u32), SpecError> {
    if user.is_empty() {
        return Ok((0, 0));
    }
    let err = |reason: &str| SpecError::User { user: user.into(), reason: reason.into() };
    let (u, g) = match user.split_once(':') {
        Some((u, g)) => (u, Some(g)),
        None => (user, None),
    };
    let read = |f: &str| std::fs::read_to_string(rootfs.join(f)).unwrap_or_default();
    let (uid, primary_gid) = match u.parse::<u32>() {
        Ok(n) => (n, lookup(&read("etc/passwd"), |f| f.get(2).and_then(|s| s.parse().ok()) == Some(n), 3)),
        Err(_) => {
            let passwd = read("etc/passwd");
            let uid = lookup(&passwd, |f| f.first() == Some(&u), 2)
                .ok_or_else(|| err("no such user in /etc/passwd"))?;
            (uid, lookup(&passwd, |f| f.first() == Some(&u), 3))
        }
    };
    let gid = match g {
        None => primary_gid.unwrap_or(0),
        Some(g) => match g.parse::<u32>() {
            Ok(n) => n,
            Err(_) => lookup(&read("etc/group"), |f| f.first() == Some(&g), 2)
                .ok_or_else(|| err("no such group in /etc/group"))?,
        },
    };
    Ok((uid, gid))
}

/// Field `field` (numeric) of the first colon-separated line matching `pred`.
fn lookup(text: &str, pred: impl Fn(&[&str]) -> bool, field: usize) -> Option<u32> {
    text.lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| pred(f))
        .and_then(|f| f.get(field)?.parse().ok())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn spec_from_config() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(
            dir.path().join("etc/passwd"),
            "root:x:0:0::/root:/bin/sh\napp:x:1000:1001::/home/app:/bin/sh\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        let cfg = br#"{"config":{"Entrypoint":["/bin/app"],"Cmd":["--serve"],"Env":["A=1"],"WorkingDir":"/srv","User":"app","Labels":{"l":"v"}},"rootfs":{"type":"layers","diff_ids":[]}}"#;
        let s = runtime_spec(cfg, dir.path()).unwrap();
        assert_eq!(s["process"]["args"], json!(["/bin/app", "--serve"]));
        assert_eq!(s["process"]["user"], json!({"uid": 1000, "gid": 1001}));
        assert_eq!(s["process"]["cwd"], "/srv");
        assert_eq!(s["process"]["env"][0], DEFAULT_PATH);
        assert_eq!(s["root"]["path"], "rootfs");
        assert_eq!(s["annotations"]["l"], "v");
        let cfg = br#"{"config":{"User":"7:staff"}}"#;
        assert_eq!(runtime_spec(cfg, dir.path()).unwrap()["process"]["user"], json!({"uid": 7, "gid": 50}));
        let cfg = br#"{"config":{"User":"nobody"}}"#;
        assert!(runtime_spec(cfg, dir.path()).unwrap_err().to_string().contains("nobody"));
        assert!(runtime_spec(b"not json", dir.path()).is_err());
    }
}
