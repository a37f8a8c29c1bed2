//! The Arm CCA verifier against the published test tokens (`testdata/attestation/cca/`,
//! provenance in its README) and against tokens signed here with the same published
//! test keys (CPAK and RAK), so that a token can bind a fresh challenge, carry the RMM 1.0
//! realm profile (RAK as a COSE_Key) and break one binding at a time.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{EcdsaKeyPair, ECDSA_P384_SHA384_FIXED_SIGNING};
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine;
use ciborium::Value as Cbor;
use kbs_server::claims::Claims;
use kbs_server::policy::{BrokerPolicy, MeasurementMatch, Reason};
use kbs_server::verifier::cca::{self, CcaClaims, CcaError, CcaTrust};
use kbs_server::verifier::offline::{self, OfflineInputs, OfflineTee};
use kbs_server::verifier::{self, Tee, Trust};
use serde_json::{json, Value};
use sha2::Digest;

fn data(rel: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/attestation/cca").join(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn json_file(rel: &str) -> Value {
    serde_json::from_slice(&data(rel)).unwrap()
}

fn trust(rel: &str) -> CcaTrust {
    CcaTrust::parse(&data(rel)).unwrap()
}

/// (token, trust-anchor store) of every published token.
const SAMPLES: &[(&str, &str)] = &[
    ("rust-ccatoken__cca-token-01.cbor", "rust-ccatoken__cpak.json"),
    ("rust-ccatoken__cca-token-02.cbor", "rust-ccatoken__ta-02-ok.json"),
    ("trustee__cca-example-token.cbor", "trustee__tastore.json"),
];

fn hexlow(s: &str) -> String {
    s.to_ascii_lowercase()
}

fn b64hex(s: &str) -> String {
    hex::encode(STANDARD.decode(s).unwrap())
}

#[test]
fn every_published_token_verifies_with_its_trust_anchor() {
    for (tok, ta) in SAMPLES {
        let c = cca::verify_token(&data(tok), &trust(ta))
            .unwrap_or_else(|e| panic!("{tok}: {}", report::line(&e)));
        assert_eq!(c.lifecycle_state, "secured", "{tok}");
        assert_eq!(c.platform_profile, "http://arm.com/CCA-SSD/1.0.0", "{tok}");
        assert_eq!(c.realm_profile, "", "{tok}: the legacy realm profile has no profile claim");
    }
}

#[test]
fn token_01_claims_are_the_reference_values() {
    let c = cca::verify_token(&data("rust-ccatoken__cca-token-01.cbor"), &trust("rust-ccatoken__cpak.json"))
        .unwrap();
    let rv = json_file("rust-ccatoken__rv.json");
    let realm = &rv["realm"][0];
    assert_eq!(c.rim, hexlow(realm["initial-measurement"].as_str().unwrap()));
    assert_eq!(c.personalization_value, hexlow(realm["personalization-value"].as_str().unwrap()));
    for (i, m) in realm["extensible-measurements"].as_array().unwrap().iter().enumerate() {
        assert_eq!(c.rem[i], hexlow(m.as_str().unwrap()), "REM {i}");
    }
    assert_eq!(c.rak_hash_algo, realm["rak-hash-algorithm"].as_str().unwrap());
    // The platform entry of this implementation id (the store's hex one).
    let p = rv["platform"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| hexlow(p["implementation-id"].as_str().unwrap()) == c.implementation_id)
        .unwrap();
    assert_eq!(c.platform_config, hexlow(p["platform-configuration"].as_str().unwrap()));
    let sw = p["sw-components"].as_array().unwrap();
    assert_eq!(c.sw_components.len(), sw.len());
    for (have, want) in c.sw_components.iter().zip(sw) {
        assert_eq!(have.component_type.as_deref(), want["component-type"].as_str());
        assert_eq!(have.measurement, hexlow(want["measurement-value"].as_str().unwrap()));
        assert_eq!(have.signer_id.as_deref().unwrap(), hexlow(want["signer-id"].as_str().unwrap()));
        assert_eq!(have.version.as_deref(), want["version"].as_str());
    }
    assert_eq!(c.challenge, "ab".repeat(64));
    assert_eq!(c.lifecycle, 0x3003);
}

