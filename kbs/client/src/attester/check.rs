//! `cloak check`: is a confidential-computing TEE (AMD SEV-SNP, Intel TDX, Arm CCA)
//! present and active on this machine, and can a guest produce attestation evidence?
//! On an Azure confidential VM the evidence comes from the paravisor's vTPM (the HCL
//! report in NV index 0x01400001), probed as `--attester auto` probes it.
//!
//! The probe only reads kernel interfaces (device nodes, sysfs, procfs, configfs-tsm,
//! kernel log files), every path relative to a `root` so tests run against fake trees.
//! configfs-tsm is probed by the attesters' own probe ([`super::probe`]):
//! a report entry is created, its `provider` read and the entry removed again, so the
//! answer is the one `cloak-pull --attester auto` finds. This module keeps the other
//! findings, the report and its rendering; it lives beside that probe so the report and
//! the attesters read the machine in one place. The `cloak` binary's `check` subcommand
//! only prints the report and turns its verdict into the exit code.
//!
//! "Usable" means a TEE guest interface that cloak's attesters (SNP, TDX) can turn into
//! evidence right now. A host that can *launch* confidential guests is reported, but is
//! not usable: the host is outside the trust boundary and has no evidence of its own.

use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use serde::Serialize;
use thiserror::Error;

/// Bound on what is read from any procfs/sysfs file (cpuinfo of a large host is a few
/// hundred KiB); a fake or hostile tree must not make the check read without end.
const MAX_FILE_BYTES: u64 = 8 * 1024 * 1024;
/// Only the tail of a kernel log is scanned: boot messages of the running kernel are
/// near the end of a rotated log, and the log itself can be gigabytes.
const MAX_LOG_TAIL_BYTES: u64 = 4 * 1024 * 1024;

/// Where a kernel offers configfs-tsm attestation reports (Linux 6.7 and later).
const TSM_REPORT_DIR: &str = "sys/kernel/config/tsm/report";
const CONFIGFS_DIR: &str = "sys/kernel/config";
const CPUINFO: &str = "proc/cpuinfo";
/// Kernel log files a distribution may keep; the first readable ones are scanned.
const KERNEL_LOGS: [&str; 3] = ["var/log/kern.log", "var/log/dmesg", "var/log/messages"];

/// Why a probe could not read something. Rendered into a finding's detail; the check
/// itself never fails, because "could not look" is an answer the operator needs too.
#[derive(Debug, Error)]
pub enum ProbeError {
    /// The file or directory does not exist.
    #[error("{path} does not exist")]
    NotFound { path: String },
    /// The file exists but the current user may not read or open it.
    #[error("{path} is not accessible: permission denied (run `cloak check` as root)")]
    PermissionDenied { path: String },
    /// Any other I/O error, kept as the cause.
    #[error("cannot read {path}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
    /// The file is larger than the bound the check reads.
    #[error("{path} is larger than {limit} bytes; not read")]
    TooLarge { path: String, limit: u64 },
}

impl ProbeError {
    fn from_io(path: &str, source: io::Error) -> Self {
        match source.kind() {
            io::ErrorKind::NotFound => ProbeError::NotFound { path: path.to_owned() },
            io::ErrorKind::PermissionDenied => ProbeError::PermissionDenied { path: path.to_owned() },
            _ => ProbeError::Io { path: path.to_owned(), source },
        }
    }

    /// The full text of the error and its causes, for a finding's detail.
    fn describe(&self) -> String {
        let mut text = self.to_string();
        let mut cause = std::error::Error::source(self);
        while let Some(c) = cause {
            let _ = write!(text, ": {c}");
            cause = c.source();
        }
        text
    }
}

/// The confidential-computing technologies the check knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tee {
    /// AMD SEV-SNP (EPYC Milan and later).
    SevSnp,
    /// Intel Trust Domain Extensions.
    Tdx,
    /// Arm Confidential Compute Architecture (Realms).
    Cca,
}

impl Tee {
    /// The name an operator knows the technology by.
    pub fn display_name(self) -> &'static str {
        match self {
            Tee::SevSnp => "AMD SEV-SNP",
            Tee::Tdx => "Intel TDX",
            Tee::Cca => "Arm CCA",
        }
    }

    /// The configfs-tsm `provider` string of this technology's guest driver.
    pub fn tsm_provider(self) -> &'static str {
        match self {
            Tee::SevSnp => "sev_guest",
            Tee::Tdx => "tdx_guest",
            Tee::Cca => "arm_cca_guest",
        }
    }

    /// Whether cloak's attesters (`kbs` crate) can produce evidence for it.
    pub fn supported_by_cloak(self) -> bool {
        matches!(self, Tee::SevSnp | Tee::Tdx | Tee::Cca)
    }
}

/// What kind of machine the check ran on, as far as the kernel tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Machine {
    /// A virtual machine (CPU flag `hypervisor`, or an active TEE guest).
    Guest,
    /// Bare metal: a possible host for confidential guests.
    Host,
    /// No CPU information could be read, or it cannot tell a VM from bare metal
    /// (arm64 has no `hypervisor` CPU flag).
    Unknown,
}

/// One thing the check looked at.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// What was checked, e.g. "guest device".
    pub check: String,
    /// The path as seen on the machine (without the test root), e.g. `/dev/sev-guest`.
    pub path: String,
    /// Whether the sign was there.
    pub found: bool,
    /// What was seen, or why nothing could be seen.
    pub detail: String,
}

/// Something missing and how to fix it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Remedy {
    pub missing: String,
    pub fix: String,
}

/// The verdict for one technology.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TeeStatus {
    pub tee: Tee,
    pub name: &'static str,
    /// Some sign that the CPU, firmware or kernel knows this technology (guest or host).
    pub present: bool,
    /// This kernel runs inside a guest of this technology.
    pub active: bool,
    /// This machine's KVM is set up to launch guests of this technology.
    pub host_capable: bool,
    /// The interface that can produce evidence now, e.g. `configfs-tsm (tdx_guest)`.
    pub evidence: Option<String>,
    /// Whether cloak's attesters support this technology.
    pub supported_by_cloak: bool,
    pub findings: Vec<Finding>,
    pub missing: Vec<Remedy>,
}

