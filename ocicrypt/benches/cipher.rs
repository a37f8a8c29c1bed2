//! Throughput of the layer cipher (AES-256-CTR + HMAC-SHA256) on a 64 MiB layer
//! processed in place in 1 MiB buffers, as the encryptor and puller do.
//! Run: `cargo bench -p cloak-ocicrypt --bench cipher`.
#![allow(clippy::unwrap_used)]

use criterion::{black_box, criterion_group, criterion_main, Criterion, Throughput};
use ocicrypt::{LayerDecryptor, LayerEncryptor, PrivateOptions};

const LAYER: usize = 64 << 20;
const BUF: usize = 1 << 20;

fn bench(c: &mut Criterion) {
    let opts = PrivateOptions::generate("");
    let mut data = vec![0x5au8; LAYER];
    let mut g = c.benchmark_group("layer_cipher_64MiB_1MiB_buffers");
    g.throughput(Throughput::Bytes(LAYER as u64));
    g.sample_size(10);

    g.bench_function("encrypt", |b| {
        b.iter(|| {
            let mut e = LayerEncryptor::new(&opts);
            for chunk in data.chunks_mut(BUF) {
                e.update(chunk);
            }
            black_box(e.finish())
        })
    });

    // Decrypt real ciphertext with its real HMAC, so finish() succeeds.
    let mut e = LayerEncryptor::new(&opts);
    for chunk in data.chunks_mut(BUF) {
        e.update(chunk);
    }
    let public = e.finish();
    let ciphertext = data.clone();
    g.bench_function("decrypt", |b| {
        b.iter(|| {
            data.copy_from_slice(&ciphertext);
            let mut d = LayerDecryptor::new(&opts, &public).unwrap();
            for chunk in data.chunks_mut(BUF) {
                d.update(chunk);
            }
            d.finish().unwrap();
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