#[test]
fn token_02_claims_are_trustees_expected_claims() {
    let c =
        cca::verify_token(&data("rust-ccatoken__cca-token-02.cbor"), &trust("rust-ccatoken__ta-02-ok.json"))
            .unwrap();
    let want = json_file("trustee__cca-claims__expected-claims-of-cca-token-02.json");
    let (p, r) = (&want["platform"], &want["realm"]);
    let s = |v: &Value| b64hex(v.as_str().unwrap());
    assert_eq!(c.platform_profile, p["cca-platform-profile"].as_str().unwrap());
    assert_eq!(c.implementation_id, s(&p["cca-platform-implementation-id"]));
    assert_eq!(c.instance_id, s(&p["cca-platform-instance-id"]));
    assert_eq!(c.platform_config, s(&p["cca-platform-config"]));
    assert_eq!(u64::from(c.lifecycle), p["cca-platform-lifecycle"].as_u64().unwrap());
    assert_eq!(c.platform_hash_algo.as_deref(), p["cca-platform-hash-algo-id"].as_str());
    // The file also names the component "BL", version "3.4.2"; the token carries neither
    // (its one component has only keys 2 and 5), so only what it carries is compared.
    let sw = &p["cca-platform-sw-components"][0];
    assert_eq!(c.sw_components[0].component_type, None);
    assert_eq!(c.sw_components[0].measurement, s(&sw["measurement-value"]));
    assert_eq!(c.sw_components[0].signer_id.as_deref().unwrap(), s(&sw["signer-id"]));
    assert_eq!(c.challenge, s(&r["cca-realm-challenge"]));
    assert_eq!(c.personalization_value, s(&r["cca-realm-personalization-value"]));
    assert_eq!(c.rim, s(&r["cca-realm-initial-measurement"]));
    for (i, m) in r["cca-realm-extensible-measurements"].as_array().unwrap().iter().enumerate() {
        assert_eq!(c.rem[i], s(m), "REM {i}");
    }
    assert_eq!(c.hash_algo, r["cca-realm-hash-algo-id"].as_str().unwrap());
    assert_eq!(c.rak_hash_algo, r["cca-realm-public-key-hash-algo-id"].as_str().unwrap());
    // The platform challenge is the sha-512 of the raw RAK.
    let rak = STANDARD.decode(r["cca-realm-public-key"].as_str().unwrap()).unwrap();
    assert_eq!(c.platform_challenge, hex::encode(sha2::Sha512::digest(&rak)));
}

#[test]
fn trustee_example_token_claims_are_its_reference_values() {
    let c =
        cca::verify_token(&data("trustee__cca-example-token.cbor"), &trust("trustee__tastore.json")).unwrap();
    let rv = json_file("trustee__rvstore.json");
    let realm = &rv["realm"][0];
    assert_eq!(c.rim, hexlow(realm["initial-measurement"].as_str().unwrap()));
    assert_eq!(c.personalization_value, hexlow(realm["personalization-value"].as_str().unwrap()));
    for (i, m) in realm["extensible-measurements"].as_array().unwrap().iter().enumerate() {
        assert_eq!(c.rem[i], hexlow(m.as_str().unwrap()), "REM {i}");
    }
    let p = &rv["platform"][0];
    assert_eq!(c.implementation_id, hexlow(p["implementation-id"].as_str().unwrap()));
    assert_eq!(c.platform_config, hexlow(p["platform-configuration"].as_str().unwrap()));
    let sw = p["sw-components"].as_array().unwrap();
    assert_eq!(c.sw_components.len(), 13);
    for (have, want) in c.sw_components.iter().zip(sw) {
        assert_eq!(have.component_type.as_deref(), want["component-type"].as_str());
        assert_eq!(have.measurement, want["measurement-value"].as_str().unwrap());
        assert_eq!(have.signer_id.as_deref(), want["signer-id"].as_str());
    }
}

#[test]
fn a_token_signed_by_an_unknown_cpak_is_refused() {
    // Token 01's platform under token 02's store: no key for its instance id.
    let e =
        cca::verify_token(&data("rust-ccatoken__cca-token-01.cbor"), &trust("rust-ccatoken__ta-02-ok.json"))
            .unwrap_err();
    assert!(matches!(e, CcaError::UnknownPlatform { .. }), "{e}");
    assert_eq!(e.reason(), Reason::UnknownPlatformKey);
    assert!(e.to_string().contains("--cca-trust-anchors"), "{e}");
    // Another P-384 key (the RAK's public half) as a single JWK, which stands for every
    // platform: the platform signature does not verify.
    let rak = json_file("trustee__rak-priv.json");
    let public = json!({"kty": "EC", "crv": "P-384", "x": rak["x"], "y": rak["y"]});
    let other = CcaTrust::parse(public.to_string().as_bytes()).unwrap();
    for (tok, _) in SAMPLES.iter().filter(|(t, _)| !t.contains("02")) {
        let e = cca::verify_token(&data(tok), &other).unwrap_err();
        assert_eq!(e.reason(), Reason::InvalidSignature, "{tok}: {e}");
        assert!(e.to_string().contains("platform token"), "{e}");
    }
    // A P-256 key for a P-384 signature is named as such.
    let ta02 = json_file("rust-ccatoken__ta-02-ok.json");
    let p256 = CcaTrust::parse(ta02[0]["pkey"].to_string().as_bytes()).unwrap();
    let e = cca::verify_token(&data("rust-ccatoken__cca-token-01.cbor"), &p256).unwrap_err();
    assert!(e.to_string().contains("ES384") && e.to_string().contains("P-256"), "{e}");
}