impl TeeStatus {
    fn new(tee: Tee) -> Self {
        TeeStatus {
            tee,
            name: tee.display_name(),
            present: false,
            active: false,
            host_capable: false,
            evidence: None,
            supported_by_cloak: tee.supported_by_cloak(),
            findings: Vec::new(),
            missing: Vec::new(),
        }
    }

    /// A guest of this technology that cloak can attest from.
    pub fn usable(&self) -> bool {
        self.supported_by_cloak && self.evidence.is_some()
    }

    fn find(&mut self, check: &str, path: &str, found: bool, detail: impl Into<String>) {
        self.findings.push(Finding {
            check: check.to_owned(),
            path: path.to_owned(),
            found,
            detail: detail.into(),
        });
    }

    fn need(&mut self, missing: impl Into<String>, fix: impl Into<String>) {
        self.missing.push(Remedy { missing: missing.into(), fix: fix.into() });
    }
}

/// What configfs-tsm offers on this machine (shared by every technology).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TsmStatus {
    /// configfs is mounted at /sys/kernel/config (the directory has entries).
    pub configfs_mounted: bool,
    /// /sys/kernel/config/tsm/report exists: the kernel has CONFIG_TSM_REPORTS.
    pub report_interface: bool,
    /// The provider the kernel names for report entries, e.g. `tdx_guest`.
    pub provider: Option<String>,
    /// How the provider was learned, or why it was not.
    pub detail: String,
}

/// The whole answer of `cloak check`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    /// The root the paths were read under ("/" on a real machine).
    pub root: PathBuf,
    pub machine: Machine,
    pub configfs_tsm: TsmStatus,
    pub tees: Vec<TeeStatus>,
}

impl CheckReport {
    /// True only when a TEE guest interface that cloak can attest with can produce
    /// evidence now: `cloak check` exits 0 only then.
    pub fn usable(&self) -> bool {
        self.tees.iter().any(TeeStatus::usable)
    }

    /// The technologies usable now, in the order the check lists them.
    pub fn usable_tees(&self) -> Vec<Tee> {
        self.tees.iter().filter(|t| t.usable()).map(|t| t.tee).collect()
    }

    /// The report as JSON for `cloak check --json`, with a top-level `usable`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut value = match serde_json::to_value(self) {
            Ok(v) => v,
            // Every field is a plain string, bool or list: serialising cannot fail, but
            // if it ever did the caller still gets valid JSON that says so.
            Err(e) => serde_json::json!({ "error": format!("cannot serialise report: {e}") }),
        };
        if let serde_json::Value::Object(map) = &mut value {
            map.insert("usable".to_owned(), serde_json::Value::Bool(self.usable()));
            map.insert("usable_tees".to_owned(), serde_json::json!(self.usable_tees()));
        }
        value
    }

    /// A human-readable report, in the spirit of `kata-runtime check`.
    pub fn render_text(&self) -> String {
        let mut out = String::new();
        let machine = match self.machine {
            Machine::Guest => "virtual machine (guest)",
            Machine::Host => "bare metal (possible host for confidential guests)",
            Machine::Unknown => "unknown (cannot tell a virtual machine from bare metal here)",
        };
        let _ = writeln!(out, "machine: {machine}");
        if self.root != Path::new("/") {
            let _ = writeln!(out, "root: {}", self.root.display());
        }
        let tsm = &self.configfs_tsm;
        let tsm_line = if !tsm.report_interface {
            "not available".to_owned()
        } else {
            match &tsm.provider {
                Some(p) => format!("report interface present, provider {p}"),
                None => "report interface present, provider unknown".to_owned(),
            }
        };
        let _ = writeln!(out, "configfs-tsm: {tsm_line} ({})", tsm.detail);

        for t in &self.tees {
            let state = if t.usable() {
                format!("ACTIVE, evidence via {}", t.evidence.as_deref().unwrap_or("?"))
            } else if t.active {
                "active, but no evidence can be produced".to_owned()
            } else if t.host_capable {
                "host can launch guests (this machine itself is not a TEE guest)".to_owned()
            } else if t.present {
                "present, not active".to_owned()
            } else {
                "not present".to_owned()
            };
            let _ = writeln!(out, "\n{}: {state}", t.name);
            if t.evidence.is_some() && !t.supported_by_cloak {
                let _ = writeln!(
                    out,
                    "  note: evidence is available, but cloak has no attester for {} yet",
                    t.name
                );
            }
            for f in &t.findings {
                let mark = if f.found { "[x]" } else { "[ ]" };
                let _ = writeln!(out, "  {mark} {} {}: {}", f.check, f.path, f.detail);
            }
            for m in &t.missing {
                let _ = writeln!(out, "  missing: {}\n    fix: {}", m.missing, m.fix);
            }
        }

        if self.machine == Machine::Guest && !self.tees.iter().any(|t| t.active) {
            let _ = writeln!(
                out,
                "\nnote: this is an ordinary virtual machine, not a confidential guest: run the \
                 workload in an SEV-SNP or TDX guest (RuntimeClass kata-snp or kata-tdx)"
            );
        }
        let usable = self.usable_tees();
        if usable.is_empty() {
            let _ = writeln!(
                out,
                "\nverdict: NO usable TEE. Layer keys cannot be released here: \
                 `cloak-pull --attester auto` will refuse to attest (it never falls back \
                 to sample evidence)."
            );
        } else {
            let names: Vec<&str> = usable.iter().map(|t| t.display_name()).collect();
            let _ = writeln!(
                out,
                "\nverdict: usable TEE: {} (cloak-pull --attester auto will use it)",
                names.join(", ")
            );
        }
        out
    }
}

