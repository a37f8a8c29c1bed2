//! A ttRPC load client for `ci/bench.sh cdh`: calls a running `cloak-cdh` the way
//! kata-agent does (the same generated services) and prints timings.
//!
//! ```text
//! cdh-bench pull --socket unix:///run/cdh.sock [--concurrent] IMAGE=BUNDLE...
//! cdh-bench resource --socket unix:///run/cdh.sock --path kbs:///default/x/y \
//!     [--requests 5000] [--concurrency 1]
//! ```
//!
//! `pull` issues one PullImage per IMAGE=BUNDLE pair, one after another or all at
//! once, and prints each call's time and the total. `resource` issues GetResource
//! calls over one connection per worker and prints the rate and the p50/p99
//! latency. Output lines are `key=value` pairs, one result per line.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use guest_puller::cdh::pb::{api, api_ttrpc};

#[derive(Parser)]
#[command(about = "ttRPC load client for cloak-cdh (ci/bench.sh cdh)")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// PullImage for each IMAGE=BUNDLE pair.
    Pull {
        /// The daemon's socket, unix:///PATH.
        #[arg(long)]
        socket: String,
        /// Issue every call at once instead of one after another.
        #[arg(long)]
        concurrent: bool,
        /// Deadline of one call, in seconds.
        #[arg(long, default_value_t = 600)]
        timeout: u64,
        /// IMAGE=BUNDLE pairs.
        #[arg(required = true)]
        pairs: Vec<String>,
    },
    /// GetResource, repeatedly.
    Resource {
        /// The daemon's socket, unix:///PATH.
        #[arg(long)]
        socket: String,
        /// kbs:///repo/type/tag
        #[arg(long)]
        path: String,
        /// Calls in all.
        #[arg(long, default_value_t = 5000)]
        requests: usize,
        /// Calls in flight (one connection each).
        #[arg(long, default_value_t = 1)]
        concurrency: usize,
    },
}

fn ctx(timeout: Duration) -> ttrpc::context::Context {
    ttrpc::context::with_timeout(i64::try_from(timeout.as_nanos()).unwrap_or(i64::MAX))
}

async fn connect(socket: &str) -> Result<ttrpc::r#async::Client> {
    ttrpc::r#async::Client::connect(socket).await.map_err(|e| anyhow::anyhow!("connecting to {socket}: {e}"))
}

async fn pull_one(
    socket: String,
    image: String,
    bundle: PathBuf,
    timeout: Duration,
) -> Result<(String, f64)> {
    let client = api_ttrpc::ImagePullServiceClient::new(connect(&socket).await?);
    let mut req = api::ImagePullRequest::new();
    req.image_url = image.clone();
    req.bundle_path = bundle.display().to_string();
    let t = Instant::now();
    let reply = client.pull_image(ctx(timeout), &req).await.with_context(|| format!("PullImage {image}"))?;
    Ok((reply.manifest_digest, t.elapsed().as_secs_f64()))
}

async fn pull(socket: String, concurrent: bool, timeout: u64, pairs: Vec<String>) -> Result<()> {
    let timeout = Duration::from_secs(timeout);
    let mut jobs = Vec::new();
    for p in pairs {
        let Some((image, bundle)) = p.rsplit_once('=') else { bail!("{p:?}: expected IMAGE=BUNDLE") };
        jobs.push((image.to_owned(), PathBuf::from(bundle)));
    }
    let t = Instant::now();
    let mut results = Vec::new();
    if concurrent {
        let handles: Vec<_> = jobs
            .into_iter()
            .map(|(image, bundle)| {
                let socket = socket.clone();
                tokio::spawn(async move {
                    let r = pull_one(socket, image.clone(), bundle, timeout).await;
                    (image, r)
                })
            })
            .collect();
        for h in handles {
            results.push(h.await.context("pull task")?);
        }
    } else {
        for (image, bundle) in jobs {
            let r = pull_one(socket.clone(), image.clone(), bundle, timeout).await;
            results.push((image, r));
        }
    }
    let total = t.elapsed().as_secs_f64();
    for (image, r) in results {
        let (digest, secs) = r?;
        println!("pull image={image} digest={digest} seconds={secs:.4}");
    }
    println!("total seconds={total:.4}");
    Ok(())
}

async fn resource(socket: String, path: String, requests: usize, concurrency: usize) -> Result<()> {
    let concurrency = concurrency.max(1);
    let per_worker = requests.div_ceil(concurrency);
    // One warm-up call: the daemon attests on its first KBS request.
    {
        let c = api_ttrpc::GetResourceServiceClient::new(connect(&socket).await?);
        let mut req = api::GetResourceRequest::new();
        req.ResourcePath = path.clone();
        c.get_resource(ctx(Duration::from_secs(60)), &req).await.context("warm-up GetResource")?;
    }
    let t = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..concurrency {
        let (socket, path) = (socket.clone(), path.clone());
        handles.push(tokio::spawn(async move {
            let c = api_ttrpc::GetResourceServiceClient::new(connect(&socket).await?);
            let mut req = api::GetResourceRequest::new();
            req.ResourcePath = path;
            let mut lat = Vec::with_capacity(per_worker);
            for _ in 0..per_worker {
                let t = Instant::now();
                let r = c.get_resource(ctx(Duration::from_secs(30)), &req).await.context("GetResource")?;
                if r.Resource.is_empty() {
                    bail!("GetResource answered an empty resource");
                }
                lat.push(t.elapsed().as_secs_f64());
            }
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    let mut lat = Vec::new();
    for h in handles {
        lat.extend(h.await.context("resource task")??);
    }
    let wall = t.elapsed().as_secs_f64();
    lat.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        let i = ((lat.len() as f64 - 1.0) * p).round() as usize;
        lat.get(i).copied().unwrap_or(0.0) * 1000.0
    };
    println!(
        "resource calls={} concurrency={concurrency} seconds={wall:.3} per_second={:.0} p50_ms={:.3} p99_ms={:.3}",
        lat.len(),
        lat.len() as f64 / wall,
        pct(0.5),
        pct(0.99)
    );
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("tokio runtime")?;
    rt.block_on(async {
        match cli.cmd {
            Cmd::Pull { socket, concurrent, timeout, pairs } => {
                pull(socket, concurrent, timeout, pairs).await
            }
            Cmd::Resource { socket, path, requests, concurrency } => {
                resource(socket, path, requests, concurrency).await
            }
        }
    })
}
