//! Claims a verifier extracts from evidence. They travel inside the broker's token so
//! that a resource request can be re-checked against the policy in force *now*.

use serde::{Deserialize, Serialize};

/// TCB components of an SEV-SNP `reported_tcb`. Milan and Genoa lay them out as
/// bootloader, tee, 4 reserved, snp, microcode; Turin as fmc, bootloader, tee, snp,
/// 3 reserved, microcode (`fmc` is `Some` only on Turin).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnpTcb {
    pub bootloader: u8,
    pub tee: u8,
    pub snp: u8,
    pub microcode: u8,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fmc: Option<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnpClaims {
    pub version: u32,
    /// Launch measurement, lowercase hex (48 bytes).
    pub measurement: String,
    pub reported_tcb: SnpTcb,
    pub family_id: String,
    pub image_id: String,
    pub host_data: String,
    pub chip_id: String,
    pub vmpl: u32,
    pub policy_debug_allowed: bool,
    pub policy_migrate_ma: bool,
    pub policy_smt_allowed: bool,
    pub guest_svn: u32,
    /// report_data, lowercase hex (64 bytes).
    #[serde(default)]
    pub report_data: String,
    /// Product line: `milan`, `genoa` or `turin`.
    #[serde(default)]
    pub generation: String,
    /// Which key signed the report: `vcek` (per chip) or `vlek` (per cloud provider).
    #[serde(default)]
    pub signing_key: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TdxClaims {
    pub quote_version: u16,
    /// DCAP TCB status after the whole chain verified (`UpToDate`, `OutOfDate`, ...).
    pub tcb_status: String,
    /// Intel security advisories attached to the matched TCB level.
    #[serde(default)]
    pub advisory_ids: Vec<String>,
    /// The platform's FMSPC from the PCK certificate, lowercase hex.
    #[serde(default)]
    pub fmspc: String,
    /// All hex fields are lowercase.
    pub mr_td: String,
    pub rtmr: [String; 4],
    pub mr_config_id: String,
    pub mr_owner: String,
    #[serde(default)]
    pub mr_owner_config: String,
    #[serde(default)]
    pub mr_seam: String,
    pub tee_tcb_svn: String,
    pub td_attributes: String,
    #[serde(default)]
    pub xfam: String,
    #[serde(default)]
    pub report_data: String,
    pub debug: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleClaims {
    pub svn: String,
    /// The init-data digest the sample evidence carries (`init_data`), lowercase hex:
    /// what a report field would hold, had the guest been launched by a real host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_data: Option<String>,
}

/// Verified claims, tagged by TEE.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "tee", rename_all = "lowercase")]
pub enum Claims {
    Sample(SampleClaims),
    Snp(SnpClaims),
    Tdx(TdxClaims),
    Cca(crate::verifier::cca::CcaClaims),
    /// An Azure confidential VM on SEV-SNP (report through the paravisor's vTPM).
    #[serde(rename = "az-snp-vtpm")]
    AzSnpVtpm(crate::verifier::azure::AzSnpClaims),
    /// An Azure confidential VM on TDX.
    #[serde(rename = "az-tdx-vtpm")]
    AzTdxVtpm(crate::verifier::azure::AzTdxClaims),
}

impl Claims {
    /// The TEE name as Trustee spells it in `ear.veraison.annotated-evidence`.
    pub fn tee_name(&self) -> &'static str {
        match self {
            Claims::Sample(_) => "sample",
            Claims::Snp(_) => "snp",
            Claims::Tdx(_) => "tdx",
            Claims::Cca(_) => "cca",
            Claims::AzSnpVtpm(_) => "az-snp-vtpm",
            Claims::AzTdxVtpm(_) => "az-tdx-vtpm",
        }
    }
}