/// Run every probe under `root` ("/" normally) and return the report. Never fails:
/// what could not be read is itself a finding.
pub fn run_check(root: &Path) -> CheckReport {
    let probe = Probe { root };
    let cpu = probe.cpuinfo();
    let log = probe.kernel_log();
    let tsm = probe.tsm();

    let azure = probe.azure_vtpm();
    let mut snp = probe.sev_snp(&cpu, &log, &tsm);
    let mut tdx = probe.tdx(&cpu, &log, &tsm);
    let cca = probe.cca(&log, &tsm);
    if let Some(az) = &azure {
        azure_finding(&mut snp, az, super::AzureKind::Snp);
        azure_finding(&mut tdx, az, super::AzureKind::Tdx);
    }

    let any_active = snp.active || tdx.active || cca.active;
    let machine = if any_active || cpu.has_flag("hypervisor") {
        Machine::Guest
    } else if cpu.readable && cpu.vendor.is_some() {
        // Only x86 reports `vendor_id` and the `hypervisor` flag; elsewhere a plain
        // VM looks like bare metal, so say nothing rather than guess.
        Machine::Host
    } else {
        Machine::Unknown
    };

    let mut tees = vec![snp, tdx, cca];
    if machine == Machine::Host {
        for t in &mut tees {
            host_remedies(t, &cpu);
        }
    }

    CheckReport { root: root.to_path_buf(), machine, configfs_tsm: tsm, tees }
}

/// CPU information from /proc/cpuinfo (x86 `flags`, arm64 `Features`).
struct CpuInfo {
    readable: bool,
    flags: Vec<String>,
    vendor: Option<String>,
    detail: String,
}

impl CpuInfo {
    fn has_flag(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }
}

/// The tail of whichever kernel logs were readable, and where they came from.
struct KernelLog {
    text: String,
    sources: Vec<String>,
    detail: String,
}

impl KernelLog {
    /// The last line containing every needle, if any.
    fn line_with(&self, needles: &[&str]) -> Option<&str> {
        self.text.lines().rev().find(|line| needles.iter().all(|n| line.contains(n)))
    }
}

struct Probe<'a> {
    root: &'a Path,
}

