//! VCEKs from AMD's Key Distribution Service, for guests whose host sends no
//! certificate table: `GET {kds}/vcek/v1/{Milan|Genoa|Turin}/{hwid}?blSPL=..&teeSPL=..
//! &snpSPL=..&ucodeSPL=..` (and `fmcSPL` on Turin, whose hwID is 8 bytes). KDS is
//! rate-limited: a 429 is retried after `Retry-After` (capped) or an exponential
//! backoff, a few times, then the verification fails closed (`collateral_unavailable`).
//! Answers are cached in memory and, when `snp.vcek_dir` is set, written there, where
//! the verifier finds them next time without asking KDS.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use super::snp::{Generation, Report, SigningKey};
use crate::policy::{Denial, Reason};

/// Where KDS is and how patiently to ask it.
#[derive(Clone, Debug)]
pub struct KdsConfig {
    /// `https://kdsintf.amd.com`
    pub url: String,
    /// Where fetched VCEKs are kept (the verifier's `vcek_dir`).
    pub cache_dir: Option<PathBuf>,
    /// Retries after a 429 or a 5xx.
    pub retries: u32,
    /// First backoff; doubles per retry; also the cap on `Retry-After`.
    pub backoff: Duration,
}

pub struct KdsClient {
    cfg: KdsConfig,
    http: reqwest::Client,
    mem: Mutex<HashMap<String, Vec<u8>>>,
}

impl std::fmt::Debug for KdsClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KdsClient").field("cfg", &self.cfg).finish()
    }
}

fn unavailable(d: impl Into<String>) -> Denial {
    Denial::new(Reason::CollateralUnavailable, d)
}

impl KdsClient {
    pub fn new(cfg: KdsConfig) -> Result<Self, reqwest::Error> {
        let http = reqwest::Client::builder().timeout(Duration::from_secs(20)).build()?;
        Ok(Self { cfg, http, mem: Mutex::new(HashMap::new()) })
    }

    /// The KDS path and query of the VCEK for `report` on product line `gen`.
    pub fn vcek_path(report: &Report, gen: Generation) -> String {
        let t = report.reported_tcb(Some(gen));
        match gen {
            Generation::Turin => format!(
                "/vcek/v1/Turin/{}?fmcSPL={}&blSPL={}&teeSPL={}&snpSPL={}&ucodeSPL={}",
                hex::encode(&report.chip_id[..8]),
                t.fmc.unwrap_or(0),
                t.bootloader,
                t.tee,
                t.snp,
                t.microcode
            ),
            g => format!(
                "/vcek/v1/{}/{}?blSPL={}&teeSPL={}&snpSPL={}&ucodeSPL={}",
                if g == Generation::Milan { "Milan" } else { "Genoa" },
                hex::encode(report.chip_id),
                t.bootloader,
                t.tee,
                t.snp,
                t.microcode
            ),
        }
    }

    fn cache_name(path: &str) -> String {
        // A file name from the path and query: hex of its SHA-256 keeps it short and safe.
        use sha2::Digest;
        format!("kds-{}.der", hex::encode(&sha2::Sha256::digest(path.as_bytes())[..16]))
    }

    /// The VCEK for a VCEK-signed report, from the caches or KDS. `Ok(None)` when the
    /// report is VLEK-signed (KDS serves VLEKs only to cloud providers).
    pub async fn vcek_for(&self, raw_report: &[u8]) -> Result<Option<Vec<u8>>, Denial> {
        let report = Report::parse(raw_report)?;
        if report.signing_key()? != SigningKey::Vcek {
            return Ok(None);
        }
        if report.chip_id.iter().all(|&b| b == 0) {
            return Err(unavailable(
                "the report's chip_id is masked (MASK_CHIP_ID): KDS cannot name its VCEK",
            ));
        }
        let gens = match report.generation() {
            Some(g) => vec![g],
            // v2 reports predate the CPUID fields and Turin.
            None => vec![Generation::Milan, Generation::Genoa],
        };
        let mut last = String::new();
        for g in gens {
            let path = Self::vcek_path(&report, g);
            match self.get(&path).await {
                Ok(Some(der)) => return Ok(Some(der)),
                Ok(None) => last = format!("KDS has no VCEK at {path}"),
                Err(d) => return Err(d),
            }
        }
        Err(unavailable(last))
    }

    async fn get(&self, path: &str) -> Result<Option<Vec<u8>>, Denial> {
        if let Some(der) = self.mem.lock().ok().and_then(|m| m.get(path).cloned()) {
            return Ok(Some(der));
        }
        let name = Self::cache_name(path);
        if let Some(dir) = &self.cfg.cache_dir {
            if let Ok(der) = std::fs::read(dir.join(&name)) {
                self.remember(path, &der);
                return Ok(Some(der));
            }
        }
        let url = format!("{}{path}", self.cfg.url.trim_end_matches('/'));
        let mut wait = self.cfg.backoff;
        for attempt in 0..=self.cfg.retries {
            let resp = self.http.get(&url).send().await;
            let retry_after = match resp {
                Ok(r) if r.status().is_success() => {
                    let der = r
                        .bytes()
                        .await
                        .map_err(|e| unavailable(format!("GET {url}: {}", report::line(&e.without_url()))))?
                        .to_vec();
                    self.remember(path, &der);
                    if let Some(dir) = &self.cfg.cache_dir {
                        let _ = std::fs::create_dir_all(dir);
                        if let Err(e) = std::fs::write(dir.join(&name), &der) {
                            tracing::warn!(dir = %dir.display(), error = %report::Line(&e), "cannot cache the VCEK");
                        }
                    }
                    return Ok(Some(der));
                }
                Ok(r) if r.status().as_u16() == 404 => return Ok(None),
                Ok(r) if r.status().as_u16() == 429 || r.status().is_server_error() => r
                    .headers()
                    .get(reqwest::header::RETRY_AFTER)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
                    .map(Duration::from_secs),
                Ok(r) => return Err(unavailable(format!("GET {url}: HTTP {}", r.status().as_u16()))),
                Err(e) => return Err(unavailable(format!("GET {url}: {}", report::line(&e.without_url())))),
            };
            if attempt == self.cfg.retries {
                break;
            }
            let pause = retry_after.unwrap_or(wait).min(self.cfg.backoff.saturating_mul(8));
            tracing::info!(url, pause_ms = pause.as_millis() as u64, "AMD KDS is rate-limiting; backing off");
            tokio::time::sleep(pause).await;
            wait = wait.saturating_mul(2);
        }
        Err(unavailable(format!(
            "AMD KDS kept refusing {url} (HTTP 429/5xx) after {} retries",
            self.cfg.retries
        )))
    }

    fn remember(&self, path: &str, der: &[u8]) {
        if let Ok(mut m) = self.mem.lock() {
            m.insert(path.to_owned(), der.to_vec());
        }
    }
}
