//! Interop tests: images made by real skopeo (Go ocicrypt), JWEs made by an
//! independent Python implementation, and round trips through our own wrap and
//! unwrap for every supported key type.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::Read as _;
use std::path::PathBuf;
use std::sync::Arc;

use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64U};
use base64::Engine as _;
use ocicrypt::*;
use sha2::{Digest as _, Sha256};
use zeroize::Zeroizing;

fn td(rel: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/ocicrypt").join(rel)
}

fn read(rel: &str) -> Vec<u8> {
    std::fs::read(td(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn key(rel: &str) -> PrivateKey {
    load_private_key(&read(&format!("keys/{rel}"))).unwrap()
}

fn pubkey(rel: &str) -> PublicKey {
    load_public_key(&read(&format!("keys/{rel}"))).unwrap()
}

/// The annotations of the first layer of a manifest.
fn layer_annotations(manifest: &[u8]) -> HashMap<String, String> {
    let m: serde_json::Value = serde_json::from_slice(manifest).unwrap();
    serde_json::from_value(m["layers"][0]["annotations"].clone()).unwrap()
}

fn decrypt_blob(blob: &[u8], opts: &PrivateOptions, public: &PublicOptions) -> Vec<u8> {
    let mut r = DecryptReader::new(blob, opts, public).unwrap();
    let mut out = Vec::new();
    r.read_to_end(&mut out).unwrap();
    assert!(r.is_verified());
    out
}

const PLAIN_DIGEST: &str = "3c4b0491ad42ed94682815ca7a46e4a5595792d857cec1410833a9d226bb948e";

fn unwrappers(keys: Vec<PrivateKey>) -> Vec<Arc<dyn KeyUnwrapper>> {
    vec![Arc::new(JweUnwrapper::new(keys))]
}

#[tokio::test]
async fn skopeo_jwe_fixture_decrypts() {
    let ann = layer_annotations(&read("jwe/manifest.json"));
    let (opts, public) = unwrap_keys(&unwrappers(vec![key("../jwe/priv.pem")]), &ann).await.unwrap();
    assert_eq!(opts.digest, format!("sha256:{PLAIN_DIGEST}"));
    let plain = decrypt_blob(&read("jwe/layer.enc"), &opts, &public);
    assert_eq!(hex::encode(Sha256::digest(&plain)), PLAIN_DIGEST);
    assert_eq!(plain, read("jwe/layer.plain.tar.gz"));
    // Flattened JWE from go-jose: one RSA-OAEP recipient, no kid.
    let item = &EncAnnotations::parse(&ann).unwrap().wrapped["jwe"][0];
    assert_eq!(jwe_recipients(item).unwrap(), vec![RecipientInfo { alg: "RSA-OAEP".into(), kid: None }]);
}

const MULTI_MANIFEST: &str =
    "multi-recipient/oci/blobs/sha256/f6acb479bac8cb4a47680cd11b24b5573ec9fa82790ec0776dbc7f343087fb7f";
const MULTI_LAYER: &str =
    "multi-recipient/oci/blobs/sha256/847b46113ca946da726305f212c6fc7cceb1270793c3b2617c4391004d7d2fe7";

/// A keyprovider double: the fixture's `kp.py` XORs the options with a pad.
struct XorProvider;
impl KeyUnwrapper for XorProvider {
    fn name(&self) -> String {
        "provider mykp (test double)".into()
    }
    fn handles(&self, scheme: &str) -> bool {
        scheme == "provider.mykp"
    }
    fn unwrap<'a>(
        &'a self,
        _: &'a str,
        wrapped: &'a [u8],
    ) -> BoxFuture<'a, Result<Zeroizing<Vec<u8>>, WrapError>> {
        Box::pin(async move {
            let v: serde_json::Value =
                serde_json::from_slice(wrapped).map_err(|e| WrapError::Other(e.to_string().into()))?;
            let x = B64
                .decode(v["wrapped"].as_str().unwrap_or_default())
                .map_err(|e| WrapError::Other(e.to_string().into()))?;
            let pad = b"interop-test-pad";
            Ok(Zeroizing::new(x.iter().enumerate().map(|(i, b)| b ^ pad[i % pad.len()]).collect()))
        })
    }
}

/// A provider that is down.
struct DownProvider;
impl KeyUnwrapper for DownProvider {
    fn name(&self) -> String {
        "provider mykp (down)".into()
    }
    fn handles(&self, scheme: &str) -> bool {
        scheme.starts_with("provider.")
    }
    fn unwrap<'a>(&'a self, _: &'a str, _: &'a [u8]) -> BoxFuture<'a, Result<Zeroizing<Vec<u8>>, WrapError>> {
        Box::pin(async { Err(WrapError::Unavailable("connection refused".into())) })
    }
}