impl Probe<'_> {
    fn path(&self, rel: &str) -> PathBuf {
        self.root.join(rel)
    }

    fn exists(&self, rel: &str) -> bool {
        self.path(rel).exists()
    }

    fn read(&self, rel: &str) -> Result<String, ProbeError> {
        let shown = shown(rel);
        let file = File::open(self.path(rel)).map_err(|e| ProbeError::from_io(&shown, e))?;
        let mut buf = Vec::new();
        // procfs and sysfs report a size of 0 or 4096 whatever the content, so the
        // bound is enforced on what is read, not on metadata.
        file.take(MAX_FILE_BYTES + 1).read_to_end(&mut buf).map_err(|e| ProbeError::from_io(&shown, e))?;
        if buf.len() as u64 > MAX_FILE_BYTES {
            return Err(ProbeError::TooLarge { path: shown, limit: MAX_FILE_BYTES });
        }
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    fn read_tail(&self, rel: &str) -> Result<String, ProbeError> {
        let shown = shown(rel);
        let mut file = File::open(self.path(rel)).map_err(|e| ProbeError::from_io(&shown, e))?;
        let len = file.metadata().map_err(|e| ProbeError::from_io(&shown, e))?.len();
        if len > MAX_LOG_TAIL_BYTES {
            file.seek(SeekFrom::Start(len - MAX_LOG_TAIL_BYTES))
                .map_err(|e| ProbeError::from_io(&shown, e))?;
        }
        let mut buf = Vec::new();
        file.take(MAX_LOG_TAIL_BYTES).read_to_end(&mut buf).map_err(|e| ProbeError::from_io(&shown, e))?;
        Ok(String::from_utf8_lossy(&buf).into_owned())
    }

    /// A kvm module parameter such as `sev_snp` or `tdx`: `Some(true)` for Y/1.
    fn module_param(&self, rel: &str) -> Result<bool, ProbeError> {
        let text = self.read(rel)?;
        let v = text.trim();
        Ok(v.eq_ignore_ascii_case("y") || v == "1")
    }

    /// Opening a guest device read-write is what an attester does first; no ioctl is
    /// issued, so this has no effect beyond telling whether access is allowed.
    fn open_device(&self, rel: &str) -> Result<(), ProbeError> {
        let shown = shown(rel);
        fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.path(rel))
            .map(|_| ())
            .map_err(|e| ProbeError::from_io(&shown, e))
    }

    fn cpuinfo(&self) -> CpuInfo {
        match self.read(CPUINFO) {
            Ok(text) => {
                let mut flags = Vec::new();
                let mut vendor = None;
                for line in text.lines() {
                    let Some((key, value)) = line.split_once(':') else {
                        continue;
                    };
                    let key = key.trim();
                    // Every CPU repeats the same lines: the first one is enough.
                    if (key == "flags" || key == "Features") && flags.is_empty() {
                        flags = value.split_whitespace().map(str::to_owned).collect();
                    } else if key == "vendor_id" && vendor.is_none() {
                        vendor = Some(value.trim().to_owned());
                    }
                }
                let detail = format!("{} CPU flags read", flags.len());
                CpuInfo { readable: !flags.is_empty(), flags, vendor, detail }
            }
            Err(e) => CpuInfo { readable: false, flags: Vec::new(), vendor: None, detail: e.describe() },
        }
    }

    fn kernel_log(&self) -> KernelLog {
        let mut text = String::new();
        let mut sources = Vec::new();
        let mut problems = Vec::new();
        for rel in KERNEL_LOGS {
            match self.read_tail(rel) {
                Ok(t) => {
                    text.push_str(&t);
                    text.push('\n');
                    sources.push(shown(rel));
                }
                Err(ProbeError::NotFound { .. }) => {}
                Err(e) => problems.push(e.describe()),
            }
        }
        let detail = if sources.is_empty() {
            if problems.is_empty() {
                "no kernel log file found (/var/log/kern.log, /var/log/dmesg, /var/log/messages)".to_owned()
            } else {
                problems.join("; ")
            }
        } else {
            format!("scanned {}", sources.join(", "))
        };
        KernelLog { text, sources, detail }
    }

    /// The configfs-tsm facts from the attesters' probe ([`super::probe`]),
    /// rendered for the report.
    fn tsm(&self) -> TsmStatus {
        use super::probe::{probe_tsm, ProviderSource};
        let facts = probe_tsm(&self.path(CONFIGFS_DIR), &self.path(TSM_REPORT_DIR), "cloak-check");
        // Paths as they are on a real machine, whatever the root.
        let shown_entry = |entry: &Path| {
            let name = entry.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            format!("/{TSM_REPORT_DIR}/{name}")
        };
        let detail = match &facts.source {
            ProviderSource::NoReportInterface if facts.configfs_mounted => {
                "configfs is mounted but /sys/kernel/config/tsm/report is absent: the kernel \
                 lacks CONFIG_TSM_REPORTS (Linux 6.7+) or no TEE guest driver registered"
                    .to_owned()
            }
            ProviderSource::NoReportInterface => "configfs is not mounted at /sys/kernel/config".to_owned(),
            ProviderSource::ExistingEntry(entry) => {
                format!("read from existing report entry {}", shown_entry(entry))
            }
            ProviderSource::ListFailed(e) => {
                ProbeError::from_io(&format!("/{TSM_REPORT_DIR}"), e.to_io_error()).describe()
            }
            ProviderSource::CreateFailed { entry, error } => format!(
                "cannot create a report entry: {}",
                ProbeError::from_io(&shown_entry(entry), error.to_io_error()).describe()
            ),
            ProviderSource::ProbeEntry { entry, provider_error, remove_error } => {
                let mut detail = match provider_error {
                    None => "read from a probe report entry (created and removed)".to_owned(),
                    Some(e) => format!(
                        "probe report entry has no readable provider: {}",
                        ProbeError::from_io(&format!("{}/provider", shown_entry(entry)), e.to_io_error())
                            .describe()
                    ),
                };
                if let Some(e) = remove_error {
                    let _ = write!(
                        detail,
                        "; could not remove the probe entry: {}",
                        ProbeError::from_io(&shown_entry(entry), e.to_io_error()).describe()
                    );
                }
                detail
            }
        };
        TsmStatus {
            configfs_mounted: facts.configfs_mounted,
            report_interface: facts.report_interface,
            provider: facts.provider,
            detail,
        }
    }

    fn tsm_finding(&self, t: &mut TeeStatus, tsm: &TsmStatus) -> bool {
        let want = t.tee.tsm_provider();
        let path = format!("/{TSM_REPORT_DIR}");
        let ours = tsm.provider.as_deref() == Some(want);
        let detail = match (&tsm.provider, tsm.report_interface) {
            (Some(p), _) => format!("provider {p} ({})", tsm.detail),
            (None, true) => format!("provider unknown ({})", tsm.detail),
            (None, false) => tsm.detail.clone(),
        };
        t.find(&format!("configfs-tsm provider {want}"), &path, ours, detail);
        ours
    }

    fn cpu_finding(&self, t: &mut TeeStatus, cpu: &CpuInfo, flag: &str) -> bool {
        let found = cpu.has_flag(flag);
        let detail = if !cpu.readable {
            cpu.detail.clone()
        } else if found {
            "flag set".to_owned()
        } else {
            format!("flag not set ({})", cpu.detail)
        };
        t.find(&format!("CPU flag {flag}"), "/proc/cpuinfo", found, detail);
        found
    }

    fn log_finding(&self, t: &mut TeeStatus, log: &KernelLog, what: &str, needles: &[&str]) -> bool {
        let line = log.line_with(needles).map(|l| l.trim().to_owned());
        let path =
            if log.sources.is_empty() { "/var/log/kern.log".to_owned() } else { log.sources.join(",") };
        let found = line.is_some();
        let detail = match line {
            Some(l) => format!("\"{}\"", truncate(&l, 160)),
            None => format!("no line with {:?} ({})", needles.join(" … "), log.detail),
        };
        t.find(&format!("kernel log: {what}"), &path, found, detail);
        found
    }

    fn path_finding(&self, t: &mut TeeStatus, check: &str, rel: &str) -> bool {
        let found = self.exists(rel);
        let detail = if found { "exists" } else { "not found" };
        t.find(check, &shown(rel), found, detail);
        found
    }

    fn param_finding(&self, t: &mut TeeStatus, check: &str, rel: &str) -> bool {
        let (on, detail) = match self.module_param(rel) {
            Ok(true) => (true, "enabled".to_owned()),
            Ok(false) => (false, "disabled".to_owned()),
            Err(e) => (false, e.describe()),
        };
        t.find(check, &shown(rel), on, detail);
        on
    }

    fn sev_snp(&self, cpu: &CpuInfo, log: &KernelLog, tsm: &TsmStatus) -> TeeStatus {
        let mut t = TeeStatus::new(Tee::SevSnp);
        let dev = "dev/sev-guest";

        let dev_found = self.path_finding(&mut t, "guest device", dev);
        let dev_open = if dev_found {
            match self.open_device(dev) {
                Ok(()) => {
                    t.find("guest device access", "/dev/sev-guest", true, "opened read-write");
                    true
                }
                Err(e) => {
                    t.find("guest device access", "/dev/sev-guest", false, e.describe());
                    false
                }
            }
        } else {
            false
        };
        let platform = self.path_finding(&mut t, "guest platform device", "sys/devices/platform/sev-guest");
        let tsm_ours = self.tsm_finding(&mut t, tsm);
        let flag = self.cpu_finding(&mut t, cpu, "sev_snp");
        // x86 prints the active memory-encryption features once at boot, e.g.
        // "Memory Encryption Features active: AMD SEV SEV-ES SEV-SNP".
        let log_active = self.log_finding(
            &mut t,
            log,
            "memory encryption active",
            &["Memory Encryption Features active", "SEV-SNP"],
        );
        let host_param =
            self.param_finding(&mut t, "KVM host support", "sys/module/kvm_amd/parameters/sev_snp");
        let psp = self.path_finding(&mut t, "host PSP device", "dev/sev");

        let guest_vm = cpu.has_flag("hypervisor");
        t.active = dev_found || platform || tsm_ours || log_active;
        t.host_capable = host_param && !guest_vm;
        t.present = t.active || flag || host_param || (psp && !guest_vm);

        if tsm_ours {
            t.evidence = Some("configfs-tsm (sev_guest)".to_owned());
        } else if dev_open {
            t.evidence = Some("/dev/sev-guest (SNP_GET_EXT_REPORT ioctl)".to_owned());
        }

        if t.active && t.evidence.is_none() {
            if !dev_found {
                t.need(
                    "the SEV-SNP guest device /dev/sev-guest",
                    "load the guest driver (`modprobe sev-guest`; kernel built with \
                     CONFIG_SEV_GUEST) or use a kernel with configfs-tsm (CONFIG_TSM_REPORTS)",
                );
            } else {
                t.need(
                    "access to /dev/sev-guest",
                    "run the attester (cloak-pull) as root, or give its user read-write \
                     access to /dev/sev-guest",
                );
            }
        } else if !t.active && flag && guest_vm {
            t.need(
                "an SEV-SNP guest kernel interface",
                "the CPU advertises SEV-SNP but this VM is not an SNP guest, or its kernel has \
                 no guest driver: launch it with the kata-snp RuntimeClass (QEMU \
                 sev-snp-guest object) and a kernel with CONFIG_SEV_GUEST",
            );
        }
        t
    }

    fn tdx(&self, cpu: &CpuInfo, log: &KernelLog, tsm: &TsmStatus) -> TeeStatus {
        let mut t = TeeStatus::new(Tee::Tdx);
        let flag = self.cpu_finding(&mut t, cpu, "tdx_guest");
        let dev = self.path_finding(&mut t, "guest device", "dev/tdx_guest");
        let tsm_ours = self.tsm_finding(&mut t, tsm);
        let log_active = self.log_finding(&mut t, log, "TDX guest", &["tdx: Guest detected"]);
        let host_param =
            self.param_finding(&mut t, "KVM host support", "sys/module/kvm_intel/parameters/tdx");
        let firmware = self.path_finding(&mut t, "TDX module (host)", "sys/firmware/tdx");
        let host_flag = cpu.has_flag("tdx_host_platform");

        let guest_vm = cpu.has_flag("hypervisor");
        t.active = flag || dev || tsm_ours || log_active;
        t.host_capable = host_param && !guest_vm;
        t.present = t.active || host_param || firmware || host_flag;

        // TDX quotes come only from configfs-tsm (the /dev/tdx_guest ioctl yields a
        // TDREPORT, which a verifier cannot check without the host's quoting enclave).
        if tsm_ours {
            t.evidence = Some("configfs-tsm (tdx_guest)".to_owned());
        } else if t.active {
            if !tsm.report_interface {
                t.need(
                    "configfs-tsm (/sys/kernel/config/tsm/report): TDX quotes come only from it",
                    "use a guest kernel 6.7+ with CONFIG_TSM_REPORTS and CONFIG_TDX_GUEST_DRIVER, \
                     and mount configfs (`mount -t configfs none /sys/kernel/config`); the host \
                     must run a quote generation service (QGS) for the guest's quotes",
                );
            } else if tsm.provider.is_none() {
                t.need(
                    "the configfs-tsm provider could not be read",
                    "run `cloak check` and the attester as root so a report entry can be created",
                );
            } else {
                t.need("configfs-tsm provider tdx_guest", "load the TDX guest driver (`modprobe tdx-guest`)");
            }
        }
        t
    }

    fn cca(&self, log: &KernelLog, tsm: &TsmStatus) -> TeeStatus {
        let mut t = TeeStatus::new(Tee::Cca);
        // Upstream Linux has no CCA guest device node: a Realm shows as the
        // `arm-cca-dev` platform device and the `arm_cca_guest` TSM provider.
        let platform = self.path_finding(&mut t, "realm platform device", "sys/devices/platform/arm-cca-dev");
        let tsm_ours = self.tsm_finding(&mut t, tsm);
        let log_active = self.log_finding(&mut t, log, "realm (RSI)", &["RME: Using RSI version"]);

        t.active = platform || tsm_ours || log_active;
        t.present = t.active;
        if tsm_ours {
            t.evidence = Some("configfs-tsm (arm_cca_guest)".to_owned());
        } else if t.active {
            t.need(
                "configfs-tsm provider arm_cca_guest",
                "use a Realm kernel with CONFIG_ARM_CCA_GUEST and CONFIG_TSM_REPORTS, and mount configfs",
            );
        }
        t
    }
}

