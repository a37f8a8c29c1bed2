//! Intel TDX: full DCAP verification of v4 and v5 quotes through `dcap-qvl` (its audited
//! X.509 parser and signature encoder; ECDSA P-256 through aws-lc, see [`BrokerDcap`]):
//! the PCK chain to Intel's SGX Root CA with the root CA CRL and
//! the PCK CRL, the QE report signature by the PCK and its binding to the attestation
//! key, the quote signature over header and TD report, the QE identity and the TCB info
//! (both signed by Intel's TCB signing chain), giving the TCB status and advisory IDs.
//! Before that, every collateral item is checked against the verification time here,
//! so that stale collateral is refused with its own reason (`collateral_expired`,
//! `collateral_not_yet_valid`) rather than a generic chain failure.
//!
//! Debug (and profiling) TDs pass the cryptographic verification and are refused by the
//! policy unless it sets `allow_debug`; the TCB status is a policy input too.
//!
//! Evidence JSON (cloak's attester and CoCo's attestation-agent alike):
//! `{"quote": "<base64>", "cc_eventlog": "<base64 CCEL>" | null, "aa_eventlog": "<text>" | null}`.

use dcap_qvl::quote::{Quote, Report};
use dcap_qvl::QuoteCollateralV3;
use openssl::asn1::Asn1Time;
use openssl::x509::X509Crl;
use serde_json::Value;

use crate::claims::TdxClaims;
use crate::policy::{Denial, Reason};

/// dcap-qvl's configuration in the broker: its own audited X.509 parser and ECDSA
/// signature encoder, with [`AwsLcCrypto`] as the crypto provider.
pub struct BrokerDcap;

impl dcap_qvl::config::Config for BrokerDcap {
    type X509 = dcap_qvl::x509::X509CertBackend;
    type SigEncoder = dcap_qvl::signature::DerSigEncoder;
    type Crypto = AwsLcCrypto;
}

/// ECDSA P-256/SHA-256 verification by rustls-webpki's aws-lc algorithm object (the
/// implementation the broker's TLS already links), SHA-2 by RustCrypto. One quote means
/// about ten P-256 verifications (PCK chain, both CRLs, TCB info and QE identity with
/// their signing chain, QE report, quote); the pure-Rust p256 takes ~2.7 ms for them on
/// this project's Xeon, over the 2 ms budget, aws-lc's assembly a fraction of that. The
/// test `aws_lc_and_rustcrypto_agree` checks both backends give the same verdicts.
pub struct AwsLcCrypto;

impl dcap_qvl::config::CryptoProvider for AwsLcCrypto {
    fn sig_algo() -> &'static dyn rustls_pki_types::SignatureVerificationAlgorithm {
        webpki::aws_lc_rs::ECDSA_P256_SHA256
    }

    fn sha256(data: &[u8]) -> [u8; 32] {
        use sha2::Digest as _;
        sha2::Sha256::digest(data).into()
    }

    fn sha384(data: &[u8]) -> [u8; 48] {
        use sha2::Digest as _;
        sha2::Sha384::digest(data).into()
    }
}

/// Intel SGX Root CA, the trust anchor of DCAP (also the default of `tdx.root_ca`).
pub const INTEL_SGX_ROOT_CA_DER: &[u8] = include_bytes!("anchors/intel-sgx-root-ca.der");

/// TDX evidence as a guest sends it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TdxEvidence {
    pub quote: Vec<u8>,
    /// The CC event log (ACPI CCEL table data), when the guest sent it.
    pub cc_eventlog: Option<Vec<u8>>,
    /// The attestation-agent's own event log (text), when the guest sent it.
    pub aa_eventlog: Option<String>,
}

fn malformed(d: impl Into<String>) -> Denial {
    Denial::new(Reason::MalformedEvidence, d)
}

/// Reads the evidence JSON. `quote` may be base64 or a byte array; the event logs are
/// optional and may be null.
pub fn parse_evidence(evidence: &Value) -> Result<TdxEvidence, Denial> {
    let obj = evidence.as_object().ok_or_else(|| malformed("TDX evidence is not a JSON object"))?;
    let quote = obj.get("quote").ok_or_else(|| malformed("TDX evidence has no quote")).and_then(|q| {
        super::json_bytes(q).ok_or_else(|| malformed("TDX quote is not base64 or a byte array"))
    })?;
    let cc_eventlog = match obj.get("cc_eventlog") {
        None | Some(Value::Null) => None,
        Some(v) => Some(
            super::json_bytes(v).ok_or_else(|| malformed("TDX cc_eventlog is not base64 or a byte array"))?,
        ),
    };
    let aa_eventlog = match obj.get("aa_eventlog") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(_) => return Err(malformed("TDX aa_eventlog is not a string")),
    };
    Ok(TdxEvidence { quote, cc_eventlog, aa_eventlog })
}