#[tokio::test]
async fn skopeo_multi_scheme_fixture_decrypts_by_either_scheme() {
    let ann = layer_annotations(&read(MULTI_MANIFEST));
    let blob = read(MULTI_LAYER);
    // JWE key present, provider down: still decrypts (jwe is tried first anyway).
    let u: Vec<Arc<dyn KeyUnwrapper>> =
        vec![Arc::new(DownProvider), Arc::new(JweUnwrapper::new(vec![key("../jwe/priv.pem")]))];
    let (opts, public) = unwrap_keys(&u, &ann).await.unwrap();
    assert_eq!(hex::encode(Sha256::digest(decrypt_blob(&blob, &opts, &public))), PLAIN_DIGEST);
    // Provider only.
    let u: Vec<Arc<dyn KeyUnwrapper>> = vec![Arc::new(XorProvider)];
    let (opts2, _) = unwrap_keys(&u, &ann).await.unwrap();
    assert_eq!(opts2, opts);
    // Wrong JWE key and provider down: one error naming every attempt.
    let u: Vec<Arc<dyn KeyUnwrapper>> =
        vec![Arc::new(DownProvider), Arc::new(JweUnwrapper::new(vec![key("rsa2048.pem")]))];
    let err = unwrap_keys(&u, &ann).await.unwrap_err();
    let OcicryptError::NoKey(report) = &err else { panic!("{err}") };
    let schemes: Vec<&str> = report.attempts.iter().map(|a| a.scheme.as_str()).collect();
    assert_eq!(schemes, vec!["jwe", "provider.mykp"]);
    let msg = report::line(&err);
    assert!(msg.contains("connection refused") && msg.contains("RSA-OAEP"), "{msg}");
}

#[tokio::test]
async fn unsupported_schemes_are_named() {
    let mut ann = layer_annotations(&read("jwe/manifest.json"));
    ann.insert("org.opencontainers.image.enc.keys.pkcs7".into(), "AAAA".into());
    let err = unwrap_keys(&unwrappers(vec![key("rsa2048.pem")]), &ann).await.unwrap_err();
    let msg = report::line(&err);
    assert!(msg.contains("pkcs7") && msg.contains("jwe item 0"), "{msg}");
}

#[tokio::test]
async fn missing_pubopts_is_a_clean_error() {
    let mut ann = layer_annotations(&read("jwe/manifest.json"));
    ann.remove("org.opencontainers.image.enc.pubopts");
    let err = unwrap_keys(&unwrappers(vec![key("../jwe/priv.pem")]), &ann).await.unwrap_err();
    assert!(matches!(err, OcicryptError::Annotations(AnnotationError::MissingPubopts)), "{err}");
}

#[test]
fn independent_python_jwes_decrypt() {
    let payload = read("pyjwe/payload.json");
    // General JSON, three recipients, stray top-level encrypted_key: each key alone.
    let general = read("pyjwe/general-3.json");
    for k in ["rsa2048.pem", "ec-P-256.pem", "rsa2048b.pem", "rsa2048b.jwk"] {
        let got = JweUnwrapper::new(vec![key(k)]).unwrap_jwe(&general).unwrap_or_else(|e| panic!("{k}: {e}"));
        assert_eq!(got.as_slice(), payload.as_slice(), "{k}");
    }
    let infos = jwe_recipients(&general).unwrap();
    assert_eq!(
        infos,
        vec![
            RecipientInfo { alg: "RSA-OAEP".into(), kid: Some("rsa-a".into()) },
            RecipientInfo { alg: "ECDH-ES+A256KW".into(), kid: None },
            RecipientInfo { alg: "RSA-OAEP-256".into(), kid: Some("kbs:///default/key/rsa-b".into()) },
        ]
    );
    // Flattened, ECDH-ES+A128KW on P-384 with apu/apv in an unprotected header.
    let flat = read("pyjwe/flattened-p384-a128kw.json");
    for k in ["ec-P-384.pem", "ec-P-384.jwk"] {
        assert_eq!(JweUnwrapper::new(vec![key(k)]).unwrap_jwe(&flat).unwrap().as_slice(), payload.as_slice());
    }
    // Compact, RSA-OAEP + A128CBC-HS256.
    let compact = read("pyjwe/compact-cbc.txt");
    assert_eq!(
        JweUnwrapper::new(vec![key("rsa2048.pkcs1.pem")]).unwrap_jwe(&compact).unwrap().as_slice(),
        payload.as_slice()
    );
    // Tampered content tag: refused.
    let mut v: serde_json::Value = serde_json::from_slice(&general).unwrap();
    let mut tag = B64U.decode(v["tag"].as_str().unwrap()).unwrap();
    tag[0] ^= 1;
    v["tag"] = B64U.encode(tag).into();
    let err = JweUnwrapper::new(vec![key("rsa2048.pem")]).unwrap_jwe(v.to_string().as_bytes()).unwrap_err();
    assert!(err.to_string().contains("content authentication failed"), "{err}");
}

