//! Claims a verifier extracts from evidence. They travel inside the broker's token so
//! that a resource request can be re-checked against the policy in force *now*.

use serde::{Deserialize, Serialize};

/// TCB components of an SEV-SNP `reported_tcb` (Milan/Genoa layout).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnpTcb {
    pub bootloader: u8,
    pub tee: u8,
    pub snp: u8,
    pub microcode: u8,
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
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TdxClaims {
    pub quote_version: u16,
    pub mr_td: String,
    pub rtmr: [String; 4],
    pub mr_config_id: String,
    pub mr_owner: String,
    pub tee_tcb_svn: String,
    pub td_attributes: String,
    pub debug: bool,
    /// Always false for now: the PCK/QE signature of the quote is not verified yet.
    pub quote_signature_verified: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SampleClaims {
    pub svn: String,
}

/// Verified claims, tagged by TEE.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "tee", rename_all = "lowercase")]
pub enum Claims {
    Sample(SampleClaims),
    Snp(SnpClaims),
    Tdx(TdxClaims),
}

impl Claims {
    /// The TEE name as Trustee spells it in `ear.veraison.annotated-evidence`.
    pub fn tee_name(&self) -> &'static str {
        match self {
            Claims::Sample(_) => "sample",
            Claims::Snp(_) => "snp",
            Claims::Tdx(_) => "tdx",
        }
    }
}
