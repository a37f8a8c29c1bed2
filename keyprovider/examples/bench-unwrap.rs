//! Load generator for `ci/bench-keyprovider.sh`: UnWrapKey calls against a
//! running `cloak-keyprovider serve`, kept out of the production binary.
//!
//! `cargo run --release -p cloak-keyprovider --example bench-unwrap -- --grpc
//! HOST:PORT --packet FILE [--calls N] [--concurrency N]`

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Server address (`host:port` or `unix:/path`).
    #[arg(long)]
    grpc: String,
    /// File holding the AnnotationPacket to unwrap.
    #[arg(long)]
    packet: PathBuf,
    /// Total calls.
    #[arg(long, default_value_t = 20000)]
    calls: usize,
    /// Calls in flight.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let a = Args::parse();
    bench_unwrap(&a.grpc, &a.packet, a.calls, a.concurrency).await
}

async fn bench_unwrap(grpc: &str, packet: &PathBuf, calls: usize, concurrency: usize) -> anyhow::Result<()> {
    use keyprovider::client::{ProviderClient, ProviderConfig};
    use keyprovider::protocol::{DecryptConfig, KeyProviderInput, Op};
    let ann = std::fs::read(packet)?;
    let cfg = ProviderConfig { cmd: None, grpc: Some(grpc.to_owned()) };
    let client = Arc::new(ProviderClient::new("attestation-agent", &cfg)?);
    let input = Arc::new(KeyProviderInput::unwrap(DecryptConfig::default(), &ann));
    let cold = Instant::now();
    client.call(Op::KeyUnwrap, &input).await?;
    let cold = cold.elapsed();
    let start = Instant::now();
    let per = calls.div_ceil(concurrency.max(1));
    let mut tasks = Vec::new();
    for _ in 0..concurrency.max(1) {
        let (client, input) = (client.clone(), input.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..per {
                client.call(Op::KeyUnwrap, &input).await?;
            }
            Ok::<_, keyprovider::client::ClientError>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let secs = start.elapsed().as_secs_f64();
    let done = per * concurrency.max(1);
    println!(
        "{{\"first_call_ms\":{:.3},\"warm_calls\":{},\"warm_seconds\":{:.3},\"warm_calls_per_s\":{:.0}}}",
        cold.as_secs_f64() * 1000.0,
        done,
        secs,
        done as f64 / secs
    );
    Ok(())
}