#[test]
fn the_negative_trust_anchor_is_refused_when_read() {
    let e = CcaTrust::parse(&data("rust-ccatoken__ta-02-bad__NEGATIVE.json")).unwrap_err();
    assert!(e.to_string().contains("not on the curve"), "{e}");
    for bad in [&b"[]"[..], b"{}", b"not json", b"[{\"instance-id\": \"zz\", \"pkey\": {}}]"] {
        assert!(CcaTrust::parse(bad).is_err(), "{}", String::from_utf8_lossy(bad));
    }
}

/// The offset just after the first occurrence of `claim_head` (a CBOR claim key and the
/// head of its bstr value) at or after `from`.
fn after(token: &[u8], claim_head: &[u8], from: usize) -> usize {
    from + token[from..].windows(claim_head.len()).position(|w| w == claim_head).unwrap() + claim_head.len()
}

#[test]
fn one_flipped_byte_in_each_signed_part_is_refused_naming_the_part() {
    for (tok, ta) in SAMPLES {
        let token = data(tok);
        let t = trust(ta);
        // Platform: the low byte of the lifecycle (2395 => uint16). (Not an id: those
        // select the trust anchor, so a changed id is an unknown platform.)
        let mut p = token.clone();
        let i = after(&token, &[0x19, 0x09, 0x5b, 0x19], 0) + 1;
        p[i] ^= 1;
        let e = cca::verify_token(&p, &t).unwrap_err();
        assert_eq!(e.reason(), Reason::InvalidSignature, "{tok}: {e}");
        assert!(e.to_string().contains("platform token's signature"), "{tok}: {e}");
        // Realm: a byte of the RIM (44238 => bstr).
        let mut r = token.clone();
        let i = after(&token, &[0x19, 0xac, 0xce, 0x58], 0) + 2;
        r[i] ^= 0x80;
        let e = cca::verify_token(&r, &t).unwrap_err();
        assert_eq!(e.reason(), Reason::InvalidSignature, "{tok}: {e}");
        assert!(e.to_string().contains("realm token's signature"), "{tok}: {e}");
        // The last byte (a signature's) and every truncation refuse, never panic.
        let mut s = token.clone();
        let n = s.len();
        s[n - 1] ^= 1;
        assert_eq!(cca::verify_token(&s, &t).unwrap_err().reason(), Reason::InvalidSignature);
        for cut in (0..n).step_by(7) {
            assert!(cca::verify_token(&token[..cut], &t).is_err());
        }
    }
}

// ---- tokens signed here with the published test keys ------------------------------------

fn jwk_bytes(jwk: &Value, k: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(jwk[k].as_str().unwrap()).unwrap()
}

fn key_pair(rel: &str) -> (EcdsaKeyPair, Vec<u8>, Value) {
    let jwk = json_file(rel);
    let mut point = vec![4u8];
    point.extend(jwk_bytes(&jwk, "x"));
    point.extend(jwk_bytes(&jwk, "y"));
    let kp = EcdsaKeyPair::from_private_key_and_public_key(
        &ECDSA_P384_SHA384_FIXED_SIGNING,
        &jwk_bytes(&jwk, "d"),
        &point,
    )
    .unwrap();
    (kp, point, jwk)
}

fn enc(v: &Cbor) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(v, &mut out).unwrap();
    out
}

fn int(n: i64) -> Cbor {
    Cbor::Integer(n.into())
}

/// A tagged COSE_Sign1 over `payload`, ES384.
fn sign1(kp: &EcdsaKeyPair, payload: &[u8]) -> Vec<u8> {
    let protected = enc(&Cbor::Map(vec![(int(1), int(-35))]));
    let tbs = enc(&Cbor::Array(vec![
        Cbor::Text("Signature1".into()),
        Cbor::Bytes(protected.clone()),
        Cbor::Bytes(Vec::new()),
        Cbor::Bytes(payload.to_vec()),
    ]));
    let sig = kp.sign(&SystemRandom::new(), &tbs).unwrap();
    enc(&Cbor::Tag(
        18,
        Box::new(Cbor::Array(vec![
            Cbor::Bytes(protected),
            Cbor::Map(vec![]),
            Cbor::Bytes(payload.to_vec()),
            Cbor::Bytes(sig.as_ref().to_vec()),
        ])),
    ))
}

/// What a test token says; `Default` is a well-formed RMM 1.0 token.
struct Spec {
    challenge: [u8; 64],
    personalization: [u8; 64],
    rim: Vec<u8>,
    lifecycle: i64,
    /// RMM 1.0 profile with a COSE_Key RAK, or the legacy raw point.
    cose_key: bool,
    /// Whether the platform challenge is the RAK's hash (false: of other bytes).
    bound: bool,
    /// The realm profile claim; `None`: RMM 1.0's with a COSE_Key, none with a raw point.
    realm_profile: Option<Option<&'static str>>,
}

