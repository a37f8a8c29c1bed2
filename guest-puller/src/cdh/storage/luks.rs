//! LUKS2 volumes through the `cryptsetup` program: the command lines, and the one
//! workflow (format → open → mkfs → mount, or open → mount) that undoes what it
//! did when a later step fails. Everything that touches the system goes through
//! [`Host`], so the ordering is tested without a kernel; the VM test
//! (`ci/vm-securemount.sh`) runs it for real.
//!
//! The key reaches `cryptsetup` only through a pipe on its stdin
//! (`--key-file -`): never a command line, a file or an environment variable.

use std::io;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::options::{BlockDeviceRequest, KeySpec, MountFlags, SourceType, Target};

/// What the host does for a volume: run a program, mount, link. The real one is
/// [`RealHost`]; tests pass a recording double.
pub trait Host: Send + Sync {
    /// Runs `cmd` to completion; `Err` with the program's own stderr words when it fails.
    fn run(&self, cmd: &Cmd<'_>) -> Result<(), RunError>;
    /// [`Host::run`], returning what the program printed on stdout.
    fn run_output(&self, cmd: &Cmd<'_>) -> Result<String, RunError>;
    /// Writes zeros over the 4 KiB block at byte `offset` of `device`, durably.
    fn zero_block(&self, device: &Path, offset: u64) -> io::Result<()>;
    fn mount(&self, device: &Path, target: &Path, fs: &str, flags: MountFlags) -> io::Result<()>;
    fn unmount(&self, target: &Path) -> io::Result<()>;
    fn symlink(&self, device: &Path, link: &Path) -> io::Result<()>;
    fn remove_link(&self, link: &Path) -> io::Result<()>;
    /// `/dev/<DEVNAME>` of the block device `major:minor` (from `/sys/dev/block`).
    fn device_path(&self, major: u32, minor: u32) -> io::Result<PathBuf>;
    /// Whether `path` is a mount point now (for volumes unmounted by someone else).
    fn is_mounted(&self, path: &Path) -> bool;
}

/// One program run: its arguments, and a secret for its stdin (never in `args`).
pub struct Cmd<'a> {
    pub program: &'static str,
    pub args: Vec<String>,
    pub stdin: Option<&'a [u8]>,
}

impl std::fmt::Debug for Cmd<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.program, self.args.join(" "))?;
        if self.stdin.is_some() {
            f.write_str(" <key on stdin>")?;
        }
        Ok(())
    }
}

/// A program that did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("starting {program} (is it installed and on PATH?)")]
    Spawn {
        program: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{program} exited with {status}: {stderr}")]
    Failed { program: &'static str, status: String, stderr: String },
}

impl RunError {
    /// cryptsetup's exit code 2 means "no key available with this passphrase".
    pub fn wrong_key(&self) -> bool {
        matches!(self, RunError::Failed { program: "cryptsetup", status, .. } if status == "exit status: 2")
    }
}

/// One step of the workflow that failed; the program's or the kernel's words are the source.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum VolumeError {
    #[error("finding block device {major}:{minor} in /sys/dev/block")]
    Device {
        major: u32,
        minor: u32,
        #[source]
        source: io::Error,
    },
    #[error("formatting {device} as LUKS2 (cryptsetup luksFormat)")]
    Format {
        device: PathBuf,
        #[source]
        source: RunError,
    },
    #[error("the key does not open the LUKS2 volume on {device}; nothing was mounted or written")]
    WrongKey {
        device: PathBuf,
        #[source]
        source: RunError,
    },
    #[error("opening the LUKS2 volume on {device} (cryptsetup open)")]
    Open {
        device: PathBuf,
        #[source]
        source: RunError,
    },
    #[error("making the filesystem on {mapper}")]
    Mkfs {
        mapper: PathBuf,
        #[source]
        source: RunError,
    },
    #[error("preparing the superblock blocks of {mapper} for mkfs (integrity volume)")]
    MkfsPrepare {
        mapper: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("mounting {mapper} at {mount_point}")]
    Mount {
        mapper: PathBuf,
        mount_point: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("linking {mount_point} to {mapper}")]
    Link {
        mapper: PathBuf,
        mount_point: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("unmounting {mount_point}")]
    Unmount {
        mount_point: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("closing the mapping {name} (cryptsetup close)")]
    Close {
        name: String,
        #[source]
        source: RunError,
    },
}

/// The PBKDF settings of a format. A random ephemeral key is 512 bits from the
/// CSPRNG: no password guessing can reach it, so a costly PBKDF buys nothing and
/// would only slow every emptyDir (argon2id costs seconds and up to 1 GiB). Any key
/// that came from outside keeps cryptsetup's default (argon2id, benchmarked).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pbkdf {
    /// cryptsetup's default: argon2id, benchmarked on this machine.
    Default,
    /// PBKDF2 at the minimum iteration count: only for a random 512-bit key.
    FastForRandomKey,
}

