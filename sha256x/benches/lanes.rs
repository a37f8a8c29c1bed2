//! SHA-256 throughput: one stream (this crate, OpenSSL) and several streams in
//! one pass (the encryptor hashes 3 per layer, the puller 2).

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};

const LEN: usize = 1 << 20;

fn bench(c: &mut Criterion) {
    let data: Vec<u8> = (0..LEN as u32).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect();
    let mut g = c.benchmark_group("sha256");
    g.throughput(Throughput::Bytes(LEN as u64));
    g.bench_function("openssl/1-stream", |b| b.iter(|| openssl::sha::sha256(&data)));
    for n in [1usize, 2, 3, 4, 8] {
        g.throughput(Throughput::Bytes((LEN * n) as u64));
        g.bench_with_input(BenchmarkId::new(format!("sha256x-{:?}", sha256x::backend()), n), &n, |b, &n| {
            b.iter(|| {
                let mut hs: Vec<sha256x::Sha256> = (0..n).map(|_| sha256x::Sha256::new()).collect();
                let mut lanes: Vec<(&mut sha256x::Sha256, &[u8])> =
                    hs.iter_mut().map(|h| (h, &data[..])).collect();
                sha256x::update_many(&mut lanes);
                drop(lanes);
                hs.into_iter().map(|h| h.finalize()[0]).fold(0u8, |a, b| a ^ b)
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
