//! cloak-cdh under the names kata-agent launches guest components by (its
//! default `guest_components_procs = api-server-rest`): one daemon serves all three.
//!
//! kata-agent runs, in order, each only once the one before has its socket:
//! 1. `attestation-agent --attestation_sock unix:///…/attestation-agent.sock
//!    [--initdata-toml FILE] [-c aa.toml]`, then waits (6 s) for that socket;
//! 2. `confidential-data-hub [-c cdh.toml]`, after removing `cdh.sock` if it exists,
//!    then waits for `cdh.sock`;
//! 3. `api-server-rest --features resource|attestation|all` (no wait).
//!
//! It does not watch the processes afterwards. So:
//! - as `attestation-agent`, cloak-cdh starts the whole daemon: the attestation-agent
//!   socket, `cdh.sock` (with kata's `cdh.toml` when it exists), and, when the kernel
//!   command line asks for api-server-rest (kata's default), the REST endpoint on
//!   127.0.0.1:8006 with the features it names (`cloak.attester=KIND` there picks the
//!   attester, as `--attester`). The daemon re-publishes a socket
//!   whose path was removed, which kata does to `cdh.sock` before step 2;
//! - as `confidential-data-hub` or `api-server-rest`, it first looks for that daemon
//!   (the attestation-agent socket, served by this same executable): if it is there,
//!   the process waits for `cdh.sock` and exits 0; if not, it becomes the daemon itself
//!   (CDH with its arguments, which are cloak-cdh's, or the REST endpoint with `--features`).

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// kata-agent's attestation-agent socket path.
pub const AA_SOCKET_PATH: &str = "/run/confidential-containers/attestation-agent/attestation-agent.sock";
/// kata-agent's CDH socket path.
pub const CDH_SOCKET_PATH: &str = "/run/confidential-containers/cdh.sock";
/// Where kata-agent writes `cdh.toml` from init-data.
pub const KATA_CDH_TOML: &str = "/run/confidential-containers/initdata/cdh.toml";
/// api-server-rest's listening address (kata passes no `--bind`).
pub const REST_ADDR: &str = "127.0.0.1:8006";

/// What to do for this command line.
#[derive(Debug, PartialEq, Eq)]
pub enum Invocation {
    /// Run the daemon with these (cloak-cdh) arguments.
    Daemon(Vec<OsString>),
    /// The daemon already serves this role: exit 0.
    AlreadyServed(String),
}

/// A command line kata-agent's names cannot take.
#[derive(Debug, thiserror::Error)]
#[error("{name}: {reason}")]
pub struct UsageError {
    name: String,
    reason: String,
}

/// The cloak-cdh arguments for `argv` (as given, `argv[0]` included).
pub fn invocation(argv: Vec<OsString>) -> Result<Invocation, UsageError> {
    invocation_in(argv, &Host::real())
}

/// What the translation reads from the machine (tests give their own).
#[derive(Debug, Clone)]
pub struct Host {
    pub aa_socket: PathBuf,
    pub cdh_socket: PathBuf,
    pub cdh_toml: PathBuf,
    pub cmdline: String,
    /// How long `confidential-data-hub` waits for the daemon to re-publish `cdh.sock`.
    pub wait: Duration,
}

impl Host {
    fn real() -> Self {
        Host {
            aa_socket: AA_SOCKET_PATH.into(),
            cdh_socket: CDH_SOCKET_PATH.into(),
            cdh_toml: KATA_CDH_TOML.into(),
            cmdline: std::fs::read_to_string("/proc/cmdline").unwrap_or_default(),
            wait: Duration::from_secs(5),
        }
    }

    /// `agent.<key>=` of the kernel command line (kata-agent's own configuration).
    fn agent_param(&self, key: &str) -> Option<&str> {
        self.param(&format!("agent.{key}"))
    }

    /// `<key>=` of the kernel command line.
    fn param(&self, key: &str) -> Option<&str> {
        let prefix = format!("{key}=");
        self.cmdline.split_whitespace().find_map(|w| w.strip_prefix(prefix.as_str()))
    }
}

