//! Arm CCA attestation tokens: the CBOR collection (tag 399) of a platform token and a
//! realm token, each a COSE_Sign1.
//!
//! Trust runs from the platform key (CPAK), configured per platform instance id, to the
//! realm: the CPAK signs the platform token, whose challenge is the hash of the realm
//! attestation key (RAK) the realm token carries; the RAK signs the realm token, whose
//! challenge is the 64-byte value the guest asked for (the runtime-data hash, zero-padded,
//! checked by the caller as SNP/TDX report_data is). Both realm profiles in use are read:
//! the legacy one (no profile claim, `http://arm.com/CCA-SSD/1.0.0` on the platform side)
//! with the RAK as a raw SEC1 point, and RMM 1.0's (`tag:arm.com,2023:realm#1.0.0`) with
//! the RAK as an encoded COSE_Key. The binding hashes the RAK claim's bytes as they are
//! in the token, in both profiles, with the realm token's `public-key-hash-algo-id`.
//!
//! The token is untrusted input: its size is capped, CBOR nesting is bounded, every claim
//! is type- and length-checked, and nothing in it is believed before its signature
//! verified (the instance id only selects which key to try).

use std::fmt;

use aws_lc_rs::signature::{
    ParsedPublicKey, VerificationAlgorithm, ECDSA_P256_SHA256_FIXED, ECDSA_P384_SHA384_FIXED,
    ECDSA_P521_SHA512_FIXED,
};
use base64::Engine;
use ciborium::Value as Cbor;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::Digest;

use crate::policy::{Denial, Reason};

/// The largest token accepted. Real tokens are 1–3 KiB (13 software components); the
/// cap leaves room for long component lists without letting a peer make us decode more.
pub const MAX_TOKEN_LEN: usize = 64 * 1024;
/// The largest trust-anchor store read.
pub const MAX_ANCHORS_LEN: usize = 4 * 1024 * 1024;
/// CBOR nesting the token needs is four levels; anything deeper is refused by the decoder.
const MAX_DEPTH: usize = 16;

const COLLECTION_TAG: u64 = 399;
const COSE_SIGN1_TAG: u64 = 18;
const PLATFORM_TOKEN: i128 = 44234;
const REALM_TOKEN: i128 = 44241;

// Claim keys (EAT, PSA and the CCA realm claims of the RMM specification).
const NONCE: i128 = 10;
const PROFILE: i128 = 265;
const INSTANCE_ID: i128 = 256;
const P_LIFECYCLE: i128 = 2395;
const P_IMPL_ID: i128 = 2396;
const P_SW_COMPONENTS: i128 = 2399;
const P_VERIFICATION_SERVICE: i128 = 2400;
const P_CONFIG: i128 = 2401;
const P_HASH_ALGO: i128 = 2402;
const R_PERSONALIZATION: i128 = 44235;
const R_HASH_ALGO: i128 = 44236;
const R_RAK: i128 = 44237;
const R_RIM: i128 = 44238;
const R_REM: i128 = 44239;
const R_RAK_HASH_ALGO: i128 = 44240;
// Software component map keys.
const SW_TYPE: i128 = 1;
const SW_MEASUREMENT: i128 = 2;
const SW_VERSION: i128 = 4;
const SW_SIGNER_ID: i128 = 5;
const SW_HASH_ALGO: i128 = 6;

/// The platform profiles whose claim layout this verifier reads.
pub const PLATFORM_PROFILES: &[&str] =
    &["http://arm.com/CCA-SSD/1.0.0", "tag:arm.com,2023:cca_platform#1.0.0"];
/// RMM 1.0's realm profile; a realm token without a profile claim is the legacy one.
pub const REALM_PROFILE_RMM1: &str = "tag:arm.com,2023:realm#1.0.0";

/// Which signed part of the collection an error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Part {
    Platform,
    Realm,
}

impl fmt::Display for Part {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Part::Platform => "platform token",
            Part::Realm => "realm token",
        })
    }
}

