//! AMD SEV-SNP: the 1184-byte attestation report (versions 2 to 5) of Milan, Genoa and
//! Turin, its ECDSA P-384 signature by the VCEK (per chip and TCB) or the VLEK (per
//! cloud provider), and the chain VCEK -> ASK -> ARK or VLEK -> ASVK -> ARK (RSA-PSS),
//! rooted in the configured ARK or, without one, AMD's ARKs bundled in the broker.
//!
//! The VCEK's extensions must match the report: the TCB SPLs (bootloader, tee, snp,
//! microcode, and fmc on Turin) equal `reported_tcb`, the hwID equals `chip_id`, and the
//! product name agrees with the generation read from the report's CPUID fields (v3+).
//! Every certificate must be inside its validity window at the verification time.
//!
//! Evidence JSON, both accepted:
//! - cloak: `{"attestation_report": <base64 or byte array of the raw report>,
//!   "cert_chain": [{"guid": .., "cert_type": "vcek"|.., "data": <base64 DER/PEM>}] | null}`;
//! - CoCo's attestation-agent: `attestation_report` as the sev crate's object form
//!   (named fields, byte arrays), `cert_chain` entries `{"cert_type": "VCEK"|"ASK"|"ARK"|
//!   "VLEK"|"CRL"|<GUID>, "data": [DER bytes]}`.
//!
//! Also accepted: `"cert_table"`, the raw extended-report certificate table (base64).
//! Where the evidence has no VCEK: the configured one, then a directory of VCEKs.
//!
//! Own code rather than the `sev` crate: the crate's certificate-table parser is
//! unchecked pointer arithmetic and it checks neither dates nor the VCEK extensions;
//! OpenSSL (already linked for the broker's JWE) does the RSA-PSS and ECDSA checks.

use std::path::PathBuf;
use std::sync::OnceLock;

use openssl::asn1::Asn1Time;
use openssl::x509::X509;
use serde_json::Value;
use subtle::ConstantTimeEq;

use crate::claims::{SnpClaims, SnpTcb};
use crate::policy::{Denial, Reason};

pub const REPORT_LEN: usize = 0x4A0;
const SIGNED_LEN: usize = 0x2A0;

/// AMD product lines with distinct ARKs and (for Turin) a distinct TCB layout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Generation {
    Milan,
    Genoa,
    Turin,
}

impl Generation {
    pub fn as_str(self) -> &'static str {
        match self {
            Generation::Milan => "milan",
            Generation::Genoa => "genoa",
            Generation::Turin => "turin",
        }
    }

    /// From the report's CPUID family and model (report v3+).
    pub fn from_cpuid(family: u8, model: u8) -> Option<Self> {
        match (family, model >> 4) {
            (0x19, 0x0) => Some(Generation::Milan),
            (0x19, 0x1) | (0x19, 0xA) => Some(Generation::Genoa),
            (0x1A, 0x0) | (0x1A, 0x1) => Some(Generation::Turin),
            _ => None,
        }
    }

    /// From a VCEK's product name extension (`Milan-B0`, `Genoa`, `Turin-...`).
    pub fn from_product_name(name: &str) -> Option<Self> {
        let n = name.to_ascii_lowercase();
        [Generation::Milan, Generation::Genoa, Generation::Turin]
            .into_iter()
            .find(|g| n.starts_with(g.as_str()))
    }
}

/// Which key signed the report (`KEY_INFO.SIGNING_KEY`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SigningKey {
    Vcek,
    Vlek,
}

/// Trust material and VCEK sources from the configuration.
#[derive(Clone, Default)]
pub struct SnpTrust {
    /// A configured ARK replaces the bundled AMD ARKs (then the generation is not
    /// known from the anchor).
    pub ark: Option<X509>,
    pub ask: Option<X509>,
    pub asvk: Option<X509>,
    /// A fixed VCEK for guests that do not send one.
    pub vcek: Option<X509>,
    /// A directory of VCEK/VLEK certificates (DER or PEM); the one whose hwID and TCB
    /// match the report is used.
    pub vcek_dir: Option<PathBuf>,
}

impl std::fmt::Debug for SnpTrust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnpTrust")
            .field("ark", &self.ark.is_some())
            .field("ask", &self.ask.is_some())
            .field("asvk", &self.asvk.is_some())
            .field("vcek", &self.vcek.is_some())
            .field("vcek_dir", &self.vcek_dir)
            .finish()
    }
}