/// What the vTPM probe found: the device's path as shown, and the HCL report's
/// hardware, or why there is none.
struct AzureProbe {
    shown: String,
    kind: Result<super::AzureKind, String>,
}

impl Probe<'_> {
    /// Azure confidential VMs: the paravisor keeps the hardware report in the vTPM (the
    /// HCL report in NV index 0x01400001) and the guest has no SNP/TDX interface of its
    /// own. `None` when there is no TPM device at all (nothing worth reporting).
    fn azure_vtpm(&self) -> Option<AzureProbe> {
        let rel = "dev/tpmrm0";
        if !self.exists(rel) {
            return None;
        }
        let target = super::tpm::TpmTarget::Device(self.path(rel));
        Some(AzureProbe { shown: shown(rel), kind: super::azure::detect(&target) })
    }
}

/// Reports the vTPM probe under the technology it is for: an HCL report of `kind`
/// makes that technology active and usable through the `az-*-vtpm` attester.
fn azure_finding(t: &mut TeeStatus, az: &AzureProbe, kind: super::AzureKind) {
    let name = match kind {
        super::AzureKind::Snp => "az-snp-vtpm",
        super::AzureKind::Tdx => "az-tdx-vtpm",
    };
    match &az.kind {
        Ok(k) if *k == kind => {
            t.find(
                "Azure vTPM HCL report",
                &az.shown,
                true,
                format!("NV index 0x01400001 holds this VM's hardware report ({name})"),
            );
            t.active = true;
            t.present = true;
            t.missing.clear();
            t.evidence = Some(format!("Azure vTPM ({name}: HCL report and TPM quote)"));
        }
        Ok(_) => {}
        Err(e) => t.find("Azure vTPM HCL report", &az.shown, false, truncate(e, 200)),
    }
}

