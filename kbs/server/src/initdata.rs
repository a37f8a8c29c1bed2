//! Init-data bound to the hardware report: the broker's half of CoCo's init-data.
//!
//! A guest sends its init-data in the RCAR (`"init-data": {"format": "toml", "body":
//! <the document as the host measured it>}`). The host put the document's digest into
//! the report when it launched the guest (kata-runtime: SNP `HOST_DATA`, 32 bytes; TDX
//! `MRCONFIGID`, 48 bytes; CCA realm personalization value, 64 bytes; zero-padded or cut;
//! see `kbs_client::initdata`), so the broker recomputes the digest from the body and
//! compares it with the *verified* report field, as Trustee's attestation service does.
//! Only then are the document's
//! `[data]` entries trusted: for the policy (`initdata` in `policy.rs`) and for the
//! `pod` / `namespace` metric labels.
//!
//! The sample TEE has no report: its evidence carries the raw digest in `init_data`
//! (base64), which the sample verifier hands over as [`SampleClaims::init_data`].
//!
//! Where Trustee and the spec differ, this follows Trustee's code: only `format =
//! "toml"` is accepted (the spec also names JSON), `version` is not checked here, and a
//! guest that sends no init-data is not compared at all (the policy decides whether
//! such an unbound guest is acceptable).
//!
//! [`SampleClaims::init_data`]: crate::claims::SampleClaims::init_data

use std::collections::BTreeMap;

use kbs_client::initdata::Initdata;
use serde::{Deserialize, Serialize};

use crate::claims::Claims;
use crate::policy::{Denial, Reason};

/// The `[data]` entry whose text is the `pod` metric label of a bound guest.
pub const POD_ENTRY: &str = "pod";
/// The `[data]` entry whose text is the `namespace` metric label of a bound guest.
pub const NAMESPACE_ENTRY: &str = "namespace";

/// Verified init-data: what the token carries so the policy can be applied again at
/// resource time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitdataClaims {
    /// `sha256`, `sha384` or `sha512`.
    pub algorithm: String,
    /// The full digest of the document, lowercase hex.
    pub digest: String,
    /// The `[data]` entries, as text.
    pub data: BTreeMap<String, String>,
}

impl InitdataClaims {
    /// The `[data]` entry `name`.
    pub fn entry(&self, name: &str) -> Option<&str> {
        self.data.get(name).map(String::as_str)
    }
}

fn mismatch(detail: String) -> Denial {
    Denial::new(Reason::InitdataMismatch, detail)
}

/// Checks the init-data the guest sent against the verified report `claims`.
///
/// No init-data: `Ok(None)` (whether that is acceptable is the policy's call). A
/// format other than `toml` or a document that is not init-data: `initdata_invalid`.
/// A digest that is not the one in the report: `initdata_mismatch`.
pub fn bind(claims: &Claims, sent: Option<&kbs_types::InitData>) -> Result<Option<InitdataClaims>, Denial> {
    let Some(sent) = sent else { return Ok(None) };
    if sent.format != "toml" {
        return Err(Denial::new(
            Reason::InitdataInvalid,
            format!(
                "init-data format {:?} is not supported: only \"toml\" is",
                sent.format.chars().take(32).collect::<String>()
            ),
        ));
    }
    let doc = Initdata::parse(sent.body.as_bytes())
        .map_err(|e| Denial::new(Reason::InitdataInvalid, format!("the init-data body: {e}")))?;
    let digest = doc.digest();
    // The report's field that carries the digest (fitted to its size as the host
    // fits it), and how a mismatch names it.
    let (have, want, what) = match claims {
        Claims::Snp(c) => (c.host_data.as_str(), doc.field(32), "the report's HOST_DATA"),
        Claims::Tdx(c) => (c.mr_config_id.as_str(), doc.field(48), "the quote's MRCONFIGID"),
        Claims::Cca(c) => {
            (c.personalization_value.as_str(), doc.field(64), "the realm token's personalization value")
        }
        Claims::AzSnpVtpm(c) => pcr8(&c.vtpm, &doc)?,
        Claims::AzTdxVtpm(c) => pcr8(&c.vtpm, &doc)?,
        Claims::Sample(c) => match &c.init_data {
            None => return Err(mismatch("the sample evidence carries no init_data digest".into())),
            Some(have) => (have.as_str(), digest.clone(), "the sample evidence's init_data"),
        },
    };
    if !field_matches(have, &want) {
        return Err(mismatch(format!(
            "the init-data's {} digest is not {what} {have}",
            doc.algorithm().name()
        )));
    }
    Ok(Some(InitdataClaims {
        algorithm: doc.algorithm().name().to_owned(),
        digest: hex::encode(&digest),
        data: doc.data().iter().cloned().collect(),
    }))
}