impl Default for Spec {
    fn default() -> Self {
        Self {
            challenge: [0; 64],
            personalization: [0; 64],
            rim: vec![0x11; 32],
            lifecycle: 0x3003,
            cose_key: true,
            bound: true,
            realm_profile: None,
        }
    }
}

const INSTANCE_ID: &str = "0107060504030201000f0e0d0c0b0a090817161514131211101f1e1d1c1b1a1918";
const IMPL_ID: &str = "7f454c4602010100000000000000000003003e00010000005058000000000000";

fn make_token(spec: &Spec) -> Vec<u8> {
    let (cpak, _, _) = key_pair("trustee__cpak-priv.json");
    let (rak, rak_point, rak_jwk) = key_pair("trustee__rak-priv.json");
    let rak_claim = if spec.cose_key {
        enc(&Cbor::Map(vec![
            (int(1), int(2)),
            (int(-1), int(2)),
            (int(-2), Cbor::Bytes(jwk_bytes(&rak_jwk, "x"))),
            (int(-3), Cbor::Bytes(jwk_bytes(&rak_jwk, "y"))),
        ]))
    } else {
        rak_point
    };
    let mut realm = vec![
        (int(10), Cbor::Bytes(spec.challenge.to_vec())),
        (int(44235), Cbor::Bytes(spec.personalization.to_vec())),
        (int(44236), Cbor::Text("sha-256".into())),
        (int(44237), Cbor::Bytes(rak_claim.clone())),
        (int(44238), Cbor::Bytes(spec.rim.clone())),
        (int(44239), Cbor::Array((1..=4u8).map(|i| Cbor::Bytes(vec![i; 32])).collect())),
        (int(44240), Cbor::Text("sha-256".into())),
    ];
    let profile = spec.realm_profile.unwrap_or(spec.cose_key.then_some(cca::REALM_PROFILE_RMM1));
    if let Some(p) = profile {
        realm.push((int(265), Cbor::Text(p.into())));
    }
    let mut bound = rak_claim;
    if !spec.bound {
        bound.push(0);
    }
    let platform = vec![
        (int(265), Cbor::Text("tag:arm.com,2023:cca_platform#1.0.0".into())),
        (int(10), Cbor::Bytes(sha2::Sha256::digest(&bound).to_vec())),
        (int(2396), Cbor::Bytes(hex::decode(IMPL_ID).unwrap())),
        (int(256), Cbor::Bytes(hex::decode(INSTANCE_ID).unwrap())),
        (int(2401), Cbor::Bytes(vec![0xcf; 4])),
        (int(2395), int(spec.lifecycle)),
        (
            int(2399),
            Cbor::Array(vec![Cbor::Map(vec![
                (int(1), Cbor::Text("RSE_BL1_2".into())),
                (int(2), Cbor::Bytes(vec![0x9a; 32])),
                (int(5), Cbor::Bytes(vec![0x53; 32])),
            ])]),
        ),
        (int(2402), Cbor::Text("sha-256".into())),
    ];
    let collection = Cbor::Tag(
        399,
        Box::new(Cbor::Map(vec![
            (int(44234), Cbor::Bytes(sign1(&cpak, &enc(&Cbor::Map(platform))))),
            (int(44241), Cbor::Bytes(sign1(&rak, &enc(&Cbor::Map(realm))))),
        ])),
    );
    enc(&collection)
}

fn broker_trust() -> Trust {
    Trust { cca: trust("trustee__tastore.json"), ..Default::default() }
}

fn evidence(token: &[u8]) -> Value {
    // CoCo's attestation-agent: `{"token": <Vec<u8>>}`, serde's number array.
    json!({ "token": token })
}

async fn verify(token: &[u8], expected: &[u8]) -> Result<Claims, kbs_server::policy::Denial> {
    verifier::verify(Tee::Cca, &evidence(token), expected, &broker_trust()).await
}

fn padded(h: &[u8]) -> [u8; 64] {
    let mut out = [0u8; 64];
    out[..h.len()].copy_from_slice(h);
    out
}

#[tokio::test]
async fn rmm1_token_binding_the_session_verifies_and_another_nonce_does_not() {
    let hash = [0x5au8; 48];
    let token = make_token(&Spec { challenge: padded(&hash), ..Default::default() });
    let Claims::Cca(c) = verify(&token, &hash).await.unwrap() else { panic!("not CCA claims") };
    assert_eq!(c.realm_profile, cca::REALM_PROFILE_RMM1);
    assert_eq!(c.platform_profile, "tag:arm.com,2023:cca_platform#1.0.0");
    assert_eq!(c.challenge, hex::encode(padded(&hash)));
    assert_eq!(c.sw_components[0].component_type.as_deref(), Some("RSE_BL1_2"));
    // The evidence as base64 is read as well.
    let b64 = json!({ "token": STANDARD.encode(&token) });
    verifier::verify(Tee::Cca, &b64, &hash, &broker_trust()).await.unwrap();
    // Another session's runtime data: the nonce binding fails, named.
    let d = verify(&token, &[0x5b; 48]).await.unwrap_err();
    assert_eq!(d.reason, Reason::ReportDataMismatch, "{d}");
    assert!(d.detail.contains("realm challenge"), "{d}");
}

