//! TDX collateral for the broker: TCB info and QE identity (with their issuer chains and
//! signatures), the PCK CRL and the root CA CRL, as `dcap-qvl`'s `QuoteCollateralV3`.
//!
//! Sources, in order: an offline directory (`{fmspc}.json` or `{fmspc}-{ca}.json`, for
//! sites without network), the in-memory cache, a PCCS or Intel PCS (`tdx.pccs_url`),
//! and the on-disk cache (`tdx.collateral_cache_dir`). A cached copy is used until
//! `refresh_margin` before its earliest `nextUpdate`, then refetched; if the PCCS is
//! down, the cached copy is still served, and the verifier refuses it once it has
//! lapsed (`collateral_expired`). With nothing at all: `collateral_unavailable`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dcap_qvl::QuoteCollateralV3;
use serde::Deserialize;
use serde_json::value::RawValue;

use super::tdx::{collateral_next_update, QuoteInfo};
use crate::policy::{Denial, Reason};

/// Where collateral comes from (the `tdx` section of the broker config).
#[derive(Clone, Debug, Default)]
pub struct CollateralConfig {
    /// Base URL of a PCCS or of Intel's PCS (`https://api.trustedservices.intel.com`).
    pub pccs_url: Option<String>,
    /// The root CA CRL URL; default `{pccs_url}/sgx/certification/v4/rootcacrl` (a PCCS
    /// serves it there, hex-encoded; Intel's PCS does not, name its CRL URL here).
    pub root_ca_crl_url: Option<String>,
    /// Offline collateral files, `{fmspc}.json` (lowercase hex FMSPC).
    pub offline_dir: Option<PathBuf>,
    /// Where fetched collateral is kept across restarts.
    pub cache_dir: Option<PathBuf>,
    /// Refetch this long before the earliest `nextUpdate`.
    pub refresh_margin: Duration,
}

struct Cached {
    collateral: Arc<QuoteCollateralV3>,
    next_update: i64,
}

/// Collateral per FMSPC and PCK CA, cached in memory and on disk.
pub struct CollateralSource {
    cfg: CollateralConfig,
    http: reqwest::Client,
    mem: Mutex<HashMap<String, Arc<Cached>>>,
}

impl std::fmt::Debug for CollateralSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CollateralSource").field("cfg", &self.cfg).finish()
    }
}

/// Why a fetch failed (kept as text in the denial; no secrets involved).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("GET {url}")]
    Http {
        url: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("GET {url}: HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url}: {what}")]
    Invalid { url: String, what: String },
}

#[derive(Deserialize)]
struct TcbInfoResponse<'a> {
    #[serde(rename = "tcbInfo", borrow)]
    tcb_info: &'a RawValue,
    signature: String,
}

#[derive(Deserialize)]
struct QeIdentityResponse<'a> {
    #[serde(rename = "enclaveIdentity", borrow)]
    enclave_identity: &'a RawValue,
    signature: String,
}

fn unavailable(d: impl Into<String>) -> Denial {
    Denial::new(Reason::CollateralUnavailable, d)
}

/// Parses `QuoteCollateralV3` JSON (what `verify-evidence --collateral` and the offline
/// directory hold).
pub fn parse_collateral_json(bytes: &[u8]) -> Result<QuoteCollateralV3, Denial> {
    serde_json::from_slice(bytes)
        .map_err(|e| unavailable(format!("collateral is not QuoteCollateralV3 JSON: {e}")))
}

