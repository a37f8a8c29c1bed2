//! Attesters: where the evidence that binds the runtime data comes from.
//!
//! The [`Attester`] trait is the seam the client calls; [`make_attester`] builds
//! one from a kind (`auto`, `snp`, `tdx`, `az-snp-vtpm`, `az-tdx-vtpm`, `cca`, `sample`).
//! `auto` detects an Azure CVM's vTPM first (there the guest cannot get a report
//! directly, so configfs-tsm must not be tried), then SEV-SNP, TDX or an Arm CCA
//! realm, and fails with "no TEE found" otherwise: it never falls back to `sample`,
//! because sample evidence proves nothing and must be an explicit choice.
//!
//! Evidence JSON shapes (the `primary_evidence` of the attest request):
//! - `sample`: `{"svn":"1","report_data":"<b64 STANDARD of the 48-byte SHA-384>"}` (Trustee's shape),
//!   plus `"init_data":"<b64 STANDARD of the init-data digest>"` when the guest has init-data
//!   (see `sample.rs` for how the test "host" sets it).
//! - `snp`: `{"attestation_report":"<b64 STANDARD raw report, 1184 bytes>",
//!   "cert_chain":[{"guid":"<uuid>","cert_type":"vcek|vlek|ask|ark|other","data":"<b64 STANDARD DER>"}] | null,
//!   "source":"configfs-tsm|sev-guest-ioctl"}`.
//! - `tdx`: `{"quote":"<b64 STANDARD quote>","cc_eventlog":"<b64 STANDARD CCEL>" | null}` (Trustee's shape).
//! - `az-snp-vtpm`, `az-tdx-vtpm`: attestation-agent's version 2 shape, see `azure.rs`.
//! - `cca`: `{"token":[<the CBOR token's bytes as numbers>]}` (CoCo attestation-agent's
//!   shape, which Trustee's verifier reads as `Vec<u8>`).

pub mod azure;
mod bind;
mod cca;
pub mod check;
pub mod probe;
mod sample;
mod sev_guest_ioctl;
mod snp;
mod tdx;
pub mod tpm;
mod tsm;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub use kbs_types::Tee;
use ocicrypt::keywrap::BoxFuture;

pub use crate::error::AttesterError;
pub use azure::{AzureKind, AzureVtpmAttester};
pub use bind::{check_initdata, initdata_field_range};
pub use cca::CcaAttester;
pub use sample::{SampleAttester, SAMPLE_INIT_DATA_DIGEST_ENV};
pub use snp::{parse_cert_table, SnpAttester};
pub use tdx::TdxAttester;

/// Runs a blocking evidence collector (configfs and ioctl I/O) off the async
/// runtime; `tee` names it in the error if the task itself dies.
fn collect_blocking(
    tee: &'static str,
    collect: impl FnOnce() -> Result<serde_json::Value, AttesterError> + Send + 'static,
) -> BoxFuture<'static, Result<serde_json::Value, AttesterError>> {
    Box::pin(async move {
        tokio::task::spawn_blocking(collect)
            .await
            .map_err(|e| AttesterError::Other(format!("{tee} evidence task failed: {e}")))?
    })
}

/// Produces TEE evidence binding `report_data`.
pub trait Attester: Send + Sync {
    /// The TEE this attester speaks for (the `tee` of the RCAR request).
    fn tee(&self) -> Tee;
    /// `report_data`: the 64-byte value to bind (SHA-384 of the canonical runtime
    /// data, zero-padded to 64).
    fn evidence<'a>(
        &'a self,
        report_data: &'a [u8; 64],
    ) -> BoxFuture<'a, Result<serde_json::Value, AttesterError>>;
    /// Binds init-data from inside the guest, as attestation-agent's `BindInitData`
    /// does where the TEE has a guest-extendable register for it (the Azure vTPM's
    /// PCR 8). `None` where the host sets the init-data field at launch (SNP
    /// HOST_DATA, TDX MRCONFIGID: compared, never bound) or there is no such place.
    fn bind_init_data<'a>(&'a self, _digest: &'a [u8]) -> Option<BoxFuture<'a, Result<(), AttesterError>>> {
        None
    }
}

/// Which attester to build. Its names (`FromStr`, `Display`, clap's `ValueEnum`)
/// are in `crate::choice`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttesterKind {
    Auto,
    Snp,
    Tdx,
    AzSnpVtpm,
    AzTdxVtpm,
    Cca,
    Sample,
}