#[tokio::test]
async fn legacy_raw_rak_token_signed_here_verifies() {
    let hash = [7u8; 48];
    let token = make_token(&Spec { challenge: padded(&hash), cose_key: false, ..Default::default() });
    let Claims::Cca(c) = verify(&token, &hash).await.unwrap() else { panic!("not CCA claims") };
    assert_eq!(c.realm_profile, "");
}

#[test]
fn each_realm_profile_carries_its_own_key_form_and_unknown_profiles_are_refused() {
    let t = trust("trustee__tastore.json");
    let raw_in_rmm1 = make_token(&Spec {
        cose_key: false,
        realm_profile: Some(Some(cca::REALM_PROFILE_RMM1)),
        ..Default::default()
    });
    let e = cca::verify_token(&raw_in_rmm1, &t).unwrap_err();
    assert!(e.to_string().contains("COSE_Key"), "{e}");
    let cose_in_legacy =
        make_token(&Spec { cose_key: true, realm_profile: Some(None), ..Default::default() });
    let e = cca::verify_token(&cose_in_legacy, &t).unwrap_err();
    assert!(e.to_string().contains("raw SEC1 point"), "{e}");
    let other =
        make_token(&Spec { realm_profile: Some(Some("tag:example.com,2099:realm#9")), ..Default::default() });
    let e = cca::verify_token(&other, &t).unwrap_err();
    assert_eq!(e.reason(), Reason::MalformedEvidence);
    assert!(e.to_string().contains("realm token's claim profile (265)"), "{e}");
}

#[tokio::test]
async fn a_platform_token_for_another_rak_is_refused_as_rak_binding() {
    let hash = [1u8; 48];
    for cose_key in [true, false] {
        let token =
            make_token(&Spec { challenge: padded(&hash), bound: false, cose_key, ..Default::default() });
        let d = verify(&token, &hash).await.unwrap_err();
        assert_eq!(d.reason, Reason::RakBindingMismatch, "{d}");
        assert!(d.detail.contains("RAK") && d.detail.contains("sha-256"), "{d}");
    }
}

#[test]
fn personalization_value_binds_the_init_data() {
    let doc = "version = \"0.1.0\"\nalgorithm = \"sha384\"\n[data]\npod = \"web-1\"\n";
    let parsed = kbs_client::initdata::Initdata::parse(doc.as_bytes()).unwrap();
    let token =
        make_token(&Spec { personalization: parsed.cca_personalization_value(), ..Default::default() });
    let c = cca::verify_token(&token, &trust("trustee__tastore.json")).unwrap();
    let sent = kbs_types::InitData { format: "toml".into(), body: doc.into() };
    let bound = kbs_server::initdata::bind(&Claims::Cca(c.clone()), Some(&sent)).unwrap().unwrap();
    assert_eq!(bound.entry("pod"), Some("web-1"));
    let other = kbs_types::InitData { format: "toml".into(), body: doc.replace("web-1", "web-2") };
    let d = kbs_server::initdata::bind(&Claims::Cca(c), Some(&other)).unwrap_err();
    assert_eq!(d.reason, Reason::InitdataMismatch);
    assert!(d.detail.contains("personalization value"), "{d}");
}

fn claims(spec: &Spec) -> CcaClaims {
    cca::verify_token(&make_token(spec), &trust("trustee__tastore.json")).unwrap()
}

