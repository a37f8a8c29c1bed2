//! Child processes for tests: daemons killed when dropped, and commands run to
//! completion under a deadline (a hung pull must fail the test, not the CI job).

use std::io::Read;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

/// A child process killed when dropped.
pub struct Daemon {
    child: Child,
    pub name: String,
}

impl Daemon {
    pub fn spawn(name: &str, cmd: &mut Command) -> Result<Daemon> {
        let child = cmd.stdin(Stdio::null()).spawn().with_context(|| format!("starting {name}"))?;
        Ok(Daemon { child, name: name.to_string() })
    }
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
    /// Whether the process has already exited (a daemon that died at start).
    pub fn exited(&mut self) -> bool {
        !matches!(self.child.try_wait(), Ok(None))
    }
    /// Stops the process now (the registry or broker going down mid-test).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Upper bound for one command; generous because the machine is small and shared.
pub const CMD_LIMIT: Duration = Duration::from_secs(180);

/// What a finished command produced.
pub struct Ran {
    pub status: ExitStatus,
    pub stdout: Vec<u8>,
    pub stderr: String,
    pub elapsed: Duration,
}

impl Ran {
    pub fn ok(&self) -> bool {
        self.status.success()
    }
    pub fn describe(&self) -> String {
        format!(
            "exit {} after {:?}\nstdout: {}\nstderr: {}",
            self.status,
            self.elapsed,
            String::from_utf8_lossy(&self.stdout),
            self.stderr
        )
    }
}

/// Runs `cmd` to completion, killing it after `limit`. Output is drained on threads
/// so a full pipe cannot stall it.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> Result<Ran> {
    let start = Instant::now();
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let mut so = child.stdout.take().context("no stdout pipe")?;
    let mut se = child.stderr.take().context("no stderr pipe")?;
    let t_out = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = so.read_to_end(&mut b);
        b
    });
    let t_err = std::thread::spawn(move || {
        let mut b = Vec::new();
        let _ = se.read_to_end(&mut b);
        b
    });
    let status = loop {
        if let Some(s) = child.try_wait()? {
            break s;
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{cmd:?} still running after {limit:?}: killed");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = t_out.join().unwrap_or_default();
    let stderr = String::from_utf8_lossy(&t_err.join().unwrap_or_default()).into_owned();
    Ok(Ran { status, stdout, stderr, elapsed: start.elapsed() })
}

/// [`run_bounded`] with [`CMD_LIMIT`], failing unless the command succeeded.
pub fn run_bounded_ok(cmd: &mut Command) -> Result<Ran> {
    let r = run_bounded(cmd, CMD_LIMIT)?;
    ensure!(r.ok(), "{cmd:?} failed: {}", r.describe());
    Ok(r)
}

/// Runs a command, returning its output; never panics on a non-zero exit.
pub fn run(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    Ok(out)
}

/// Runs a command and fails with its stderr when it exits non-zero.
pub fn run_ok(cmd: &mut Command) -> Result<Output> {
    let out = run(cmd)?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(out)
}