/// Where the attesters find the hardware, and whether sample evidence is allowed.
#[derive(Debug, Clone)]
pub struct AttesterOptions {
    /// Allow the `sample` attester (development and CI only).
    pub allow_sample: bool,
    /// The configfs-tsm report directory.
    pub tsm_root: PathBuf,
    /// The SEV-SNP guest device, used when configfs-tsm is not available.
    pub sev_guest_device: PathBuf,
    /// The digest of the init-data the guest sends. Hardware reports carry what the
    /// host measured whatever this says; the `sample` attester uses it as the digest a
    /// correctly launched guest's evidence would carry, and the Azure vTPM attesters
    /// extend it into PCR 8 once (attestation-agent's `bind_init_data`).
    pub initdata_digest: Option<Vec<u8>>,
    /// The vTPM of an Azure CVM (`az-snp-vtpm`, `az-tdx-vtpm`): `/dev/tpmrm0`, or
    /// what `CLOAK_TPM_DEVICE` says (`tcp:127.0.0.1:PORT` reaches swtpm in tests).
    pub tpm_device: tpm::TpmTarget,
    /// Azure IMDS base URL (VCEK, TD quotes): `http://169.254.169.254`, or
    /// `CLOAK_AZURE_IMDS_URL`.
    pub azure_imds_url: String,
    /// How long the paravisor may take to put the user data into the HCL report.
    pub azure_report_settle: Duration,
    /// TEST ONLY: `--attester cca` takes its tokens from this program
    /// (`CLOAK_CCA_TEST_RMM`; see [`CcaAttester::with_test_rmm`]).
    pub cca_test_rmm: Option<PathBuf>,
}

impl Default for AttesterOptions {
    fn default() -> Self {
        AttesterOptions {
            allow_sample: false,
            tsm_root: PathBuf::from("/sys/kernel/config/tsm/report"),
            sev_guest_device: PathBuf::from("/dev/sev-guest"),
            initdata_digest: None,
            tpm_device: tpm_device_from_env(),
            azure_imds_url: std::env::var(azure::IMDS_URL_ENV)
                .ok()
                .filter(|u| !u.is_empty())
                .unwrap_or_else(|| azure::DEFAULT_IMDS_URL.to_owned()),
            azure_report_settle: azure::DEFAULT_REPORT_SETTLE,
            cca_test_rmm: std::env::var_os(cca::TEST_RMM_ENV).filter(|v| !v.is_empty()).map(PathBuf::from),
        }
    }
}

/// `CLOAK_TPM_DEVICE` when set and valid, else `/dev/tpmrm0`; an invalid value is
/// logged, not silently dropped.
fn tpm_device_from_env() -> tpm::TpmTarget {
    match std::env::var(azure::TPM_DEVICE_ENV) {
        Ok(v) if !v.is_empty() => v.parse().unwrap_or_else(|e| {
            tracing::warn!("ignoring {}={v:?}: {e}", azure::TPM_DEVICE_ENV);
            tpm::TpmTarget::default()
        }),
        _ => tpm::TpmTarget::default(),
    }
}

/// What detection found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Detected {
    Azure(AzureKind),
    Snp,
    Tdx,
    Cca,
}

/// Looks for a TEE we can get evidence from: an Azure vTPM with an HCL report,
/// a configfs-tsm provider, or the SEV-SNP guest device. Returns a description of
/// what was looked at when none.
fn detect(opts: &AttesterOptions) -> Result<Detected, String> {
    let azure = match azure::detect(&opts.tpm_device) {
        Ok(kind) => return Ok(Detected::Azure(kind)),
        Err(why) => why,
    };
    let facts = probe::probe_report_dir(&opts.tsm_root);
    match facts.provider.as_deref() {
        Some("sev_guest") => return Ok(Detected::Snp),
        Some("tdx_guest") => return Ok(Detected::Tdx),
        Some(cca::PROVIDER) => return Ok(Detected::Cca),
        _ => {}
    }
    if opts.sev_guest_device.exists() {
        return Ok(Detected::Snp);
    }
    let tsm_state = match &facts.provider {
        Some(p) => format!("provider {p:?} is none of sev_guest, tdx_guest or arm_cca_guest"),
        None => facts.why_no_provider(),
    };
    Err(format!(
        "{azure}; configfs-tsm at {}: {tsm_state}; {} does not exist",
        opts.tsm_root.display(),
        opts.sev_guest_device.display()
    ))
}