#[test]
fn policy_pins_rim_rems_implementation_and_lifecycle() {
    let c = claims(&Spec::default());
    let rems: Vec<String> = (1..=4u8).map(|i| hex::encode([i; 32])).collect();
    let p = BrokerPolicy::parse(&format!(
        "default_policy:\n  required_attestation:\n    cca:\n      rim: [\"{}\"]\n      rem: [[{}]]\n      implementation_id: [\"{IMPL_ID}\"]\n",
        "11".repeat(32),
        rems.iter().map(|r| format!("\"{r}\"")).collect::<Vec<_>>().join(", ")
    ))
    .unwrap();
    assert_eq!(p.check_claims(&Claims::Cca(c.clone())).unwrap(), MeasurementMatch::Matched);
    // Another RIM.
    let other = claims(&Spec { rim: vec![0x22; 32], ..Default::default() });
    let d = p.check_claims(&Claims::Cca(other)).unwrap_err();
    assert_eq!(d.reason, Reason::MeasurementMismatch);
    assert!(d.detail.contains("RIM"), "{d}");
    // Another REM set.
    let p2 = BrokerPolicy::parse(&format!(
        "default_policy: {{required_attestation: {{cca: {{rem: [[\"{z}\", \"{z}\", \"{z}\", \"{z}\"]]}}}}}}",
        z = "00".repeat(32)
    ))
    .unwrap();
    let d = p2.check_claims(&Claims::Cca(c.clone())).unwrap_err();
    assert!(d.detail.contains("REMs"), "{d}");
    // Lifecycle: only `secured` by default; a debug platform is refused unless listed.
    let debug = claims(&Spec { lifecycle: 0x4000, ..Default::default() });
    let any = BrokerPolicy::parse("default_policy: {required_attestation: {cca: {}}}").unwrap();
    assert_eq!(any.check_claims(&Claims::Cca(c.clone())).unwrap(), MeasurementMatch::Unchecked);
    let d = any.check_claims(&Claims::Cca(debug.clone())).unwrap_err();
    assert_eq!(d.reason, Reason::LifecycleNotAllowed, "{d}");
    let lax = BrokerPolicy::parse(
        "default_policy: {required_attestation: {cca: {lifecycle: [secured, non_psa_rot_debug]}}}",
    )
    .unwrap();
    lax.check_claims(&Claims::Cca(debug)).unwrap();
    // No cca section: the TEE is not allowed.
    let snp_only = BrokerPolicy::parse("default_policy: {required_attestation: {sev_snp: {}}}").unwrap();
    assert_eq!(snp_only.check_claims(&Claims::Cca(c)).unwrap_err().reason, Reason::TeeNotAllowed);
    for bad in [
        "default_policy: {required_attestation: {cca: {rim: [zz]}}}",
        "default_policy: {required_attestation: {cca: {rem: [[\"00\"]]}}}",
        "default_policy: {required_attestation: {cca: {lifecycle: [bogus]}}}",
        "default_policy: {required_attestation: {cca: {implementation_id: [\"00\"]}}}",
    ] {
        assert!(BrokerPolicy::parse(bad).is_err(), "{bad}");
    }
}

#[test]
fn offline_verification_reads_the_token_or_cocos_evidence_json() {
    let token = data("trustee__cca-example-token.cbor");
    let inp =
        OfflineInputs { evidence: token.clone(), cca: trust("trustee__tastore.json"), ..Default::default() };
    let (c, _) = offline::verify_with_policy(OfflineTee::Cca, &inp, None).unwrap();
    assert!(matches!(c, Claims::Cca(_)));
    let inp = OfflineInputs { evidence: evidence(&token).to_string().into_bytes(), ..inp };
    offline::verify(OfflineTee::Cca, &inp).unwrap();
    let none = OfflineInputs { evidence: token, ..Default::default() };
    let d = offline::verify(OfflineTee::Cca, &none).unwrap_err();
    assert!(d.detail.contains("--cca-trust-anchors"), "{d}");
}

#[test]
fn verify_evidence_cli_exits_zero_only_when_the_token_verifies() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/attestation/cca");
    let run = |tok: &str, ta: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_cloak-kbs"))
            .args(["verify-evidence", "--tee", "cca", "--json", "--evidence"])
            .arg(dir.join(tok))
            .arg("--cca-trust-anchors")
            .arg(dir.join(ta))
            .output()
            .unwrap()
    };
    let ok = run("trustee__cca-example-token.cbor", "trustee__tastore.json");
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    let v: Value = serde_json::from_slice(&ok.stdout).unwrap();
    assert_eq!(v["tee"], "cca");
    let rim = v["rim"].as_str().unwrap();
    assert!(rim.starts_with("ae87fbf7") && rim == rim.to_ascii_lowercase(), "{rim}");
    let bad = run("rust-ccatoken__cca-token-01.cbor", "rust-ccatoken__ta-02-ok.json");
    assert_eq!(bad.status.code(), Some(1));
    let v: Value = serde_json::from_slice(&bad.stdout).unwrap();
    assert_eq!(v["reason"], "unknown_platform_key");
}

// ---- through the broker's wire protocol ------------------------------------------------

mod common;

