//! A real HTTP proxy for tests: Debian's `tinyproxy`, started in the foreground on
//! a free 127.0.0.1 port with its own configuration and log in a temporary
//! directory, killed on drop. Its log ([`Proxy::log`]) shows each request it
//! relayed (`CONNECT 127.0.0.1:PORT` for an https registry), so a test can prove
//! that traffic went through it, or did not.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Result;

use crate::net::free_port;
use crate::peers::{peer, which};
use crate::process::Daemon;

/// A running tinyproxy.
pub struct Proxy {
    pub port: u16,
    dir: tempfile::TempDir,
    _daemon: Daemon,
}

impl Proxy {
    /// Starts tinyproxy, or `None` to skip when it is missing outside CI.
    pub fn start() -> Option<Proxy> {
        let exe = peer(which("tinyproxy"), "tinyproxy")?;
        match Self::launch(&exe) {
            Ok(p) => Some(p),
            Err(e) => panic!("starting tinyproxy: {e:#}"),
        }
    }

    fn launch(exe: &Path) -> Result<Proxy> {
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("tinyproxy.log");
        let conf = dir.path().join("tinyproxy.conf");
        for _ in 0..5 {
            let port = free_port();
            // No ConnectPort line: CONNECT to any port (the registries' are random).
            std::fs::write(
                &conf,
                format!(
                    "Port {port}\nListen 127.0.0.1\nTimeout 60\nLogFile \"{}\"\nLogLevel Info\n\
                     MaxClients 32\nAllow 127.0.0.1\nDisableViaHeader Yes\n",
                    log.display()
                ),
            )?;
            let mut daemon = Daemon::spawn(
                "tinyproxy",
                Command::new(exe)
                    .arg("-d")
                    .arg("-c")
                    .arg(&conf)
                    .stdout(std::process::Stdio::null())
                    .stderr(std::fs::File::create(dir.path().join("stderr.log"))?),
            )?;
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(10) && !daemon.exited() {
                if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Ok(Proxy { port, dir, _daemon: daemon });
                }
                std::thread::sleep(Duration::from_millis(30));
            }
        }
        let stderr = std::fs::read_to_string(dir.path().join("stderr.log")).unwrap_or_default();
        anyhow::bail!("tinyproxy did not start; stderr:\n{stderr}\nlog:\n{}", read(&log))
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The proxy's log so far.
    pub fn log(&self) -> String {
        read(&self.dir.path().join("tinyproxy.log"))
    }

    /// The requests it relayed: its log lines naming `CONNECT`.
    pub fn connects(&self) -> Vec<String> {
        self.log().lines().filter(|l| l.contains("CONNECT")).map(str::to_owned).collect()
    }
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}