/// One trust anchor set: ARK with the ASK and ASVK it signed.
#[derive(Clone)]
struct Anchor {
    generation: Option<Generation>,
    ark: X509,
    ask: Option<X509>,
    asvk: Option<X509>,
}

/// AMD's ASK, ARK, ASVK per product line, bundled (see `anchors/README.md`).
fn bundled() -> &'static [Anchor] {
    static B: OnceLock<Vec<Anchor>> = OnceLock::new();
    B.get_or_init(|| {
        [
            (Generation::Milan, &include_bytes!("anchors/milan_ask_ark_asvk.pem")[..]),
            (Generation::Genoa, &include_bytes!("anchors/genoa_ask_ark_asvk.pem")[..]),
            (Generation::Turin, &include_bytes!("anchors/turin_ask_ark_asvk.pem")[..]),
        ]
        .into_iter()
        .filter_map(|(g, pem)| {
            let certs = X509::stack_from_pem(pem).ok()?;
            let mut it = certs.into_iter();
            let (ask, ark, asvk) = (it.next()?, it.next()?, it.next());
            Some(Anchor { generation: Some(g), ark, ask: Some(ask), asvk })
        })
        .collect()
    })
}

/// Fields of the report the verifier and the policy need (offsets from the SNP ABI spec).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub version: u32,
    pub guest_svn: u32,
    pub policy: u64,
    pub family_id: [u8; 16],
    pub image_id: [u8; 16],
    pub vmpl: u32,
    pub sig_algo: u32,
    pub key_info: u32,
    pub report_data: [u8; 64],
    pub measurement: [u8; 48],
    pub host_data: [u8; 32],
    /// The raw 8-byte `reported_tcb`; its layout depends on the generation.
    pub reported_tcb_raw: [u8; 8],
    /// CPUID family, model, stepping (v3+; zero before).
    pub cpuid: [u8; 3],
    pub chip_id: [u8; 64],
    /// Signature r and s as big-endian integers (the report stores them little-endian).
    pub sig_r: Vec<u8>,
    pub sig_s: Vec<u8>,
}

fn arr<const N: usize>(b: &[u8], off: usize) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&b[off..off + N]);
    out
}

fn le_u32(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes(arr::<4>(b, off))
}

fn malformed(d: impl Into<String>) -> Denial {
    Denial::new(Reason::MalformedEvidence, d)
}

impl Report {
    pub fn parse(b: &[u8]) -> Result<Self, Denial> {
        if b.len() != REPORT_LEN {
            return Err(malformed(format!("SNP report is {} bytes, expected {REPORT_LEN}", b.len())));
        }
        let version = le_u32(b, 0);
        if !(2..=5).contains(&version) {
            return Err(malformed(format!("SNP report version {version} is not supported (2 to 5)")));
        }
        let be = |le: &[u8]| {
            let mut v: Vec<u8> = le.iter().rev().copied().collect();
            while v.len() > 1 && v[0] == 0 {
                v.remove(0);
            }
            v
        };
        Ok(Report {
            version,
            guest_svn: le_u32(b, 4),
            policy: u64::from_le_bytes(arr::<8>(b, 8)),
            family_id: arr(b, 0x10),
            image_id: arr(b, 0x20),
            vmpl: le_u32(b, 0x30),
            sig_algo: le_u32(b, 0x34),
            key_info: le_u32(b, 0x48),
            report_data: arr(b, 0x50),
            measurement: arr(b, 0x90),
            host_data: arr(b, 0xC0),
            reported_tcb_raw: arr(b, 0x180),
            cpuid: if version >= 3 { arr(b, 0x188) } else { [0; 3] },
            chip_id: arr(b, 0x1A0),
            sig_r: be(&b[0x2A0..0x2A0 + 72]),
            sig_s: be(&b[0x2E8..0x2E8 + 72]),
        })
    }

    pub fn debug_allowed(&self) -> bool {
        self.policy & (1 << 19) != 0
    }

    /// The generation from the CPUID fields (v3+), if they name a known one.
    pub fn generation(&self) -> Option<Generation> {
        if self.version < 3 {
            return None;
        }
        Generation::from_cpuid(self.cpuid[0], self.cpuid[1])
    }

    pub fn signing_key(&self) -> Result<SigningKey, Denial> {
        match (self.key_info >> 2) & 0x7 {
            0 => Ok(SigningKey::Vcek),
            1 => Ok(SigningKey::Vlek),
            k => Err(Denial::new(
                Reason::InvalidSignature,
                format!("SNP report signing key {k} is neither VCEK nor VLEK"),
            )),
        }
    }