/// A realm whose token binds the session's challenge and the init-data naming web-1 in
/// shop attests over the wire and gets a key; with a policy pinning another RIM the same
/// realm is refused, and the reason is the label of `coco_attestation_failure_total`.
#[tokio::test]
async fn a_realm_attests_to_the_broker_and_a_policy_pinning_another_rim_denies_it() {
    let anchors = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/attestation/cca/trustee__tastore.json");
    let policy = |rim: &str| {
        format!(
            "default_policy: {{required_attestation: {{cca: {{rim: [\"{rim}\"]}}}}, released_resources: [\"default/*\"]}}\n"
        )
    };
    let (doc, _) = common::initdata_for("web-1", "shop");
    let perso = kbs_client::initdata::Initdata::parse(doc.as_bytes()).unwrap().cca_personalization_value();
    let attest = |b: &common::Broker| {
        let url = b.url.clone();
        let doc = doc.clone();
        async move {
            let r = common::auth(&url, "cca", json!({})).await;
            let token = make_token(&Spec {
                challenge: padded(&r.report_data()),
                personalization: perso,
                ..Default::default()
            });
            let (s, v) = r.attest_with(evidence(&token), Some(&doc)).await;
            (r, s, v)
        }
    };

    let b = common::start(&policy(&"11".repeat(32)), |cfg, _| cfg.cca.trust_anchors = Some(anchors.clone()))
        .await;
    assert_eq!(b.put("default/image-kek/1", b"0123456789abcdef0123456789abcdef").await.status(), 200);
    let (r, s, v) = attest(&b).await;
    assert_eq!(s, 200, "{v}");
    let (s, got) = r.get(v["token"].as_str(), "default/image-kek/1").await;
    assert_eq!(s, 200, "{got}");
    assert_eq!(r.tee_key.decrypt(&got), b"0123456789abcdef0123456789abcdef");
    let m = b.metrics().await;
    assert_eq!(
        common::metric(
            &m,
            "coco_attestation_success_total",
            &["pod=\"web-1\"", "measurement_match=\"true\""]
        ),
        1
    );

    let other =
        common::start(&policy(&"22".repeat(32)), |cfg, _| cfg.cca.trust_anchors = Some(anchors.clone()))
            .await;
    let (_, s, v) = attest(&other).await;
    assert_eq!(s, 401, "{v}");
    assert!(v["detail"].as_str().unwrap().starts_with("measurement_mismatch"), "{v}");
    let m = other.metrics().await;
    assert_eq!(
        common::metric(
            &m,
            "coco_attestation_failure_total",
            &["pod=\"web-1\"", "namespace=\"shop\"", "reason=\"measurement_mismatch\""]
        ),
        1
    );

    // A broker without the platform's key: refused before the policy, named.
    let unknown = common::start(&policy(&"11".repeat(32)), |_, _| {}).await;
    let (_, s, v) = attest(&unknown).await;
    assert_eq!(s, 401, "{v}");
    assert!(v["detail"].as_str().unwrap().starts_with("unknown_platform_key"), "{v}");
    let m = unknown.metrics().await;
    assert_eq!(common::metric(&m, "coco_attestation_failure_total", &["reason=\"unknown_platform_key\""]), 1);
}

#[test]
fn serve_config_reads_cca_trust_anchors_and_names_a_bad_store_once() {
    let dir = tempfile::tempdir().unwrap();
    let anchors = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../testdata/attestation/cca");
    let yaml = dir.path().join("kbs.yaml");
    std::fs::write(
        &yaml,
        format!("cca:\n  trust_anchors: {}\n", anchors.join("trustee__tastore.json").display()),
    )
    .unwrap();
    let cfg = kbs_server::ServeConfig::from_file(&yaml).unwrap();
    let t = cfg.trust().unwrap();
    cca::verify_token(&data("trustee__cca-example-token.cbor"), &t.cca).unwrap();

    let bad = kbs_server::ServeConfig {
        cca: kbs_server::config::CcaConfig {
            trust_anchors: Some(anchors.join("rust-ccatoken__ta-02-bad__NEGATIVE.json")),
        },
        ..Default::default()
    };
    let e = bad.trust().unwrap_err();
    let line = report::line(&e);
    assert!(line.contains("NEGATIVE.json") && line.contains("not on the curve"), "{line}");
    assert_eq!(report::repeated_source(&e), None, "{line}");
}

/// A CCA attester backed by the published test keys: what an Arm CCA realm's RMM would
/// answer through configfs-tsm, signed here (the test seam, like `sample`).
struct TestKeysCcaAttester {
    personalization: [u8; 64],
}

impl kbs_client::Attester for TestKeysCcaAttester {
    fn tee(&self) -> Tee {
        Tee::Cca
    }

    fn evidence<'a>(
        &'a self,
        report_data: &'a [u8; 64],
    ) -> std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Value, kbs_client::AttesterError>> + Send + 'a>,
    > {
        let token = make_token(&Spec {
            challenge: *report_data,
            personalization: self.personalization,
            ..Default::default()
        });
        Box::pin(async move { Ok(evidence(&token)) })
    }
}