/// What the broker needs from a quote before verifying it: where to get collateral.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct QuoteInfo {
    pub version: u16,
    /// FMSPC of the PCK certificate (6 bytes), lowercase hex.
    pub fmspc: String,
    /// The PCK CA that issued the PCK certificate: `platform` or `processor`.
    pub ca: &'static str,
}

/// Parses a quote far enough to know its FMSPC and PCK CA (no signature checked).
pub fn quote_info(raw: &[u8]) -> Result<QuoteInfo, Denial> {
    parse_quote(raw).map(|(_, info)| info)
}

/// The quote, parsed once, and what [`quote_info`] says of it.
fn parse_quote(raw: &[u8]) -> Result<(Quote, QuoteInfo), Denial> {
    let quote = Quote::parse(raw).map_err(|e| malformed(format!("TDX quote does not parse: {e:#}")))?;
    if !matches!(quote.header.version, 4 | 5) || quote.header.tee_type != 0x81 {
        return Err(malformed(format!(
            "not a TDX quote v4/v5 (version {}, tee_type {:#x})",
            quote.header.version, quote.header.tee_type
        )));
    }
    let fmspc = dcap_qvl::intel::quote_fmspc(&quote)
        .map_err(|e| malformed(format!("TDX quote has no readable PCK certificate: {e:#}")))?;
    let ca = match dcap_qvl::intel::quote_ca(&quote) {
        Ok(dcap_qvl::config::PckCa::Platform) => "platform",
        _ => "processor",
    };
    let info = QuoteInfo { version: quote.header.version, fmspc: hex::encode(fmspc), ca };
    Ok((quote, info))
}

fn rfc3339(field: &str, v: &Value) -> Result<i64, Denial> {
    let s = v
        .get(field)
        .and_then(Value::as_str)
        .ok_or_else(|| Denial::new(Reason::InvalidSignature, format!("collateral has no {field}")))?;
    chrono::DateTime::parse_from_rfc3339(s)
        .map(|d| d.timestamp())
        .map_err(|e| Denial::new(Reason::InvalidSignature, format!("collateral {field} {s:?}: {e}")))
}

/// The validity window of one collateral item.
struct Window {
    what: &'static str,
    issued: i64,
    next_update: i64,
}

fn crl_window(what: &'static str, der: &[u8]) -> Result<Window, Denial> {
    let crl = X509Crl::from_der(der)
        .map_err(|_| Denial::new(Reason::InvalidSignature, format!("{what} is not a DER CRL")))?;
    let epoch = Asn1Time::from_unix(0).map_err(|_| Denial::new(Reason::InvalidSignature, "time"))?;
    let secs = |t: &openssl::asn1::Asn1TimeRef| -> Result<i64, Denial> {
        let d = epoch.diff(t).map_err(|_| Denial::new(Reason::InvalidSignature, format!("{what} date")))?;
        Ok(i64::from(d.days) * 86_400 + i64::from(d.secs))
    };
    let issued = secs(crl.last_update())?;
    let next_update = match crl.next_update() {
        Some(t) => secs(t)?,
        None => return Err(Denial::new(Reason::InvalidSignature, format!("{what} has no nextUpdate"))),
    };
    Ok(Window { what, issued, next_update })
}

fn windows(c: &QuoteCollateralV3) -> Result<Vec<Window>, Denial> {
    let json = |what: &str, s: &str| -> Result<Value, Denial> {
        serde_json::from_str(s)
            .map_err(|e| Denial::new(Reason::InvalidSignature, format!("{what} is not JSON: {e}")))
    };
    let tcb = json("TCB info", &c.tcb_info)?;
    let qe = json("QE identity", &c.qe_identity)?;
    Ok(vec![
        Window {
            what: "TCB info",
            issued: rfc3339("issueDate", &tcb)?,
            next_update: rfc3339("nextUpdate", &tcb)?,
        },
        Window {
            what: "QE identity",
            issued: rfc3339("issueDate", &qe)?,
            next_update: rfc3339("nextUpdate", &qe)?,
        },
        crl_window("root CA CRL", &c.root_ca_crl)?,
        crl_window("PCK CRL", &c.pck_crl)?,
    ])
}

/// The earliest `nextUpdate` of the collateral items (unix seconds): when a cached copy
/// stops being usable.
pub fn collateral_next_update(c: &QuoteCollateralV3) -> Result<i64, Denial> {
    windows(c)?
        .iter()
        .map(|w| w.next_update)
        .min()
        .ok_or_else(|| Denial::new(Reason::CollateralUnavailable, "empty collateral"))
}