impl CollateralSource {
    pub fn new(cfg: CollateralConfig) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(20)).build()?;
        Ok(Self { cfg, http, mem: Mutex::new(HashMap::new()) })
    }

    fn key(info: &QuoteInfo) -> String {
        format!("{}-{}", info.fmspc, info.ca)
    }

    fn remember(&self, key: &str, c: QuoteCollateralV3) -> Result<Arc<Cached>, Denial> {
        let next_update = collateral_next_update(&c)?;
        let entry = Arc::new(Cached { collateral: Arc::new(c), next_update });
        if let Ok(mut m) = self.mem.lock() {
            m.insert(key.to_owned(), entry.clone());
        }
        Ok(entry)
    }

    fn cached(&self, key: &str) -> Option<Arc<Cached>> {
        self.mem.lock().ok()?.get(key).cloned()
    }

    /// The collateral for the quote described by `info`, at `now` (unix seconds).
    pub async fn get(&self, info: &QuoteInfo, now: u64) -> Result<Arc<QuoteCollateralV3>, Denial> {
        let key = Self::key(info);
        let now_i = i64::try_from(now).unwrap_or(i64::MAX);
        let margin = i64::try_from(self.cfg.refresh_margin.as_secs()).unwrap_or(0);
        let mem = self.cached(&key);
        if let Some(c) = &mem {
            if now_i.saturating_add(margin) < c.next_update {
                return Ok(c.collateral.clone());
            }
        }
        if let Some(dir) = &self.cfg.offline_dir {
            for name in [format!("{}.json", info.fmspc), format!("{key}.json")] {
                if let Ok(bytes) = std::fs::read(dir.join(&name)) {
                    let c = parse_collateral_json(&bytes)
                        .map_err(|d| unavailable(format!("{}: {}", dir.join(&name).display(), d.detail)))?;
                    return Ok(self.remember(&key, c)?.collateral.clone());
                }
            }
        }
        let disk = || -> Option<QuoteCollateralV3> {
            let p = self.cfg.cache_dir.as_ref()?.join(format!("{key}.json"));
            serde_json::from_slice(&std::fs::read(p).ok()?).ok()
        };
        let fetch_err = match &self.cfg.pccs_url {
            Some(base) => match self.fetch(base, info).await {
                Ok(c) => {
                    let entry = self.remember(&key, c)?;
                    self.store_on_disk(&key, &entry.collateral);
                    return Ok(entry.collateral.clone());
                }
                Err(e) => {
                    tracing::warn!(fmspc = %info.fmspc, error = %report::Line(&e), "cannot fetch TDX collateral; trying the cache");
                    Some(report::line(&e))
                }
            },
            None => None,
        };
        // The PCCS is down or not configured: a cached copy (memory, then disk) is
        // served; the verifier refuses it if it has lapsed.
        if let Some(c) = mem {
            return Ok(c.collateral.clone());
        }
        if let Some(c) = disk() {
            return Ok(self.remember(&key, c)?.collateral.clone());
        }
        Err(unavailable(match fetch_err {
            Some(e) => format!("no TDX collateral for FMSPC {} (PCK CA {}): {e}", info.fmspc, info.ca),
            None => format!(
                "no TDX collateral for FMSPC {} (PCK CA {}): configure tdx.pccs_url or tdx.collateral_dir",
                info.fmspc, info.ca
            ),
        }))
    }

    fn store_on_disk(&self, key: &str, c: &QuoteCollateralV3) {
        let Some(dir) = &self.cfg.cache_dir else { return };
        if let Err(e) = write_atomic(dir, &format!("{key}.json"), c) {
            tracing::warn!(dir = %dir.display(), error = %report::Line(&e), "cannot write the TDX collateral cache");
        }
    }

    async fn get_bytes(&self, url: &str) -> Result<(reqwest::header::HeaderMap, Vec<u8>), FetchError> {
        let resp = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|source| FetchError::Http { url: url.to_owned(), source: source.without_url() })?;
        let status = resp.status();
        if !status.is_success() {
            return Err(FetchError::Status { url: url.to_owned(), status: status.as_u16() });
        }
        let headers = resp.headers().clone();
        let body = resp
            .bytes()
            .await
            .map_err(|source| FetchError::Http { url: url.to_owned(), source: source.without_url() })?;
        Ok((headers, body.to_vec()))
    }

    async fn fetch(&self, base: &str, info: &QuoteInfo) -> Result<QuoteCollateralV3, FetchError> {
        let base = base.trim_end_matches('/');
        let url = format!("{base}/sgx/certification/v4/pckcrl?ca={}&encoding=der", info.ca);
        let (h, pck_crl) = self.get_bytes(&url).await?;
        let pck_crl_issuer_chain = chain_header(&h, &["SGX-PCK-CRL-Issuer-Chain"], &url)?;
        let pck_crl = der_or_hex(pck_crl);

        let url = format!("{base}/tdx/certification/v4/tcb?fmspc={}", info.fmspc);
        let (h, body) = self.get_bytes(&url).await?;
        let tcb_info_issuer_chain =
            chain_header(&h, &["TCB-Info-Issuer-Chain", "SGX-TCB-Info-Issuer-Chain"], &url)?;
        let r: TcbInfoResponse<'_> = serde_json::from_slice(&body).map_err(|e| FetchError::Invalid {
            url: url.clone(),
            what: format!("not a TCB info answer: {e}"),
        })?;
        let tcb_info = r.tcb_info.get().to_owned();
        let tcb_info_signature = hex::decode(r.signature.trim()).map_err(|e| FetchError::Invalid {
            url: url.clone(),
            what: format!("signature is not hex: {e}"),
        })?;

        let url = format!("{base}/tdx/certification/v4/qe/identity");
        let (h, body) = self.get_bytes(&url).await?;
        let qe_identity_issuer_chain = chain_header(&h, &["SGX-Enclave-Identity-Issuer-Chain"], &url)?;
        let r: QeIdentityResponse<'_> = serde_json::from_slice(&body).map_err(|e| FetchError::Invalid {
            url: url.clone(),
            what: format!("not a QE identity answer: {e}"),
        })?;
        let qe_identity = r.enclave_identity.get().to_owned();
        let qe_identity_signature = hex::decode(r.signature.trim()).map_err(|e| FetchError::Invalid {
            url: url.clone(),
            what: format!("signature is not hex: {e}"),
        })?;

        let url = self
            .cfg
            .root_ca_crl_url
            .clone()
            .unwrap_or_else(|| format!("{base}/sgx/certification/v4/rootcacrl"));
        let (_, root_ca_crl) = self.get_bytes(&url).await?;
        let root_ca_crl = der_or_hex(root_ca_crl);

        Ok(QuoteCollateralV3 {
            pck_crl_issuer_chain,
            root_ca_crl,
            pck_crl,
            tcb_info_issuer_chain,
            tcb_info,
            tcb_info_signature,
            qe_identity_issuer_chain,
            qe_identity,
            qe_identity_signature,
            pck_certificate_chain: None,
        })
    }
}