/// Builds the attester for `kind`.
///
/// `Auto` detects SNP, TDX or CCA; with none it returns [`AttesterError::NoTee`].
/// `Sample` without `opts.allow_sample` returns [`AttesterError::SampleNotAllowed`].
/// `Snp`, `Tdx` and `Cca` check that their interface is present.
pub fn make_attester(kind: AttesterKind, opts: &AttesterOptions) -> Result<Arc<dyn Attester>, AttesterError> {
    match kind {
        AttesterKind::Sample => {
            if opts.allow_sample {
                let digest = SampleAttester::host_digest(opts.initdata_digest.as_deref())?;
                Ok(Arc::new(SampleAttester::with_init_data(digest)))
            } else {
                Err(AttesterError::SampleNotAllowed)
            }
        }
        AttesterKind::Auto => match detect(opts) {
            Ok(Detected::Azure(kind)) => Ok(Arc::new(AzureVtpmAttester::new(kind, opts))),
            Ok(Detected::Snp) => Ok(Arc::new(snp_attester(opts))),
            Ok(Detected::Tdx) => Ok(Arc::new(TdxAttester::new(opts.tsm_root.clone()))),
            Ok(Detected::Cca) => Ok(Arc::new(CcaAttester::new(opts.tsm_root.clone()))),
            Err(why) => Err(AttesterError::NoTee(why)),
        },
        AttesterKind::Snp => {
            let tsm_is_snp = probe::probe_report_dir(&opts.tsm_root).provider.as_deref() == Some("sev_guest");
            if tsm_is_snp || opts.sev_guest_device.exists() {
                Ok(Arc::new(snp_attester(opts)))
            } else {
                Err(AttesterError::NoTee(format!(
                    "SEV-SNP requested, but configfs-tsm at {} has no sev_guest provider and {} does not exist",
                    opts.tsm_root.display(),
                    opts.sev_guest_device.display()
                )))
            }
        }
        AttesterKind::Tdx => {
            if probe::probe_report_dir(&opts.tsm_root).provider.as_deref() == Some("tdx_guest") {
                Ok(Arc::new(TdxAttester::new(opts.tsm_root.clone())))
            } else {
                Err(AttesterError::NoTee(format!(
                    "TDX requested, but configfs-tsm at {} has no tdx_guest provider",
                    opts.tsm_root.display()
                )))
            }
        }
        AttesterKind::AzSnpVtpm => azure_attester(AzureKind::Snp, opts),
        AttesterKind::AzTdxVtpm => azure_attester(AzureKind::Tdx, opts),
        AttesterKind::Cca => {
            if let Some(program) = &opts.cca_test_rmm {
                Ok(Arc::new(CcaAttester::with_test_rmm(program.clone())))
            } else if probe::probe_report_dir(&opts.tsm_root).provider.as_deref() == Some(cca::PROVIDER) {
                Ok(Arc::new(CcaAttester::new(opts.tsm_root.clone())))
            } else {
                Err(AttesterError::NoTee(format!(
                    "Arm CCA requested, but configfs-tsm at {} has no arm_cca_guest provider",
                    opts.tsm_root.display()
                )))
            }
        }
    }
}

/// An explicit Azure kind: the vTPM must hold an HCL report of that kind.
fn azure_attester(kind: AzureKind, opts: &AttesterOptions) -> Result<Arc<dyn Attester>, AttesterError> {
    let name = if kind == AzureKind::Snp { "az-snp-vtpm" } else { "az-tdx-vtpm" };
    match azure::detect(&opts.tpm_device) {
        Ok(found) if found == kind => Ok(Arc::new(AzureVtpmAttester::new(kind, opts))),
        Ok(_) => Err(AttesterError::NoTee(format!(
            "{name} requested, but the HCL report in {} is for the other TEE",
            opts.tpm_device
        ))),
        Err(why) => Err(AttesterError::NoTee(format!("{name} requested, but {why}"))),
    }
}

