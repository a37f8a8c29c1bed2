//! TDX collateral from a PCCS: a server on 127.0.0.1 answers the PCCS v4 API with the
//! genuine sample collateral (as Intel's PCS/PCCS shape it: JSON bodies, URL-encoded
//! issuer-chain headers, a hex root CA CRL). The broker's source fetches once per
//! FMSPC, serves from memory, then from disk when the PCCS is down, and refetches
//! before nextUpdate.

#![allow(clippy::unwrap_used)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use kbs_server::policy::Reason;
use kbs_server::verifier::tdx;
use kbs_server::verifier::{CollateralConfig, CollateralSource};

const AT: u64 = 1_751_000_000;

fn data(rel: &str) -> Vec<u8> {
    std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/attestation").join(rel),
    )
    .unwrap()
}

fn sample() -> dcap_qvl::QuoteCollateralV3 {
    serde_json::from_slice(&data("tdx/tdx_quote_collateral.json")).unwrap()
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn with_chain(name: &'static str, chain: &str, body: Vec<u8>) -> axum::response::Response {
    let mut h = HeaderMap::new();
    h.insert(HeaderName::from_static(name), HeaderValue::from_str(&urlencode(chain)).unwrap());
    (h, body).into_response()
}

struct Pccs {
    url: String,
    hits: Arc<AtomicUsize>,
    fail: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

async fn pccs() -> Pccs {
    let c = Arc::new(sample());
    let hits = Arc::new(AtomicUsize::new(0));
    let fail = Arc::new(AtomicUsize::new(0));
    let (h, f) = (hits.clone(), fail.clone());
    let guard = move || {
        h.fetch_add(1, Ordering::SeqCst);
        f.load(Ordering::SeqCst) == 0
    };
    let (c1, c2, c3, c4) = (c.clone(), c.clone(), c.clone(), c);
    let (g1, g2, g3, g4) = (guard.clone(), guard.clone(), guard.clone(), guard);
    let app = axum::Router::new()
        .route(
            "/sgx/certification/v4/pckcrl",
            get(move || async move {
                if !g1() {
                    return StatusCode::INTERNAL_SERVER_ERROR.into_response();
                }
                with_chain("sgx-pck-crl-issuer-chain", &c1.pck_crl_issuer_chain, c1.pck_crl.clone())
            }),
        )
        .route(
            "/tdx/certification/v4/tcb",
            get(move || async move {
                if !g2() {
                    return StatusCode::INTERNAL_SERVER_ERROR.into_response();
                }
                let body = format!(
                    "{{\"tcbInfo\":{},\"signature\":\"{}\"}}",
                    c2.tcb_info,
                    hex::encode(&c2.tcb_info_signature)
                );
                with_chain("tcb-info-issuer-chain", &c2.tcb_info_issuer_chain, body.into_bytes())
            }),
        )
        .route(
            "/tdx/certification/v4/qe/identity",
            get(move || async move {
                if !g3() {
                    return StatusCode::INTERNAL_SERVER_ERROR.into_response();
                }
                let body = format!(
                    "{{\"enclaveIdentity\":{},\"signature\":\"{}\"}}",
                    c3.qe_identity,
                    hex::encode(&c3.qe_identity_signature)
                );
                with_chain(
                    "sgx-enclave-identity-issuer-chain",
                    &c3.qe_identity_issuer_chain,
                    body.into_bytes(),
                )
            }),
        )
        .route(
            "/sgx/certification/v4/rootcacrl",
            get(move || async move {
                if !g4() {
                    return StatusCode::INTERNAL_SERVER_ERROR.into_response();
                }
                hex::encode(&c4.root_ca_crl).into_response()
            }),
        );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Pccs { url, hits, fail, task }
}

fn source(pccs_url: Option<String>, cache: &std::path::Path, margin: Duration) -> CollateralSource {
    CollateralSource::new(CollateralConfig {
        pccs_url,
        cache_dir: Some(cache.to_owned()),
        refresh_margin: margin,
        ..Default::default()
    })
    .unwrap()
}

#[tokio::test]
async fn pccs_fetch_memory_and_disk_cache_and_outage() {
    let p = pccs().await;
    let cache = tempfile::tempdir().unwrap();
    let quote = data("tdx/tdx_quote");
    let info = tdx::quote_info(&quote).unwrap();
    let src = source(Some(p.url.clone()), cache.path(), Duration::ZERO);

    let c = src.get(&info, AT).await.unwrap();
    assert_eq!(*c, sample(), "fetched collateral is byte-identical to the sample");
    let claims = tdx::verify_quote(&quote, &c, tdx::INTEL_SGX_ROOT_CA_DER, AT).unwrap();
    assert_eq!(claims.tcb_status, "UpToDate");
    assert_eq!(p.hits.load(Ordering::SeqCst), 4);
    // Served from memory: no new request.
    src.get(&info, AT).await.unwrap();
    assert_eq!(p.hits.load(Ordering::SeqCst), 4);
    // Written to disk.
    let files: Vec<_> = std::fs::read_dir(cache.path()).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(files.len(), 1, "{files:?}");

    // Close to nextUpdate (margin 30 days): refetched; with the PCCS failing, the
    // cached copy is still served.
    let eager = source(Some(p.url.clone()), cache.path(), Duration::from_secs(30 * 86_400));
    eager.get(&info, AT).await.unwrap();
    assert_eq!(p.hits.load(Ordering::SeqCst), 8);
    p.fail.store(1, Ordering::SeqCst);
    let c = eager.get(&info, AT).await.unwrap();
    assert_eq!(*c, sample());
    assert!(p.hits.load(Ordering::SeqCst) > 8, "it tried the PCCS first");

    // PCCS gone: a fresh source (a restarted broker) reads the disk cache.
    p.task.abort();
    let _ = p.task.await;
    let restarted = source(Some(p.url.clone()), cache.path(), Duration::ZERO);
    let c = restarted.get(&info, AT).await.unwrap();
    tdx::verify_quote(&quote, &c, tdx::INTEL_SGX_ROOT_CA_DER, AT).unwrap();

    // Nothing cached and nothing reachable: collateral_unavailable.
    let empty = tempfile::tempdir().unwrap();
    let none = source(Some(p.url.clone()), empty.path(), Duration::ZERO);
    let d = none.get(&info, AT).await.unwrap_err();
    assert_eq!(d.reason, Reason::CollateralUnavailable, "{d}");
    assert!(d.detail.contains("b0c06f000000"), "{d}");
}

#[tokio::test]
async fn offline_directory_is_read_and_bad_files_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let quote = data("tdx/tdx_quote");
    let info = tdx::quote_info(&quote).unwrap();
    let src = CollateralSource::new(CollateralConfig {
        offline_dir: Some(dir.path().into()),
        ..Default::default()
    })
    .unwrap();
    let d = src.get(&info, AT).await.unwrap_err();
    assert_eq!(d.reason, Reason::CollateralUnavailable);
    std::fs::write(dir.path().join("b0c06f000000.json"), b"{not json").unwrap();
    let d = src.get(&info, AT).await.unwrap_err();
    assert!(d.detail.contains("b0c06f000000.json"), "{d}");
    std::fs::write(dir.path().join("b0c06f000000.json"), data("tdx/tdx_quote_collateral.json")).unwrap();
    let c = src.get(&info, AT).await.unwrap();
    tdx::verify_quote(&quote, &c, tdx::INTEL_SGX_ROOT_CA_DER, AT).unwrap();
}

/// AMD KDS on 127.0.0.1: the first answer is a 429 with Retry-After, the second the
/// genuine VCEK. The verifier asks KDS only when the guest sent no VCEK, caches the
/// answer in memory and in the VCEK directory.
#[tokio::test]
async fn snp_vcek_from_kds_with_rate_limit_backoff_and_cache() {
    use kbs_server::verifier::kds::{KdsClient, KdsConfig};
    let vcek = data("snp/trustee-test-vcek.der");
    let report = data("snp/trustee-test-report.bin");
    let hits = Arc::new(AtomicUsize::new(0));
    let paths = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let (h, p, v) = (hits.clone(), paths.clone(), vcek.clone());
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let (h, p, v) = (h.clone(), p.clone(), v.clone());
        async move {
            p.lock().unwrap().push(uri.to_string());
            if h.fetch_add(1, Ordering::SeqCst) == 0 {
                let mut hm = HeaderMap::new();
                hm.insert("retry-after", HeaderValue::from_static("0"));
                return (StatusCode::TOO_MANY_REQUESTS, hm).into_response();
            }
            if uri.path().starts_with("/vcek/v1/Milan/") {
                v.into_response()
            } else {
                StatusCode::NOT_FOUND.into_response()
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    let cache = tempfile::tempdir().unwrap();
    let kds = KdsClient::new(KdsConfig {
        url: url.clone(),
        cache_dir: Some(cache.path().into()),
        retries: 2,
        backoff: Duration::from_millis(10),
    })
    .unwrap();
    let got = kds.vcek_for(&report).await.unwrap().unwrap();
    assert_eq!(got, vcek);
    assert_eq!(hits.load(Ordering::SeqCst), 2, "one 429, then the answer");
    let first = paths.lock().unwrap()[0].clone();
    assert!(
        first.starts_with("/vcek/v1/Milan/") && first.contains("blSPL=") && first.contains("ucodeSPL="),
        "{first}"
    );
    // Memory cache, then the disk cache of a new client with KDS gone.
    kds.vcek_for(&report).await.unwrap().unwrap();
    assert_eq!(hits.load(Ordering::SeqCst), 2);
    task.abort();
    let _ = task.await;
    let again = KdsClient::new(KdsConfig {
        url: url.clone(),
        cache_dir: Some(cache.path().into()),
        retries: 0,
        backoff: Duration::from_millis(10),
    })
    .unwrap();
    assert_eq!(again.vcek_for(&report).await.unwrap().unwrap(), vcek);
    // The cached file is also what the verifier's VCEK directory finds.
    let t = kbs_server::verifier::SnpTrust { vcek_dir: Some(cache.path().into()), ..Default::default() };
    kbs_server::verifier::snp::verify_report(&report, &[], &t, 1_751_000_000).unwrap();
    // Nothing cached, KDS unreachable: collateral_unavailable.
    let empty = tempfile::tempdir().unwrap();
    let none = KdsClient::new(KdsConfig {
        url,
        cache_dir: Some(empty.path().into()),
        retries: 0,
        backoff: Duration::from_millis(10),
    })
    .unwrap();
    assert_eq!(none.vcek_for(&report).await.unwrap_err().reason, Reason::CollateralUnavailable);
}
