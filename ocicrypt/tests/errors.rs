//! Issue 27: every unwrap error says each clause once, and a layer nothing configured
//! can open says what it carries and which flag would open it.
#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ocicrypt::*;
use zeroize::Zeroizing;

fn read(rel: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../testdata/ocicrypt").join(rel);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn key(rel: &str) -> PrivateKey {
    load_private_key(&read(&format!("keys/{rel}"))).unwrap()
}

fn pubkey(rel: &str) -> PublicKey {
    load_public_key(&read(&format!("keys/{rel}"))).unwrap()
}

/// Annotations of a layer wrapped as JWE for `recipients`, plus raw provider items.
async fn annotations(recipients: Vec<PublicKey>, providers: &[(&str, &[u8])]) -> HashMap<String, String> {
    let opts = PrivateOptions::generate("sha256:00");
    let public = PublicOptions::new([0u8; 32]);
    let w: Vec<Arc<dyn KeyWrapper>> = vec![Arc::new(JweWrapper::new(recipients))];
    let mut ann: HashMap<String, String> = wrap_keys(&w, &opts, &public).await.unwrap().into_iter().collect();
    for (name, item) in providers {
        ann.insert(annotations::keys_annotation(&annotations::provider_scheme(name)), B64.encode(item));
    }
    ann
}

fn assert_said_once(e: &(dyn std::error::Error + 'static)) {
    assert_eq!(report::repeated_source(e), None, "{}", report::line(e));
    assert_eq!(report::repeated_clause(&report::line(e)), None, "{}", report::line(e));
}

#[tokio::test]
async fn no_unwrapper_error_names_recipients_and_flags() {
    let packet =
        br#"{"kid":"kbs:///default/image-kek/app","wrapped_data":"AAAA","iv":"AAAA","wrap_type":"A256GCM"}"#;
    let ann = annotations(
        vec![pubkey("rsa2048.pub.pem").with_kid("kbs:///default/image-key/app"), pubkey("ec-P-256.pub.pem")],
        &[("attestation-agent", packet), ("vendor", b"opaque bytes")],
    )
    .await;
    let err = unwrap_keys(&[], &ann).await.unwrap_err();
    let OcicryptError::NoKey(report) = &err else { panic!("{err}") };
    let unopened: Vec<(&str, Vec<&str>)> =
        report.unopened().iter().map(|c| (c.scheme.as_str(), c.flags())).collect();
    assert_eq!(
        unopened,
        [
            ("jwe", vec![FLAG_KEY, FLAG_KBS]),
            ("provider.attestation-agent", vec![FLAG_KBS]),
            ("provider.vendor", vec![FLAG_KEYPROVIDER])
        ]
    );
    let line = report::line(&err);
    for part in [
        "could not unwrap the layer key: nothing configured opens jwe (recipients RSA-OAEP kid kbs:///default/image-key/app, ECDH-ES+A256KW); give --key FILE or --kbs URL",
        "nothing configured opens provider.attestation-agent (kid kbs:///default/image-kek/app); give --kbs URL",
        "nothing configured opens provider.vendor; give --keyprovider-config FILE",
    ] {
        assert!(line.contains(part), "{part:?} not in {line}");
    }
    assert!(line.contains(&report.hint().unwrap()), "{line}");
    assert_eq!(line.matches("--keyprovider-config").count(), 1, "{line}");
    assert_said_once(&err);
}

#[tokio::test]
async fn a_tried_scheme_gives_no_hint() {
    let ann = annotations(vec![pubkey("rsa2048.pub.pem")], &[]).await;
    let u: Vec<Arc<dyn KeyUnwrapper>> = vec![Arc::new(JweUnwrapper::new(vec![key("ec-P-256.pem")]))];
    let err = unwrap_keys(&u, &ann).await.unwrap_err();
    let OcicryptError::NoKey(report) = &err else { panic!("{err}") };
    assert_eq!(report.hint(), None);
    assert_eq!(
        report::line(&err),
        "could not unwrap the layer key: [jwe item 0 via jwe (1 keys)] no usable key: \
         recipient 0 (RSA-OAEP) with key 0: RSA-OAEP needs an RSA key, this key is EC"
    );
    assert_said_once(&err);
}

struct DownProvider;

impl KeyUnwrapper for DownProvider {
    fn name(&self) -> String {
        "provider vendor (down)".into()
    }
    fn handles(&self, scheme: &str) -> bool {
        scheme.starts_with("provider.")
    }
    fn unwrap<'a>(&'a self, _: &'a str, _: &'a [u8]) -> BoxFuture<'a, Result<Zeroizing<Vec<u8>>, WrapError>> {
        Box::pin(async {
            Err(WrapError::Unavailable(Box::new(std::io::Error::new(
                std::io::ErrorKind::ConnectionRefused,
                "connecting to 127.0.0.1:50000",
            ))))
        })
    }
}

#[tokio::test]
async fn display_does_not_repeat_its_source() {
    // Two recipients failing the same way, two provider items failing the same way:
    // each cause is said once.
    let ann = annotations(
        vec![pubkey("rsa2048.pub.pem"), pubkey("rsa2048b.pub.pem")],
        &[("vendor", b"one"), ("other", b"two")],
    )
    .await;
    let u: Vec<Arc<dyn KeyUnwrapper>> =
        vec![Arc::new(JweUnwrapper::new(vec![key("ec-P-384.pem")])), Arc::new(DownProvider)];
    let err = unwrap_keys(&u, &ann).await.unwrap_err();
    let line = report::line(&err);
    assert_eq!(line.matches("RSA-OAEP needs an RSA key").count(), 1, "{line}");
    assert_eq!(line.matches("connecting to 127.0.0.1:50000").count(), 1, "{line}");
    assert!(line.contains("recipient 0 (RSA-OAEP) with key 0, recipient 1 (RSA-OAEP) with key 0"), "{line}");
    assert_said_once(&err);

    // Every WrapError kind says its own step only.
    let cause = || -> keywrap::BoxError { "the peer said no".into() };
    for e in [
        WrapError::Malformed { what: "JWE".into(), source: cause() },
        WrapError::NoKey(cause()),
        WrapError::Refused(cause()),
        WrapError::Unavailable(cause()),
        WrapError::Other(cause()),
    ] {
        assert_said_once(&e);
        assert_eq!(report::line(&e).matches("the peer said no").count(), 1);
    }
    let e = OcicryptError::Wrap { scheme: "jwe".into(), source: WrapError::NoKey(cause()) };
    assert_said_once(&e);
    assert_eq!(
        report::line(&e),
        "wrapping the layer key with scheme \"jwe\" failed: no usable key: the peer said no"
    );
}

#[tokio::test]
async fn bad_pubopts_is_said_once() {
    let mut ann = annotations(vec![pubkey("rsa2048.pub.pem")], &[]).await;
    ann.insert(annotations::PUBOPTS.into(), B64.encode(b"{\"cipher\":\"DES\"}"));
    let err = unwrap_keys(&[], &ann).await.unwrap_err();
    assert_said_once(&err);
    assert!(
        report::line(&err).starts_with("annotation org.opencontainers.image.enc.pubopts: "),
        "{}",
        report::line(&err)
    );
}