    /// `reported_tcb` decoded for `gen` (Milan/Genoa layout when unknown).
    pub fn reported_tcb(&self, gen: Option<Generation>) -> SnpTcb {
        tcb_from_raw(self.reported_tcb_raw, gen)
    }
}

pub fn tcb_from_raw(t: [u8; 8], gen: Option<Generation>) -> SnpTcb {
    if gen == Some(Generation::Turin) {
        SnpTcb { fmc: Some(t[0]), bootloader: t[1], tee: t[2], snp: t[3], microcode: t[7] }
    } else {
        SnpTcb { fmc: None, bootloader: t[0], tee: t[1], snp: t[6], microcode: t[7] }
    }
}

fn tcb_to_raw(t: &SnpTcb, turin: bool) -> [u8; 8] {
    if turin {
        [t.fmc.unwrap_or(0), t.bootloader, t.tee, t.snp, 0, 0, 0, t.microcode]
    } else {
        [t.bootloader, t.tee, 0, 0, 0, 0, t.snp, t.microcode]
    }
}

// ---- evidence forms ---------------------------------------------------------------

/// A certificate the guest sent, by kind.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertIn {
    /// `vcek`, `vlek`, `ask`, `ark`, `asvk`, `crl` or `other`.
    pub kind: String,
    pub data: Vec<u8>,
}

/// SNP evidence as a guest sends it: the raw report and the certificates.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnpEvidence {
    pub report: Vec<u8>,
    pub certs: Vec<CertIn>,
}

const GUIDS: &[(&str, &str)] = &[
    ("63da758d-e664-4564-adc5-f4b93be8accd", "vcek"),
    ("a8074bc2-a25a-483e-aae6-39c045a0b8a1", "vlek"),
    ("4ab7b379-bbac-4fe4-a02f-05aef327c782", "ask"),
    ("c0b406a4-a803-4952-9743-3fb6014cd0ae", "ark"),
    ("92f81bc3-5811-4d3d-97ff-d19f88dc67ea", "crl"),
];

fn kind_of(name: &str) -> String {
    let n = name.trim().to_ascii_lowercase();
    GUIDS.iter().find(|(g, _)| *g == n).map(|(_, k)| k.to_string()).unwrap_or(n)
}

fn cert_kind(entry: &Value) -> Option<String> {
    let t = entry.get("cert_type").or_else(|| entry.get("guid"))?;
    match t {
        Value::String(s) => Some(kind_of(s)),
        // sev's `CertType::OTHER(uuid)` serialises as {"OTHER": "<uuid>"}.
        Value::Object(m) => {
            let (k, v) = m.iter().next()?;
            Some(v.as_str().map(kind_of).unwrap_or_else(|| kind_of(k)))
        }
        _ => None,
    }
}

/// Bytes of a field of the object form: a number array, a hex string of exactly
/// `len` bytes, or base64.
fn field_bytes(v: &Value, len: usize) -> Option<Vec<u8>> {
    if let Value::String(s) = v {
        if s.len() == 2 * len {
            if let Ok(b) = hex::decode(s) {
                return Some(b);
            }
        }
    }
    super::json_bytes(v).filter(|b| b.len() == len)
}

fn obj_u64(o: &serde_json::Map<String, Value>, k: &str) -> Result<u64, Denial> {
    match o.get(k) {
        None | Some(Value::Null) => Ok(0),
        Some(v) => {
            v.as_u64().ok_or_else(|| malformed(format!("SNP report field {k} is not an unsigned integer")))
        }
    }
}

fn obj_u32(o: &serde_json::Map<String, Value>, k: &str) -> Result<u32, Denial> {
    u32::try_from(obj_u64(o, k)?).map_err(|_| malformed(format!("SNP report field {k} exceeds 32 bits")))
}

fn obj_u8(o: &serde_json::Map<String, Value>, k: &str) -> Result<u8, Denial> {
    u8::try_from(obj_u64(o, k)?).map_err(|_| malformed(format!("SNP report field {k} exceeds 8 bits")))
}