/// Why a token or a trust-anchor store was refused.
#[derive(Debug, thiserror::Error)]
pub enum CcaError {
    #[error("the CCA token is {0} bytes, more than the {MAX_TOKEN_LEN} accepted")]
    TooLarge(usize),
    #[error("the CCA token is not well-formed CBOR")]
    Cbor(#[source] CborError),
    #[error("the CCA token is not a CBOR collection (tag 399) of a platform and a realm token: {0}")]
    Collection(String),
    #[error("the {part} is not a well-formed COSE_Sign1: {why}")]
    Cose { part: Part, why: String },
    #[error("the {part}'s claim {claim} {why}")]
    Claim { part: Part, claim: &'static str, why: String },
    #[error("the {part} is signed with COSE algorithm {alg}; only ES256 (-7), ES384 (-35) and ES512 (-36) are accepted")]
    Algorithm { part: Part, alg: i128 },
    #[error("the {part} is signed with {alg} but its key is on {curve}")]
    CurveMismatch { part: Part, alg: &'static str, curve: &'static str },
    #[error("the {part}'s signature does not verify")]
    Signature { part: Part },
    #[error(
        "no trust anchor for the platform's instance id {instance_id} (implementation id \
         {implementation_id}); add its CPAK to the trust-anchor store (--cca-trust-anchors)"
    )]
    UnknownPlatform { instance_id: String, implementation_id: String },
    #[error("the platform challenge is not the {alg} hash of the realm token's public key (RAK): the realm is not bound to this platform token")]
    RakBinding { alg: &'static str },
    #[error("the trust-anchor store {0}")]
    Anchors(String),
}

/// A CBOR decoder error, kept as text (ciborium's error is generic over the reader).
#[derive(Debug)]
pub struct CborError(String);

impl fmt::Display for CborError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CborError {}

impl CcaError {
    /// The metric reason of this refusal.
    pub fn reason(&self) -> Reason {
        match self {
            CcaError::Signature { .. } | CcaError::CurveMismatch { .. } => Reason::InvalidSignature,
            CcaError::UnknownPlatform { .. } => Reason::UnknownPlatformKey,
            CcaError::RakBinding { .. } => Reason::RakBindingMismatch,
            _ => Reason::MalformedEvidence,
        }
    }
}

impl From<CcaError> for Denial {
    fn from(e: CcaError) -> Self {
        Denial::new(e.reason(), report::line(&e))
    }
}

// ---- keys ----------------------------------------------------------------------------

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Curve {
    P256,
    P384,
    P521,
}

impl Curve {
    fn coord_len(self) -> usize {
        match self {
            Curve::P256 => 32,
            Curve::P384 => 48,
            Curve::P521 => 66,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Curve::P256 => "P-256",
            Curve::P384 => "P-384",
            Curve::P521 => "P-521",
        }
    }
    fn from_point_len(n: usize) -> Option<Self> {
        [Curve::P256, Curve::P384, Curve::P521].into_iter().find(|c| 1 + 2 * c.coord_len() == n)
    }
    fn alg(self) -> &'static dyn VerificationAlgorithm {
        match self {
            Curve::P256 => &ECDSA_P256_SHA256_FIXED,
            Curve::P384 => &ECDSA_P384_SHA384_FIXED,
            Curve::P521 => &ECDSA_P521_SHA512_FIXED,
        }
    }
}

/// A checked EC public key (the point is on its curve).
#[derive(Clone)]
pub struct EcKey {
    curve: Curve,
    key: ParsedPublicKey,
}

impl fmt::Debug for EcKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EcKey({})", self.curve.name())
    }
}

impl EcKey {
    /// From an uncompressed SEC1 point (`04 ‖ x ‖ y`).
    fn from_point(point: &[u8]) -> Result<Self, String> {
        let curve =
            Curve::from_point_len(point.len()).filter(|_| point.first() == Some(&4)).ok_or_else(|| {
                format!("a {}-byte key is not an uncompressed P-256/384/521 point", point.len())
            })?;
        let key = ParsedPublicKey::new(curve.alg(), point)
            .map_err(|_| format!("the {} point is not on the curve", curve.name()))?;
        Ok(Self { curve, key })
    }

    fn from_coords(curve: Curve, x: &[u8], y: &[u8]) -> Result<Self, String> {
        let n = curve.coord_len();
        if x.len() != n || y.len() != n {
            return Err(format!("{} coordinates must be {n} bytes each", curve.name()));
        }
        let mut p = Vec::with_capacity(1 + 2 * n);
        p.push(4);
        p.extend_from_slice(x);
        p.extend_from_slice(y);
        Self::from_point(&p)
    }

    /// From a JWK object (`kty` EC, `crv`, `x`, `y`; base64url).
    pub fn from_jwk(v: &Value) -> Result<Self, String> {
        let s = |k: &str| v.get(k).and_then(Value::as_str).ok_or_else(|| format!("the JWK has no {k:?}"));
        if s("kty")? != "EC" {
            return Err("the JWK is not an EC key (kty)".into());
        }
        let curve = match s("crv")? {
            "P-256" => Curve::P256,
            "P-384" => Curve::P384,
            "P-521" => Curve::P521,
            other => return Err(format!("the JWK's curve {:?} is not P-256, P-384 or P-521", trunc(other))),
        };
        let b = |k: &str| {
            let t = s(k)?;
            base64::engine::general_purpose::URL_SAFE_NO_PAD
                .decode(t.trim_end_matches('='))
                .map_err(|_| format!("the JWK's {k:?} is not base64url"))
        };
        Self::from_coords(curve, &b("x")?, &b("y")?)
    }

