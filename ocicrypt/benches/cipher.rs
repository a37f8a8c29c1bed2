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

    // What the pipelines really run: the encryptor hashes the source blob, the
    // ciphertext HMAC and the new blob digest; the puller checks the blob digest
    // and the HMAC. Combined in one SIMD pass (sha256x) where the CPU allows.
    g.bench_function("encrypt+source_digest+blob_digest_fused", |b| {
        b.iter(|| {
            let mut e = LayerEncryptor::with_digests(&opts);
            for chunk in data.chunks_mut(BUF) {
                e.update(chunk);
            }
            black_box(e.finish_with_digests())
        })
    });
    let blob_sha = openssl::sha::sha256(&ciphertext);
    g.bench_function("decrypt+blob_digest_fused", |b| {
        b.iter(|| {
            data.copy_from_slice(&ciphertext);
            let mut d = LayerDecryptor::with_ciphertext_digest(&opts, &public, blob_sha).unwrap();
            for chunk in data.chunks_mut(BUF) {
                d.update(chunk);
            }
            d.finish().unwrap();
        })
    });

    // Bounds: the two halves of the work alone, and OpenSSL's HMAC-SHA256 for
    // comparison (without SHA-NI, SHA-256 dominates the cost).
    g.bench_function("hmac_sha256_only_rustcrypto", |b| {
        use hmac::Mac as _;
        b.iter(|| {
            let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(&[7u8; 32]).unwrap();
            for chunk in data.chunks(BUF) {
                m.update(chunk);
            }
            black_box(m.finalize())
        })
    });
    g.bench_function("hmac_sha256_only_openssl", |b| {
        let key = openssl::pkey::PKey::hmac(&[7u8; 32]).unwrap();
        b.iter(|| {
            let mut s = openssl::sign::Signer::new(openssl::hash::MessageDigest::sha256(), &key).unwrap();
            for chunk in data.chunks(BUF) {
                s.update(chunk).unwrap();
            }
            black_box(s.sign_to_vec().unwrap())
        })
    });
    g.bench_function("aes_256_ctr_only", |b| {
        use aes::cipher::{KeyIvInit as _, StreamCipher as _};
        b.iter(|| {
            let mut c = ctr::Ctr128BE::<aes::Aes256>::new(&[7u8; 32].into(), &[0u8; 16].into());
            for chunk in data.chunks_mut(BUF) {
                c.apply_keystream(chunk);
            }
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
