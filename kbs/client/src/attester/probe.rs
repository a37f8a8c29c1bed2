//! The one TEE probe: what configfs-tsm offers on this machine, as typed facts. The
//! attesters' `auto` detection and `cloak check` both ask this, so they cannot give
//! different answers.
//!
//! The provider is read from an existing report entry when there is one; otherwise a
//! probe entry is created, its `provider` read and the entry removed again (exactly
//! what an attester does before asking for evidence). Nothing else is written.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

/// An I/O failure, kept as facts (kind and text) so the facts stay `Clone` and `Eq`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IoFact {
    pub kind: io::ErrorKind,
    pub message: String,
}

impl From<&io::Error> for IoFact {
    fn from(e: &io::Error) -> Self {
        IoFact { kind: e.kind(), message: e.to_string() }
    }
}

impl IoFact {
    /// The equivalent `io::Error`, for callers that render errors.
    pub fn to_io_error(&self) -> io::Error {
        io::Error::new(self.kind, self.message.clone())
    }
}

/// How the provider was learned, or why it was not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProviderSource {
    /// There is no report directory.
    NoReportInterface,
    /// Read from this existing report entry.
    ExistingEntry(PathBuf),
    /// The report directory could not be listed.
    ListFailed(IoFact),
    /// A probe entry could not be created.
    CreateFailed { entry: PathBuf, error: IoFact },
    /// A probe entry was created; `provider_error` says why its provider was not
    /// readable, `remove_error` why it could not be removed again.
    ProbeEntry { entry: PathBuf, provider_error: Option<IoFact>, remove_error: Option<IoFact> },
}

/// What configfs-tsm offers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TsmFacts {
    /// configfs is mounted (its directory has entries).
    pub configfs_mounted: bool,
    /// The report directory exists: the kernel has CONFIG_TSM_REPORTS.
    pub report_interface: bool,
    /// The provider the kernel names for report entries, e.g. `tdx_guest`.
    pub provider: Option<String>,
    pub source: ProviderSource,
}

impl TsmFacts {
    /// Why no provider is known, in words (for "no TEE found" errors).
    pub fn why_no_provider(&self) -> String {
        match &self.source {
            ProviderSource::NoReportInterface => "not present".to_owned(),
            ProviderSource::ExistingEntry(e) => format!("entry {} names no provider", e.display()),
            ProviderSource::ListFailed(e) => format!("cannot list the report directory: {}", e.message),
            ProviderSource::CreateFailed { error, .. } => {
                format!("cannot create a report entry: {}", error.message)
            }
            ProviderSource::ProbeEntry { provider_error: Some(e), .. }
                if e.kind == io::ErrorKind::NotFound =>
            {
                "report entry has no provider (not configfs-tsm)".to_owned()
            }
            ProviderSource::ProbeEntry { provider_error: Some(e), .. } => {
                format!("cannot read provider: {}", e.message)
            }
            ProviderSource::ProbeEntry { .. } => "the provider is empty".to_owned(),
        }
    }
}

fn existing_provider(dir: &Path) -> io::Result<Option<(PathBuf, String)>> {
    let mut names: Vec<_> = fs::read_dir(dir)?.filter_map(Result::ok).map(|e| e.file_name()).collect();
    names.sort();
    for name in names {
        if let Ok(p) = fs::read_to_string(dir.join(&name).join("provider")) {
            let p = p.trim();
            if !p.is_empty() {
                return Ok(Some((dir.join(&name), p.to_owned())));
            }
        }
    }
    Ok(None)
}

/// Probes configfs-tsm: `configfs_dir` is where configfs is mounted
/// (`/sys/kernel/config`), `report_dir` its report directory; a probe entry is named
/// `{entry_prefix}-{pid}`.
pub fn probe_tsm(configfs_dir: &Path, report_dir: &Path, entry_prefix: &str) -> TsmFacts {
    let configfs_mounted = fs::read_dir(configfs_dir).map(|mut d| d.next().is_some()).unwrap_or(false);
    if !report_dir.is_dir() {
        return TsmFacts {
            configfs_mounted,
            report_interface: false,
            provider: None,
            source: ProviderSource::NoReportInterface,
        };
    }
    let facts =
        |provider, source| TsmFacts { configfs_mounted: true, report_interface: true, provider, source };
    match existing_provider(report_dir) {
        Ok(Some((entry, p))) => return facts(Some(p), ProviderSource::ExistingEntry(entry)),
        Ok(None) => {}
        Err(e) => return facts(None, ProviderSource::ListFailed(IoFact::from(&e))),
    }
    let entry = report_dir.join(format!("{entry_prefix}-{}", std::process::id()));
    if let Err(e) = fs::create_dir(&entry) {
        return facts(None, ProviderSource::CreateFailed { entry, error: IoFact::from(&e) });
    }
    let provider = fs::read_to_string(entry.join("provider"));
    // Leaving the entry behind would hold a kernel object and confuse attesters that
    // expect `generation` to start at 1; a failure to remove is reported.
    let removed = fs::remove_dir(&entry);
    let provider_error = provider.as_ref().err().map(IoFact::from);
    let provider = provider.ok().map(|p| p.trim().to_owned()).filter(|p| !p.is_empty());
    facts(
        provider,
        ProviderSource::ProbeEntry {
            entry,
            provider_error,
            remove_error: removed.as_ref().err().map(IoFact::from),
        },
    )
}

/// The probe as the attesters run it, at their configfs-tsm report directory.
pub fn probe_report_dir(report_dir: &Path) -> TsmFacts {
    // The report directory is `<configfs>/tsm/report`.
    let configfs = report_dir.parent().and_then(Path::parent).unwrap_or(report_dir);
    probe_tsm(configfs, report_dir, "cloak-probe")
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn facts_for_absent_existing_and_probe_entries() {
        let d = tempfile::tempdir().unwrap();
        let cfg = d.path().join("config");
        let report = cfg.join("tsm/report");
        let f = probe_tsm(&cfg, &report, "t");
        assert_eq!((f.configfs_mounted, f.report_interface, f.provider.as_deref()), (false, false, None));
        assert_eq!(f.source, ProviderSource::NoReportInterface);

        std::fs::create_dir_all(&report).unwrap();
        let f = probe_tsm(&cfg, &report, "t");
        assert!(f.report_interface && f.configfs_mounted);
        assert_eq!(f.provider, None);
        assert!(
            matches!(&f.source, ProviderSource::ProbeEntry { provider_error: Some(e), remove_error: None, .. } if e.kind == io::ErrorKind::NotFound)
        );
        assert!(f.why_no_provider().contains("not configfs-tsm"));
        assert_eq!(std::fs::read_dir(&report).unwrap().count(), 0, "probe entry removed");

        std::fs::create_dir_all(report.join("e0")).unwrap();
        std::fs::write(report.join("e0/provider"), "tdx_guest\n").unwrap();
        let f = probe_report_dir(&report);
        assert_eq!(f.provider.as_deref(), Some("tdx_guest"));
        assert_eq!(f.source, ProviderSource::ExistingEntry(report.join("e0")));
    }
}