    fn verify(&self, part: Part, alg: Curve, msg: &[u8], sig: &[u8]) -> Result<(), CcaError> {
        if alg != self.curve {
            return Err(CcaError::CurveMismatch { part, alg: es_name(alg), curve: self.curve.name() });
        }
        self.key.verify_sig(msg, sig).map_err(|_| CcaError::Signature { part })
    }
}

fn es_name(c: Curve) -> &'static str {
    match c {
        Curve::P256 => "ES256",
        Curve::P384 => "ES384",
        Curve::P521 => "ES512",
    }
}

fn trunc(s: &str) -> String {
    s.chars().take(64).collect()
}

// ---- trust anchors -------------------------------------------------------------------

/// One platform key: for one instance id, or (`instance_id` `None`, from a single JWK)
/// for any platform.
#[derive(Clone, Debug)]
pub struct TrustAnchor {
    pub instance_id: Option<Vec<u8>>,
    pub implementation_id: Option<Vec<u8>>,
    pub key: EcKey,
}

/// The CPAKs the broker trusts.
#[derive(Clone, Debug, Default)]
pub struct CcaTrust {
    pub anchors: Vec<TrustAnchor>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AnchorEntry {
    #[serde(rename = "implementation-id")]
    implementation_id: Option<String>,
    #[serde(rename = "instance-id")]
    instance_id: String,
    pkey: Value,
}

/// Hex or base64 (veraison's stores use hex; some tools write base64).
fn id_bytes(s: &str) -> Option<Vec<u8>> {
    hex::decode(s.trim()).ok().or_else(|| super::json_bytes(&Value::String(s.to_owned())))
}

impl CcaTrust {
    /// Reads veraison ccatoken's trust-anchor store (a JSON list of
    /// `{"implementation-id", "instance-id", "pkey": JWK}`) or a single JWK, which then
    /// stands for every platform.
    pub fn parse(bytes: &[u8]) -> Result<Self, CcaError> {
        let bad = |why: String| CcaError::Anchors(why);
        if bytes.len() > MAX_ANCHORS_LEN {
            return Err(bad(format!("is larger than {MAX_ANCHORS_LEN} bytes")));
        }
        let v: Value = serde_json::from_slice(bytes).map_err(|e| bad(format!("is not JSON ({e})")))?;
        if v.is_object() {
            let key = EcKey::from_jwk(&v).map_err(|e| bad(format!("is a JWK that cannot be used: {e}")))?;
            return Ok(Self {
                anchors: vec![TrustAnchor { instance_id: None, implementation_id: None, key }],
            });
        }
        let entries: Vec<AnchorEntry> = serde_json::from_value(v).map_err(|e| {
            bad(format!("is neither a JWK nor a list of {{implementation-id, instance-id, pkey}} ({e})"))
        })?;
        if entries.is_empty() {
            return Err(bad("lists no trust anchor".into()));
        }
        let anchors = entries
            .into_iter()
            .enumerate()
            .map(|(i, e)| {
                let instance_id = id_bytes(&e.instance_id)
                    .ok_or_else(|| bad(format!("entry {i}: instance-id is not hex or base64")))?;
                let implementation_id = e
                    .implementation_id
                    .map(|s| {
                        id_bytes(&s)
                            .ok_or_else(|| bad(format!("entry {i}: implementation-id is not hex or base64")))
                    })
                    .transpose()?;
                let key = EcKey::from_jwk(&e.pkey).map_err(|x| bad(format!("entry {i}: pkey: {x}")))?;
                Ok(TrustAnchor { instance_id: Some(instance_id), implementation_id, key })
            })
            .collect::<Result<_, CcaError>>()?;
        Ok(Self { anchors })
    }

    fn find(&self, instance_id: &[u8], implementation_id: &[u8]) -> Option<&EcKey> {
        self.anchors
            .iter()
            .find(|a| {
                a.instance_id.as_deref() == Some(instance_id)
                    && a.implementation_id.as_deref().is_none_or(|i| i == implementation_id)
            })
            .or_else(|| self.anchors.iter().find(|a| a.instance_id.is_none()))
            .map(|a| &a.key)
    }
}

// ---- claims --------------------------------------------------------------------------

/// One measured platform software component. Byte fields are lowercase hex.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CcaSwComponent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub component_type: Option<String>,
    pub measurement: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signer_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hash_algo: Option<String>,
}