/// `invocation` against `host`.
pub fn invocation_in(argv: Vec<OsString>, host: &Host) -> Result<Invocation, UsageError> {
    let name = argv
        .first()
        .and_then(|a| Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let usage = |reason: String| UsageError { name: name.clone(), reason };
    let rest: Vec<String> = argv.iter().skip(1).map(|a| a.to_string_lossy().into_owned()).collect();
    match name.as_str() {
        "attestation-agent" => attestation_agent(&rest, host).map_err(usage),
        // Its `-c FILE` is cloak-cdh's too, and cloak-cdh's own flags pass through (the
        // systemd unit of deploy/cdh runs this name with them).
        "confidential-data-hub" if daemon_running(host) => Ok(served(host, "confidential-data-hub")),
        "confidential-data-hub" => Ok(Invocation::Daemon(
            std::iter::once(OsString::from("cloak-cdh")).chain(argv.into_iter().skip(1)).collect(),
        )),
        "api-server-rest" => {
            let given = flags(&rest, &[("-f", "--features"), ("-b", "--bind")]).map_err(usage)?;
            let get = |f: &str| given.iter().find(|(k, _)| k == f).and_then(|(_, v)| v.clone());
            let features = get("--features").unwrap_or_else(|| "resource".into());
            if !["resource", "attestation", "all"].contains(&features.as_str()) {
                return Err(usage(format!("--features {features:?}: expected resource, attestation or all")));
            }
            if daemon_running(host) {
                return Ok(served(host, "api-server-rest"));
            }
            let bind = get("--bind").unwrap_or_else(|| REST_ADDR.into());
            Ok(Invocation::Daemon(
                ["cloak-cdh", "--rest", &bind, "--rest-features", &features].map(OsString::from).to_vec(),
            ))
        }
        _ => Ok(Invocation::Daemon(argv)),
    }
}

/// `-x VALUE`, `--long VALUE` and `--long=VALUE` of the names given (short, long);
/// anything else is refused.
fn flags(args: &[String], known: &[(&str, &str)]) -> Result<Vec<(String, Option<String>)>, String> {
    let mut out = Vec::new();
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_owned())),
            _ => (a.as_str(), None),
        };
        let Some((_, long)) = known.iter().find(|(s, l)| flag == *s || flag == *l) else {
            return Err(format!("unexpected argument {a:?}"));
        };
        let value = match inline {
            Some(v) => v,
            None => it.next().cloned().ok_or_else(|| format!("{flag} needs a value"))?,
        };
        out.push(((*long).to_owned(), Some(value)));
    }
    Ok(out)
}

fn attestation_agent(args: &[String], host: &Host) -> Result<Invocation, String> {
    let given = flags(
        args,
        &[
            ("-a", "--attestation_sock"),
            ("-c", "--config-file"),
            ("-t", "--initdata-toml"),
            ("-i", "--initdata-digest"),
        ],
    )?;
    let get = |f: &str| given.iter().find(|(k, _)| k == f).and_then(|(_, v)| v.clone());
    let sock = get("--attestation_sock").unwrap_or_else(|| format!("unix://{}", host.aa_socket.display()));
    let mut out: Vec<OsString> = ["cloak-cdh", "--aa-socket", &sock].map(OsString::from).to_vec();
    if let Some(t) = get("--initdata-toml") {
        out.extend(["--initdata".into(), t.into()]);
    }
    if host.cdh_toml.exists() {
        out.extend(["-c".into(), host.cdh_toml.clone().into()]);
    }
    // The KBS attestation-agent attests to: aa.toml, else the kernel command line. Its
    // certificate (aa.toml's `cert`) is read by the daemon itself (`--aa-config`).
    let kbs = match get("--config-file") {
        Some(path) => {
            let aa = aa_toml_kbs(Path::new(&path))?;
            if aa.cert.is_some() {
                out.extend(["--aa-config".into(), path.into()]);
            }
            aa.url
        }
        None => None,
    }
    .or_else(|| {
        host.agent_param("aa_kbc_params").and_then(|p| p.split_once("::")).map(|(_, url)| url.to_owned())
    });
    if let Some(url) = kbs {
        out.extend(["--kbs".into(), url.into()]);
    }
    // kata passes no attester choice: `cloak.attester=` on the kernel command line
    // (kata's kernel_params) names one, else cloak-cdh detects SNP or TDX.
    if let Some(kind) = host.param("cloak.attester") {
        out.extend(["--attester", kind].map(OsString::from));
    }
    // kata-agent will launch api-server-rest next (its default plan): serve it here.
    let procs = host.agent_param("guest_components_procs").unwrap_or("api-server-rest");
    if procs == "api-server-rest" {
        let features = host.agent_param("guest_components_rest_api").unwrap_or("resource");
        out.extend(["--rest", REST_ADDR, "--rest-features", features].map(OsString::from));
    }
    Ok(Invocation::Daemon(out))
}