fn snp_attester(opts: &AttesterOptions) -> SnpAttester {
    SnpAttester::new(opts.tsm_root.clone(), opts.sev_guest_device.clone())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::path::Path;

    fn opts_in(dir: &Path) -> AttesterOptions {
        AttesterOptions {
            allow_sample: false,
            tsm_root: dir.join("tsm/report"),
            sev_guest_device: dir.join("sev-guest"),
            initdata_digest: None,
            tpm_device: tpm::TpmTarget::Device(dir.join("tpmrm0")),
            ..Default::default()
        }
    }

    #[test]
    fn kind_parses() {
        assert_eq!("auto".parse::<AttesterKind>().ok(), Some(AttesterKind::Auto));
        assert_eq!("snp".parse::<AttesterKind>().ok(), Some(AttesterKind::Snp));
        assert_eq!("tdx".parse::<AttesterKind>().ok(), Some(AttesterKind::Tdx));
        assert_eq!("sample".parse::<AttesterKind>().ok(), Some(AttesterKind::Sample));
        assert_eq!("cca".parse::<AttesterKind>().ok(), Some(AttesterKind::Cca));
        assert_eq!("az-snp-vtpm".parse::<AttesterKind>().ok(), Some(AttesterKind::AzSnpVtpm));
        assert_eq!("az-tdx-vtpm".parse::<AttesterKind>().ok(), Some(AttesterKind::AzTdxVtpm));
        assert!(matches!("sev".parse::<AttesterKind>(), Err(AttesterError::UnknownKind(_))));
    }

    #[test]
    fn auto_without_tee_says_no_tee_found_and_never_samples() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = opts_in(dir.path());
        // Even with sample allowed, auto must not fall back to it.
        opts.allow_sample = true;
        let err = make_attester(AttesterKind::Auto, &opts).err().unwrap();
        assert!(matches!(err, AttesterError::NoTee(_)));
        assert!(err.to_string().starts_with("no TEE found"), "{err}");

        // A tsm directory that exists but whose entries have no provider (not configfs).
        std::fs::create_dir_all(&opts.tsm_root).unwrap();
        let err = make_attester(AttesterKind::Auto, &opts).err().unwrap();
        assert!(err.to_string().starts_with("no TEE found"), "{err}");
        // The probe cleaned up after itself.
        assert_eq!(std::fs::read_dir(&opts.tsm_root).unwrap().count(), 0);
    }

    #[test]
    fn auto_detects_snp_by_guest_device() {
        let dir = tempfile::tempdir().unwrap();
        let opts = opts_in(dir.path());
        std::fs::write(&opts.sev_guest_device, b"").unwrap();
        let a = make_attester(AttesterKind::Auto, &opts).unwrap();
        assert_eq!(a.tee(), Tee::Snp);
        let a = make_attester(AttesterKind::Snp, &opts).unwrap();
        assert_eq!(a.tee(), Tee::Snp);
        assert!(make_attester(AttesterKind::Tdx, &opts).is_err());
    }

    #[test]
    fn a_tpm_device_that_is_not_an_azure_vtpm_falls_through_to_the_other_tees() {
        let dir = tempfile::tempdir().unwrap();
        let opts = opts_in(dir.path());
        // A regular file answers nothing a TPM would: detection says so and moves on.
        std::fs::write(dir.path().join("tpmrm0"), b"").unwrap();
        std::fs::write(&opts.sev_guest_device, b"").unwrap();
        assert_eq!(make_attester(AttesterKind::Auto, &opts).unwrap().tee(), Tee::Snp);
        let err = make_attester(AttesterKind::AzSnpVtpm, &opts).err().unwrap();
        assert!(err.to_string().contains("TPM2_NV_ReadPublic: malformed response"), "{err}");
    }

    #[test]
    fn explicit_kinds_without_hardware_fail() {
        let dir = tempfile::tempdir().unwrap();
        let opts = opts_in(dir.path());
        for k in [
            AttesterKind::Snp,
            AttesterKind::Tdx,
            AttesterKind::AzSnpVtpm,
            AttesterKind::AzTdxVtpm,
            AttesterKind::Cca,
        ] {
            let err = make_attester(k, &opts).err().unwrap();
            assert!(err.to_string().starts_with("no TEE found"), "{err}");
        }
    }

    #[test]
    fn auto_detects_a_cca_realm_by_its_tsm_provider() {
        let dir = tempfile::tempdir().unwrap();
        let opts = opts_in(dir.path());
        // An existing report entry names the provider, as configfs does.
        std::fs::create_dir_all(opts.tsm_root.join("entry")).unwrap();
        std::fs::write(opts.tsm_root.join("entry/provider"), "arm_cca_guest\n").unwrap();
        let a = make_attester(AttesterKind::Auto, &opts).unwrap();
        assert_eq!(a.tee(), Tee::Cca);
        assert_eq!(make_attester(AttesterKind::Cca, &opts).unwrap().tee(), Tee::Cca);
        let err = make_attester(AttesterKind::Tdx, &opts).err().unwrap();
        assert!(err.to_string().contains("no tdx_guest provider"), "{err}");
    }

    #[test]
    fn sample_refused_unless_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = opts_in(dir.path());
        assert!(matches!(
            make_attester(AttesterKind::Sample, &opts).err().unwrap(),
            AttesterError::SampleNotAllowed
        ));
        opts.allow_sample = true;
        let a = make_attester(AttesterKind::Sample, &opts).unwrap();
        assert_eq!(a.tee(), Tee::Sample);
    }
}
