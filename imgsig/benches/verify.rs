//! What a signature check costs a pull, without the network: policy lookup,
//! key loading (PEM parse), payload parse and one ECDSA P-256 verification —
//! the CPU part of `evaluate`. The network part (one manifest GET and one
//! payload blob GET on the local registry) is measured by ci/bench.sh.
#![allow(clippy::unwrap_used)]

use std::path::Path;

use criterion::{criterion_group, criterion_main, Criterion};
use futures::future::BoxFuture;
use imgsig::policy::ImageIdentity;
use imgsig::verify::{FetchError, FetchedSignature, Found, StandardKeys};
use imgsig::{evaluate, DockerRef, Payload, Policy, SignatureSource, SigningKey};
use oci::Digest;

struct InMemory(Vec<FetchedSignature>);

impl SignatureSource for InMemory {
    fn cosign<'a>(&'a self, _: &'a Digest) -> BoxFuture<'a, Result<Found<FetchedSignature>, FetchError>> {
        Box::pin(async move { Ok(Found { location: "mem".into(), signatures: self.0.clone() }) })
    }
    fn gpg<'a>(&'a self, _: &'a Digest) -> BoxFuture<'a, Result<Found<Vec<u8>>, FetchError>> {
        Box::pin(async move { Ok(Found { location: "mem".into(), signatures: vec![] }) })
    }
}

fn bench(c: &mut Criterion) {
    let td = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata");
    let key = SigningKey::from_pem(&std::fs::read(td.join("cosign.key")).unwrap(), Some(b"cloak-test"), "k")
        .unwrap();
    let digest = Digest::sha256_of(b"manifest");
    let payload = Payload::cosign_bytes("127.0.0.1:5000/app", &digest);
    let sig = FetchedSignature { index: 0, signature: key.sign(&payload).unwrap(), payload };
    let policy = Policy::parse(
        format!(
            r#"{{"default":[{{"type":"reject"}}],"transports":{{"docker":{{"127.0.0.1:5000/app":[{{"type":"sigstoreSigned","keyPath":"{}"}}]}}}}}}"#,
            td.join("cosign.pub").display()
        )
        .as_bytes(),
        &td,
    )
    .unwrap();
    let image = ImageIdentity::Docker(DockerRef::parse("127.0.0.1:5000/app:v1").unwrap());
    let src = InMemory(vec![sig]);
    let keys = StandardKeys::default();
    let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
    c.bench_function("evaluate sigstoreSigned (1 signature, ECDSA P-256)", |b| {
        b.iter(|| rt.block_on(evaluate(&policy, &image, &digest, &src, &keys)).unwrap())
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