/// What attestation-agent's config (aa.toml) says of its KBS.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AaKbs {
    /// `[token_configs.kbs] url`.
    pub url: Option<String>,
    /// `[token_configs.kbs] cert`: the broker's certificate (PEM), as CoCo's
    /// attestation-agent takes it for an https KBS.
    pub cert: Option<String>,
}

/// Reads `[token_configs.kbs]` of attestation-agent's config, bounded.
pub fn aa_toml_kbs(path: &Path) -> Result<AaKbs, String> {
    // kata-agent writes it from the init-data (itself at most 1 MiB): read no more.
    const MAX_AA_TOML: u64 = 1 << 20;
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut std::io::Read::take(
            std::fs::File::open(path).map_err(|e| format!("-c {}: {e}", path.display()))?,
            MAX_AA_TOML + 1,
        ),
        &mut text,
    )
    .map_err(|e| format!("-c {}: {e}", path.display()))?;
    if text.len() as u64 > MAX_AA_TOML {
        return Err(format!("-c {}: larger than {MAX_AA_TOML} bytes", path.display()));
    }
    let table: toml::Table =
        text.parse().map_err(|e| format!("-c {}: not valid TOML: {e}", path.display()))?;
    let kbs = table.get("token_configs").and_then(|t| t.get("kbs"));
    let field = |name: &str| kbs.and_then(|k| k.get(name)).and_then(|v| v.as_str()).map(str::to_owned);
    Ok(AaKbs { url: field("url"), cert: field("cert").filter(|c| !c.trim().is_empty()) })
}

/// Whether the attestation-agent socket is served by a process running this same
/// executable (a cloak-cdh daemon started as `attestation-agent`).
fn daemon_running(host: &Host) -> bool {
    let Ok(stream) = std::os::unix::net::UnixStream::connect(&host.aa_socket) else { return false };
    let Ok(cred) = rustix::net::sockopt::socket_peercred(&stream) else { return false };
    let exe = |pid: String| std::fs::read_link(format!("/proc/{pid}/exe")).ok();
    let theirs = exe(cred.pid.as_raw_nonzero().to_string());
    theirs.is_some() && theirs == exe("self".into())
}

