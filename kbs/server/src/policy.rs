//! The broker's policy: which evidence is acceptable (`required_attestation`) and which
//! resources an attested guest may receive (`released_resources`).
//!
//! The YAML shape is the one platform teams already write (see issue 3). A policy is
//! parsed and validated completely before it replaces the one in force, so an invalid
//! file can never weaken or break the running broker. Checks run twice: at attest time
//! (evidence claims) and at resource time (token claims against the *current* policy),
//! so a policy change applies to tokens already issued.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Deserialize;

use crate::claims::{Claims, SnpClaims, TdxClaims};
use crate::initdata::InitdataClaims;
use crate::verifier::cca::CcaClaims;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy file {path}")]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("policy is not valid YAML of the expected shape")]
    Yaml(#[from] serde_yaml::Error),
    #[error("policy field {field}: {reason}")]
    Invalid { field: String, reason: String },
}

/// Why evidence or a token was refused. The snake_case name is the metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    MeasurementMismatch,
    TcbTooLow,
    /// A signature of the evidence or of its certification chain does not verify.
    InvalidSignature,
    CertChainInvalid,
    ReportDataMismatch,
    UnsupportedTee,
    TeeNotAllowed,
    MalformedEvidence,
    DebugNotAllowed,
    SampleNotAllowed,
    FamilyIdMismatch,
    ImageIdMismatch,
    VmplNotAllowed,
    NonceMismatch,
    ProtocolVersion,
    NotReleased,
    NotFound,
    TokenInvalid,
    /// No collateral (TDX TCB info, QE identity, CRLs) or VCEK could be obtained.
    CollateralUnavailable,
    /// A collateral item or certificate is past its `nextUpdate` / `notAfter`.
    CollateralExpired,
    /// A collateral item was issued after the verification time.
    CollateralNotYetValid,
    /// The TCB status (UpToDate, OutOfDate, ...) is not in the policy's allowed list.
    TcbStatusNotAllowed,
    /// Intel says the platform's TCB is revoked: always refused.
    TcbRevoked,
    /// No TCB level of the TCB info matches the platform.
    TcbLevelUnmatched,
    /// The TCB carries an advisory the policy denies.
    AdvisoryDenied,
    /// The VCEK/VLEK is for another chip, another TCB or another product line.
    VcekMismatch,
    /// The init-data's digest is not the one in the report (SNP `HOST_DATA`, TDX
    /// `MRCONFIGID`, sample `init_data`): the host launched the guest with other init-data.
    InitdataMismatch,
    /// The policy requires init-data (`initdata`) and the guest sent none.
    InitdataMissing,
    /// The init-data is not a TOML init-data document.
    InitdataInvalid,
    /// Verified init-data that the policy's `initdata` rules do not allow.
    InitdataNotAllowed,
    /// CCA: no configured platform key (CPAK) for the token's platform instance id.
    UnknownPlatformKey,
    /// CCA: the platform token's challenge is not the hash of the realm's key (RAK).
    RakBindingMismatch,
    /// CCA: the platform's security lifecycle state is not in the policy's list.
    LifecycleNotAllowed,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::MeasurementMismatch => "measurement_mismatch",
            Reason::TcbTooLow => "tcb_too_low",
            Reason::InvalidSignature => "invalid_signature",
            Reason::CertChainInvalid => "cert_chain_invalid",
            Reason::ReportDataMismatch => "report_data_mismatch",
            Reason::UnsupportedTee => "unsupported_tee",
            Reason::TeeNotAllowed => "tee_not_allowed",
            Reason::MalformedEvidence => "malformed_evidence",
            Reason::DebugNotAllowed => "debug_not_allowed",
            Reason::SampleNotAllowed => "sample_not_allowed",
            Reason::FamilyIdMismatch => "family_id_mismatch",
            Reason::ImageIdMismatch => "image_id_mismatch",
            Reason::VmplNotAllowed => "vmpl_not_allowed",
            Reason::NonceMismatch => "nonce_mismatch",
            Reason::ProtocolVersion => "protocol_version",
            Reason::NotReleased => "not_released",
            Reason::NotFound => "not_found",
            Reason::TokenInvalid => "token_invalid",
            Reason::CollateralUnavailable => "collateral_unavailable",
            Reason::CollateralExpired => "collateral_expired",
            Reason::CollateralNotYetValid => "collateral_not_yet_valid",
            Reason::TcbStatusNotAllowed => "tcb_status_not_allowed",
            Reason::TcbRevoked => "tcb_revoked",
            Reason::TcbLevelUnmatched => "tcb_level_unmatched",
            Reason::AdvisoryDenied => "advisory_denied",
            Reason::VcekMismatch => "vcek_mismatch",
            Reason::InitdataMismatch => "initdata_mismatch",
            Reason::InitdataMissing => "initdata_missing",
            Reason::InitdataInvalid => "initdata_invalid",
            Reason::InitdataNotAllowed => "initdata_not_allowed",
            Reason::UnknownPlatformKey => "unknown_platform_key",
            Reason::RakBindingMismatch => "rak_binding_mismatch",
            Reason::LifecycleNotAllowed => "lifecycle_not_allowed",
        }
    }
}

impl std::fmt::Display for Reason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refusal: a machine-readable reason and a human-readable detail (no secrets).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Denial {
    pub reason: Reason,
    pub detail: String,
}

impl Denial {
    pub fn new(reason: Reason, detail: impl Into<String>) -> Self {
        Self { reason, detail: detail.into() }
    }
}

impl std::fmt::Display for Denial {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.reason, self.detail)
    }
}

/// A refusal is the end of a chain: it has no cause of its own (`detail` is text).
impl std::error::Error for Denial {}

/// Whether a measurement was compared against an allow-list (the metric label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MeasurementMatch {
    Matched,
    Unchecked,
}

impl MeasurementMatch {
    pub fn as_str(self) -> &'static str {
        match self {
            MeasurementMatch::Matched => "true",
            MeasurementMatch::Unchecked => "unchecked",
        }
    }
}