/// A PCCS answers some CRLs hex-encoded, Intel's PCS in DER: accept both.
fn der_or_hex(body: Vec<u8>) -> Vec<u8> {
    match std::str::from_utf8(&body).ok().and_then(|s| hex::decode(s.trim()).ok()) {
        Some(der) => der,
        None => body,
    }
}

/// An issuer-chain header: URL-encoded PEM.
fn chain_header(h: &reqwest::header::HeaderMap, names: &[&str], url: &str) -> Result<String, FetchError> {
    let v = names.iter().find_map(|n| h.get(*n)).ok_or_else(|| FetchError::Invalid {
        url: url.to_owned(),
        what: format!("no {} header", names[0]),
    })?;
    let v = v.to_str().map_err(|_| FetchError::Invalid {
        url: url.to_owned(),
        what: format!("{} is not ASCII", names[0]),
    })?;
    percent_decode(v).ok_or_else(|| FetchError::Invalid {
        url: url.to_owned(),
        what: format!("{} is not URL-encoded UTF-8", names[0]),
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = b.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn write_atomic(dir: &Path, name: &str, c: &QuoteCollateralV3) -> std::io::Result<()> {
    use std::io::Write;
    std::fs::create_dir_all(dir)?;
    let json = serde_json::to_vec(c).map_err(std::io::Error::other)?;
    let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
    tmp.write_all(&json)?;
    tmp.as_file().sync_all()?;
    tmp.persist(dir.join(name)).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn percent_decoding_and_hex_crls() {
        assert_eq!(percent_decode("a%20b%0A-").as_deref(), Some("a b\n-"));
        assert_eq!(percent_decode("%2"), None);
        assert_eq!(percent_decode("%zz"), None);
        assert_eq!(der_or_hex(b"3082".to_vec()), vec![0x30, 0x82]);
        assert_eq!(der_or_hex(vec![0x30, 0x82, 0xff]), vec![0x30, 0x82, 0xff]);
    }

    /// Issue 27: reqwest's own text repeated the URL the fetch error names
    /// ("GET u: error sending request for url (u)").
    #[tokio::test]
    async fn unreachable_collateral_service_is_named_once() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let src = CollateralSource::new(CollateralConfig::default()).unwrap();
        let url = format!("http://127.0.0.1:{port}/sgx/certification/v4/pckcrl");
        let e = src.get_bytes(&url).await.unwrap_err();
        let line = report::line(&e);
        assert!(line.starts_with(&format!("GET {url}: ")), "{line}");
        assert_eq!(line.matches(&url).count(), 1, "{line}");
        assert_eq!(report::repeated_source(&e), None, "{line}");
    }
}