/// dm-integrity under the LUKS2 volume, as a format sets it up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Integrity {
    /// None: aes-xts alone (confidentiality, no detection of changed sectors).
    Off,
    /// HMAC-SHA256 tags with dm-integrity's journal, so data and tag stay consistent
    /// across a crash: for a volume that outlives the VM (a key from outside).
    Journaled,
    /// HMAC-SHA256 tags without the journal: for an ephemeral volume, which a crash
    /// destroys anyway (its key was only in memory), so the journal's doubled writes
    /// buy nothing. CoCo's CDH formats every integrity volume this way.
    Unjournaled,
}

impl Integrity {
    /// What `dataIntegrity` and the key's origin ask for.
    pub fn of(req: &BlockDeviceRequest) -> Self {
        match (req.integrity, &req.key) {
            (false, _) => Integrity::Off,
            (true, KeySpec::Ephemeral) => Integrity::Unjournaled,
            (true, _) => Integrity::Journaled,
        }
    }
}

/// `cryptsetup luksFormat`: LUKS2, aes-xts-plain64 with a 512-bit key, 4 KiB
/// sectors, dm-integrity with HMAC-SHA256 when asked; the key on stdin.
///
/// An integrity format does not wipe the device (`--integrity-no-wipe`, as CDH): kata
/// sizes an emptyDir's disk to the host filesystem holding it (terabytes; kata's
/// docs/Limitations.md), and a wipe writes every sector. Without the wipe a sector
/// never written has no valid tag and reads as an I/O error; ext4 reads only what it
/// wrote, once mkfs has written every inode table up front ([`mkfs_args`] adds
/// `lazy_itable_init=0`).
pub fn format_args(device: &Path, integrity: Integrity, pbkdf: Pbkdf) -> Vec<String> {
    let mut a: Vec<String> = [
        "luksFormat",
        "--batch-mode",
        "--type",
        "luks2",
        "--cipher",
        "aes-xts-plain64",
        "--sector-size",
        "4096",
    ]
    .map(String::from)
    .to_vec();
    match integrity {
        // cryptsetup adds the HMAC key (256 bits) to the XTS key itself.
        Integrity::Journaled => {
            a.extend(["--integrity", "hmac-sha256", "--integrity-no-wipe"].map(String::from))
        }
        Integrity::Unjournaled => a.extend(
            ["--integrity", "hmac-sha256", "--integrity-no-wipe", "--integrity-no-journal"].map(String::from),
        ),
        Integrity::Off => a.extend(["--key-size", "512"].map(String::from)),
    }
    if pbkdf == Pbkdf::FastForRandomKey {
        a.extend(["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"].map(String::from));
    }
    a.extend(["--key-file".to_string(), "-".to_string(), path_arg(device)]);
    a
}

/// `cryptsetup open` of `device` as `/dev/mapper/<name>`, the key on stdin.
pub fn open_args(device: &Path, name: &str) -> Vec<String> {
    let mut a: Vec<String> = ["open", "--type", "luks2", "--key-file", "-"].map(String::from).to_vec();
    a.push(path_arg(device));
    a.push(name.to_string());
    a
}

/// `cryptsetup close <name>`.
pub fn close_args(name: &str) -> Vec<String> {
    vec!["close".to_string(), name.to_string()]
}

/// `mkfs.<fs> -F -q <opts…> <mapper>`: the caller's options, then cloak's device. On
/// an integrity volume (not wiped, see [`format_args`]) `lazy_itable_init=0` joins the
/// caller's `-E` list unless it sets `lazy_itable_init` itself: mke2fs keeps only the
/// last `-E`, so a second one would drop kata's `lazy_journal_init`.
pub fn mkfs_args(mapper: &Path, opts: &[String], integrity: Integrity) -> Vec<String> {
    let mut a = vec!["-F".to_string(), "-q".to_string()];
    let mut opts = opts.to_vec();
    if integrity != Integrity::Off && !opts.iter().any(|o| o.contains("lazy_itable_init")) {
        match opts.iter().rposition(|o| o.starts_with("-E")) {
            Some(i) if opts[i] == "-E" && i + 1 < opts.len() => opts[i + 1].push_str(",lazy_itable_init=0"),
            Some(i) if opts[i].len() > 2 => opts[i].push_str(",lazy_itable_init=0"),
            _ => opts.extend(["-E".to_string(), "lazy_itable_init=0".to_string()]),
        }
    }
    a.extend(opts);
    a.push(path_arg(mapper));
    a
}

/// `mkfs.<fs> -F -n <opts…> <mapper>`: the same filesystem as [`mkfs_args`], planned
/// and printed, not written.
pub fn mkfs_plan_args(mapper: &Path, opts: &[String], integrity: Integrity) -> Vec<String> {
    let mut a = mkfs_args(mapper, opts, integrity);
    // "-F -q …" → "-F -n …": the plan must be printed.
    a[1] = "-n".to_string();
    a
}

