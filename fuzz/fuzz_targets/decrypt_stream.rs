//! Fuzz the decrypting reader over arbitrary ciphertext and read chunking: it
//! must end in `Ok` only when the HMAC matched, and an error must stay an error.
//! The combined-pass variants (blob digests hashed in the HMAC's SIMD pass) must
//! agree with the plain ones and with OpenSSL.
#![no_main]

use std::io::{self, Read};

use libfuzzer_sys::fuzz_target;
use ocicrypt::{DecryptReader, EncryptReader, PrivateOptions, PublicOptions};
/// Fixed options: fuzzing needs determinism, not secrecy.
fn opts() -> PrivateOptions {
    PrivateOptions::from_json(br#"{"symkey":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=","cipheroptions":{"nonce":"AAECAwQFBgcICQoLDA0ODw=="}}"#)
        .expect("fixed options")
}

/// A reader that hands out its data in the fuzzer-chosen chunk sizes.
struct Chunky<'a> {
    data: &'a [u8],
    sizes: &'a [u8],
    i: usize,
}

impl Read for Chunky<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let want = self.sizes.get(self.i % self.sizes.len().max(1)).copied().unwrap_or(255) as usize + 1;
        self.i += 1;
        let n = want.min(buf.len()).min(self.data.len());
        buf[..n].copy_from_slice(&self.data[..n]);
        self.data = &self.data[n..];
        Ok(n)
    }
}

fuzz_target!(|input: &[u8]| {
    if input.len() < 33 {
        return;
    }
    let (head, rest) = input.split_at(33);
    let split = (head[32] as usize).min(rest.len());
    let (sizes, data) = rest.split_at(split);
    let o = opts();
    let mut hmac = [0u8; 32];
    hmac.copy_from_slice(&head[..32]);

    // Arbitrary ciphertext and HMAC: success only if the reader says verified.
    let mut r =
        DecryptReader::new(Chunky { data, sizes, i: 0 }, &o, &PublicOptions::new(hmac)).expect("cipher");
    let mut out = Vec::new();
    match r.read_to_end(&mut out) {
        Ok(_) => assert!(r.is_verified()),
        Err(e) => {
            assert_eq!(e.kind(), io::ErrorKind::InvalidData);
            assert!(r.read(&mut [0u8; 8]).is_err(), "a failed stream must not turn into EOF");
        }
    }

    // Real ciphertext of `data`: must round-trip under any chunking.
    let mut enc = EncryptReader::new(Chunky { data, sizes, i: 0 }, &o);
    let mut ct = Vec::new();
    enc.read_to_end(&mut ct).expect("encrypt");
    let public = enc.public_options().expect("finished").clone();
    let mut r = DecryptReader::new(Chunky { data: &ct, sizes, i: 0 }, &o, &public).expect("cipher");
    let mut plain = Vec::new();
    r.read_to_end(&mut plain).expect("decrypt");
    assert_eq!(plain, data);

    // The combined-pass variants (sha256x lanes): same ciphertext and HMAC, and
    // digests equal to OpenSSL's, under any chunking.
    let mut fused = EncryptReader::with_digests(Chunky { data, sizes, i: 0 }, &o);
    let mut ct2 = Vec::new();
    fused.read_to_end(&mut ct2).expect("encrypt");
    assert_eq!(ct2, ct);
    let sealed = fused.sealed().expect("finished").clone();
    assert_eq!(sealed.public.hmac, public.hmac);
    assert_eq!(sealed.plaintext_sha256, Some(openssl::sha::sha256(data)));
    let blob = openssl::sha::sha256(&ct);
    assert_eq!(sealed.ciphertext_sha256, Some(blob));
    let mut r = DecryptReader::with_ciphertext_digest(Chunky { data: &ct, sizes, i: 0 }, &o, &public, blob)
        .expect("cipher");
    let mut plain = Vec::new();
    r.read_to_end(&mut plain).expect("decrypt with the blob digest");
    assert_eq!(plain, data);
    let mut wrong = blob;
    wrong[31] ^= 1;
    let mut r = DecryptReader::with_ciphertext_digest(Chunky { data: &ct, sizes, i: 0 }, &o, &public, wrong)
        .expect("cipher");
    assert!(r.read_to_end(&mut Vec::new()).is_err(), "a wrong blob digest must fail");
});
