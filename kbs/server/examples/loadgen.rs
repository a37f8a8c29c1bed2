//! Load generator for `ci/bench-kbs.sh` (sample attester), kept out of the
//! production `cloak-kbs` binary.
//!
//! `cargo run --release -p cloak-kbs-server --example loadgen -- --url URL
//! [--concurrency N] [--requests N] [--kbs-cert CA.pem] REPO/TYPE/TAG`

use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Broker URL, or several separated by commas (guests go round-robin).
    #[arg(long)]
    url: String,
    uri: String,
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    #[arg(long, default_value_t = 1000)]
    requests: usize,
    /// PEM CA bundle the broker's TLS certificate chains to (an https:// URL).
    #[arg(long)]
    kbs_cert: Option<std::path::PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    let rt = tokio::runtime::Runtime::new()?;
    let ca = a.kbs_cert.as_deref().map(kbs_client::CaBundle::read).transpose()?;
    rt.block_on(loadgen(a.url, a.uri.parse()?, a.concurrency, a.requests, ca))
}

/// Runs `requests` full attest+fetch cycles (a fresh KBS client, hence a fresh RCAR
/// and a fresh ephemeral TEE key, each time) over `concurrency` workers and prints
/// one JSON line with latency percentiles. Each worker is one "guest" keeping its
/// HTTP connection pool, as a guest's agent does across its requests. The pools are
/// built before the clock starts: building one loads the system's TLS roots (several
/// milliseconds of CPU), which a guest does once at boot, not per attestation.
async fn loadgen(
    url: String,
    uri: kbs_client::ResourceUri,
    concurrency: usize,
    requests: usize,
    ca: Option<kbs_client::CaBundle>,
) -> anyhow::Result<()> {
    let opts = kbs_client::AttesterOptions { allow_sample: true, ..Default::default() };
    let att = kbs_client::make_attester(kbs_client::AttesterKind::Sample, &opts)?;
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let urls: Vec<String> =
        url.split(',').map(str::trim).filter(|u| !u.is_empty()).map(String::from).collect();
    anyhow::ensure!(!urls.is_empty(), "--url is empty");
    let pools = (0..concurrency.max(1))
        .map(|_| kbs_client::tls::http_client(ca.as_ref()))
        .collect::<Result<Vec<_>, _>>()?;
    let start = std::time::Instant::now();
    let mut tasks = Vec::new();
    for http in pools {
        let (urls, uri, att, next) = (urls.clone(), uri.clone(), att.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            loop {
                let n = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n >= requests {
                    break;
                }
                let t = std::time::Instant::now();
                let c = kbs_client::KbsClient::with_http_client(
                    &urls[n % urls.len()],
                    att.clone(),
                    kbs_client::ClientConfig::default(),
                    http.clone(),
                )?;
                c.get_resource(&uri).await?;
                lat.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            anyhow::Ok(lat)
        }));
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await??);
    }
    let wall = start.elapsed().as_secs_f64();
    all.sort_by(|a, b| a.total_cmp(b));
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1))).copied().unwrap_or(0.0)
    };
    println!(
        "{{\"concurrency\":{concurrency},\"requests\":{},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"per_sec\":{:.1}}}",
        all.len(),
        pct(0.50),
        pct(0.99),
        all.len() as f64 / wall
    );
    Ok(())
}