/// The bytes every tag-checked sector is made of on a device that is not wiped.
const INTEGRITY_SECTOR: u64 = 4096;

/// The 4 KiB blocks mke2fs reads before it writes them, from its `-n` plan: the
/// primary superblock (1 KiB at byte 1024) and each backup superblock are written as
/// 1 KiB pieces of a 4 KiB sector, so the sector is read first, and on an integrity
/// volume that was not wiped that read is an I/O error. CoCo's CDH zeroes the same
/// blocks (`format_integrity_compatible`), learning them from a plan without the
/// caller's options; this one plans with them. `None` when the plan does not say.
pub fn superblock_sectors(plan: &str) -> Option<Vec<u64>> {
    // "Creating filesystem with 8192 4k blocks and 2048 inodes"
    let block_size: u64 = plan.lines().find_map(|l| {
        let rest = l.trim().strip_prefix("Creating filesystem with ")?;
        let size = rest.split_whitespace().nth(1)?.strip_suffix('k')?;
        size.parse::<u64>().ok()?.checked_mul(1024)
    })?;
    let mut sectors = vec![0u64];
    if let Some(at) = plan.find("Superblock backups stored on blocks:") {
        let list = &plan[at + "Superblock backups stored on blocks:".len()..];
        // The list runs over indented lines up to the first blank line.
        let list = list.split("\n\n").next().unwrap_or(list);
        for tok in list.split([',', ' ', '\t', '\n', '\r']).filter(|t| !t.is_empty()) {
            let block: u64 = tok.parse().ok()?;
            let byte = block.checked_mul(block_size)?;
            sectors.push(byte - byte % INTEGRITY_SECTOR);
        }
    }
    sectors.sort_unstable();
    sectors.dedup();
    Some(sectors)
}

fn path_arg(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// The mapping's device node.
pub fn mapper_path(name: &str) -> PathBuf {
    Path::new("/dev/mapper").join(name)
}

/// A volume that is open (and mounted or linked): what closing it must undo.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenVolume {
    pub name: String,
    pub device: PathBuf,
    pub mount_point: PathBuf,
    pub target: TargetKind,
}

/// What the mount point is for an open volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    Mounted,
    Linked,
}

/// Runs the request's workflow with `key`; on any failure after the mapping was
/// opened, it is closed again (and a link removed) before the error returns. The
/// key is dropped (zeroized) when this returns: from then on only the kernel's
/// dm-crypt table holds the volume key, as for any LUKS volume.
pub fn open_volume(
    host: &dyn Host,
    req: &BlockDeviceRequest,
    device: PathBuf,
    name: String,
    key: Zeroizing<Vec<u8>>,
    pbkdf: Pbkdf,
) -> Result<OpenVolume, VolumeError> {
    if req.source == SourceType::Empty {
        let cmd = Cmd {
            program: "cryptsetup",
            args: format_args(&device, Integrity::of(req), pbkdf),
            stdin: Some(&key),
        };
        host.run(&cmd).map_err(|source| VolumeError::Format { device: device.clone(), source })?;
    }
    let cmd = Cmd { program: "cryptsetup", args: open_args(&device, &name), stdin: Some(&key) };
    host.run(&cmd).map_err(|source| {
        if source.wrong_key() {
            VolumeError::WrongKey { device: device.clone(), source }
        } else {
            VolumeError::Open { device: device.clone(), source }
        }
    })?;
    drop(key);
    let mapper = mapper_path(&name);
    let undo_open = |e: VolumeError| -> VolumeError {
        // The error the caller sees is the step that failed; a close that fails too
        // is logged (the reaper and SIGTERM try again).
        if let Err(c) = host.run(&Cmd { program: "cryptsetup", args: close_args(&name), stdin: None }) {
            tracing::error!(mapping = %name, error = %report::Line(&c), "closing the mapping after a failed SecureMount");
        }
        e
    };
    let target = match &req.target {
        Target::FileSystem { fs, mkfs_opts } => {
            let integrity = Integrity::of(req);
            if req.source == SourceType::Empty && integrity != Integrity::Off {
                prepare_unwiped(host, &mapper, fs.mkfs(), mkfs_opts, integrity).map_err(&undo_open)?;
            }
            if req.source == SourceType::Empty {
                let cmd = Cmd {
                    program: fs.mkfs(),
                    args: mkfs_args(&mapper, mkfs_opts, Integrity::of(req)),
                    stdin: None,
                };
                host.run(&cmd)
                    .map_err(|source| undo_open(VolumeError::Mkfs { mapper: mapper.clone(), source }))?;
            }
            host.mount(&mapper, &req.mount_point, fs.name(), req.flags).map_err(|source| {
                undo_open(VolumeError::Mount {
                    mapper: mapper.clone(),
                    mount_point: req.mount_point.clone(),
                    source,
                })
            })?;
            TargetKind::Mounted
        }
        Target::Device => {
            host.symlink(&mapper, &req.mount_point).map_err(|source| {
                undo_open(VolumeError::Link {
                    mapper: mapper.clone(),
                    mount_point: req.mount_point.clone(),
                    source,
                })
            })?;
            TargetKind::Linked
        }
    };
    Ok(OpenVolume { name, device, mount_point: req.mount_point.clone(), target })
}