/// On bare metal, say what a host needs to launch guests of each technology.
fn host_remedies(t: &mut TeeStatus, cpu: &CpuInfo) {
    let vendor = cpu.vendor.as_deref().unwrap_or("");
    match t.tee {
        Tee::SevSnp if vendor == "AuthenticAMD" && !t.host_capable => t.need(
            "KVM SEV-SNP host support (kvm_amd sev_snp=Y)",
            "enable SEV-SNP (SMEE, SNP memory coverage) in the BIOS of an EPYC Milan or later, \
             boot a host kernel 6.11+ with SNP firmware, load `kvm_amd sev_snp=1`; then \
             confidential pods run inside guests via the kata-snp RuntimeClass",
        ),
        Tee::Tdx if vendor == "GenuineIntel" && !t.host_capable => t.need(
            "KVM TDX host support (kvm_intel tdx=Y)",
            "enable TDX in the BIOS of a Xeon 4th gen (Sapphire Rapids) or later, boot a host \
             kernel with TDX host support and the TDX module loaded, load `kvm_intel tdx=1`; \
             then confidential pods run inside guests via the kata-tdx RuntimeClass",
        ),
        _ => {}
    }
    if t.host_capable {
        t.need(
            "evidence on this machine: it is a host, outside the trust boundary",
            format!(
                "run `cloak check` inside a {} guest (a pod with the kata-{} RuntimeClass) to \
                 check the guest side",
                t.name,
                if t.tee == Tee::SevSnp { "snp" } else { "tdx" }
            ),
        );
    }
}

/// The path as it is on a real machine, for messages.
fn shown(rel: &str) -> String {
    format!("/{rel}")
}