async fn round_trip(recipients: Vec<PublicKey>, decrypt_with: Vec<PrivateKey>) -> Result<(), OcicryptError> {
    let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 256) as u8).collect();
    let opts = PrivateOptions::generate(format!("sha256:{}", hex::encode(Sha256::digest(&data))));
    let mut enc = EncryptReader::new(data.as_slice(), &opts);
    let mut ct = Vec::new();
    enc.read_to_end(&mut ct).unwrap();
    let public = enc.public_options().unwrap().clone();
    let w: Vec<Arc<dyn KeyWrapper>> = vec![Arc::new(JweWrapper::new(recipients))];
    let ann: HashMap<String, String> = wrap_keys(&w, &opts, &public).await?.into_iter().collect();
    let (got, got_pub) = unwrap_keys(&unwrappers(decrypt_with), &ann).await?;
    assert_eq!(got, opts);
    assert_eq!(decrypt_blob(&ct, &got, &got_pub), data);
    Ok(())
}

#[tokio::test]
async fn round_trip_every_key_type() {
    for (public, private) in [
        ("rsa2048.pub.pem", "rsa2048.pem"),
        ("rsa2048.cert.pem", "rsa2048.pkcs8.der"),
        ("rsa2048.pub.der", "rsa2048.pkcs1.pem"),
        ("rsa2048.pub.pkcs1.pem", "rsa2048.pem"),
        ("ec-P-256.pub.pem", "ec-P-256.sec1.der"),
        ("ec-P-384.pub.pem", "ec-P-384.sec1.pem"),
        ("ec-P-521.pub.pem", "ec-P-521.pem"),
        ("ec-P-384.pub.jwk", "ec-P-384.jwk"),
        ("rsa2048b.pub.jwk", "rsa2048b.pem"),
    ] {
        round_trip(vec![pubkey(public)], vec![key(private)])
            .await
            .unwrap_or_else(|e| panic!("{public} -> {private}: {e}"));
    }
}

#[tokio::test]
async fn multi_recipient_second_key_only() {
    let recipients = vec![pubkey("rsa2048.pub.pem"), pubkey("ec-P-521.pub.pem"), pubkey("rsa2048b.pub.pem")];
    round_trip(recipients.clone(), vec![key("rsa2048b.pem")]).await.unwrap();
    round_trip(recipients.clone(), vec![key("ec-P-256.pem"), key("ec-P-521.pem")]).await.unwrap();
    let err = round_trip(recipients, vec![key("ec-P-384.pem")]).await.unwrap_err();
    let msg = report::line(&err);
    for part in
        ["recipient 0 (RSA-OAEP)", "recipient 1 (ECDH-ES+A256KW)", "recipient 2 (RSA-OAEP)", "jwe item 0"]
    {
        assert!(msg.contains(part), "{part} not in {msg}");
    }
}