/// Zeroes the blocks mke2fs reads on an integrity volume that was not wiped
/// ([`superblock_sectors`]), so they carry valid tags before mkfs runs.
fn prepare_unwiped(
    host: &dyn Host,
    mapper: &Path,
    mkfs: &'static str,
    opts: &[String],
    integrity: Integrity,
) -> Result<(), VolumeError> {
    let plan = Cmd { program: mkfs, args: mkfs_plan_args(mapper, opts, integrity), stdin: None };
    let out = host
        .run_output(&plan)
        .map_err(|source| VolumeError::Mkfs { mapper: mapper.to_path_buf(), source })?;
    let sectors = superblock_sectors(&out).ok_or_else(|| VolumeError::MkfsPrepare {
        mapper: mapper.to_path_buf(),
        source: io::Error::new(io::ErrorKind::InvalidData, format!("{mkfs} -n printed no block size")),
    })?;
    for at in sectors {
        host.zero_block(mapper, at)
            .map_err(|source| VolumeError::MkfsPrepare { mapper: mapper.to_path_buf(), source })?;
    }
    Ok(())
}

/// Unmounts (or unlinks) and closes `vol`. An unmount that fails (busy) leaves
/// the mapping open and says so: closing under a mounted filesystem is refused
/// by the kernel anyway.
pub fn close_volume(host: &dyn Host, vol: &OpenVolume, still_there: bool) -> Result<(), VolumeError> {
    if still_there {
        match vol.target {
            TargetKind::Mounted => host
                .unmount(&vol.mount_point)
                .map_err(|source| VolumeError::Unmount { mount_point: vol.mount_point.clone(), source })?,
            TargetKind::Linked => {
                let _ = host.remove_link(&vol.mount_point);
            }
        }
    }
    host.run(&Cmd { program: "cryptsetup", args: close_args(&vol.name), stdin: None })
        .map_err(|source| VolumeError::Close { name: vol.name.clone(), source })
}

/// The system itself: programs from `PATH`, `mount(2)`, sysfs.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealHost;

/// At most this much of a program's stderr is kept for the error.
const STDERR_CAP: usize = 2048;

/// At most this much of a program's stdout is kept (an mkfs plan is a few lines).
const STDOUT_CAP: u64 = 64 * 1024;

impl Host for RealHost {
    fn run(&self, cmd: &Cmd<'_>) -> Result<(), RunError> {
        run_capture(cmd, false).map(drop)
    }

    fn run_output(&self, cmd: &Cmd<'_>) -> Result<String, RunError> {
        run_capture(cmd, true)
    }

    fn zero_block(&self, device: &Path, offset: u64) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        // A whole, aligned page: the page cache writes it without reading it first.
        let f = std::fs::OpenOptions::new().write(true).open(device)?;
        f.write_all_at(&[0u8; INTEGRITY_SECTOR as usize], offset)?;
        f.sync_all()
    }

    fn mount(&self, device: &Path, target: &Path, fs: &str, flags: MountFlags) -> io::Result<()> {
        use rustix::mount::MountFlags as F;
        let mut f = F::NOATIME;
        for (on, bit) in [
            (flags.read_only, F::RDONLY),
            (flags.nosuid, F::NOSUID),
            (flags.nodev, F::NODEV),
            (flags.noexec, F::NOEXEC),
        ] {
            if on {
                f |= bit;
            }
        }
        rustix::mount::mount(device, target, fs, f, c"").map_err(io::Error::from)
    }

    fn unmount(&self, target: &Path) -> io::Result<()> {
        rustix::mount::unmount(target, rustix::mount::UnmountFlags::empty()).map_err(io::Error::from)
    }

    fn symlink(&self, device: &Path, link: &Path) -> io::Result<()> {
        std::os::unix::fs::symlink(device, link)
    }

    fn remove_link(&self, link: &Path) -> io::Result<()> {
        if link.symlink_metadata()?.file_type().is_symlink() {
            std::fs::remove_file(link)
        } else {
            Ok(())
        }
    }

    fn device_path(&self, major: u32, minor: u32) -> io::Result<PathBuf> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let uevent = std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/uevent"))?;
        let name = uevent
            .lines()
            .find_map(|l| l.strip_prefix("DEVNAME="))
            .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no DEVNAME in its uevent"))?;
        if name.is_empty() || name.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "DEVNAME is not a plain device name"));
        }
        let path = Path::new("/dev").join(name);
        // The node must be that device, not whatever took its name.
        let meta = std::fs::metadata(&path)?;
        let rdev = meta.rdev();
        if !meta.file_type().is_block_device()
            || rustix::fs::major(rdev) != major
            || rustix::fs::minor(rdev) != minor
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not block device {major}:{minor}", path.display()),
            ));
        }
        Ok(path)
    }

    fn is_mounted(&self, path: &Path) -> bool {
        let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else { return true };
        // Field 5 is the mount point, with space, tab, newline and backslash octal-escaped.
        let want = path.to_string_lossy().trim_end_matches('/').to_string();
        let want = if want.is_empty() { "/".to_string() } else { want };
        info.lines().filter_map(|l| l.split(' ').nth(4)).any(|m| unescape_mountinfo(m) == want)
    }
}