fn truncate(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(max).collect();
        t.push('…');
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const X86_HOST_FLAGS: &str = "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr sse sse2 ht syscall nx lm";

    struct FakeRoot {
        dir: tempfile::TempDir,
    }

    impl FakeRoot {
        fn new() -> Self {
            FakeRoot { dir: tempfile::tempdir().expect("tempdir") }
        }
        fn file(&self, rel: &str, content: &str) -> &Self {
            let p = self.dir.path().join(rel);
            fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            fs::write(p, content).expect("write");
            self
        }
        fn dir(&self, rel: &str) -> &Self {
            fs::create_dir_all(self.dir.path().join(rel)).expect("mkdir");
            self
        }
        fn cpu(&self, vendor: &str, flags: &str) -> &Self {
            let mut text = String::new();
            for n in 0..2 {
                text.push_str(&format!(
                    "processor\t: {n}\nvendor_id\t: {vendor}\nmodel name\t: test\nflags\t\t: {flags}\n\n"
                ));
            }
            self.file("proc/cpuinfo", &text)
        }
        fn check(&self) -> CheckReport {
            run_check(self.dir.path())
        }
    }

    fn status(r: &CheckReport, tee: Tee) -> &TeeStatus {
        r.tees.iter().find(|t| t.tee == tee).expect("every tee is reported")
    }

    #[test]
    fn empty_root_reports_nothing_usable() {
        let root = FakeRoot::new();
        let r = root.check();
        assert!(!r.usable());
        assert_eq!(r.machine, Machine::Unknown);
        assert_eq!(r.tees.len(), 3);
        for t in &r.tees {
            assert!(!t.present && !t.active && t.evidence.is_none(), "{t:?}");
        }
        assert!(!r.configfs_tsm.report_interface);
        let text = r.render_text();
        assert!(text.contains("NO usable TEE"), "{text}");
        assert!(text.contains("AMD SEV-SNP: not present"), "{text}");
    }

    #[test]
    fn plain_vm_without_tee_is_a_guest_and_not_usable() {
        let root = FakeRoot::new();
        root.cpu("AuthenticAMD", &format!("{X86_HOST_FLAGS} hypervisor"));
        let r = root.check();
        assert_eq!(r.machine, Machine::Guest);
        assert!(!r.usable());
        assert!(r.usable_tees().is_empty());
        let json = r.to_json();
        assert_eq!(json["usable"], serde_json::json!(false));
        assert_eq!(json["machine"], "guest");
        assert!(r.render_text().contains("ordinary virtual machine"));
    }

    #[test]
    fn snp_guest_with_device_is_usable() {
        let root = FakeRoot::new();
        root.cpu("AuthenticAMD", &format!("{X86_HOST_FLAGS} hypervisor sev sev_es sev_snp"))
            .file("dev/sev-guest", "")
            .dir("sys/devices/platform/sev-guest");
        let r = root.check();
        let snp = status(&r, Tee::SevSnp);
        assert!(snp.present && snp.active, "{snp:?}");
        assert!(!snp.host_capable);
        assert_eq!(snp.evidence.as_deref(), Some("/dev/sev-guest (SNP_GET_EXT_REPORT ioctl)"));
        assert!(r.usable());
        assert_eq!(r.usable_tees(), vec![Tee::SevSnp]);
        assert_eq!(r.machine, Machine::Guest);
        assert!(!status(&r, Tee::Tdx).active);
        let json = r.to_json();
        assert_eq!(json["usable_tees"], serde_json::json!(["sev-snp"]));
        assert_eq!(json["tees"][0]["tee"], "sev-snp");
        assert_eq!(json["tees"][0]["active"], true);
        assert!(r.render_text().contains("AMD SEV-SNP: ACTIVE, evidence via /dev/sev-guest"));
    }

    #[test]
    fn snp_in_kernel_log_without_device_says_load_the_driver() {
        let root = FakeRoot::new();
        root.cpu("AuthenticAMD", &format!("{X86_HOST_FLAGS} hypervisor")).file(
            "var/log/kern.log",
            "Nov 28 kernel: Linux version 6.8\n\
                 Nov 28 kernel: Memory Encryption Features active: AMD SEV SEV-ES SEV-SNP\n",
        );
        let r = root.check();
        let snp = status(&r, Tee::SevSnp);
        assert!(snp.active);
        assert!(snp.evidence.is_none());
        assert!(!r.usable());
        assert!(snp.missing.iter().any(|m| m.fix.contains("modprobe sev-guest")), "{:?}", snp.missing);
        let f = snp.findings.iter().find(|f| f.check.starts_with("kernel log")).expect("log finding");
        assert!(f.found && f.detail.contains("SEV-SNP"), "{f:?}");
    }

    #[test]
    fn tdx_guest_with_configfs_tsm_provider_is_usable() {
        let root = FakeRoot::new();
        root.cpu("GenuineIntel", &format!("{X86_HOST_FLAGS} hypervisor tdx_guest"))
            .file("dev/tdx_guest", "")
            .file("sys/kernel/config/tsm/report/attest0/provider", "tdx_guest\n");
        let r = root.check();
        let tdx = status(&r, Tee::Tdx);
        assert!(tdx.active && tdx.present);
        assert_eq!(tdx.evidence.as_deref(), Some("configfs-tsm (tdx_guest)"));
        assert_eq!(r.configfs_tsm.provider.as_deref(), Some("tdx_guest"));
        assert!(r.configfs_tsm.detail.contains("attest0"));
        assert_eq!(r.usable_tees(), vec![Tee::Tdx]);
        // The SNP probe must not claim a TDX provider as its own.
        assert!(!status(&r, Tee::SevSnp).active);
    }

    #[test]
    fn tdx_guest_without_configfs_tsm_is_not_usable_and_says_why() {
        let root = FakeRoot::new();
        root.cpu("GenuineIntel", &format!("{X86_HOST_FLAGS} hypervisor tdx_guest")).file("dev/tdx_guest", "");
        let r = root.check();
        let tdx = status(&r, Tee::Tdx);
        assert!(tdx.active);
        assert!(tdx.evidence.is_none());
        assert!(!r.usable());
        assert!(tdx.missing.iter().any(|m| m.fix.contains("CONFIG_TSM_REPORTS")), "{:?}", tdx.missing);
        assert!(r.render_text().contains("Intel TDX: active, but no evidence can be produced"));
    }

    #[test]
    fn snp_via_configfs_tsm_probe_entry_is_removed_afterwards() {
        let root = FakeRoot::new();
        root.cpu("AuthenticAMD", &format!("{X86_HOST_FLAGS} hypervisor")).dir("sys/kernel/config/tsm/report");
        let r = root.check();
        // A plain directory has no `provider`: unknown, and nothing is left behind.
        assert!(r.configfs_tsm.report_interface);
        assert_eq!(r.configfs_tsm.provider, None);
        assert!(r.configfs_tsm.detail.contains("no readable provider"), "{}", r.configfs_tsm.detail);
        let left: Vec<_> = fs::read_dir(root.dir.path().join(TSM_REPORT_DIR)).expect("report dir").collect();
        assert!(left.is_empty(), "probe entry left behind: {left:?}");
        assert!(!r.usable());
    }

    #[test]
    fn snp_tsm_provider_gives_evidence_without_device() {
        let root = FakeRoot::new();
        root.cpu("AuthenticAMD", &format!("{X86_HOST_FLAGS} hypervisor"))
            .file("sys/kernel/config/tsm/report/r/provider", "sev_guest\n");
        let r = root.check();
        let snp = status(&r, Tee::SevSnp);
        assert_eq!(snp.evidence.as_deref(), Some("configfs-tsm (sev_guest)"));
        assert!(r.usable());
    }

    #[test]
    fn snp_host_is_capable_but_not_usable() {
        let root = FakeRoot::new();
        root.cpu("AuthenticAMD", &format!("{X86_HOST_FLAGS} sev sev_es sev_snp"))
            .file("sys/module/kvm_amd/parameters/sev_snp", "Y\n")
            .file("dev/sev", "");
        let r = root.check();
        assert_eq!(r.machine, Machine::Host);
        let snp = status(&r, Tee::SevSnp);
        assert!(snp.present && snp.host_capable && !snp.active);
        assert!(!r.usable());
        assert!(snp.missing.iter().any(|m| m.fix.contains("kata-snp")));
        assert!(r.render_text().contains("host can launch guests"));
    }

    #[test]
    fn amd_host_without_snp_enabled_gets_bios_and_kernel_advice() {
        let root = FakeRoot::new();
        root.cpu("AuthenticAMD", X86_HOST_FLAGS).file("sys/module/kvm_amd/parameters/sev_snp", "N\n");
        let r = root.check();
        assert_eq!(r.machine, Machine::Host);
        let snp = status(&r, Tee::SevSnp);
        assert!(!snp.host_capable && !snp.present);
        assert!(snp.missing.iter().any(|m| m.fix.contains("kvm_amd sev_snp=1")));
        // Intel advice is not given to an AMD host.
        assert!(status(&r, Tee::Tdx).missing.is_empty());
    }

    #[test]
    fn tdx_host_is_capable_but_not_usable() {
        let root = FakeRoot::new();
        root.cpu("GenuineIntel", &format!("{X86_HOST_FLAGS} tdx_host_platform"))
            .file("sys/module/kvm_intel/parameters/tdx", "1\n")
            .dir("sys/firmware/tdx");
        let r = root.check();
        let tdx = status(&r, Tee::Tdx);
        assert!(tdx.host_capable && tdx.present && !tdx.active);
        assert!(!r.usable());
    }

    #[test]
    fn cca_realm_with_the_tsm_provider_is_usable() {
        let root = FakeRoot::new();
        root.cpu("", "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics")
            .dir("sys/devices/platform/arm-cca-dev")
            .file("sys/kernel/config/tsm/report/x/provider", "arm_cca_guest\n");
        let r = root.check();
        let cca = status(&r, Tee::Cca);
        assert!(cca.active);
        assert_eq!(cca.evidence.as_deref(), Some("configfs-tsm (arm_cca_guest)"));
        assert!(cca.usable());
        assert!(r.usable());
        assert_eq!(r.machine, Machine::Guest);
        assert!(!r.render_text().contains("cloak has no attester for Arm CCA"));
    }

    #[test]
    fn arm64_without_realm_is_unknown_not_bare_metal() {
        let root = FakeRoot::new();
        root.file(
            "proc/cpuinfo",
            "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd evtstrm aes\nCPU implementer\t: 0x41\n",
        );
        let r = root.check();
        assert_eq!(r.machine, Machine::Unknown);
        assert!(!r.usable());
        assert!(status(&r, Tee::SevSnp).missing.is_empty());
    }

    #[test]
    fn garbage_cpuinfo_and_logs_do_not_panic() {
        let root = FakeRoot::new();
        let junk: Vec<u8> = (0..=255u8).cycle().take(70_000).collect();
        let p = root.dir.path().join("proc");
        fs::create_dir_all(&p).expect("mkdir");
        fs::write(p.join("cpuinfo"), &junk).expect("write");
        let logs = root.dir.path().join("var/log");
        fs::create_dir_all(&logs).expect("mkdir");
        fs::write(logs.join("kern.log"), &junk).expect("write");
        // A directory where a file is expected must not panic either.
        root.dir("sys/module/kvm_amd/parameters/sev_snp");
        let r = root.check();
        assert!(!r.usable());
        let text = r.render_text();
        assert!(text.contains("verdict"));
    }

    #[test]
    fn large_kernel_log_only_tail_is_scanned() {
        let root = FakeRoot::new();
        let mut log = String::from("kernel: tdx: Guest detected\n");
        let filler = "kernel: an unrelated line of boot noise for the test\n";
        while (log.len() as u64) < MAX_LOG_TAIL_BYTES + 1024 * 1024 {
            log.push_str(filler);
        }
        root.file("var/log/kern.log", &log);
        let r = root.check();
        // The hint sits before the scanned tail, so it is (deliberately) not seen.
        assert!(!status(&r, Tee::Tdx).active);

        log.push_str("kernel: tdx: Guest detected\n");
        root.file("var/log/kern.log", &log);
        assert!(status(&root.check(), Tee::Tdx).active);
    }

    #[test]
    fn a_tpm_device_that_is_no_azure_vtpm_is_reported_and_not_usable() {
        let t = FakeRoot::new();
        t.cpu("AuthenticAMD", "fpu hypervisor").file("dev/tpmrm0", "not a TPM");
        let r = t.check();
        let snp = status(&r, Tee::SevSnp);
        let f =
            snp.findings.iter().find(|f| f.check == "Azure vTPM HCL report").expect("the vTPM was probed");
        assert!(!f.found);
        assert_eq!(f.path, "/dev/tpmrm0");
        assert!(!r.usable());
        // No TPM device: no vTPM finding at all.
        let r = FakeRoot::new().check();
        assert!(r.tees.iter().all(|t| t.findings.iter().all(|f| f.check != "Azure vTPM HCL report")));
    }

    #[test]
    fn an_azure_hcl_report_makes_its_technology_usable() {
        let az = AzureProbe { shown: "/dev/tpmrm0".into(), kind: Ok(crate::attester::AzureKind::Tdx) };
        let mut tdx = TeeStatus::new(Tee::Tdx);
        tdx.need("configfs-tsm", "a guest kernel with it");
        azure_finding(&mut tdx, &az, crate::attester::AzureKind::Tdx);
        assert!(tdx.usable() && tdx.active && tdx.missing.is_empty());
        assert_eq!(tdx.evidence.as_deref(), Some("Azure vTPM (az-tdx-vtpm: HCL report and TPM quote)"));
        let mut snp = TeeStatus::new(Tee::SevSnp);
        azure_finding(&mut snp, &az, crate::attester::AzureKind::Snp);
        assert!(!snp.usable() && snp.findings.is_empty());
    }

    #[test]
    fn json_lists_findings_and_remedies() {
        let root = FakeRoot::new();
        root.cpu("GenuineIntel", &format!("{X86_HOST_FLAGS} hypervisor tdx_guest"));
        let json = root.check().to_json();
        let tdx = &json["tees"][1];
        assert_eq!(tdx["tee"], "tdx");
        assert_eq!(tdx["name"], "Intel TDX");
        assert!(tdx["findings"]
            .as_array()
            .is_some_and(|f| f.iter().any(|f| f["path"] == "/proc/cpuinfo" && f["found"] == true)));
        assert!(tdx["missing"].as_array().is_some_and(|m| !m.is_empty()));
        assert_eq!(json["configfs_tsm"]["report_interface"], false);
        assert!(json["root"].is_string());
    }
}