/// Rebuilds the raw report from the sev crate's object form (what CoCo's
/// attestation-agent sends). Reserved bytes are zero, as the firmware writes them; a
/// report whose object form does not re-encode to the signed bytes fails its signature.
pub fn report_from_object(o: &serde_json::Map<String, Value>) -> Result<Vec<u8>, Denial> {
    let mut r = vec![0u8; REPORT_LEN];
    let mut put = |off: usize, b: &[u8]| r[off..off + b.len()].copy_from_slice(b);
    let bytes = |k: &str, len: usize| -> Result<Vec<u8>, Denial> {
        match o.get(k) {
            None | Some(Value::Null) => Ok(vec![0; len]),
            Some(v) => field_bytes(v, len)
                .ok_or_else(|| malformed(format!("SNP report field {k} is not {len} bytes"))),
        }
    };
    let version = obj_u32(o, "version")?;
    let fam = obj_u8(o, "cpuid_fam_id")?;
    let turin = Generation::from_cpuid(fam, obj_u8(o, "cpuid_mod_id")?) == Some(Generation::Turin);
    let tcb = |k: &str| -> Result<[u8; 8], Denial> {
        match o.get(k) {
            None | Some(Value::Null) => Ok([0; 8]),
            Some(Value::Object(t)) => {
                let fmc = match t.get("fmc") {
                    None | Some(Value::Null) => None,
                    Some(_) => Some(obj_u8(t, "fmc")?),
                };
                let tcb = SnpTcb {
                    fmc,
                    bootloader: obj_u8(t, "bootloader")?,
                    tee: obj_u8(t, "tee")?,
                    snp: obj_u8(t, "snp")?,
                    microcode: obj_u8(t, "microcode")?,
                };
                Ok(tcb_to_raw(&tcb, turin || fmc.is_some()))
            }
            Some(v) => v
                .as_u64()
                .map(u64::to_le_bytes)
                .ok_or_else(|| malformed(format!("SNP report field {k} is not a TCB"))),
        }
    };
    let version_bytes = |k: &str| -> Result<[u8; 4], Denial> {
        match o.get(k) {
            None | Some(Value::Null) => Ok([0; 4]),
            Some(Value::Object(v)) => Ok([obj_u8(v, "build")?, obj_u8(v, "minor")?, obj_u8(v, "major")?, 0]),
            Some(_) => Err(malformed(format!("SNP report field {k} is not a firmware version"))),
        }
    };
    put(0x00, &version.to_le_bytes());
    put(0x04, &obj_u32(o, "guest_svn")?.to_le_bytes());
    put(0x08, &obj_u64(o, "policy")?.to_le_bytes());
    put(0x10, &bytes("family_id", 16)?);
    put(0x20, &bytes("image_id", 16)?);
    put(0x30, &obj_u32(o, "vmpl")?.to_le_bytes());
    put(0x34, &obj_u32(o, "sig_algo")?.to_le_bytes());
    put(0x38, &tcb("current_tcb")?);
    put(0x40, &obj_u64(o, "plat_info")?.to_le_bytes());
    put(0x48, &obj_u32(o, "key_info")?.to_le_bytes());
    put(0x50, &bytes("report_data", 64)?);
    put(0x90, &bytes("measurement", 48)?);
    put(0xC0, &bytes("host_data", 32)?);
    put(0xE0, &bytes("id_key_digest", 48)?);
    put(0x110, &bytes("author_key_digest", 48)?);
    put(0x140, &bytes("report_id", 32)?);
    put(0x160, &bytes("report_id_ma", 32)?);
    put(0x180, &tcb("reported_tcb")?);
    if version >= 3 {
        put(0x188, &[fam, obj_u8(o, "cpuid_mod_id")?, obj_u8(o, "cpuid_step")?]);
    }
    put(0x1A0, &bytes("chip_id", 64)?);
    put(0x1E0, &tcb("committed_tcb")?);
    put(0x1E8, &version_bytes("current")?);
    put(0x1EC, &version_bytes("committed")?);
    put(0x1F0, &tcb("launch_tcb")?);
    if version >= 5 {
        put(0x1F8, &obj_u64(o, "launch_mit_vector")?.to_le_bytes());
        put(0x200, &obj_u64(o, "current_mit_vector")?.to_le_bytes());
    }
    let sig = o
        .get("signature")
        .and_then(Value::as_object)
        .ok_or_else(|| malformed("SNP report object has no signature {r, s}"))?;
    let part = |k: &str| {
        sig.get(k)
            .and_then(|v| field_bytes(v, 72))
            .ok_or_else(|| malformed(format!("SNP signature {k} is not 72 bytes")))
    };
    put(0x2A0, &part("r")?);
    put(0x2E8, &part("s")?);
    Ok(r)
}