/// Runs `cmd`; its stdout when `want_stdout` (else discarded), stderr for the error.
fn run_capture(cmd: &Cmd<'_>, want_stdout: bool) -> Result<String, RunError> {
    use std::io::{Read, Write};
    use std::process::{Command, Stdio};
    let mut child = Command::new(cmd.program)
        .args(&cmd.args)
        .stdin(if cmd.stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(if want_stdout { Stdio::piped() } else { Stdio::null() })
        .stderr(Stdio::piped())
        .env("LC_ALL", "C")
        .spawn()
        .map_err(|source| RunError::Spawn { program: cmd.program, source })?;
    if let (Some(secret), Some(mut pipe)) = (cmd.stdin, child.stdin.take()) {
        // A pipe, not a file: the key exists only in this process and the kernel's
        // pipe buffer until cryptsetup reads it. Dropping the pipe is its EOF.
        // A write error (cryptsetup exited early) shows as its exit status below.
        let _ = pipe.write_all(secret);
    }
    // stdout on a thread of its own: a program that fills one pipe while this
    // side waits on the other would never finish.
    let out_reader = child.stdout.take().map(|out| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            let mut out = out;
            let _ = (&mut out).take(STDOUT_CAP).read_to_end(&mut buf);
            // The rest is drained, not kept: a full pipe would stall the program.
            let _ = std::io::copy(&mut out, &mut std::io::sink());
            buf
        })
    });
    let mut stderr = Vec::new();
    if let Some(mut err) = child.stderr.take() {
        let _ = (&mut err).take(64 * 1024).read_to_end(&mut stderr);
        let _ = std::io::copy(&mut err, &mut std::io::sink());
    }
    let stdout = out_reader.and_then(|t| t.join().ok()).unwrap_or_default();
    let status = child.wait().map_err(|source| RunError::Spawn { program: cmd.program, source })?;
    if status.success() {
        return Ok(String::from_utf8_lossy(&stdout).into_owned());
    }
    let text = String::from_utf8_lossy(&stderr);
    let text = text.trim();
    let start = text.len().saturating_sub(STDERR_CAP);
    let start = (start..text.len()).find(|&i| text.is_char_boundary(i)).unwrap_or(text.len());
    Err(RunError::Failed {
        program: cmd.program,
        status: status.to_string(),
        stderr: text[start..].replace('\n', "; "),
    })
}

fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::Mutex;

    use super::*;
    use crate::cdh::storage::options::BlockDeviceRequest;

    const KEY: &[u8] = b"0123456789abcdef-the-test-key-bytes";

    /// Records every step; fails the step whose name is in `fail`.
    #[derive(Default)]
    struct Recorder {
        log: Mutex<Vec<String>>,
        fail: Option<&'static str>,
        stdin_seen: Mutex<Vec<Vec<u8>>>,
    }

    impl Recorder {
        fn failing(step: &'static str) -> Self {
            Self { fail: Some(step), ..Default::default() }
        }
        fn step(&self, s: String) -> io::Result<()> {
            let failed = self.fail.is_some_and(|f| s.starts_with(f));
            self.log.lock().expect("log").push(s);
            if failed {
                return Err(io::Error::other("injected"));
            }
            Ok(())
        }
        fn log(&self) -> Vec<String> {
            self.log.lock().expect("log").clone()
        }
    }

    /// What mke2fs 1.47 prints for `-n` on a 256 MiB volume with 4 KiB sectors.
    const PLAN: &str = "mke2fs 1.47.0 (5-Feb-2023)\n\
        Creating filesystem with 65536 4k blocks and 16384 inodes\n\
        Filesystem UUID: 945aab6b-a052-4d5f-8d06-897808af2156\n\
        Superblock backups stored on blocks: \n\
        \t32768\n\n";

    impl Host for Recorder {
        fn run_output(&self, cmd: &Cmd<'_>) -> Result<String, RunError> {
            self.run(cmd).map(|()| PLAN.to_string())
        }
        fn zero_block(&self, d: &Path, offset: u64) -> io::Result<()> {
            self.step(format!("zero {} {offset}", d.display()))
        }
        fn run(&self, cmd: &Cmd<'_>) -> Result<(), RunError> {
            if let Some(s) = cmd.stdin {
                self.stdin_seen.lock().expect("stdin").push(s.to_vec());
            }
            let first = cmd.args.first().map(String::as_str).unwrap_or("");
            let name =
                if cmd.program == "cryptsetup" { format!("cryptsetup {first}") } else { cmd.program.into() };
            let failed = self.fail.is_some_and(|f| name.starts_with(f));
            self.log.lock().expect("log").push(format!("{name} {}", cmd.args.join(" ")));
            if failed {
                let status = if name == "cryptsetup open" { "exit status: 2" } else { "exit status: 1" };
                return Err(RunError::Failed {
                    program: cmd.program,
                    status: status.into(),
                    stderr: "no".into(),
                });
            }
            Ok(())
        }
        fn mount(&self, d: &Path, t: &Path, fs: &str, _: MountFlags) -> io::Result<()> {
            self.step(format!("mount {} {} {fs}", d.display(), t.display()))
        }
        fn unmount(&self, t: &Path) -> io::Result<()> {
            self.step(format!("umount {}", t.display()))
        }
        fn symlink(&self, d: &Path, l: &Path) -> io::Result<()> {
            self.step(format!("symlink {} {}", d.display(), l.display()))
        }
        fn remove_link(&self, l: &Path) -> io::Result<()> {
            self.step(format!("unlink {}", l.display()))
        }
        fn device_path(&self, major: u32, minor: u32) -> io::Result<PathBuf> {
            Ok(PathBuf::from(format!("/dev/test{major}x{minor}")))
        }
        fn is_mounted(&self, _: &Path) -> bool {
            true
        }
    }

    fn request(opts: &[(&str, &str)]) -> BlockDeviceRequest {
        let mut o: HashMap<String, String> = HashMap::from(
            [
                ("devicePath", "/dev/vdb"),
                ("sourceType", "empty"),
                ("targetType", "fileSystem"),
                ("encryptionType", "luks2"),
                ("mkfsOpts", "-E lazy_journal_init"),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string())),
        );
        for (k, v) in opts {
            o.insert(k.to_string(), v.to_string());
        }
        BlockDeviceRequest::parse(&o, &[], "/mnt/vol").expect("request")
    }

    fn open(host: &Recorder, req: &BlockDeviceRequest) -> Result<OpenVolume, VolumeError> {
        let key = Zeroizing::new(KEY.to_vec());
        open_volume(host, req, "/dev/vdb".into(), "cloak-t".into(), key, Pbkdf::Default)
    }

    #[test]
    fn format_command_line_has_the_settings_and_no_key() {
        let a = format_args(Path::new("/dev/vdb"), Integrity::Unjournaled, Pbkdf::FastForRandomKey).join(" ");
        assert_eq!(
            a,
            "luksFormat --batch-mode --type luks2 --cipher aes-xts-plain64 --sector-size 4096 \
             --integrity hmac-sha256 --integrity-no-wipe --integrity-no-journal \
             --pbkdf pbkdf2 --pbkdf-force-iterations 1000 --key-file - /dev/vdb"
        );
        let a = format_args(Path::new("/dev/vdb"), Integrity::Journaled, Pbkdf::Default).join(" ");
        assert_eq!(
            a,
            "luksFormat --batch-mode --type luks2 --cipher aes-xts-plain64 --sector-size 4096 \
             --integrity hmac-sha256 --integrity-no-wipe --key-file - /dev/vdb"
        );
        let a = format_args(Path::new("/dev/vdb"), Integrity::Off, Pbkdf::Default).join(" ");
        assert_eq!(
            a,
            "luksFormat --batch-mode --type luks2 --cipher aes-xts-plain64 --sector-size 4096 \
             --key-size 512 --key-file - /dev/vdb"
        );
        assert_eq!(
            open_args(Path::new("/dev/vdb"), "m").join(" "),
            "open --type luks2 --key-file - /dev/vdb m"
        );
        assert_eq!(close_args("m").join(" "), "close m");
        assert_eq!(
            mkfs_args(Path::new("/dev/mapper/m"), &["-E".into(), "lazy_journal_init".into()], Integrity::Off)
                .join(" "),
            "-F -q -E lazy_journal_init /dev/mapper/m"
        );
    }

    /// Integrity volumes are not wiped, so mkfs must write every inode table: without
    /// `lazy_itable_init=0` the kernel's lazy init reads never-written sectors (EIO).
    #[test]
    fn mkfs_on_an_unwiped_integrity_volume_initialises_inode_tables() {
        let m = Path::new("/dev/mapper/m");
        let args = |opts: &[&str]| {
            let opts: Vec<String> = opts.iter().map(|s| s.to_string()).collect();
            mkfs_args(m, &opts, Integrity::Unjournaled).join(" ")
        };
        // kata's trusted store: joined to its -E list (mke2fs keeps only the last -E).
        assert_eq!(
            args(&["-E", "lazy_journal_init"]),
            "-F -q -E lazy_journal_init,lazy_itable_init=0 /dev/mapper/m"
        );
        assert_eq!(
            args(&["-Elazy_journal_init"]),
            "-F -q -Elazy_journal_init,lazy_itable_init=0 /dev/mapper/m"
        );
        // kata's emptyDir: no -E yet.
        assert_eq!(
            args(&["-O", "^has_journal", "-m", "0"]),
            "-F -q -O ^has_journal -m 0 -E lazy_itable_init=0 /dev/mapper/m"
        );
        // The caller's own choice stands.
        assert_eq!(args(&["-E", "lazy_itable_init=1"]), "-F -q -E lazy_itable_init=1 /dev/mapper/m");
    }

    #[test]
    fn integrity_journal_only_for_volumes_that_outlive_the_vm() {
        let r = request(&[("dataIntegrity", "true")]);
        assert_eq!(Integrity::of(&r), Integrity::Unjournaled);
        let r = request(&[("dataIntegrity", "true"), ("key", "file:///k")]);
        assert_eq!(Integrity::of(&r), Integrity::Journaled);
        assert_eq!(Integrity::of(&request(&[])), Integrity::Off);
    }

    #[test]
    fn empty_filesystem_formats_opens_mkfs_mounts_and_the_key_goes_only_to_stdin() {
        let host = Recorder::default();
        let vol = open(&host, &request(&[])).expect("mount");
        assert_eq!(vol.target, TargetKind::Mounted);
        let log = host.log();
        let steps: Vec<&str> = log.iter().map(|l| l.split(' ').take(2).last().unwrap_or("")).collect();
        assert_eq!(steps, ["luksFormat", "open", "-F", "/dev/mapper/cloak-t"], "{log:?}");
        let key = String::from_utf8_lossy(KEY);
        assert!(log.iter().all(|l| !l.contains(&*key)), "key in argv: {log:?}");
        assert_eq!(*host.stdin_seen.lock().expect("stdin"), vec![KEY.to_vec(), KEY.to_vec()]);
        // Debug of a command never shows the key either.
        let cmd =
            Cmd { program: "cryptsetup", args: open_args(Path::new("/dev/vdb"), "m"), stdin: Some(KEY) };
        assert!(!format!("{cmd:?}").contains(&*key));
    }

    #[test]
    fn encrypted_source_is_opened_not_formatted_nor_mkfsd() {
        let host = Recorder::default();
        open(&host, &request(&[("sourceType", "encrypted"), ("key", "file:///k")])).expect("mount");
        let log = host.log();
        assert!(log[0].starts_with("cryptsetup open"), "{log:?}");
        assert!(log[1].starts_with("mount /dev/mapper/cloak-t /mnt/vol ext4"), "{log:?}");
        assert_eq!(log.len(), 2, "{log:?}");
    }

    /// The VM test found it: on an integrity volume that is not wiped, mke2fs failed
    /// with "could not read block 0: Input/output error" (it writes the 1 KiB
    /// superblocks into 4 KiB sectors it must read first). Those sectors are zeroed,
    /// as mke2fs's own plan (`-n`, same options) names them, before mkfs runs.
    #[test]
    fn unwiped_integrity_volume_gets_its_superblock_sectors_zeroed_before_mkfs() {
        let host = Recorder::default();
        open(&host, &request(&[("dataIntegrity", "true")])).expect("mount");
        let log = host.log();
        let steps: Vec<&str> = log.iter().map(|l| l.split(' ').take(2).last().unwrap_or("")).collect();
        assert_eq!(
            steps,
            [
                "luksFormat",
                "open",
                "-F",
                "/dev/mapper/cloak-t",
                "/dev/mapper/cloak-t",
                "-F",
                "/dev/mapper/cloak-t"
            ],
            "{log:?}"
        );
        assert_eq!(log[2], "mkfs.ext4 -F -n -E lazy_journal_init,lazy_itable_init=0 /dev/mapper/cloak-t");
        assert_eq!(log[3], "zero /dev/mapper/cloak-t 0");
        assert_eq!(log[4], format!("zero /dev/mapper/cloak-t {}", 32768 * 4096));
        assert_eq!(log[5], "mkfs.ext4 -F -q -E lazy_journal_init,lazy_itable_init=0 /dev/mapper/cloak-t");
        // Without integrity the device needs none of it.
        let host = Recorder::default();
        open(&host, &request(&[])).expect("mount");
        assert!(!host.log().iter().any(|l| l.starts_with("zero") || l.contains(" -n ")), "{:?}", host.log());
    }

    #[test]
    fn a_failed_superblock_write_closes_the_mapping() {
        let host = Recorder::failing("zero");
        let e = open(&host, &request(&[("dataIntegrity", "true")])).expect_err("zeroing fails");
        assert!(matches!(e, VolumeError::MkfsPrepare { .. }), "{e:?}");
        assert_eq!(host.log().last().map(String::as_str), Some("cryptsetup close close cloak-t"));
    }

    #[test]
    fn superblock_sectors_are_read_from_the_plan() {
        // mke2fs 1.47.0 on a 300 MiB file: 1 KiB blocks, superblock at byte 1024.
        let plan = "mke2fs 1.47.0 (5-Feb-2023)\nCreating filesystem with 307200 1k blocks and 76912 inodes\n\
                    Filesystem UUID: 945aab6b-a052-4d5f-8d06-897808af2156\n\
                    Superblock backups stored on blocks: \n\t8193, 24577, 40961, 57345, 73729, 204801, 221185\n\n\
                    Allocating group tables: done\n";
        let at = superblock_sectors(plan).expect("plan");
        let want: Vec<u64> = [0, 8193, 24577, 40961, 57345, 73729, 204801, 221185]
            .iter()
            .map(|b| b * 1024 / 4096 * 4096)
            .collect();
        assert_eq!(at, want);
        // One group: the primary only.
        assert_eq!(
            superblock_sectors("Creating filesystem with 4096 4k blocks and 4096 inodes\n"),
            Some(vec![0])
        );
        // A plan that does not say the block size is not guessed at.
        assert_eq!(superblock_sectors("mke2fs 1.47.0\n"), None);
        assert_eq!(
            superblock_sectors(
                "Creating filesystem with 9 4k blocks\nSuperblock backups stored on blocks: x\n"
            ),
            None
        );
    }

    #[test]
    fn mkfs_failure_closes_the_mapping() {
        let host = Recorder::failing("mkfs.ext4");
        let e = open(&host, &request(&[])).expect_err("mkfs fails");
        assert!(matches!(e, VolumeError::Mkfs { .. }), "{e:?}");
        let log = host.log();
        assert_eq!(log.last().map(String::as_str), Some("cryptsetup close close cloak-t"), "{log:?}");
        assert!(!log.iter().any(|l| l.starts_with("mount")), "{log:?}");
    }

    #[test]
    fn mount_failure_closes_the_mapping() {
        let host = Recorder::failing("mount");
        let e = open(&host, &request(&[])).expect_err("mount fails");
        assert!(matches!(e, VolumeError::Mount { .. }), "{e:?}");
        let log = host.log();
        let mount_at = log.iter().position(|l| l.starts_with("mount")).expect("mount tried");
        assert_eq!(log[mount_at + 1], "cryptsetup close close cloak-t", "{log:?}");
        assert_eq!(log.len(), mount_at + 2, "{log:?}");
    }

    #[test]
    fn link_failure_closes_the_mapping() {
        let host = Recorder::failing("symlink");
        let req = request(&[("targetType", "device"), ("mkfsOpts", "")]);
        let e = open(&host, &req).expect_err("link fails");
        assert!(matches!(e, VolumeError::Link { .. }), "{e:?}");
        assert_eq!(host.log().last().map(String::as_str), Some("cryptsetup close close cloak-t"));
    }

    #[test]
    fn wrong_key_is_said_and_nothing_else_runs() {
        let host = Recorder::failing("cryptsetup open");
        let e = open(&host, &request(&[("sourceType", "encrypted"), ("key", "file:///k")]))
            .expect_err("wrong key");
        assert!(matches!(e, VolumeError::WrongKey { .. }), "{e:?}");
        assert!(e.to_string().contains("does not open"), "{e}");
        assert_eq!(host.log().len(), 1, "{:?}", host.log());
    }

    #[test]
    fn format_failure_opens_nothing() {
        let host = Recorder::failing("cryptsetup luksFormat");
        let e = open(&host, &request(&[])).expect_err("format fails");
        assert!(matches!(e, VolumeError::Format { .. }), "{e:?}");
        assert_eq!(host.log().len(), 1);
    }

    #[test]
    fn close_unmounts_before_closing() {
        let host = Recorder::default();
        let vol = open(&host, &request(&[])).expect("mount");
        host.log.lock().expect("log").clear();
        close_volume(&host, &vol, true).expect("close");
        assert_eq!(host.log(), ["umount /mnt/vol", "cryptsetup close close cloak-t"]);
        // A busy unmount leaves the mapping open (the kernel would refuse the close).
        let host = Recorder::failing("umount");
        assert!(matches!(close_volume(&host, &vol, true), Err(VolumeError::Unmount { .. })));
        assert_eq!(host.log(), ["umount /mnt/vol"]);
    }

    #[test]
    fn mountinfo_escapes_are_read() {
        assert_eq!(unescape_mountinfo("/mnt/a\\040b"), "/mnt/a b");
        assert_eq!(unescape_mountinfo("/x\\"), "/x\\");
    }
}