/// The verified claims of a CCA token. Byte fields are lowercase hex.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CcaClaims {
    pub platform_profile: String,
    /// The realm token's profile claim; empty for the legacy profile, which has none.
    #[serde(default)]
    pub realm_profile: String,
    pub implementation_id: String,
    pub instance_id: String,
    pub platform_config: String,
    /// The PSA lifecycle value (e.g. 0x3000–0x30ff: secured).
    pub lifecycle: u16,
    /// Its state name: `secured`, `non_psa_rot_debug`, `recoverable_psa_rot_debug`, ...
    pub lifecycle_state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform_hash_algo: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verification_service: Option<String>,
    pub platform_challenge: String,
    pub sw_components: Vec<CcaSwComponent>,
    /// Realm initial measurement.
    pub rim: String,
    /// Realm extensible measurements.
    pub rem: [String; 4],
    /// The hash algorithm of RIM and REMs.
    pub hash_algo: String,
    /// 64 bytes the host chose at realm creation: the init-data digest, zero-padded.
    pub personalization_value: String,
    /// The realm challenge (the runtime-data hash, zero-padded to 64 bytes).
    pub challenge: String,
    pub rak_hash_algo: String,
}

/// The PSA lifecycle state name of a lifecycle value (its upper byte).
pub fn lifecycle_state(v: u16) -> &'static str {
    match v >> 8 {
        0x00 => "unknown",
        0x10 => "assembly_and_test",
        0x20 => "psa_rot_provisioning",
        0x30 => "secured",
        0x40 => "non_psa_rot_debug",
        0x50 => "recoverable_psa_rot_debug",
        0x60 => "decommissioned",
        _ => "invalid",
    }
}

/// The lifecycle state names a policy may list.
pub const LIFECYCLE_STATES: &[&str] = &[
    "unknown",
    "assembly_and_test",
    "psa_rot_provisioning",
    "secured",
    "non_psa_rot_debug",
    "recoverable_psa_rot_debug",
    "decommissioned",
];

// ---- parsing -------------------------------------------------------------------------

/// One COSE_Sign1, not yet verified.
#[derive(Clone, Debug)]
pub struct Sign1 {
    protected: Vec<u8>,
    alg: Curve,
    payload: Vec<u8>,
    signature: Vec<u8>,
}

impl Sign1 {
    /// The payload bytes (the claims, not yet trusted).
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// COSE's Sig_structure for Signature1 with empty external AAD.
    fn to_be_signed(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.protected.len() + self.payload.len() + 32);
        out.push(0x84);
        cbor_head(&mut out, 3, 10);
        out.extend_from_slice(b"Signature1");
        cbor_head(&mut out, 2, self.protected.len() as u64);
        out.extend_from_slice(&self.protected);
        out.push(0x40);
        cbor_head(&mut out, 2, self.payload.len() as u64);
        out.extend_from_slice(&self.payload);
        out
    }

    fn verify(&self, part: Part, key: &EcKey) -> Result<(), CcaError> {
        key.verify(part, self.alg, &self.to_be_signed(), &self.signature)
    }
}