/// Every collateral item must be valid at `now`: issued no later, next update no earlier.
pub fn check_collateral_window(c: &QuoteCollateralV3, now: u64) -> Result<(), Denial> {
    let now = i64::try_from(now).unwrap_or(i64::MAX);
    for w in windows(c)? {
        if now < w.issued {
            return Err(Denial::new(
                Reason::CollateralNotYetValid,
                format!("{} was issued at {} (unix), after the verification time {now}", w.what, w.issued),
            ));
        }
        if now > w.next_update {
            return Err(Denial::new(
                Reason::CollateralExpired,
                format!(
                    "{} expired at {} (unix, its nextUpdate); verification time {now}",
                    w.what, w.next_update
                ),
            ));
        }
    }
    Ok(())
}

/// Maps a `dcap-qvl` failure to a metric reason. The library reports errors as text, so
/// this looks at its messages; anything not recognised is a signature/chain failure,
/// which is the fail-closed answer.
fn classify(e: &anyhow::Error) -> Reason {
    let msg = format!("{e:#}");
    let has = |s: &str| msg.contains(s);
    if has("Revoked") {
        Reason::TcbRevoked
    } else if has("No matching TCB level") {
        Reason::TcbLevelUnmatched
    } else if has("Expired") || has("expired") {
        Reason::CollateralExpired
    } else if has("in the future") || has("NotValidYet") {
        Reason::CollateralNotYetValid
    } else if has("Debug mode") || has("profiling") {
        Reason::DebugNotAllowed
    } else if has("Failed to decode quote") || has("Unsupported DCAP") || has("quote must have version") {
        Reason::MalformedEvidence
    } else {
        Reason::InvalidSignature
    }
}

/// The TD report's report_data, read before any signature is checked: what the
/// quote claims, for bindings that [`verify_quote`] then makes true or refuses.
pub fn unverified_report_data(raw: &[u8]) -> Result<[u8; 64], Denial> {
    let (quote, _) = parse_quote(raw)?;
    quote
        .report
        .as_td10()
        .map(|td| td.report_data)
        .ok_or_else(|| malformed("the quote carries an SGX enclave report, not a TD report"))
}

/// Verifies `raw` (a TDX quote) with `collateral` against `root_ca_der` at `now` (unix
/// seconds) and returns its claims. Report data is not compared here (see [`verify`]).
pub fn verify_quote(
    raw: &[u8],
    collateral: &QuoteCollateralV3,
    root_ca_der: &[u8],
    now: u64,
) -> Result<TdxClaims, Denial> {
    let info = quote_info(raw)?;
    check_collateral_window(collateral, now)?;
    let verified = dcap_qvl::verify::QuoteVerifier::<BrokerDcap>::new_with_config(root_ca_der.to_vec())
        .allow_debug(true)
        .verify(raw, collateral, now)
        .map_err(|e| Denial::new(classify(&e), format!("TDX quote refused by DCAP verification: {e:#}")))?;
    td_claims(info, &verified.report, verified.status.clone(), verified.advisory_ids.clone())
}

/// The claims of a TD report whose quote verified with `status`.
fn td_claims(
    info: QuoteInfo,
    report: &Report,
    status: String,
    advisory_ids: Vec<String>,
) -> Result<TdxClaims, Denial> {
    let td = match report {
        Report::TD10(_) | Report::TD15(_) | Report::TD15Ex(_) => report.as_td10(),
        Report::SgxEnclave(_) => None,
    }
    .ok_or_else(|| malformed("the quote carries an SGX enclave report, not a TD report"))?;
    let attrs = td.td_attributes;
    Ok(TdxClaims {
        quote_version: info.version,
        tcb_status: status,
        advisory_ids,
        fmspc: info.fmspc,
        mr_td: hex::encode(td.mr_td),
        rtmr: [td.rt_mr0, td.rt_mr1, td.rt_mr2, td.rt_mr3].map(hex::encode),
        mr_config_id: hex::encode(td.mr_config_id),
        mr_owner: hex::encode(td.mr_owner),
        mr_owner_config: hex::encode(td.mr_owner_config),
        mr_seam: hex::encode(td.mr_seam),
        tee_tcb_svn: hex::encode(td.tee_tcb_svn),
        td_attributes: hex::encode(attrs),
        xfam: hex::encode(td.xfam),
        report_data: hex::encode(td.report_data),
        // TUD bit 0 is DEBUG; bits 4..6 are the profiling/debug-tracing facilities
        // that also expose the TD's state.
        debug: attrs[0] & 0x71 != 0,
    })
}

/// What `tcb_status` says when no collateral was there to evaluate it.
pub const TCB_NOT_EVALUATED: &str = "NotEvaluated";