/// Reads either evidence form.
pub fn parse_evidence(evidence: &Value) -> Result<SnpEvidence, Denial> {
    let raw = evidence
        .get("attestation_report")
        .or_else(|| evidence.get("report"))
        .ok_or_else(|| malformed("SNP evidence has no attestation_report"))?;
    let report = match raw {
        Value::Object(o) => report_from_object(o)?,
        v => super::json_bytes(v).ok_or_else(|| {
            malformed(
                "SNP attestation_report must be the raw report (base64 or byte array) or the report object",
            )
        })?,
    };
    let mut certs = Vec::new();
    match evidence.get("cert_chain") {
        None | Some(Value::Null) => {}
        Some(Value::Array(entries)) => {
            for e in entries {
                let kind = cert_kind(e);
                let data = e.get("data").and_then(super::json_bytes);
                let (Some(kind), Some(data)) = (kind, data) else {
                    return Err(malformed("SNP cert_chain entry needs cert_type and data"));
                };
                certs.push(CertIn { kind, data });
            }
        }
        Some(_) => return Err(malformed("SNP cert_chain is not an array")),
    }
    if let Some(t) = evidence.get("cert_table").filter(|v| !v.is_null()) {
        let table = super::json_bytes(t).ok_or_else(|| malformed("SNP cert_table is not base64"))?;
        let entries = kbs_client::attester::parse_cert_table(&table).map_err(|e| malformed(e.to_string()))?;
        certs.extend(entries.into_iter().map(|c| CertIn { kind: c.cert_type.to_owned(), data: c.data }));
    }
    Ok(SnpEvidence { report, certs })
}

// ---- certificates -----------------------------------------------------------------

fn parse_cert(der_or_pem: &[u8]) -> Option<X509> {
    X509::from_der(der_or_pem).or_else(|_| X509::from_pem(der_or_pem)).ok()
}

/// The AMD extensions of a VCEK/VLEK.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VcekExtensions {
    pub product_name: Option<String>,
    pub bootloader: Option<u8>,
    pub tee: Option<u8>,
    pub snp: Option<u8>,
    pub microcode: Option<u8>,
    pub fmc: Option<u8>,
    pub hwid: Option<Vec<u8>>,
}

/// Strips a DER header of `tag` when `v` is exactly one such element; else `v` as is
/// (older VCEKs store some values unwrapped).
fn unwrap_der(v: &[u8], tag: u8) -> &[u8] {
    match v {
        [t, len, rest @ ..] if *t == tag && usize::from(*len) == rest.len() && *len < 0x80 => rest,
        _ => v,
    }
}

fn spl(v: &[u8]) -> Option<u8> {
    let n = unwrap_der(v, 0x02);
    // A DER INTEGER up to 255 is one byte, or two with a leading zero.
    match n {
        [b] => Some(*b),
        [0, b] => Some(*b),
        _ => None,
    }
}

/// Reads the AMD extensions (OIDs under 1.3.6.1.4.1.3704.1) of a DER certificate.
pub fn vcek_extensions(der: &[u8]) -> Result<VcekExtensions, String> {
    use der::Decode;
    let cert =
        x509_cert::Certificate::from_der(der).map_err(|e| format!("not a DER X.509 certificate: {e}"))?;
    let mut out = VcekExtensions::default();
    let exts = cert.tbs_certificate().extensions().map_or(&[][..], Vec::as_slice);
    for e in exts {
        let oid = e.extn_id.to_string();
        let v = e.extn_value.as_bytes();
        let Some(suffix) = oid.strip_prefix("1.3.6.1.4.1.3704.1.") else { continue };
        let bad = |what: &str| format!("VCEK extension {what} ({oid}) is malformed");
        match suffix {
            "2" => {
                let s = unwrap_der(v, 0x16);
                out.product_name = Some(String::from_utf8(s.to_vec()).map_err(|_| bad("productName"))?);
            }
            "3.1" => out.bootloader = Some(spl(v).ok_or_else(|| bad("blSPL"))?),
            "3.2" => out.tee = Some(spl(v).ok_or_else(|| bad("teeSPL"))?),
            "3.3" => out.snp = Some(spl(v).ok_or_else(|| bad("snpSPL"))?),
            "3.8" => out.microcode = Some(spl(v).ok_or_else(|| bad("ucodeSPL"))?),
            "3.9" => out.fmc = Some(spl(v).ok_or_else(|| bad("fmcSPL"))?),
            // 64 raw bytes (8 on Turin), or the same wrapped in an OCTET STRING.
            "4" => {
                out.hwid =
                    Some(if matches!(v.len(), 64 | 8) { v.to_vec() } else { unwrap_der(v, 0x04).to_vec() })
            }
            _ => {}
        }
    }
    Ok(out)
}