/// Azure confidential VMs: the host cannot set a report field, so attestation-agent
/// extends vTPM PCR 8 once with the init-data's SHA-256 digest at boot (as Trustee
/// checks it): PCR 8 = SHA-256(32 zero bytes || digest). The PCR bank is SHA-256, so
/// only `algorithm = "sha256"` init-data can be bound there. Returns the PCR (or "(not
/// quoted)", which matches nothing), the value it must hold, and its name.
fn pcr8<'a>(
    vtpm: &'a crate::verifier::azure::VtpmClaims,
    doc: &Initdata,
) -> Result<(&'a str, Vec<u8>, &'static str), Denial> {
    use sha2::Digest as _;
    if doc.algorithm().name() != "sha256" {
        return Err(mismatch(format!(
            "the init-data's algorithm is {}, and on an Azure vTPM it is bound in PCR {}, a SHA-256 register: use algorithm = \"sha256\"",
            doc.algorithm().name(),
            crate::verifier::azure::INITDATA_PCR
        )));
    }
    let want = sha2::Sha256::new().chain_update([0u8; 32]).chain_update(doc.digest()).finalize().to_vec();
    let have = vtpm
        .pcrs
        .get(&crate::verifier::azure::INITDATA_PCR.to_string())
        .map_or("(not quoted)", String::as_str);
    Ok((have, want, "PCR 8 (the digest extended once into a zero PCR):"))
}

/// Whether a report field (lowercase hex, as the verifiers give it) holds `want`.
fn field_matches(field_hex: &str, want: &[u8]) -> bool {
    hex::decode(field_hex).is_ok_and(|f| f == want)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::claims::SampleClaims;

    const DOC: &str = "version = \"0.1.0\"\nalgorithm = \"sha384\"\n[data]\npod = \"web-1\"\n";

    fn sent(body: &str) -> kbs_types::InitData {
        kbs_types::InitData { format: "toml".into(), body: body.into() }
    }

    fn sample(digest: Option<Vec<u8>>) -> Claims {
        Claims::Sample(SampleClaims { svn: "1".into(), init_data: digest.map(hex::encode) })
    }

    #[test]
    fn sample_digest_binds_and_one_changed_byte_does_not() {
        let d = Initdata::parse(DOC.as_bytes()).unwrap().digest();
        let c = bind(&sample(Some(d.clone())), Some(&sent(DOC))).unwrap().unwrap();
        assert_eq!(c.digest, hex::encode(&d));
        assert_eq!(c.entry(POD_ENTRY), Some("web-1"));
        let changed = DOC.replace("web-1", "web-2");
        let e = bind(&sample(Some(d)), Some(&sent(&changed))).unwrap_err();
        assert_eq!(e.reason, Reason::InitdataMismatch, "{e}");
        let e = bind(&sample(None), Some(&sent(DOC))).unwrap_err();
        assert_eq!(e.reason, Reason::InitdataMismatch, "{e}");
        assert!(bind(&sample(None), None).unwrap().is_none());
    }

    #[test]
    fn other_formats_and_bad_documents_are_invalid() {
        let d = Initdata::parse(DOC.as_bytes()).unwrap().digest();
        let json = kbs_types::InitData { format: "json".into(), body: "{}".into() };
        let e = bind(&sample(Some(d.clone())), Some(&json)).unwrap_err();
        assert_eq!(e.reason, Reason::InitdataInvalid);
        assert!(e.detail.contains("\"json\"") && e.detail.contains("toml"), "{e}");
        let e = bind(&sample(Some(d)), Some(&sent("version = ["))).unwrap_err();
        assert_eq!(e.reason, Reason::InitdataInvalid);
    }
}