/// The part of DCAP verification that needs no collateral, for offline checks of a
/// quote whose collateral is not at hand: the quote's signature by its attestation key,
/// the QE report's signature by the PCK certificate, the QE report binding that key
/// (report_data = SHA-256(attestation key || QE auth data)), and the PCK chain to
/// `root_ca_der`, each certificate valid at `now`. Not checked, because they are the
/// collateral: the CRLs (revocation), the QE identity and the TCB info, so the claims'
/// `tcb_status` is [`TCB_NOT_EVALUATED`]. Never enough for the broker to release
/// anything; `verify-evidence` exits non-zero after saying what verified.
pub fn verify_without_collateral(raw: &[u8], root_ca_der: &[u8], now: u64) -> Result<TdxClaims, Denial> {
    use openssl::bn::BigNum;
    use openssl::ec::{EcGroup, EcKey, EcPoint};
    use openssl::ecdsa::EcdsaSig;
    use openssl::nid::Nid;
    use openssl::x509::X509;
    use sha2::Digest as _;

    let (quote, info) = parse_quote(raw)?;
    let bad = |what: &str| Denial::new(Reason::InvalidSignature, format!("TDX quote: {what}"));
    let chain_bad = |what: String| Denial::new(Reason::CertChainInvalid, format!("TDX PCK chain: {what}"));
    let auth = match &quote.auth_data {
        dcap_qvl::quote::AuthData::V4(a) => a.clone().into_v3(),
        dcap_qvl::quote::AuthData::V3(a) => a.clone(),
    };
    // ECDSA P-256 / SHA-256 over `data` with a raw r||s signature.
    let verify = |key: &EcKey<openssl::pkey::Public>, data: &[u8], sig: &[u8; 64]| -> bool {
        let digest = sha2::Sha256::digest(data);
        BigNum::from_slice(&sig[..32])
            .and_then(|r| Ok((r, BigNum::from_slice(&sig[32..])?)))
            .and_then(|(r, s)| EcdsaSig::from_private_components(r, s))
            .and_then(|sig| sig.verify(&digest, key))
            .unwrap_or(false)
    };
    let group = EcGroup::from_curve_name(Nid::X9_62_PRIME256V1).map_err(|_| bad("P-256 unavailable"))?;
    let mut point = vec![0x04];
    point.extend_from_slice(&auth.ecdsa_attestation_key);
    let ak = openssl::bn::BigNumContext::new()
        .and_then(|mut ctx| EcPoint::from_bytes(&group, &point, &mut ctx))
        .and_then(|p| EcKey::from_public_key(&group, &p))
        .map_err(|_| bad("the attestation key is not a P-256 point"))?;
    let signed = raw
        .get(..quote.signed_length())
        .ok_or_else(|| malformed("TDX quote is shorter than its signed part"))?;
    if !verify(&ak, signed, &auth.ecdsa_signature) {
        return Err(bad("the signature over header and TD report does not verify with its attestation key"));
    }
    // The PCK chain: leaf, its CA, then the root, which must be the pinned one.
    let pem = quote.raw_cert_chain().map_err(|e| chain_bad(format!("{e:#}")))?;
    let certs = X509::stack_from_pem(pem)
        .map_err(|_| chain_bad("the certification data is not PEM certificates".into()))?;
    let root =
        X509::from_der(root_ca_der).map_err(|_| chain_bad("the configured root CA is not DER".into()))?;
    let (Some(leaf), Some(ca)) = (certs.first(), certs.get(1)) else {
        return Err(chain_bad(format!("{} certificates, expected PCK, its CA and the root", certs.len())));
    };
    let now_t = Asn1Time::from_unix(i64::try_from(now).unwrap_or(i64::MAX)).map_err(|_| bad("time"))?;
    for (what, c, issuer) in [("PCK certificate", leaf, ca), ("PCK CA", ca, &root), ("root CA", &root, &root)]
    {
        let key = issuer.public_key().map_err(|_| chain_bad(format!("{what}'s issuer has no usable key")))?;
        if !c.verify(&key).unwrap_or(false) {
            return Err(chain_bad(format!("the {what} is not signed by the pinned Intel root's chain")));
        }
        if c.not_before() > now_t || c.not_after() < now_t {
            return Err(chain_bad(format!("the {what} is not valid at the verification time")));
        }
    }
    let pck = leaf
        .public_key()
        .and_then(|k| k.ec_key())
        .map_err(|_| chain_bad("the PCK certificate's key is not EC".into()))?;
    if !verify(&pck, &auth.qe_report, &auth.qe_report_signature) {
        return Err(bad("the QE report is not signed by the PCK certificate"));
    }
    let mut h = sha2::Sha256::new();
    h.update(auth.ecdsa_attestation_key);
    h.update(&auth.qe_auth_data.data);
    // The QE report's report_data is its last 64 bytes.
    if auth.qe_report[320..352] != h.finalize()[..] {
        return Err(bad("the QE report does not vouch for the attestation key"));
    }
    td_claims(info, &quote.report, TCB_NOT_EVALUATED.into(), Vec::new())
}