/// cloak's own KBS client (the one cloak-pull and cloak-cdh use) with a CCA attester:
/// its 64-byte report_data is the realm challenge the broker expects, one attestation
/// serves every key, and the broker's refusal reaches the client with its reason.
#[tokio::test]
async fn cloaks_kbs_client_attests_a_cca_realm_and_sees_a_refusal_reason() {
    let anchors = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/attestation/cca/trustee__tastore.json");
    let start = |rim: String| {
        let anchors = anchors.clone();
        async move {
            common::start(
                &format!(
                    "default_policy: {{required_attestation: {{cca: {{rim: [\"{rim}\"]}}}}, released_resources: [\"default/*\"]}}\n"
                ),
                move |cfg, _| cfg.cca.trust_anchors = Some(anchors),
            )
            .await
        }
    };
    let attester = || -> std::sync::Arc<dyn kbs_client::Attester> {
        std::sync::Arc::new(TestKeysCcaAttester { personalization: [0; 64] })
    };
    let b = start("11".repeat(32)).await;
    let admin =
        kbs_client::AdminClient::new(&b.url, &b.admin_key.private_key_to_pem_pkcs8().unwrap()).unwrap();
    for i in 0..2 {
        let uri: kbs_client::ResourceUri = format!("default/image-kek/{i}").parse().unwrap();
        admin.put_resource(&uri, format!("kek-{i}").as_bytes()).await.unwrap();
    }
    let c = kbs_client::KbsClient::new(&b.url, attester(), kbs_client::ClientConfig::default()).unwrap();
    for i in 0..2 {
        let uri: kbs_client::ResourceUri = format!("kbs:///default/image-kek/{i}").parse().unwrap();
        assert_eq!(&c.get_resource(&uri).await.unwrap()[..], format!("kek-{i}").as_bytes());
    }
    assert_eq!(c.attestation_count(), 1);

    let other = start("22".repeat(32)).await;
    let c = kbs_client::KbsClient::new(&other.url, attester(), kbs_client::ClientConfig::default()).unwrap();
    let uri: kbs_client::ResourceUri = "default/image-kek/0".parse().unwrap();
    let e = report::line(&c.get_resource(&uri).await.unwrap_err());
    assert!(e.contains("measurement_mismatch") && e.contains("RIM"), "{e}");
}

/// The real `cloak-pull --attester cca` end to end: its CCA attester takes tokens from a
/// test RMM (`CLOAK_CCA_TEST_RMM`, the CCA counterpart of the `sample` attester), here
/// `cca_test_rmm.py`, an encoder written independently of cloak with the published test
/// keys; the broker trusts the test platform key. It pulls and decrypts an image whose
/// KEK the broker holds; a broker whose policy pins another RIM refuses it, the refusal
/// reaching the user with its reason and counted in `coco_attestation_failure_total`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloak_pull_with_a_cca_test_rmm_attests_pulls_and_a_pinned_rim_denies() {
    use std::process::Command;
    let anchors = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../testdata/attestation/cca/trustee__tastore.json");
    let rmm = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/cca_test_rmm.py");
    let policy = |rim: &str| {
        format!(
            "default_policy: {{required_attestation: {{cca: {{rim: [\"{rim}\"]}}}}, released_resources: [\"default/*\"]}}\n"
        )
    };
    let pull = |url: &str, image: &std::path::Path, bundle: &std::path::Path| {
        test_support::run_bounded(
            Command::new(test_support::bin("cloak-pull"))
                .args(["--quiet", "--kbs", url, "--attester", "cca"])
                .arg(format!("oci:{}:enc", image.display()))
                .arg(bundle)
                .env("CLOAK_CCA_TEST_RMM", &rmm)
                .env("CCA_TEST_RIM", "11".repeat(32)),
            test_support::CMD_LIMIT,
        )
        .unwrap()
    };
    let work = tempfile::tempdir().unwrap();
    let image = work.path().join("enc");
    let a = anchors.clone();
    let b = common::start(&policy(&"11".repeat(32)), move |cfg, _| cfg.cca.trust_anchors = Some(a)).await;
    common::encrypt_for(&b, "kbs:///default/image-kek/cca", &image);
    let bundle = work.path().join("bundle");
    let ran = pull(&b.url, &image, &bundle);
    assert!(ran.ok(), "cloak-pull --attester cca: {}", ran.describe());
    assert!(!test_support::list_tree(&bundle.join("rootfs")).is_empty(), "no rootfs");
    assert_eq!(common::metric(&b.metrics().await, "coco_attestation_success_total", &[]), 1);

    // The same image's KEK in a broker that pins another RIM.
    let a = anchors.clone();
    let other = common::start(&policy(&"22".repeat(32)), move |cfg, _| cfg.cca.trust_anchors = Some(a)).await;
    let image2 = work.path().join("enc2");
    common::encrypt_for(&other, "kbs:///default/image-kek/cca", &image2);
    let bundle2 = work.path().join("bundle2");
    let ran = pull(&other.url, &image2, &bundle2);
    assert!(!ran.ok(), "a realm whose RIM the policy does not list got its key");
    let said = ran.describe();
    assert!(said.contains("measurement_mismatch") && said.contains("RIM"), "{said}");
    assert!(!bundle2.join("rootfs").exists() || test_support::list_tree(&bundle2.join("rootfs")).is_empty());
    let m = other.metrics().await;
    assert_eq!(
        common::metric(&m, "coco_attestation_failure_total", &["reason=\"measurement_mismatch\""]),
        1,
        "{m}"
    );
}