/// The daemon serves `role`: wait (bounded) until `cdh.sock` is back, then report.
fn served(host: &Host, role: &str) -> Invocation {
    let t = Instant::now();
    while !host.cdh_socket.exists() && t.elapsed() < host.wait {
        std::thread::sleep(Duration::from_millis(50));
    }
    Invocation::AlreadyServed(format!(
        "{role}: the cloak-cdh daemon on {} already serves it",
        host.aa_socket.display()
    ))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn host(dir: &Path, cmdline: &str) -> Host {
        Host {
            aa_socket: dir.join("aa.sock"),
            cdh_socket: dir.join("cdh.sock"),
            cdh_toml: dir.join("cdh.toml"),
            cmdline: cmdline.into(),
            wait: Duration::from_millis(10),
        }
    }

    fn args(v: &[&str]) -> Vec<OsString> {
        v.iter().map(OsString::from).collect()
    }

    fn daemon(i: Invocation) -> Vec<String> {
        match i {
            Invocation::Daemon(a) => a.into_iter().map(|a| a.into_string().unwrap()).collect(),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn aa_toml_cert_is_handed_to_the_daemon_by_path() {
        let dir = tempfile::tempdir().unwrap();
        let h = host(dir.path(), "quiet");
        let aa = dir.path().join("aa.toml");
        std::fs::write(
            &aa,
            "[token_configs.kbs]\nurl = \"https://kbs:8443\"\ncert = '''\n-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n'''\n",
        )
        .unwrap();
        let got =
            daemon(invocation_in(args(&["attestation-agent", "-c", aa.to_str().unwrap()]), &h).unwrap());
        let line = got.join(" ");
        assert!(line.contains(&format!("--aa-config {} --kbs https://kbs:8443", aa.display())), "{line}");
        let read = aa_toml_kbs(&aa).unwrap();
        assert!(read.cert.unwrap().contains("BEGIN CERTIFICATE"));
        // No cert: no --aa-config.
        std::fs::write(&aa, "[token_configs.kbs]\nurl = \"https://kbs:8443\"\n").unwrap();
        let got =
            daemon(invocation_in(args(&["attestation-agent", "-c", aa.to_str().unwrap()]), &h).unwrap());
        assert!(!got.join(" ").contains("--aa-config"));
    }

    #[test]
    fn kata_command_lines_become_one_daemon() {
        let dir = tempfile::tempdir().unwrap();
        let h =
            host(dir.path(), "quiet agent.aa_kbc_params=cc_kbc::http://10.0.0.1:8080 cloak.attester=sample");
        let aa = dir.path().join("aa.toml");
        std::fs::write(&aa, "[token_configs.kbs]\nurl = \"https://kbs:8443\"\n").unwrap();
        let got = daemon(
            invocation_in(
                args(&[
                    "/usr/local/bin/attestation-agent",
                    "--attestation_sock",
                    "unix:///x/aa.sock",
                    "--initdata-toml",
                    "/i.toml",
                    "-c",
                    aa.to_str().unwrap(),
                ]),
                &h,
            )
            .unwrap(),
        );
        assert_eq!(
            got.join(" "),
            "cloak-cdh --aa-socket unix:///x/aa.sock --initdata /i.toml --kbs https://kbs:8443 \
             --attester sample --rest 127.0.0.1:8006 --rest-features resource"
        );
        // No aa.toml: the kernel command line's KBS; a procs level below api-server-rest: no REST.
        let h = host(dir.path(), "agent.aa_kbc_params=cc_kbc::http://10.0.0.1:8080 agent.guest_components_procs=confidential-data-hub");
        std::fs::write(&h.cdh_toml, "").unwrap();
        let got = daemon(invocation_in(args(&["attestation-agent"]), &h).unwrap());
        assert_eq!(
            got.join(" "),
            format!(
                "cloak-cdh --aa-socket unix://{} -c {} --kbs http://10.0.0.1:8080",
                h.aa_socket.display(),
                h.cdh_toml.display()
            )
        );
        // Without a daemon, the others become it.
        let got = daemon(
            invocation_in(args(&["confidential-data-hub", "-c", "/c.toml", "--rest", "127.0.0.1:8006"]), &h)
                .unwrap(),
        );
        assert_eq!(got.join(" "), "cloak-cdh -c /c.toml --rest 127.0.0.1:8006");
        let got = daemon(invocation_in(args(&["api-server-rest", "--features", "all"]), &h).unwrap());
        assert_eq!(got.join(" "), "cloak-cdh --rest 127.0.0.1:8006 --rest-features all");
        // cloak-cdh itself is untouched.
        let got = daemon(invocation_in(args(&["cloak-cdh", "--kbs", "u"]), &h).unwrap());
        assert_eq!(got.join(" "), "cloak-cdh --kbs u");
    }

    #[test]
    fn unknown_arguments_are_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let h = host(dir.path(), "");
        let e = invocation_in(args(&["attestation-agent", "--bogus"]), &h).unwrap_err();
        assert_eq!(e.to_string(), "attestation-agent: unexpected argument \"--bogus\"");
        let e = invocation_in(args(&["api-server-rest", "--features", "x"]), &h).unwrap_err();
        assert!(e.to_string().contains("expected resource, attestation or all"), "{e}");
        let e = invocation_in(args(&["api-server-rest", "-f"]), &h).unwrap_err();
        assert_eq!(e.to_string(), "api-server-rest: -f needs a value");
    }
}