/// Checks a VCEK/VLEK file before use: a clear error for anything that is not an AMD
/// endorsement key certificate (used for `--vcek` and the VCEK directory).
pub fn check_vcek_file(bytes: &[u8]) -> Result<(X509, VcekExtensions), String> {
    let cert = parse_cert(bytes).ok_or("not a DER or PEM X.509 certificate")?;
    let der = cert.to_der().map_err(|e| format!("cannot re-encode the certificate: {e}"))?;
    let ext = vcek_extensions(&der)?;
    if ext.bootloader.is_none() || ext.tee.is_none() || ext.snp.is_none() || ext.microcode.is_none() {
        return Err(
            "certificate lacks the AMD TCB extensions (1.3.6.1.4.1.3704.1.3.*): not a VCEK/VLEK".into()
        );
    }
    let key = cert.public_key().map_err(|e| format!("unreadable public key: {e}"))?;
    let ec = key.ec_key().map_err(|_| "public key is not ECDSA (a VCEK is P-384)".to_string())?;
    if ec.group().curve_name() != Some(openssl::nid::Nid::SECP384R1) {
        return Err("public key is not on P-384".into());
    }
    Ok((cert, ext))
}

fn ext_matches(ext: &VcekExtensions, tcb: &SnpTcb, chip_id: Option<&[u8; 64]>) -> Result<(), String> {
    for (name, have, want) in [
        ("bootloader", ext.bootloader, tcb.bootloader),
        ("tee", ext.tee, tcb.tee),
        ("snp", ext.snp, tcb.snp),
        ("microcode", ext.microcode, tcb.microcode),
    ] {
        match have {
            Some(h) if h == want => {}
            Some(h) => return Err(format!("certificate {name} SPL {h} is not the report's {want}")),
            None => return Err(format!("certificate has no {name} SPL extension")),
        }
    }
    if let (Some(f), Some(h)) = (tcb.fmc, ext.fmc) {
        if f != h {
            return Err(format!("certificate fmc SPL {h} is not the report's {f}"));
        }
    }
    if let Some(chip) = chip_id {
        let hw = ext.hwid.as_deref().ok_or("VCEK has no hwID extension")?;
        let ok = !hw.is_empty()
            && hw.len() <= 64
            && bool::from(hw.ct_eq(&chip[..hw.len()]))
            && chip[hw.len()..].iter().all(|&b| b == 0);
        if !ok {
            return Err("VCEK hwID is not the report's chip_id (a VCEK of another chip)".into());
        }
    }
    Ok(())
}

fn time_window(cert: &X509, what: &str, now: u64) -> Result<(), Denial> {
    let now_t = Asn1Time::from_unix(i64::try_from(now).unwrap_or(i64::MAX))
        .map_err(|_| Denial::new(Reason::CollateralExpired, "verification time out of range"))?;
    if cert.not_before() > now_t {
        return Err(Denial::new(
            Reason::CollateralNotYetValid,
            format!("{what} certificate is not valid before {}", cert.not_before()),
        ));
    }
    if cert.not_after() < now_t {
        return Err(Denial::new(
            Reason::CollateralExpired,
            format!("{what} certificate expired {}", cert.not_after()),
        ));
    }
    Ok(())
}

fn signed_by(cert: &X509, issuer: &X509) -> bool {
    issuer.public_key().ok().is_some_and(|k| cert.verify(&k).unwrap_or(false))
}