// ---- YAML shape -------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    default_policy: PolicySpec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicySpec {
    #[serde(default)]
    required_attestation: RequiredSpec,
    #[serde(default)]
    released_resources: Vec<String>,
    /// Absent: guests with and without init-data are both accepted (see [`InitdataPolicy`]).
    initdata: Option<InitdataSpec>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct InitdataSpec {
    #[serde(default)]
    required: bool,
    #[serde(default)]
    digests: Vec<String>,
    #[serde(default)]
    data: BTreeMap<String, DataSpec>,
    /// Resource pattern (as in `released_resources`) → rules for that resource only.
    #[serde(default)]
    resources: BTreeMap<String, InitdataRulesSpec>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct InitdataRulesSpec {
    #[serde(default)]
    digests: Vec<String>,
    #[serde(default)]
    data: BTreeMap<String, DataSpec>,
}

/// The allowed values of one `[data]` entry: its whole text, or (a map) values at
/// dotted paths into the entry parsed as TOML (`"cdh.toml": {"kbc.url": [...]}`).
#[derive(Deserialize)]
#[serde(untagged)]
enum DataSpec {
    Text(OneOrMany),
    Paths(BTreeMap<String, OneOrMany>),
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RequiredSpec {
    sev_snp: Option<SnpSpec>,
    tdx: Option<TdxSpec>,
    cca: Option<CcaSpec>,
    az_snp_vtpm: Option<AzSnpSpec>,
    az_tdx_vtpm: Option<AzTdxSpec>,
    sample: Option<SampleSpec>,
}

/// `required_attestation.az_snp_vtpm`: the SNP report's requirements (the keys of
/// `sev_snp`) and the vTPM PCRs.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AzSnpSpec {
    sev_snp: Option<SnpSpec>,
    #[serde(default)]
    pcrs: BTreeMap<String, OneOrMany>,
}

/// `required_attestation.az_tdx_vtpm`: the TD quote's requirements (the keys of `tdx`)
/// and the vTPM PCRs.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct AzTdxSpec {
    tdx: Option<TdxSpec>,
    #[serde(default)]
    pcrs: BTreeMap<String, OneOrMany>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SnpSpec {
    measurement: Option<OneOrMany>,
    tcb_min: Option<TcbSpec>,
    family_id: Option<String>,
    image_id: Option<String>,
    /// Highest VMPL accepted; Trustee accepts only 0, and so does the default here.
    #[serde(default)]
    max_vmpl: u32,
    /// Debug guests are refused unless this is explicitly set.
    #[serde(default)]
    allow_debug: bool,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TcbSpec {
    #[serde(default)]
    bootloader: u8,
    #[serde(default)]
    tee: u8,
    #[serde(default)]
    snp: u8,
    #[serde(default)]
    microcode: u8,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TdxSpec {
    #[serde(default)]
    mr_td: Vec<String>,
    tcb_svn_min: Option<String>,
    #[serde(default)]
    allow_debug: bool,
    /// Accepted DCAP TCB statuses; default `[UpToDate]`. `Revoked` is never accepted.
    tcb_status: Option<OneOrMany>,
    /// Intel advisory IDs (`INTEL-SA-00837`) that refuse a quote whose TCB carries them.
    #[serde(default)]
    deny_advisories: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CcaSpec {
    /// Allowed realm initial measurements (RIM).
    #[serde(default)]
    rim: Vec<String>,
    /// Allowed realm extensible measurements: each entry is all four REMs.
    #[serde(default)]
    rem: Vec<Vec<String>>,
    /// Allowed platform implementation ids.
    #[serde(default)]
    implementation_id: Vec<String>,
    /// Accepted platform lifecycle states; default `[secured]`.
    lifecycle: Option<OneOrMany>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct SampleSpec {
    allow: bool,
}

// ---- validated policy -------------------------------------------------------------

/// `Default`: any measurement, TCB floor zero, VMPL 0, no debug.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SnpRequirement {
    /// Allowed measurements, lowercase hex; empty = not checked.
    pub measurements: Vec<String>,
    pub tcb_min: crate::claims::SnpTcb,
    pub family_id: Option<String>,
    pub image_id: Option<String>,
    pub max_vmpl: u32,
    pub allow_debug: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TdxRequirement {
    pub mr_td: Vec<String>,
    pub tcb_svn_min: Option<Vec<u8>>,
    pub allow_debug: bool,
    /// Accepted TCB statuses, spelled as Intel does (`UpToDate`, `SWHardeningNeeded`, ...).
    pub tcb_status: Vec<String>,
    /// Advisory IDs that refuse a quote, upper case.
    pub deny_advisories: Vec<String>,
}

/// Allowed values of vTPM PCRs (SHA-256 bank): PCR index -> lowercase hex values, one
/// of which the quoted PCR must hold. Empty: no PCR is checked.
pub type PcrRequirement = BTreeMap<u8, Vec<String>>;

/// An Azure confidential VM on SEV-SNP (`required_attestation.az_snp_vtpm`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AzSnpRequirement {
    pub snp: SnpRequirement,
    pub pcrs: PcrRequirement,
}

/// An Azure confidential VM on TDX (`required_attestation.az_tdx_vtpm`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AzTdxRequirement {
    pub tdx: TdxRequirement,
    pub pcrs: PcrRequirement,
}

fn pcr_requirement(section: &str, spec: BTreeMap<String, OneOrMany>) -> Result<PcrRequirement, PolicyError> {
    let mut out = PcrRequirement::new();
    for (k, v) in spec {
        let field = format!("{section}.pcrs.{k}");
        let index = k.trim().parse::<u8>().ok().filter(|i| *i < 24).ok_or_else(|| PolicyError::Invalid {
            field: field.clone(),
            reason: "a PCR index is 0 to 23".into(),
        })?;
        let values = match v {
            OneOrMany::One(m) => vec![m],
            OneOrMany::Many(v) => v,
        };
        let values = values.iter().map(|m| hex_field(&field, m, 32)).collect::<Result<Vec<_>, _>>()?;
        out.insert(index, values);
    }
    Ok(out)
}

/// What an Arm CCA token must show (`required_attestation.cca`). Empty lists are not
/// checked; `Default` accepts any measurement on a `secured` platform.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CcaRequirement {
    /// Allowed RIMs, lowercase hex.
    pub rim: Vec<String>,
    /// Allowed REM sets (four values each), lowercase hex.
    pub rem: Vec<[String; 4]>,
    /// Allowed platform implementation ids, lowercase hex.
    pub implementation_id: Vec<String>,
    /// Accepted lifecycle state names (`secured`, `non_psa_rot_debug`, ...).
    pub lifecycle: Vec<String>,
}

impl Default for CcaRequirement {
    fn default() -> Self {
        Self {
            rim: Vec::new(),
            rem: Vec::new(),
            implementation_id: Vec::new(),
            lifecycle: vec!["secured".into()],
        }
    }
}

fn measurement_hex(field: &str, value: &str) -> Result<String, PolicyError> {
    let v = value.trim().to_ascii_lowercase();
    match hex::decode(&v) {
        Ok(b) if [32, 48, 64].contains(&b.len()) => Ok(v),
        _ => Err(PolicyError::Invalid {
            field: field.into(),
            reason: format!("{value:?} is not 32, 48 or 64 bytes of hex"),
        }),
    }
}

impl CcaRequirement {
    fn from_spec(s: CcaSpec) -> Result<Self, PolicyError> {
        use crate::verifier::cca::LIFECYCLE_STATES;
        let rim = s.rim.iter().map(|m| measurement_hex("cca.rim", m)).collect::<Result<Vec<_>, _>>()?;
        let rem = s
            .rem
            .iter()
            .map(|set| {
                let set = set.iter().map(|m| measurement_hex("cca.rem", m)).collect::<Result<Vec<_>, _>>()?;
                <[String; 4]>::try_from(set).map_err(|v| PolicyError::Invalid {
                    field: "cca.rem".into(),
                    reason: format!("each entry lists the 4 REMs; one lists {}", v.len()),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let implementation_id = s
            .implementation_id
            .iter()
            .map(|m| hex_field("cca.implementation_id", m, 32))
            .collect::<Result<Vec<_>, _>>()?;
        let lifecycle = match s.lifecycle {
            None => vec!["secured".into()],
            Some(v) => one_or_many(v)
                .into_iter()
                .map(|l| {
                    let l = l.trim().to_ascii_lowercase().replace('-', "_");
                    if LIFECYCLE_STATES.contains(&l.as_str()) {
                        Ok(l)
                    } else {
                        Err(PolicyError::Invalid {
                            field: "cca.lifecycle".into(),
                            reason: format!("{l:?} is not one of {}", LIFECYCLE_STATES.join(", ")),
                        })
                    }
                })
                .collect::<Result<Vec<_>, _>>()?,
        };
        Ok(Self { rim, rem, implementation_id, lifecycle })
    }
}

/// The DCAP TCB statuses a policy may accept (Intel's spelling). `Revoked` is absent on
/// purpose: a revoked platform is refused by the verifier whatever the policy says.
pub const TDX_TCB_STATUSES: &[&str] = &[
    "UpToDate",
    "SWHardeningNeeded",
    "ConfigurationNeeded",
    "ConfigurationAndSWHardeningNeeded",
    "OutOfDate",
    "OutOfDateConfigurationNeeded",
];

impl Default for TdxRequirement {
    /// Any MRTD, no SVN floor, no debug, UpToDate only: what `verify-evidence` applies
    /// without a policy file.
    fn default() -> Self {
        Self {
            mr_td: Vec::new(),
            tcb_svn_min: None,
            allow_debug: false,
            tcb_status: vec!["UpToDate".into()],
            deny_advisories: Vec::new(),
        }
    }
}

fn tdx_statuses(v: Option<OneOrMany>) -> Result<Vec<String>, PolicyError> {
    let list = match v {
        None => return Ok(vec!["UpToDate".into()]),
        Some(OneOrMany::One(s)) => vec![s],
        Some(OneOrMany::Many(v)) => v,
    };
    list.into_iter()
        .map(|s| {
            TDX_TCB_STATUSES
                .iter()
                .find(|k| k.eq_ignore_ascii_case(s.trim()))
                .map(|k| k.to_string())
                .ok_or_else(|| PolicyError::Invalid {
                    field: "tdx.tcb_status".into(),
                    reason: format!("{s:?} is not one of {}", TDX_TCB_STATUSES.join(", ")),
                })
        })
        .collect()
}

/// What the policy asks of a guest's init-data (`default_policy.initdata`):
///
/// ```yaml
/// initdata:
///   required: true                 # refuse a guest that sends no init-data
///   digests: ["<hex>"]             # the document's full digest (sha256/384/512), any of
///   data:
///     namespace: [shop]            # a [data] entry's whole text, any of
///     "cdh.toml": {"kbc.url": ["https://kbs.example"]}   # a dotted path into a TOML entry
///   resources:
///     "default/payments/*": {data: {namespace: [payments]}}   # only for these resources
/// ```
///
/// Init-data that is sent is always checked against the report; these rules are on
/// top. Without the `initdata` key (the default, and what older policies mean) a guest
/// that sends no init-data is accepted ("unbound": CoCo guests without init-data). A
/// policy with `required: true`, or with any `digests` or `data` rule, refuses it
/// (`initdata_missing`). Rules are checked at attest time and again, against the policy
/// in force, at each resource request; `resources` rules only for a matching resource.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InitdataPolicy {
    pub required: bool,
    pub rules: InitdataRules,
    /// (pattern, rules) for matching resources only.
    pub resources: Vec<(String, InitdataRules)>,
}

/// Digests and `[data]` values one check allows; empty lists allow anything.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct InitdataRules {
    /// Allowed digests, lowercase hex.
    pub digests: Vec<String>,
    pub data: Vec<DataRule>,
}

/// One `[data]` entry (and, for a TOML entry, a dotted path in it) and its allowed values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataRule {
    pub entry: String,
    /// Keys into the entry parsed as TOML; `None`: the entry's whole text.
    pub path: Option<Vec<String>>,
    pub allowed: Vec<String>,
}

impl InitdataRules {
    fn is_empty(&self) -> bool {
        self.digests.is_empty() && self.data.is_empty()
    }

    fn check(&self, init: &InitdataClaims, what: &str) -> Result<(), Denial> {
        let refuse = |detail: String| Denial::new(Reason::InitdataNotAllowed, detail);
        if !self.digests.is_empty() && !self.digests.iter().any(|d| d.eq_ignore_ascii_case(&init.digest)) {
            return Err(refuse(format!("init-data digest {} is not in {what}.digests", init.digest)));
        }
        for rule in &self.data {
            let shown = match &rule.path {
                None => rule.entry.clone(),
                Some(p) => format!("{} {}", rule.entry, p.join(".")),
            };
            let have = init.entry(&rule.entry).and_then(|text| match &rule.path {
                None => Some(text.to_owned()),
                Some(path) => toml_value_at(text, path),
            });
            match have {
                None => return Err(refuse(format!("init-data has no {shown}, which {what}.data requires"))),
                Some(v) if !rule.allowed.contains(&v) => {
                    return Err(refuse(format!(
                        "init-data {shown} = {:?} is not allowed by {what}.data",
                        v.chars().take(128).collect::<String>()
                    )))
                }
                Some(_) => {}
            }
        }
        Ok(())
    }
}

/// The scalar at `path` in the TOML document `text`, as text (strings unquoted).
fn toml_value_at(text: &str, path: &[String]) -> Option<String> {
    let doc: toml::Table = text.parse().ok()?;
    let (last, parents) = path.split_last()?;
    let mut table = &doc;
    for k in parents {
        table = table.get(k)?.as_table()?;
    }
    match table.get(last)? {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Table(_) | toml::Value::Array(_) => None,
        other => Some(other.to_string()),
    }
}

fn one_or_many(v: OneOrMany) -> Vec<String> {
    match v {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    }
}

fn initdata_rules(
    field: &str,
    digests: Vec<String>,
    data: BTreeMap<String, DataSpec>,
) -> Result<InitdataRules, PolicyError> {
    let invalid = |reason: String| PolicyError::Invalid { field: field.to_owned(), reason };
    let digests = digests
        .iter()
        .map(|d| {
            let v = d.trim().to_ascii_lowercase();
            match hex::decode(&v) {
                Ok(b) if [32, 48, 64].contains(&b.len()) => Ok(v),
                _ => Err(invalid(format!("digest {d:?} is not 32, 48 or 64 bytes of hex (sha256/384/512)"))),
            }
        })
        .collect::<Result<Vec<_>, _>>()?;
    let mut rules = Vec::new();
    let nonempty = |entry: &str, allowed: Vec<String>| {
        if allowed.is_empty() {
            Err(invalid(format!("data {entry:?} allows no value")))
        } else {
            Ok(allowed)
        }
    };
    for (entry, spec) in data {
        if entry.is_empty() {
            return Err(invalid("an empty [data] entry name".into()));
        }
        match spec {
            DataSpec::Text(v) => {
                rules.push(DataRule { allowed: nonempty(&entry, one_or_many(v))?, entry, path: None })
            }
            DataSpec::Paths(paths) => {
                if paths.is_empty() {
                    return Err(invalid(format!("data {entry:?} names no path")));
                }
                for (path, v) in paths {
                    let keys: Vec<String> = path.split('.').map(str::to_owned).collect();
                    if keys.iter().any(String::is_empty) {
                        return Err(invalid(format!("data {entry:?}: path {path:?} has an empty key")));
                    }
                    rules.push(DataRule {
                        allowed: nonempty(&format!("{entry} {path}"), one_or_many(v))?,
                        entry: entry.clone(),
                        path: Some(keys),
                    });
                }
            }
        }
    }
    Ok(InitdataRules { digests, data: rules })
}

impl InitdataPolicy {
    fn from_spec(spec: InitdataSpec) -> Result<Self, PolicyError> {
        let rules = initdata_rules("initdata", spec.digests, spec.data)?;
        let mut resources = Vec::new();
        for (pattern, r) in spec.resources {
            validate_glob(&pattern)?;
            resources.push((
                pattern.clone(),
                initdata_rules(&format!("initdata.resources.{pattern}"), r.digests, r.data)?,
            ));
        }
        Ok(Self { required: spec.required, rules, resources })
    }

    /// Whether a guest without init-data is refused.
    pub fn requires_initdata(&self) -> bool {
        self.required || !self.rules.is_empty()
    }

    /// The attest-time check (and the first half of the resource-time one).
    pub fn check(&self, init: Option<&InitdataClaims>) -> Result<(), Denial> {
        match init {
            None if self.requires_initdata() => Err(Denial::new(
                Reason::InitdataMissing,
                "the guest sent no init-data and the policy requires it (initdata)",
            )),
            None => Ok(()),
            Some(i) => self.rules.check(i, "initdata"),
        }
    }

    /// The rules of `resources` patterns that match `path`.
    pub fn check_resource(&self, path: &str, init: Option<&InitdataClaims>) -> Result<(), Denial> {
        for (pattern, rules) in self.resources.iter().filter(|(p, _)| pattern_matches(p, path)) {
            let what = format!("initdata.resources.{pattern}");
            match init {
                None => {
                    return Err(Denial::new(
                        Reason::InitdataMissing,
                        format!("the guest sent no init-data and {what} requires it"),
                    ))
                }
                Some(i) => rules.check(i, &what)?,
            }
        }
        Ok(())
    }
}

/// The broker's attestation-and-release policy (not the guest's image policy). A
/// parsed, validated policy: only `BrokerPolicy::parse` builds one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerPolicy {
    pub snp: Option<SnpRequirement>,
    pub tdx: Option<TdxRequirement>,
    pub cca: Option<CcaRequirement>,
    pub az_snp: Option<AzSnpRequirement>,
    pub az_tdx: Option<AzTdxRequirement>,
    pub sample_allowed: bool,
    pub released: Vec<String>,
    /// `initdata`: what is asked of the guest's init-data (default: nothing).
    pub initdata: InitdataPolicy,
}

/// The former name, kept so callers move over one at a time.
pub type Policy = BrokerPolicy;

impl Default for BrokerPolicy {
    /// Deny everything: used when no policy file is configured.
    fn default() -> Self {
        Self {
            snp: None,
            tdx: None,
            cca: None,
            az_snp: None,
            az_tdx: None,
            sample_allowed: false,
            released: Vec::new(),
            initdata: InitdataPolicy::default(),
        }
    }
}

fn hex_field(field: &str, value: &str, len: usize) -> Result<String, PolicyError> {
    let v = value.trim().to_ascii_lowercase();
    let bytes = hex::decode(&v)
        .map_err(|e| PolicyError::Invalid { field: field.into(), reason: format!("not hex: {e}") })?;
    if bytes.len() != len {
        return Err(PolicyError::Invalid {
            field: field.into(),
            reason: format!("expected {len} bytes of hex, got {}", bytes.len()),
        });
    }
    Ok(v)
}

fn validate_glob(pattern: &str) -> Result<(), PolicyError> {
    let bad = |reason: &str| PolicyError::Invalid {
        field: "released_resources".into(),
        reason: format!("{pattern:?}: {reason}"),
    };
    if pattern.is_empty() {
        return Err(bad("empty pattern"));
    }
    if pattern.starts_with('/') {
        return Err(bad("must be relative like \"default/*\""));
    }
    if pattern.split('/').any(|s| s == ".." || s.is_empty()) {
        return Err(bad("empty or \"..\" segment"));
    }
    Ok(())
}

impl SnpRequirement {
    /// `section` names the policy section in errors (`sev_snp`, `az_snp_vtpm.sev_snp`).
    fn from_spec(section: &str, s: SnpSpec) -> Result<Self, PolicyError> {
        let list = match s.measurement {
            None => Vec::new(),
            Some(OneOrMany::One(m)) => vec![m],
            Some(OneOrMany::Many(v)) => v,
        };
        let measurements = list
            .iter()
            .map(|m| hex_field(&format!("{section}.measurement"), m, 48))
            .collect::<Result<Vec<_>, _>>()?;
        let t = s.tcb_min.unwrap_or_default();
        Ok(SnpRequirement {
            measurements,
            tcb_min: crate::claims::SnpTcb {
                bootloader: t.bootloader,
                tee: t.tee,
                snp: t.snp,
                microcode: t.microcode,
                fmc: None,
            },
            family_id: s.family_id.map(|v| hex_field(&format!("{section}.family_id"), &v, 16)).transpose()?,
            image_id: s.image_id.map(|v| hex_field(&format!("{section}.image_id"), &v, 16)).transpose()?,
            max_vmpl: s.max_vmpl,
            allow_debug: s.allow_debug,
        })
    }
}

impl TdxRequirement {
    /// `section` names the policy section in errors (`tdx`, `az_tdx_vtpm.tdx`).
    fn from_spec(section: &str, t: TdxSpec) -> Result<Self, PolicyError> {
        Ok(TdxRequirement {
            mr_td: t
                .mr_td
                .iter()
                .map(|m| hex_field(&format!("{section}.mr_td"), m, 48))
                .collect::<Result<Vec<_>, _>>()?,
            tcb_svn_min: t
                .tcb_svn_min
                .map(|v| hex_field(&format!("{section}.tcb_svn_min"), &v, 16))
                .transpose()?
                .map(|h| hex::decode(h).unwrap_or_default()),
            allow_debug: t.allow_debug,
            tcb_status: tdx_statuses(t.tcb_status)?,
            deny_advisories: t.deny_advisories.iter().map(|a| a.trim().to_ascii_uppercase()).collect(),
        })
    }
}

impl BrokerPolicy {
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        let file: PolicyFile = serde_yaml::from_str(text)?;
        let spec = file.default_policy;
        let ra = spec.required_attestation;
        let snp = ra.sev_snp.map(|s| SnpRequirement::from_spec("sev_snp", s)).transpose()?;
        let tdx = ra.tdx.map(|t| TdxRequirement::from_spec("tdx", t)).transpose()?;
        let az_snp = match ra.az_snp_vtpm {
            None => None,
            Some(a) => Some(AzSnpRequirement {
                snp: match a.sev_snp {
                    Some(s) => SnpRequirement::from_spec("az_snp_vtpm.sev_snp", s)?,
                    None => SnpRequirement::default(),
                },
                pcrs: pcr_requirement("az_snp_vtpm", a.pcrs)?,
            }),
        };
        let az_tdx = match ra.az_tdx_vtpm {
            None => None,
            Some(a) => Some(AzTdxRequirement {
                tdx: match a.tdx {
                    Some(t) => TdxRequirement::from_spec("az_tdx_vtpm.tdx", t)?,
                    None => TdxRequirement::default(),
                },
                pcrs: pcr_requirement("az_tdx_vtpm", a.pcrs)?,
            }),
        };
        for p in &spec.released_resources {
            validate_glob(p)?;
        }
        Ok(BrokerPolicy {
            snp,
            tdx,
            cca: ra.cca.map(CcaRequirement::from_spec).transpose()?,
            az_snp,
            az_tdx,
            sample_allowed: ra.sample.map(|s| s.allow).unwrap_or(false),
            released: spec.released_resources,
            initdata: spec.initdata.map(InitdataPolicy::from_spec).transpose()?.unwrap_or_default(),
        })
    }

    pub fn load(path: &Path) -> Result<Self, PolicyError> {
        let text = std::fs::read_to_string(path)
            .map_err(|source| PolicyError::Read { path: path.to_owned(), source })?;
        Self::parse(&text)
    }

    /// Checks verified claims against `required_attestation`.
    pub fn check_claims(&self, claims: &Claims) -> Result<MeasurementMatch, Denial> {
        match claims {
            Claims::Sample(_) => {
                if self.sample_allowed {
                    Ok(MeasurementMatch::Unchecked)
                } else {
                    Err(Denial::new(
                        Reason::SampleNotAllowed,
                        "sample evidence is not allowed by the policy (required_attestation.sample.allow)",
                    ))
                }
            }
            Claims::Snp(c) => match &self.snp {
                None => Err(Denial::new(
                    Reason::TeeNotAllowed,
                    "the policy has no required_attestation.sev_snp section",
                )),
                Some(req) => check_snp(req, c),
            },
            Claims::Tdx(c) => match &self.tdx {
                None => Err(Denial::new(
                    Reason::TeeNotAllowed,
                    "the policy has no required_attestation.tdx section",
                )),
                Some(req) => check_tdx(req, c),
            },
            Claims::Cca(c) => match &self.cca {
                None => Err(Denial::new(
                    Reason::TeeNotAllowed,
                    "the policy has no required_attestation.cca section",
                )),
                Some(req) => check_cca(req, c),
            },
            Claims::AzSnpVtpm(c) => match &self.az_snp {
                None => Err(Denial::new(
                    Reason::TeeNotAllowed,
                    "the policy has no required_attestation.az_snp_vtpm section",
                )),
                Some(req) => {
                    let hw = check_snp(&req.snp, &c.sev_snp)?;
                    check_pcrs("az_snp_vtpm", &req.pcrs, &c.vtpm, hw)
                }
            },
            Claims::AzTdxVtpm(c) => match &self.az_tdx {
                None => Err(Denial::new(
                    Reason::TeeNotAllowed,
                    "the policy has no required_attestation.az_tdx_vtpm section",
                )),
                Some(req) => {
                    let hw = check_tdx(&req.tdx, &c.tdx)?;
                    check_pcrs("az_tdx_vtpm", &req.pcrs, &c.vtpm, hw)
                }
            },
        }
    }

    /// Whether `path` ("repo/type/tag") is listed in `released_resources`.
    pub fn is_released(&self, path: &str) -> bool {
        self.released.iter().any(|p| pattern_matches(p, path))
    }
}

/// Whether a resource pattern (`released_resources`, `admin_readable`) matches `path`:
/// a glob with `*` / `?`, or else a resource or a prefix of whole segments.
pub(crate) fn pattern_matches(p: &str, path: &str) -> bool {
    if p.contains('*') || p.contains('?') {
        glob_match(p.as_bytes(), path.as_bytes())
    } else {
        path == p || path.strip_prefix(p).is_some_and(|rest| rest.starts_with('/'))
    }
}

/// Each pinned PCR must have been quoted and hold one of its allowed values.
fn check_pcrs(
    section: &str,
    req: &PcrRequirement,
    c: &crate::verifier::azure::VtpmClaims,
    hw: MeasurementMatch,
) -> Result<MeasurementMatch, Denial> {
    for (i, allowed) in req {
        let have = c.pcrs.get(&i.to_string()).map(String::as_str).unwrap_or("");
        if !allowed.iter().any(|a| a == have) {
            return Err(Denial::new(
                Reason::MeasurementMismatch,
                format!(
                    "PCR {i} {} is not in {section}.pcrs.{i}",
                    if have.is_empty() { "(not quoted)" } else { have }
                ),
            ));
        }
    }
    Ok(if req.is_empty() { hw } else { MeasurementMatch::Matched })
}

fn check_snp(req: &SnpRequirement, c: &SnpClaims) -> Result<MeasurementMatch, Denial> {
    if c.policy_debug_allowed && !req.allow_debug {
        return Err(Denial::new(
            Reason::DebugNotAllowed,
            "the guest policy allows debugging (policy bit 19) and the broker policy does not",
        ));
    }
    if c.vmpl > req.max_vmpl {
        return Err(Denial::new(
            Reason::VmplNotAllowed,
            format!("report VMPL {} is above the allowed {}", c.vmpl, req.max_vmpl),
        ));
    }
    let t = c.reported_tcb;
    let m = req.tcb_min;
    for (name, have, min) in [
        ("bootloader", t.bootloader, m.bootloader),
        ("tee", t.tee, m.tee),
        ("snp", t.snp, m.snp),
        ("microcode", t.microcode, m.microcode),
    ] {
        if have < min {
            return Err(Denial::new(
                Reason::TcbTooLow,
                format!("reported_tcb.{name} = {have:#04x} is below tcb_min {min:#04x}"),
            ));
        }
    }
    if let Some(f) = &req.family_id {
        if !c.family_id.eq_ignore_ascii_case(f) {
            return Err(Denial::new(
                Reason::FamilyIdMismatch,
                format!("family_id {} is not {f}", c.family_id),
            ));
        }
    }
    if let Some(i) = &req.image_id {
        if !c.image_id.eq_ignore_ascii_case(i) {
            return Err(Denial::new(Reason::ImageIdMismatch, format!("image_id {} is not {i}", c.image_id)));
        }
    }
    if req.measurements.is_empty() {
        return Ok(MeasurementMatch::Unchecked);
    }
    if req.measurements.iter().any(|m| m.eq_ignore_ascii_case(&c.measurement)) {
        Ok(MeasurementMatch::Matched)
    } else {
        Err(Denial::new(
            Reason::MeasurementMismatch,
            format!("measurement {} is not in the allowed list", c.measurement),
        ))
    }
}

fn check_tdx(req: &TdxRequirement, c: &TdxClaims) -> Result<MeasurementMatch, Denial> {
    if c.debug && !req.allow_debug {
        return Err(Denial::new(
            Reason::DebugNotAllowed,
            "TD attributes have DEBUG set and the policy does not allow it",
        ));
    }
    if !req.tcb_status.iter().any(|s| s == &c.tcb_status) {
        return Err(Denial::new(
            Reason::TcbStatusNotAllowed,
            format!("TCB status {} is not in tdx.tcb_status [{}]", c.tcb_status, req.tcb_status.join(", ")),
        ));
    }
    if let Some(a) =
        c.advisory_ids.iter().find(|a| req.deny_advisories.iter().any(|d| d.eq_ignore_ascii_case(a)))
    {
        return Err(Denial::new(
            Reason::AdvisoryDenied,
            format!("the TCB carries advisory {a}, denied by tdx.deny_advisories"),
        ));
    }
    if let Some(min) = &req.tcb_svn_min {
        let have = hex::decode(&c.tee_tcb_svn).unwrap_or_default();
        if have.len() != min.len() {
            return Err(Denial::new(Reason::MalformedEvidence, "TEE_TCB_SVN has the wrong length"));
        }
        // Component-wise, as the SVN is 16 independent security version numbers.
        if let Some(i) = have.iter().zip(min).position(|(h, m)| h < m) {
            return Err(Denial::new(
                Reason::TcbTooLow,
                format!("TEE_TCB_SVN[{i}] = {:#04x} is below tcb_svn_min {:#04x}", have[i], min[i]),
            ));
        }
    }
    if req.mr_td.is_empty() {
        return Ok(MeasurementMatch::Unchecked);
    }
    if req.mr_td.iter().any(|m| m.eq_ignore_ascii_case(&c.mr_td)) {
        Ok(MeasurementMatch::Matched)
    } else {
        Err(Denial::new(Reason::MeasurementMismatch, format!("MRTD {} is not in the allowed list", c.mr_td)))
    }
}

fn check_cca(req: &CcaRequirement, c: &CcaClaims) -> Result<MeasurementMatch, Denial> {
    if !req.lifecycle.iter().any(|l| l == &c.lifecycle_state) {
        return Err(Denial::new(
            Reason::LifecycleNotAllowed,
            format!(
                "platform lifecycle {:#06x} ({}) is not in cca.lifecycle [{}]",
                c.lifecycle,
                c.lifecycle_state,
                req.lifecycle.join(", ")
            ),
        ));
    }
    if !req.implementation_id.is_empty()
        && !req.implementation_id.iter().any(|i| i.eq_ignore_ascii_case(&c.implementation_id))
    {
        return Err(Denial::new(
            Reason::MeasurementMismatch,
            format!("platform implementation id {} is not in cca.implementation_id", c.implementation_id),
        ));
    }
    if !req.rim.is_empty() && !req.rim.iter().any(|m| m.eq_ignore_ascii_case(&c.rim)) {
        return Err(Denial::new(
            Reason::MeasurementMismatch,
            format!("realm RIM {} is not in cca.rim", c.rim),
        ));
    }
    if !req.rem.is_empty()
        && !req.rem.iter().any(|set| set.iter().zip(&c.rem).all(|(a, b)| a.eq_ignore_ascii_case(b)))
    {
        return Err(Denial::new(
            Reason::MeasurementMismatch,
            format!("realm REMs [{}] are not a set in cca.rem", c.rem.join(", ")),
        ));
    }
    if req.rim.is_empty() && req.rem.is_empty() {
        Ok(MeasurementMatch::Unchecked)
    } else {
        Ok(MeasurementMatch::Matched)
    }
}

/// `*` matches any run of characters (including `/`, so "default/*" covers every
/// resource under `default`), `?` exactly one. Iterative, so no input can blow the stack.
fn glob_match(pat: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0usize, 0usize);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pat.len() && (pat[p] == b'?' || pat[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pat.len() && pat[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while p < pat.len() && pat[p] == b'*' {
        p += 1;
    }
    p == pat.len()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn interface_policy_releases_default_to_sample() {
        let p = Policy::parse(
            "default_policy: {required_attestation: {sample: {allow: true}}, released_resources: [\"default/*\"]}",
        )
        .unwrap();
        assert!(p.sample_allowed);
        assert!(p.is_released("default/image-kek/1"));
        assert!(!p.is_released("other/image-kek/1"));
        let c = Claims::Sample(crate::claims::SampleClaims { svn: "1".into(), init_data: None });
        assert!(p.check_claims(&c).is_ok());
        let p = Policy::parse(
            "default_policy: {required_attestation: {sample: {allow: false}}, released_resources: [\"default/*\"]}",
        )
        .unwrap();
        assert_eq!(p.check_claims(&c).unwrap_err().reason, Reason::SampleNotAllowed);
    }

    #[test]
    fn issue_shape_parses_with_hex_tcb() {
        let m = "ab".repeat(48);
        let text = format!(
            r#"
default_policy:
  required_attestation:
    sev_snp:
      measurement: "{m}"
      tcb_min: {{bootloader: 0x06, tee: 0x02, snp: 0x14, microcode: 0x73}}
      family_id: "{f}"
      image_id: "{f}"
    tdx: {{mr_td: ["{m}"], tcb_svn_min: "{s}"}}
    sample: {{allow: false}}
  released_resources:
    - "default/payments-tls-cert"
    - "default/image-kek/*"
"#,
            f = "00".repeat(16),
            s = "01".repeat(16)
        );
        let p = Policy::parse(&text).unwrap();
        let snp = p.snp.unwrap();
        assert_eq!(snp.tcb_min.snp, 0x14);
        assert_eq!(snp.tcb_min.microcode, 0x73);
        assert_eq!(snp.measurements, vec![m.clone()]);
        assert!(p.released.iter().any(|r| r == "default/image-kek/*"));
    }

    #[test]
    fn invalid_policies_are_refused() {
        assert!(
            Policy::parse("default_policy: {required_attestation: {sev_snp: {measurement: zz}}}").is_err()
        );
        assert!(Policy::parse("default_policy: {released_resources: [\"../x\"]}").is_err());
        assert!(Policy::parse("default_policy: {bogus: 1}").is_err());
        assert!(Policy::parse("not: yaml: [").is_err());
    }

    fn init(data: &[(&str, &str)]) -> InitdataClaims {
        InitdataClaims {
            algorithm: "sha384".into(),
            digest: "ab".repeat(48),
            data: data.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    const CDH: &str =
        "socket = \"unix:///run/cdh.sock\"\n[kbc]\nname = \"cc_kbc\"\nurl = \"https://kbs.example\"\n";

    #[test]
    fn without_the_initdata_key_unbound_guests_are_accepted() {
        let p = Policy::parse("default_policy: {released_resources: [\"default/*\"]}").unwrap();
        assert_eq!(p.initdata, InitdataPolicy::default());
        p.initdata.check(None).unwrap();
        p.initdata.check(Some(&init(&[]))).unwrap();
        p.initdata.check_resource("default/k/1", None).unwrap();
    }

    #[test]
    fn policy_pins_the_kbs_url_inside_cdh_toml() {
        let p = Policy::parse(
            "default_policy:\n  initdata:\n    data:\n      \"cdh.toml\": {\"kbc.url\": [\"https://kbs.example\"]}\n      namespace: shop\n",
        )
        .unwrap();
        p.initdata.check(Some(&init(&[("cdh.toml", CDH), ("namespace", "shop")]))).unwrap();
        let other = CDH.replace("kbs.example", "evil.example");
        let d = p.initdata.check(Some(&init(&[("cdh.toml", &other), ("namespace", "shop")]))).unwrap_err();
        assert_eq!(d.reason, Reason::InitdataNotAllowed);
        assert!(d.detail.contains("cdh.toml kbc.url") && d.detail.contains("evil.example"), "{d}");
        let d = p.initdata.check(Some(&init(&[("cdh.toml", CDH), ("namespace", "dev")]))).unwrap_err();
        assert!(d.detail.contains("namespace"), "{d}");
        let d = p.initdata.check(Some(&init(&[("namespace", "shop")]))).unwrap_err();
        assert!(d.detail.contains("no cdh.toml kbc.url"), "{d}");
        // A rule implies init-data is required.
        assert_eq!(p.initdata.check(None).unwrap_err().reason, Reason::InitdataMissing);
    }

    #[test]
    fn digests_and_per_resource_rules() {
        let p = Policy::parse(&format!(
            "default_policy:\n  initdata:\n    digests: [\"{}\"]\n    resources:\n      \"default/pay/*\": {{data: {{namespace: [pay]}}}}\n",
            "AB".repeat(48)
        ))
        .unwrap();
        p.initdata.check(Some(&init(&[]))).unwrap();
        let mut other = init(&[]);
        other.digest = "cd".repeat(48);
        assert_eq!(p.initdata.check(Some(&other)).unwrap_err().reason, Reason::InitdataNotAllowed);
        p.initdata.check_resource("default/kek/1", Some(&init(&[]))).unwrap();
        let d =
            p.initdata.check_resource("default/pay/1", Some(&init(&[("namespace", "shop")]))).unwrap_err();
        assert!(d.detail.contains("initdata.resources.default/pay/*"), "{d}");
        p.initdata.check_resource("default/pay/1", Some(&init(&[("namespace", "pay")]))).unwrap();
    }

    #[test]
    fn invalid_initdata_rules_are_refused() {
        for bad in [
            "default_policy: {initdata: {digests: [zz]}}",
            "default_policy: {initdata: {digests: [abcd]}}",
            "default_policy: {initdata: {data: {x: []}}}",
            "default_policy: {initdata: {data: {x: {\"a..b\": [v]}}}}",
            "default_policy: {initdata: {bogus: 1}}",
            "default_policy: {initdata: {resources: {\"../x\": {}}}}",
        ] {
            assert!(Policy::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn globs() {
        assert!(glob_match(b"default/image-kek/*", b"default/image-kek/abc"));
        assert!(!glob_match(b"default/image-kek/*", b"default/other/abc"));
        assert!(glob_match(b"*/key/?", b"x/key/1"));
        assert!(!glob_match(b"*/key/?", b"x/key/12"));
        let p =
            Policy::parse("default_policy: {released_resources: [\"default/payments-tls-cert\"]}").unwrap();
        assert!(p.is_released("default/payments-tls-cert/v1"));
        assert!(!p.is_released("default/payments-tls-certx/v1"));
    }

    #[test]
    fn azure_sections_take_the_hardware_keys_and_pcr_pins() {
        let p = Policy::parse(&format!(
            "default_policy:\n  required_attestation:\n    az_snp_vtpm: {{sev_snp: {{measurement: [\"{}\"]}}, pcrs: {{\"11\": [\"{}\"], \"4\": \"{}\"}}}}\n    az_tdx_vtpm: {{pcrs: {{}}}}\n",
            "ab".repeat(48),
            "CD".repeat(32),
            "ef".repeat(32)
        ))
        .unwrap();
        let az = p.az_snp.unwrap();
        assert_eq!(az.snp.measurements, vec!["ab".repeat(48)]);
        assert_eq!(az.pcrs[&11], vec!["cd".repeat(32)], "lower-cased");
        assert_eq!(az.pcrs[&4], vec!["ef".repeat(32)]);
        assert_eq!(az.snp.max_vmpl, 0);
        assert_eq!(p.az_tdx.unwrap().tdx, TdxRequirement::default());
        for (bad, field) in [
            ("az_snp_vtpm: {pcrs: {\"24\": \"00\"}}", "az_snp_vtpm.pcrs.24"),
            ("az_snp_vtpm: {pcrs: {\"11\": \"abcd\"}}", "az_snp_vtpm.pcrs.11"),
            ("az_snp_vtpm: {sev_snp: {measurement: \"ab\"}}", "az_snp_vtpm.sev_snp.measurement"),
            ("az_tdx_vtpm: {tdx: {mr_td: [\"x\"]}}", "az_tdx_vtpm.tdx.mr_td"),
        ] {
            let e =
                Policy::parse(&format!("default_policy:\n  required_attestation:\n    {bad}\n")).unwrap_err();
            assert!(e.to_string().contains(field), "{bad}: {e}");
        }
        assert!(Policy::parse("default_policy:\n  required_attestation:\n    az_tdx_vtpm: {sev_snp: {}}\n")
            .is_err());
    }
}
