//! cloak-cdh's REST endpoint seen from another address: in a private network
//! namespace (`unshare -n`, so no traffic leaves it) the daemon listens on
//! 0.0.0.0:8006, and each path is asked once from 10.254.0.1 (an address added to
//! the namespace's loopback device: a non-loopback peer) and once through 127.0.0.1.

use std::path::Path;
use std::process::Command;

use anyhow::{ensure, Result};

/// The HTTP codes one path got: from the non-loopback address, and through loopback.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCodes {
    pub far: String,
    pub near: String,
}

/// Runs `cdh` (cloak-cdh) with a sample attester and an unreachable KBS in a
/// private network namespace and asks each of `paths` from both peers. `None` (and
/// a SKIP line on stderr) when the machine cannot: not root, no `ip`, `unshare` or
/// `curl`, or namespaces not permitted.
pub fn rest_codes_from_far_and_near(cdh: &Path, paths: &[&str]) -> Result<Option<Vec<PeerCodes>>> {
    let is_root =
        Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0\n")).unwrap_or(false);
    let have = |tool: &str, arg: &str| Command::new(tool).arg(arg).output().is_ok();
    if !is_root || !have("ip", "-V") || !have("unshare", "--help") || !have("curl", "--version") {
        eprintln!("SKIP: needs root, ip, unshare and curl");
        return Ok(None);
    }
    let tmp = tempfile::tempdir()?;
    let mut asks = String::new();
    for (i, p) in paths.iter().enumerate() {
        asks.push_str(&format!(
            "echo \"{i} $(code --interface 10.254.0.1 'http://10.254.0.1:8006{p}') $(code 'http://127.0.0.1:8006{p}')\"\n"
        ));
    }
    let script = format!(
        r#"set -e
ip link set lo up
ip addr add 10.254.0.1/32 dev lo
{cdh} --socket unix://{dir}/cdh.sock --kbs http://127.0.0.1:9 --attester sample --kbs-timeout 1 \
  --store {dir}/store --bundle-root {dir}/b --rest 0.0.0.0:8006 2>{dir}/log &
pid=$!
for i in $(seq 1 100); do [ -S {dir}/cdh.sock ] && break; sleep 0.05; done
sleep 0.2
code() {{ curl -s -o /dev/null -w '%{{http_code}}' "$@" || true; }}
{asks}kill $pid; wait $pid || true
"#,
        cdh = cdh.display(),
        dir = tmp.path().display()
    );
    let out = Command::new("unshare").args(["-n", "sh", "-c", &script]).output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("Operation not permitted") {
        eprintln!("SKIP: cannot make a network namespace here");
        return Ok(None);
    }
    ensure!(out.status.success(), "netns script failed: {text}\n{}", String::from_utf8_lossy(&out.stderr));
    let mut codes = vec![None; paths.len()];
    for line in text.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if let [i, far, near] = f[..] {
            if let Some(slot) = i.parse::<usize>().ok().and_then(|i| codes.get_mut(i)) {
                *slot = Some(PeerCodes { far: far.to_owned(), near: near.to_owned() });
            }
        }
    }
    let codes: Option<Vec<PeerCodes>> = codes.into_iter().collect();
    ensure!(codes.is_some(), "not every path was asked: {text}");
    Ok(codes)
}