/// Finds the endorsement certificate for the report: from the evidence, else the
/// configured VCEK, else the VCEK directory.
fn endorsement(
    report: &Report,
    key: SigningKey,
    certs: &[CertIn],
    trust: &SnpTrust,
    tcb: &SnpTcb,
) -> Result<(X509, VcekExtensions), Denial> {
    let want = match key {
        SigningKey::Vcek => "vcek",
        SigningKey::Vlek => "vlek",
    };
    let chip = (key == SigningKey::Vcek).then_some(&report.chip_id);
    if let Some(c) = certs.iter().find(|c| c.kind == want) {
        return check_vcek_file(&c.data)
            .map_err(|e| Denial::new(Reason::CertChainInvalid, format!("the evidence's {want}: {e}")));
    }
    // The configured certificate (`snp.vcek`, `--vcek`): a VCEK or, for VLEK-signed
    // reports, the VLEK; the chain and extension checks decide whether it fits.
    if let Some(v) = &trust.vcek {
        let der =
            v.to_der().map_err(|_| Denial::new(Reason::CertChainInvalid, "configured VCEK unreadable"))?;
        return check_vcek_file(&der)
            .map_err(|e| Denial::new(Reason::CertChainInvalid, format!("the configured {want}: {e}")));
    }
    if let Some(dir) = &trust.vcek_dir {
        let entries = std::fs::read_dir(dir).map_err(|e| {
            Denial::new(Reason::CollateralUnavailable, format!("VCEK directory {}: {e}", dir.display()))
        })?;
        for e in entries.flatten().take(10_000) {
            let Ok(bytes) = std::fs::read(e.path()) else { continue };
            if let Ok((cert, ext)) = check_vcek_file(&bytes) {
                if ext_matches(&ext, tcb, chip).is_ok() {
                    return Ok((cert, ext));
                }
            }
        }
        return Err(Denial::new(
            Reason::CollateralUnavailable,
            format!("no {want} in {} matches the report's chip and TCB", dir.display()),
        ));
    }
    Err(Denial::new(
        Reason::CollateralUnavailable,
        format!("no {want}: the evidence has none and neither snp.vcek nor snp.vcek_dir is configured"),
    ))
}

/// Verifies a raw report with the guest's certificates against the trust anchors at
/// `now` (unix seconds). Report data is not compared here (see [`verify`]).
pub fn verify_report(raw: &[u8], certs: &[CertIn], trust: &SnpTrust, now: u64) -> Result<SnpClaims, Denial> {
    let report = Report::parse(raw)?;
    if report.sig_algo != 1 {
        return Err(Denial::new(
            Reason::InvalidSignature,
            format!("signature algorithm {} is not ECDSA P-384 SHA-384 (1)", report.sig_algo),
        ));
    }
    let key = report.signing_key()?;
    let cpuid_gen = report.generation();
    if report.version >= 3 && cpuid_gen.is_none() && trust.ark.is_none() {
        return Err(malformed(format!(
            "SNP report CPUID family {:#x} model {:#x} is no known product line (Milan, Genoa, Turin)",
            report.cpuid[0], report.cpuid[1]
        )));
    }
    let tcb = report.reported_tcb(cpuid_gen);
    let (cert, ext) = endorsement(&report, key, certs, trust, &tcb)?;
    let name_gen = ext.product_name.as_deref().and_then(Generation::from_product_name);
    if let (Some(c), Some(n)) = (cpuid_gen, name_gen) {
        if c != n {
            return Err(Denial::new(
                Reason::VcekMismatch,
                format!("the report is from {} but the certificate is for {}", c.as_str(), n.as_str()),
            ));
        }
    }
    let generation = cpuid_gen.or(name_gen);
    // The TCB layout of a v2 report is Milan/Genoa's; Turin reports are v3+.
    let tcb = report.reported_tcb(generation);
    let chip = (key == SigningKey::Vcek).then_some(&report.chip_id);
    ext_matches(&ext, &tcb, chip).map_err(|e| Denial::new(Reason::VcekMismatch, e))?;

    // The chain: the endorsement key's issuer (ASK for a VCEK, ASVK for a VLEK) signed
    // by the ARK, which is the configured or bundled one, never the guest's.
    let custom;
    let anchors: Vec<&Anchor> = match &trust.ark {
        Some(ark) => {
            custom = Anchor {
                generation: None,
                ark: ark.clone(),
                ask: trust.ask.clone(),
                asvk: trust.asvk.clone(),
            };
            vec![&custom]
        }
        None => bundled().iter().filter(|a| generation.is_none() || a.generation == generation).collect(),
    };
    let chain_err = |d: String| Denial::new(Reason::CertChainInvalid, d);
    let sent: Vec<X509> = certs
        .iter()
        .filter(|c| matches!(c.kind.as_str(), "ask" | "asvk"))
        .filter_map(|c| parse_cert(&c.data))
        .collect();
    let mut found = None;
    for a in &anchors {
        if !signed_by(&a.ark, &a.ark) {
            continue;
        }
        let configured = match key {
            SigningKey::Vcek => a.ask.as_ref(),
            SigningKey::Vlek => a.asvk.as_ref(),
        };
        let candidates = configured.into_iter().chain(sent.iter());
        for inter in candidates {
            if signed_by(inter, &a.ark) && signed_by(&cert, inter) {
                found = Some((*a, inter.clone()));
                break;
            }
        }
        if found.is_some() {
            break;
        }
    }
    let Some((anchor, inter)) = found else {
        let which = match key {
            SigningKey::Vcek => "VCEK -> ASK",
            SigningKey::Vlek => "VLEK -> ASVK",
        };
        return Err(chain_err(format!(
            "the {which} -> ARK chain does not verify against the {} ARK",
            if trust.ark.is_some() { "configured" } else { "bundled AMD" }
        )));
    };
    let kname = match key {
        SigningKey::Vcek => "VCEK",
        SigningKey::Vlek => "VLEK",
    };
    time_window(&cert, kname, now)?;
    time_window(&inter, "ASK/ASVK", now)?;
    time_window(&anchor.ark, "ARK", now)?;
    let generation = generation.or(anchor.generation);

    if !report_signature_ok(&cert, &report.sig_r, &report.sig_s, &raw[..SIGNED_LEN]) {
        return Err(Denial::new(
            Reason::InvalidSignature,
            format!("SNP report signature does not verify with the {kname}"),
        ));
    }
    let tcb = report.reported_tcb(generation);
    Ok(SnpClaims {
        version: report.version,
        measurement: hex::encode(report.measurement),
        reported_tcb: tcb,
        family_id: hex::encode(report.family_id),
        image_id: hex::encode(report.image_id),
        host_data: hex::encode(report.host_data),
        chip_id: hex::encode(report.chip_id),
        vmpl: report.vmpl,
        policy_debug_allowed: report.debug_allowed(),
        policy_migrate_ma: report.policy & (1 << 18) != 0,
        policy_smt_allowed: report.policy & (1 << 16) != 0,
        guest_svn: report.guest_svn,
        report_data: hex::encode(report.report_data),
        generation: generation.map(Generation::as_str).unwrap_or("unknown").into(),
        signing_key: kname.to_ascii_lowercase(),
    })
}

