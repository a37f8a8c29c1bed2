//! configfs-tsm (`/sys/kernel/config/tsm/report`): the kernel's vendor-neutral
//! interface for TEE reports. Creating a directory makes a report slot; we write
//! `inblob`, read `outblob`/`auxblob`, and check `generation` to detect another
//! writer racing us on the same slot. The slot is always removed afterwards.

use std::fs;
use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use crate::error::AttesterError;

/// What one report request returned.
pub(crate) struct TsmReport {
    pub outblob: Vec<u8>,
    pub auxblob: Option<Vec<u8>>,
}

/// A report slot; removed on drop so a failed request leaves nothing behind.
struct Slot {
    dir: PathBuf,
}

impl Slot {
    fn create(root: &Path) -> Result<Slot, String> {
        let name = format!("cloak-{}-{:016x}", std::process::id(), rand::random::<u64>());
        let dir = root.join(name);
        fs::create_dir(&dir).map_err(|e| format!("cannot create a report entry: {e}"))?;
        Ok(Slot { dir })
    }

    fn read_provider(&self) -> Result<String, String> {
        match fs::read_to_string(self.dir.join("provider")) {
            Ok(s) => Ok(s.trim_end().to_owned()),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                Err("report entry has no provider (not configfs-tsm)".to_owned())
            }
            Err(e) => Err(format!("cannot read provider: {e}")),
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // configfs removes its attribute files with the directory; on a plain
        // filesystem (tests) the directory is empty because we never create files.
        let _ = fs::remove_dir(&self.dir);
    }
}

fn tsm_err(root: &Path, reason: impl Into<String>) -> AttesterError {
    AttesterError::Tsm { path: root.display().to_string(), reason: reason.into() }
}

fn read_generation(slot: &Slot) -> Result<u64, String> {
    let s = fs::read_to_string(slot.dir.join("generation"))
        .map_err(|e| format!("cannot read generation: {e}"))?;
    s.trim().parse::<u64>().map_err(|_| format!("generation {:?} is not a number", s.trim()))
}

/// Requests one report from `provider` binding `report_data`. `privlevel` is
/// written when given (SEV-SNP VMPL). Blocking: call from `spawn_blocking`.
pub(crate) fn get_report(
    root: &Path,
    expected_provider: &str,
    report_data: &[u8; 64],
    privlevel: Option<u32>,
) -> Result<TsmReport, AttesterError> {
    let slot = Slot::create(root).map_err(|e| tsm_err(root, e))?;
    report_in_entry(&slot, root, expected_provider, report_data, privlevel)
}

/// The request in an existing report entry `dir`, which is left in place: what
/// [`get_report`] does in the entry it creates, for tests, on a directory they filled
/// the way configfs would (`provider`, `outblob`, `generation`), since a plain
/// filesystem cannot conjure a report.
#[cfg(test)]
pub(crate) fn get_report_in(
    dir: &Path,
    expected_provider: &str,
    report_data: &[u8; 64],
    privlevel: Option<u32>,
) -> Result<TsmReport, AttesterError> {
    let slot = std::mem::ManuallyDrop::new(Slot { dir: dir.to_owned() });
    report_in_entry(&slot, dir, expected_provider, report_data, privlevel)
}

fn report_in_entry(
    slot: &Slot,
    root: &Path,
    expected_provider: &str,
    report_data: &[u8; 64],
    privlevel: Option<u32>,
) -> Result<TsmReport, AttesterError> {
    let provider = slot.read_provider().map_err(|e| tsm_err(root, e))?;
    if provider != expected_provider {
        return Err(tsm_err(root, format!("provider is {provider:?}, expected {expected_provider:?}")));
    }
    if let Some(level) = privlevel {
        fs::write(slot.dir.join("privlevel"), level.to_string())
            .map_err(|e| tsm_err(root, format!("cannot write privlevel: {e}")))?;
    }
    fs::write(slot.dir.join("inblob"), report_data)
        .map_err(|e| tsm_err(root, format!("cannot write inblob: {e}")))?;
    let outblob =
        fs::read(slot.dir.join("outblob")).map_err(|e| tsm_err(root, format!("cannot read outblob: {e}")))?;
    let auxblob = match fs::read(slot.dir.join("auxblob")) {
        Ok(b) if !b.is_empty() => Some(b),
        _ => None,
    };
    // Our fresh slot saw exactly one inblob write; any other count means someone
    // else wrote to it and the report may bind their data, not ours.
    let generation = read_generation(slot).map_err(|e| tsm_err(root, e))?;
    let expected_generation = if privlevel.is_some() { 2 } else { 1 };
    if generation != expected_generation {
        return Err(tsm_err(
            root,
            format!("generation is {generation}, expected {expected_generation}: another writer raced this report"),
        ));
    }
    if outblob.is_empty() {
        return Err(tsm_err(root, "outblob is empty"));
    }
    Ok(TsmReport { outblob, auxblob })
}