/// A CBOR head with the shortest length encoding (as COSE requires for Sig_structure).
fn cbor_head(out: &mut Vec<u8>, major: u8, n: u64) {
    let m = major << 5;
    match n {
        0..=23 => out.push(m | n as u8),
        24..=0xff => out.extend_from_slice(&[m | 24, n as u8]),
        0x100..=0xffff => {
            out.push(m | 25);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        0x1_0000..=0xffff_ffff => {
            out.push(m | 26);
            out.extend_from_slice(&(n as u32).to_be_bytes());
        }
        _ => {
            out.push(m | 27);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
}

fn decode(bytes: &[u8]) -> Result<Cbor, CborError> {
    ciborium::de::from_reader_with_recursion_limit(bytes, MAX_DEPTH).map_err(|e| CborError(e.to_string()))
}

fn int_key(k: &Cbor) -> Option<i128> {
    k.as_integer().map(i128::from)
}

/// A map's integer-keyed entries; a repeated key is refused (it would let a token say two
/// things), other keys are ignored, as EAT asks.
fn int_map(v: &Cbor, what: impl Fn(String) -> CcaError) -> Result<Vec<(i128, &Cbor)>, CcaError> {
    let m = v.as_map().ok_or_else(|| what("is not a CBOR map".into()))?;
    // A set, not a scan of what was kept: a 64 KiB map has ~30,000 entries.
    let mut seen = std::collections::BTreeSet::new();
    let mut out: Vec<(i128, &Cbor)> = Vec::new();
    for (k, val) in m {
        if let Some(k) = int_key(k) {
            if !seen.insert(k) {
                return Err(what(format!("key {k} appears twice")));
            }
            out.push((k, val));
        }
    }
    Ok(out)
}

/// Parses a COSE_Sign1 (tagged 18 or not).
pub fn parse_sign1(part: Part, bytes: &[u8]) -> Result<Sign1, CcaError> {
    let cose = |why: String| CcaError::Cose { part, why };
    let v = decode(bytes).map_err(|e| cose(format!("not CBOR ({e})")))?;
    let v = match v {
        Cbor::Tag(COSE_SIGN1_TAG, inner) => *inner,
        Cbor::Tag(t, _) => return Err(cose(format!("tag {t} is not COSE_Sign1's 18"))),
        other => other,
    };
    let Cbor::Array(items) = v else { return Err(cose("not an array".into())) };
    let [protected, unprotected, payload, signature]: [Cbor; 4] =
        items.try_into().map_err(|a: Vec<Cbor>| cose(format!("an array of {} items, not 4", a.len())))?;
    let Cbor::Bytes(protected) = protected else {
        return Err(cose("the protected header is not a bstr".into()));
    };
    if !unprotected.is_map() {
        return Err(cose("the unprotected header is not a map".into()));
    }
    let Cbor::Bytes(payload) = payload else { return Err(cose("the payload is not a bstr".into())) };
    let Cbor::Bytes(signature) = signature else { return Err(cose("the signature is not a bstr".into())) };
    if protected.is_empty() {
        return Err(cose("the protected header is empty (no algorithm)".into()));
    }
    let hdr = decode(&protected).map_err(|e| cose(format!("the protected header is not CBOR ({e})")))?;
    let hdr = int_map(&hdr, |w| cose(format!("the protected header {w}")))?;
    let alg = hdr
        .iter()
        .find(|(k, _)| *k == 1)
        .and_then(|(_, v)| int_key(v))
        .ok_or_else(|| cose("the protected header names no integer algorithm (label 1)".into()))?;
    let alg = match alg {
        -7 => Curve::P256,
        -35 => Curve::P384,
        -36 => Curve::P521,
        other => return Err(CcaError::Algorithm { part, alg: other }),
    };
    if signature.len() != 2 * alg.coord_len() {
        return Err(cose(format!(
            "a {}-byte signature is not the {} bytes of {}",
            signature.len(),
            2 * alg.coord_len(),
            es_name(alg)
        )));
    }
    Ok(Sign1 { protected, alg, payload, signature })
}

/// The two COSE_Sign1 of a CCA token, not yet verified.
#[derive(Clone, Debug)]
pub struct Collection {
    pub platform: Sign1,
    pub realm: Sign1,
}

/// Parses the CBOR collection (tag 399) and both COSE_Sign1 in it.
pub fn parse_collection(token: &[u8]) -> Result<Collection, CcaError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(CcaError::TooLarge(token.len()));
    }
    let v = decode(token).map_err(CcaError::Cbor)?;
    let v = match v {
        Cbor::Tag(COLLECTION_TAG, inner) => *inner,
        Cbor::Tag(t, _) => return Err(CcaError::Collection(format!("tag {t} instead of 399"))),
        _ => return Err(CcaError::Collection("no tag".into())),
    };
    let m = int_map(&v, |w| CcaError::Collection(format!("the collection {w}")))?;
    let get = |key: i128, part: Part| {
        m.iter()
            .find(|(k, _)| *k == key)
            .and_then(|(_, v)| v.as_bytes())
            .ok_or_else(|| CcaError::Collection(format!("no {part} (key {key}) as a bstr")))
    };
    let platform = parse_sign1(Part::Platform, get(PLATFORM_TOKEN, Part::Platform)?)?;
    let realm = parse_sign1(Part::Realm, get(REALM_TOKEN, Part::Realm)?)?;
    Ok(Collection { platform, realm })
}

/// One token's claims: its integer-keyed map, read with the checks each claim needs.
struct ClaimMap<'a> {
    part: Part,
    map: Vec<(i128, &'a Cbor)>,
}

impl<'a> ClaimMap<'a> {
    fn new(part: Part, v: &'a Cbor) -> Result<Self, CcaError> {
        let map = int_map(v, |why| CcaError::Cose { part, why: format!("the payload {why}") })?;
        Ok(Self { part, map })
    }
    fn err(&self, claim: &'static str, why: impl Into<String>) -> CcaError {
        CcaError::Claim { part: self.part, claim, why: why.into() }
    }
    fn opt(&self, key: i128) -> Option<&'a Cbor> {
        self.map.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }
    fn req(&self, key: i128, claim: &'static str) -> Result<&'a Cbor, CcaError> {
        self.opt(key).ok_or_else(|| self.err(claim, "is missing"))
    }
    fn bytes(&self, key: i128, claim: &'static str, lens: &[usize]) -> Result<&'a [u8], CcaError> {
        let b = self.req(key, claim)?.as_bytes().ok_or_else(|| self.err(claim, "is not a bstr"))?;
        if !lens.is_empty() && !lens.contains(&b.len()) {
            return Err(self.err(claim, format!("is {} bytes, not {lens:?}", b.len())));
        }
        Ok(b)
    }
    fn text(&self, key: i128, claim: &'static str) -> Result<&'a str, CcaError> {
        self.req(key, claim)?.as_text().ok_or_else(|| self.err(claim, "is not a text string"))
    }
    fn opt_text(&self, key: i128, claim: &'static str) -> Result<Option<&'a str>, CcaError> {
        self.opt(key).map(|v| v.as_text().ok_or_else(|| self.err(claim, "is not a text string"))).transpose()
    }
}

const MEASUREMENT_LENS: &[usize] = &[32, 48, 64];

fn hash(alg: &str, data: &[u8]) -> Option<Vec<u8>> {
    Some(match alg {
        "sha-256" => sha2::Sha256::digest(data).to_vec(),
        "sha-384" => sha2::Sha384::digest(data).to_vec(),
        "sha-512" => sha2::Sha512::digest(data).to_vec(),
        _ => return None,
    })
}

fn static_alg(alg: &str) -> &'static str {
    match alg {
        "sha-256" => "sha-256",
        "sha-384" => "sha-384",
        _ => "sha-512",
    }
}

/// The realm's public key from its claim: a raw point in the legacy profile, an encoded
/// COSE_Key in RMM 1.0's (each profile says which; the other form is refused).
fn realm_key(c: &ClaimMap<'_>, rak: &[u8], cose_key: bool) -> Result<EcKey, CcaError> {
    let bad = |why: String| c.err("public-key (44237)", why);
    let unusable = |e: String| bad(format!("holds a key that cannot be used: {e}"));
    if !cose_key {
        if rak.first() != Some(&4) {
            return Err(bad("is not a raw SEC1 point, which the legacy realm profile carries".into()));
        }
        return EcKey::from_point(rak).map_err(unusable);
    }
    let v = decode(rak)
        .map_err(|e| bad(format!("is not the COSE_Key the {REALM_PROFILE_RMM1} profile carries ({e})")))?;
    let m = int_map(&v, |w| bad(format!("as a COSE_Key {w}")))?;
    let get = |k: i128| m.iter().find(|(key, _)| *key == k).map(|(_, v)| *v);
    if get(1).and_then(int_key) != Some(2) {
        return Err(bad("is a COSE_Key that is not EC2 (kty 2)".into()));
    }
    let curve = match get(-1).and_then(int_key) {
        Some(1) => Curve::P256,
        Some(2) => Curve::P384,
        Some(3) => Curve::P521,
        _ => return Err(bad("is a COSE_Key whose curve is not P-256, P-384 or P-521".into())),
    };
    let x = get(-2).and_then(Cbor::as_bytes).ok_or_else(|| bad("is a COSE_Key without x".into()))?;
    let y = get(-3).and_then(Cbor::as_bytes).ok_or_else(|| bad("is a COSE_Key without y".into()))?;
    EcKey::from_coords(curve, x, y).map_err(unusable)
}

fn sw_components(c: &ClaimMap<'_>) -> Result<Vec<CcaSwComponent>, CcaError> {
    const NAME: &str = "sw-components (2399)";
    let Some(v) = c.opt(P_SW_COMPONENTS) else { return Ok(Vec::new()) };
    let list = v.as_array().ok_or_else(|| c.err(NAME, "is not an array"))?;
    list.iter()
        .enumerate()
        .map(|(i, item)| {
            let sub =
                ClaimMap::new(c.part, item).map_err(|_| c.err(NAME, format!("entry {i} is not a map")))?;
            let text = |k, w: &str| {
                sub.opt(k)
                    .map(|v| {
                        v.as_text()
                            .map(str::to_owned)
                            .ok_or_else(|| c.err(NAME, format!("entry {i}: {w} is not text")))
                    })
                    .transpose()
            };
            let bytes = |k, w: &str| {
                sub.opt(k)
                    .map(|v| {
                        v.as_bytes()
                            .map(hex::encode)
                            .ok_or_else(|| c.err(NAME, format!("entry {i}: {w} is not a bstr")))
                    })
                    .transpose()
            };
            Ok(CcaSwComponent {
                component_type: text(SW_TYPE, "measurement-type")?,
                measurement: bytes(SW_MEASUREMENT, "measurement-value")?
                    .ok_or_else(|| c.err(NAME, format!("entry {i} has no measurement-value")))?,
                signer_id: bytes(SW_SIGNER_ID, "signer-id")?,
                version: text(SW_VERSION, "version")?,
                hash_algo: text(SW_HASH_ALGO, "hash-algo-id")?,
            })
        })
        .collect()
}

/// Verifies the token against `trust`: the platform signature by the CPAK of its
/// instance id, the realm signature by its RAK, and the RAK binding. The realm challenge
/// is returned in the claims for the caller to compare with what it expects.
pub fn verify_token(token: &[u8], trust: &CcaTrust) -> Result<CcaClaims, CcaError> {
    let col = parse_collection(token)?;

    // Platform: the instance id (unverified) only picks the key.
    let pv = decode(&col.platform.payload).map_err(|e| CcaError::Cose {
        part: Part::Platform,
        why: format!("the payload is not CBOR ({e})"),
    })?;
    let p = ClaimMap::new(Part::Platform, &pv)?;
    let instance_id = p.bytes(INSTANCE_ID, "instance-id (256)", &[33])?;
    let implementation_id = p.bytes(P_IMPL_ID, "implementation-id (2396)", &[32])?;
    let cpak = trust.find(instance_id, implementation_id).ok_or_else(|| CcaError::UnknownPlatform {
        instance_id: hex::encode(instance_id),
        implementation_id: hex::encode(implementation_id),
    })?;
    col.platform.verify(Part::Platform, cpak)?;

    let profile = p.text(PROFILE, "profile (265)")?;
    if !PLATFORM_PROFILES.contains(&profile) {
        return Err(
            p.err("profile (265)", format!("{:?} is not one of {PLATFORM_PROFILES:?}", trunc(profile)))
        );
    }
    let platform_challenge = p.bytes(NONCE, "challenge (10)", MEASUREMENT_LENS)?;
    let lifecycle = p.req(P_LIFECYCLE, "security-lifecycle (2395)")?;
    let lifecycle = lifecycle
        .as_integer()
        .and_then(|i| u16::try_from(i).ok())
        .ok_or_else(|| p.err("security-lifecycle (2395)", "is not an integer 0..=65535"))?;
    let platform_config = p.bytes(P_CONFIG, "config (2401)", &[])?;
    let platform_hash_algo = p.opt_text(P_HASH_ALGO, "hash-algo-id (2402)")?.map(str::to_owned);
    let verification_service =
        p.opt_text(P_VERIFICATION_SERVICE, "verification-service (2400)")?.map(str::to_owned);
    let sw = sw_components(&p)?;

    // Realm: its key is in its own payload; the platform token vouches for it below.
    let rv = decode(&col.realm.payload)
        .map_err(|e| CcaError::Cose { part: Part::Realm, why: format!("the payload is not CBOR ({e})") })?;
    let r = ClaimMap::new(Part::Realm, &rv)?;
    let realm_profile = r.opt_text(PROFILE, "profile (265)")?.unwrap_or_default();
    if !realm_profile.is_empty() && realm_profile != REALM_PROFILE_RMM1 {
        return Err(
            r.err("profile (265)", format!("{:?} is not {REALM_PROFILE_RMM1:?}", trunc(realm_profile)))
        );
    }
    let rak_bytes = r.bytes(R_RAK, "public-key (44237)", &[])?;
    let rak = realm_key(&r, rak_bytes, realm_profile == REALM_PROFILE_RMM1)?;
    col.realm.verify(Part::Realm, &rak)?;

    let rak_hash_algo = r.text(R_RAK_HASH_ALGO, "public-key-hash-algo-id (44240)")?;
    let want = hash(rak_hash_algo, rak_bytes).ok_or_else(|| {
        r.err(
            "public-key-hash-algo-id (44240)",
            format!("{:?} is not sha-256, sha-384 or sha-512", trunc(rak_hash_algo)),
        )
    })?;
    if !bool::from(subtle::ConstantTimeEq::ct_eq(&want[..], platform_challenge)) {
        return Err(CcaError::RakBinding { alg: static_alg(rak_hash_algo) });
    }

    let challenge = r.bytes(NONCE, "challenge (10)", &[64])?;
    let personalization = r.bytes(R_PERSONALIZATION, "personalization-value (44235)", &[64])?;
    let hash_algo = r.text(R_HASH_ALGO, "hash-algo-id (44236)")?;
    // The measurement length is not tied to hash-algo-id: the published test vectors pair
    // sha-256 with 64-byte measurements, and RMM pads measurements to 64 bytes.
    let rim = r.bytes(R_RIM, "initial-measurement (44238)", MEASUREMENT_LENS)?;
    let rems = r.req(R_REM, "extensible-measurements (44239)")?;
    let rems = rems.as_array().ok_or_else(|| r.err("extensible-measurements (44239)", "is not an array"))?;
    if rems.len() != 4 {
        return Err(r.err("extensible-measurements (44239)", format!("has {} entries, not 4", rems.len())));
    }
    let mut rem: [String; 4] = Default::default();
    for (i, v) in rems.iter().enumerate() {
        match v.as_bytes() {
            Some(b) if MEASUREMENT_LENS.contains(&b.len()) => rem[i] = hex::encode(b),
            _ => {
                return Err(r.err(
                    "extensible-measurements (44239)",
                    format!("entry {i} is not a bstr of 32, 48 or 64 bytes"),
                ))
            }
        }
    }

    Ok(CcaClaims {
        platform_profile: profile.to_owned(),
        realm_profile: realm_profile.to_owned(),
        implementation_id: hex::encode(implementation_id),
        instance_id: hex::encode(instance_id),
        platform_config: hex::encode(platform_config),
        lifecycle,
        lifecycle_state: lifecycle_state(lifecycle).to_owned(),
        platform_hash_algo,
        verification_service,
        platform_challenge: hex::encode(platform_challenge),
        sw_components: sw,
        rim: hex::encode(rim),
        rem,
        hash_algo: hash_algo.to_owned(),
        personalization_value: hex::encode(personalization),
        challenge: hex::encode(challenge),
        rak_hash_algo: rak_hash_algo.to_owned(),
    })
}

/// The token from the evidence a guest sends: CoCo's attestation-agent sends
/// `{"token": <bytes>}` (a number array, as serde writes `Vec<u8>`, or base64).
pub fn parse_evidence(evidence: &Value) -> Result<Vec<u8>, Denial> {
    let t = evidence.get("token").ok_or_else(|| {
        Denial::new(Reason::MalformedEvidence, "CCA evidence has no \"token\" (the CBOR token's bytes)")
    })?;
    let token = super::json_bytes(t).ok_or_else(|| {
        Denial::new(Reason::MalformedEvidence, "CCA evidence \"token\" is neither base64 nor a byte array")
    })?;
    if token.len() > MAX_TOKEN_LEN {
        return Err(CcaError::TooLarge(token.len()).into());
    }
    Ok(token)
}

/// Checks the realm challenge against the expected runtime-data hash (zero-padded to 64
/// bytes, as CoCo's attester pads it), in constant time.
pub fn check_challenge(claims: &CcaClaims, expected: &[u8]) -> Result<(), Denial> {
    use subtle::ConstantTimeEq;
    let want = super::padded64(expected)
        .ok_or_else(|| Denial::new(Reason::ReportDataMismatch, "expected realm challenge too long"))?;
    let have = hex::decode(&claims.challenge).unwrap_or_default();
    if !bool::from(have.ct_eq(&want[..])) {
        return Err(Denial::new(
            Reason::ReportDataMismatch,
            "the CCA realm challenge is not the hash of this session's runtime data (nonce and TEE key)",
        ));
    }
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cbor_heads_are_shortest() {
        for (n, want) in [
            (0u64, vec![0x40]),
            (23, vec![0x57]),
            (24, vec![0x58, 24]),
            (256, vec![0x59, 1, 0]),
            (70000, vec![0x5a, 0, 1, 0x11, 0x70]),
        ] {
            let mut out = Vec::new();
            cbor_head(&mut out, 2, n);
            assert_eq!(out, want, "{n}");
        }
    }

    #[test]
    fn lifecycle_names() {
        assert_eq!(lifecycle_state(0x3003), "secured");
        assert_eq!(lifecycle_state(0x4000), "non_psa_rot_debug");
        assert_eq!(lifecycle_state(0xff00), "invalid");
    }

    #[test]
    fn garbage_is_refused_not_panicked() {
        for bad in [&b""[..], b"\xff\xff", b"\xd9\x01\x8f\xa0", b"\xd9\x01\x8f\x80", &[0x9f; 40][..]] {
            let e = verify_token(bad, &CcaTrust::default()).unwrap_err();
            assert_eq!(e.reason(), Reason::MalformedEvidence, "{e}");
        }
        let e = verify_token(&vec![0u8; MAX_TOKEN_LEN + 1], &CcaTrust::default()).unwrap_err();
        assert!(matches!(e, CcaError::TooLarge(_)));
    }

    #[test]
    fn a_repeated_claim_key_is_refused_and_a_huge_map_is_cheap() {
        // Platform payload {10: h'', 10: h''}.
        let v = decode(&[0xa2, 0x0a, 0x40, 0x0a, 0x40]).unwrap();
        let e = int_map(&v, CcaError::Collection).unwrap_err();
        assert!(e.to_string().contains("key 10 appears twice"), "{e}");
        // A 64 KiB map of distinct keys decodes and is checked in well under a second.
        let mut m = vec![0xb9, 0x3f, 0xff];
        for k in 0..0x3fffu16 {
            m.push(0x19);
            m.extend_from_slice(&k.to_be_bytes());
            m.push(0x00);
        }
        let v = decode(&m).unwrap();
        let t = std::time::Instant::now();
        assert_eq!(int_map(&v, CcaError::Collection).unwrap().len(), 0x3fff);
        assert!(t.elapsed() < std::time::Duration::from_secs(1));
    }

    #[test]
    fn errors_say_their_cause_once() {
        let e = verify_token(b"\xff", &CcaTrust::default()).unwrap_err();
        assert!(report::repeated_source(&e).is_none(), "{}", report::line(&e));
    }
}