/// The report's ECDSA P-384/SHA-384 signature (`r`, `s` big-endian) by the VCEK/VLEK
/// `cert`. Verified by aws-lc (linked already by the broker's TLS stack): OpenSSL 3.0's
/// generic P-384 arithmetic spent ~1 ms of the broker's 2 ms budget per report here.
fn report_signature_ok(cert: &X509, r: &[u8], s: &[u8], signed: &[u8]) -> bool {
    use aws_lc_rs::signature::{UnparsedPublicKey, ECDSA_P384_SHA384_FIXED};
    let point = (|| -> Result<Vec<u8>, openssl::error::ErrorStack> {
        let ec = cert.public_key()?.ec_key()?;
        let mut ctx = openssl::bn::BigNumContext::new()?;
        ec.public_key().to_bytes(ec.group(), openssl::ec::PointConversionForm::UNCOMPRESSED, &mut ctx)
    })();
    let (Ok(point), Some(r), Some(s)) = (point, fixed_be::<48>(r), fixed_be::<48>(s)) else { return false };
    let mut sig = [0u8; 96];
    sig[..48].copy_from_slice(&r);
    sig[48..].copy_from_slice(&s);
    UnparsedPublicKey::new(&ECDSA_P384_SHA384_FIXED, &point).verify(signed, &sig).is_ok()
}

/// A big-endian integer as exactly `N` bytes (leading zeros dropped or added); `None`
/// when it does not fit.
fn fixed_be<const N: usize>(be: &[u8]) -> Option<[u8; N]> {
    let start = be.iter().position(|&b| b != 0).unwrap_or(be.len());
    let digits = &be[start..];
    let mut out = [0u8; N];
    let pad = N.checked_sub(digits.len())?;
    out[pad..].copy_from_slice(digits);
    Some(out)
}

pub fn verify(evidence: &Value, expected: &[u8], trust: &SnpTrust, now: u64) -> Result<SnpClaims, Denial> {
    let ev = parse_evidence(evidence)?;
    let claims = verify_report(&ev.report, &ev.certs, trust, now)?;
    super::check_report_data("SNP", &claims.report_data, expected)?;
    Ok(claims)
}

/// The product line whose bundled AMD chain (ASK or ASVK, then ARK) signed this
/// VCEK/VLEK, if any: a check of a certificate without a report.
pub fn endorsement_generation(cert_bytes: &[u8]) -> Option<Generation> {
    let cert = parse_cert(cert_bytes)?;
    bundled().iter().find_map(|a| {
        let ok = signed_by(&a.ark, &a.ark)
            && a.ask.iter().chain(a.asvk.iter()).any(|i| signed_by(i, &a.ark) && signed_by(&cert, i));
        if ok {
            a.generation
        } else {
            None
        }
    })
}