#[test]
fn jwe_shape_matches_go_jose() {
    let payload = b"{}";
    let one =
        JweWrapper::new(vec![pubkey("ec-P-256.pub.pem").with_kid("kbs:///a/b/c")]).wrap_jwe(payload).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&one).unwrap();
    assert!(v.get("recipients").is_none() && v.get("encrypted_key").is_some());
    let prot: serde_json::Value =
        serde_json::from_slice(&B64U.decode(v["protected"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(prot["alg"], "ECDH-ES+A256KW");
    assert_eq!(prot["enc"], "A256GCM");
    assert_eq!(prot["kid"], "kbs:///a/b/c");
    assert_eq!(prot["epk"]["crv"], "P-256");

    let two = JweWrapper::new(vec![pubkey("rsa2048.pub.pem"), pubkey("rsa2048b.pub.jwk")])
        .wrap_jwe(payload)
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&two).unwrap();
    let prot: serde_json::Value =
        serde_json::from_slice(&B64U.decode(v["protected"].as_str().unwrap()).unwrap()).unwrap();
    assert_eq!(prot, serde_json::json!({"enc": "A256GCM"}));
    assert_eq!(v["recipients"][0]["header"], serde_json::json!({"alg": "RSA-OAEP"}));
    assert_eq!(
        v["recipients"][1]["header"],
        serde_json::json!({"alg": "RSA-OAEP-256", "kid": "kbs:///default/key/rsa-b"})
    );
    assert_eq!(jwe_recipients(&two).unwrap()[1].kid.as_deref(), Some("kbs:///default/key/rsa-b"));
}

#[test]
fn weak_and_unsupported_keys_refused() {
    let err = load_public_key(&read("keys/rsa1024.pub.pem")).unwrap_err();
    assert_eq!(err, KeyError::RsaTooSmall { bits: 1024 });
    assert!(err.to_string().contains("at least 2048"), "{err}");
    assert_eq!(
        load_private_key(&read("keys/rsa1024.pem")).unwrap_err(),
        KeyError::RsaTooSmall { bits: 1024 }
    );
    assert!(matches!(load_private_key(&read("keys/ed25519.pem")), Err(KeyError::UnsupportedKeyType(_))));
    assert_eq!(load_private_key(&read("keys/rsa2048.enc.pem")).unwrap_err(), KeyError::EncryptedPem);
    assert!(matches!(load_public_key(b"hello"), Err(KeyError::Unrecognized(_))));
    assert!(matches!(load_private_key(&read("keys/rsa2048b.pub.jwk")), Err(KeyError::Jwk(_))));
    let mut jwk: serde_json::Value = serde_json::from_slice(&read("keys/rsa2048b.pub.jwk")).unwrap();
    jwk["alg"] = "RS256".into();
    assert_eq!(
        load_public_key(jwk.to_string().as_bytes()).unwrap_err(),
        KeyError::UnsupportedAlg("RS256".into())
    );
    // Debug never shows key material.
    let dbg = format!("{:?}", key("rsa2048.pem"));
    assert!(dbg.contains("RSA-2048") && !dbg.contains("MII"), "{dbg}");
}

#[tokio::test]
async fn wrap_without_recipients_is_an_error() {
    let opts = PrivateOptions::generate("");
    let public = PublicOptions::new([0; 32]);
    let w: Vec<Arc<dyn KeyWrapper>> = vec![Arc::new(JweWrapper::new(Vec::new()))];
    assert!(matches!(wrap_keys(&w, &opts, &public).await, Err(OcicryptError::NoRecipients)));
}

#[tokio::test]
async fn tampered_layer_fails_at_eof() {
    let ann = layer_annotations(&read("jwe/manifest.json"));
    let (opts, public) = unwrap_keys(&unwrappers(vec![key("../jwe/priv.pem")]), &ann).await.unwrap();
    let mut blob = read("jwe/layer.enc");
    let last = blob.len() - 1;
    blob[last] ^= 0x01;
    let mut r = DecryptReader::new(blob.as_slice(), &opts, &public).unwrap();
    let err = r.read_to_end(&mut Vec::new()).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::InvalidData);
    // Truncated.
    let blob = read("jwe/layer.enc");
    let mut r = DecryptReader::new(&blob[..100], &opts, &public).unwrap();
    assert!(r.read_to_end(&mut Vec::new()).is_err());
    // HMAC altered in pubopts.
    let mut bad = public.clone();
    bad.hmac[31] ^= 1;
    let mut r = DecryptReader::new(blob.as_slice(), &opts, &bad).unwrap();
    assert!(r.read_to_end(&mut Vec::new()).is_err());
}

#[tokio::test]
async fn skopeo_four_recipient_general_jwe_opens_with_each_key() {
    let ann = layer_annotations(&read("skopeo-4-recipients/manifest.json"));
    let blob = read("skopeo-4-recipients/layer.enc");
    let item = &EncAnnotations::parse(&ann).unwrap().wrapped["jwe"][0];
    let algs: Vec<String> = jwe_recipients(item).unwrap().into_iter().map(|r| r.alg).collect();
    assert_eq!(algs, ["RSA-OAEP", "ECDH-ES+A256KW", "RSA-OAEP", "ECDH-ES+A256KW"]);
    // rsa2048b is the SECOND RSA recipient (ocicrypt-rs cannot open that one).
    for k in ["rsa2048.pem", "ec-P-384.pem", "rsa2048b.pem", "ec-P-521.sec1.der"] {
        let (opts, public) =
            unwrap_keys(&unwrappers(vec![key(k)]), &ann).await.unwrap_or_else(|e| panic!("{k}: {e}"));
        assert_eq!(hex::encode(Sha256::digest(decrypt_blob(&blob, &opts, &public))), PLAIN_DIGEST, "{k}");
    }
    assert!(unwrap_keys(&unwrappers(vec![key("ec-P-256.pem")]), &ann).await.is_err());
}
