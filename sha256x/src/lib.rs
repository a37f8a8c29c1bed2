//! SHA-256 for several streams at once.
//!
//! Hashing is the bound of cloak's layer pipelines on CPUs without SHA-NI: a
//! layer being encrypted is hashed three times (the source digest, the HMAC and
//! the new blob digest), a layer being pulled twice before decryption (the blob
//! digest and the HMAC). Those hashes run over the same bytes at the same time,
//! so [`update_many`] feeds them through one SIMD pass: with AVX-512VL, eight
//! independent SHA-256 states advance together in 256-bit registers, which costs
//! about what one stream costs with the scalar code. With SHA-NI each stream uses
//! the SHA instructions instead (faster still); elsewhere OpenSSL's single-stream code runs.
//!
//! [`Sha256`] is an ordinary incremental hasher; the digest does not depend on
//! which backend ran or on how the input was split.

#![cfg_attr(not(test), warn(missing_docs))]

mod soft;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::sync::OnceLock;

/// Size of one SHA-256 block.
pub const BLOCK: usize = 64;

const IV: [u32; 8] =
    [0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19];

/// Which compression code this CPU runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The SHA-NI instructions, one stream at a time (through the `sha2` crate).
    ShaNi,
    /// Up to eight streams per pass in AVX-512VL registers.
    Avx512Lanes,
    /// Neither: OpenSSL's single-stream code, one stream at a time.
    Portable,
}

/// The backend chosen for this CPU (detected once).
pub fn backend() -> Backend {
    static CHOSEN: OnceLock<Backend> = OnceLock::new();
    *CHOSEN.get_or_init(|| {
        if let Ok(v) = std::env::var("CLOAK_SHA256_BACKEND") {
            // For tests and benchmarks: force a slower backend, never an unsupported one.
            match v.as_str() {
                "portable" => return Backend::Portable,
                "lanes" if detect_lanes() => return Backend::Avx512Lanes,
                _ => {}
            }
        }
        if detect_sha_ni() {
            Backend::ShaNi
        } else if detect_lanes() {
            Backend::Avx512Lanes
        } else {
            Backend::Portable
        }
    })
}

fn detect_sha_ni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("sha") && std::arch::is_x86_feature_detected!("sse4.1")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        // The sha2 crate picks the ARMv8 SHA2 instructions by itself where present.
        true
    }
}

fn detect_lanes() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        x86::available()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// An incremental SHA-256 hasher whose state several streams can advance together.
#[derive(Clone)]
pub struct Sha256 {
    /// On CPUs with neither SHA-NI nor AVX-512VL, OpenSSL's single-stream code
    /// (AVX2 message schedule) is about twice the portable code: use it there.
    ossl: Option<openssl::sha::Sha256>,
    state: [u32; 8],
    buf: [u8; BLOCK],
    buf_len: usize,
    /// Bytes hashed so far.
    len: u64,
}

impl Default for Sha256 {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Sha256 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The state of an HMAC's inner hash derives from the key: show only the length.
        f.debug_struct("Sha256").field("len", &self.len).finish_non_exhaustive()
    }
}

impl Sha256 {
    /// A fresh hasher.
    pub fn new() -> Self {
        let ossl = (backend() == Backend::Portable).then(openssl::sha::Sha256::new);
        Sha256 { ossl, state: IV, buf: [0; BLOCK], buf_len: 0, len: 0 }
    }

    /// Bytes hashed so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing was hashed yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Hash `data`.
    pub fn update(&mut self, data: &[u8]) {
        update_many(&mut [(self, data)]);
    }

    /// The digest.
    pub fn finalize(mut self) -> [u8; 32] {
        if let Some(o) = self.ossl {
            return o.finish();
        }
        let bit_len = self.len.wrapping_mul(8);
        let mut tail = [0u8; 2 * BLOCK];
        let n = self.buf_len;
        tail[..n].copy_from_slice(&self.buf[..n]);
        tail[n] = 0x80;
        let total = if n + 1 + 8 <= BLOCK { BLOCK } else { 2 * BLOCK };
        tail[total - 8..total].copy_from_slice(&bit_len.to_be_bytes());
        soft::compress(&mut self.state, &tail[..total]);
        let mut out = [0u8; 32];
        for (chunk, word) in out.chunks_exact_mut(4).zip(self.state) {
            chunk.copy_from_slice(&word.to_be_bytes());
        }
        out
    }

    /// Take bytes into the partial-block buffer; compresses it when it fills.
    /// Returns what is left of `data`.
    fn fill<'d>(&mut self, data: &'d [u8]) -> &'d [u8] {
        if self.buf_len == 0 {
            return data;
        }
        let take = (BLOCK - self.buf_len).min(data.len());
        self.buf[self.buf_len..self.buf_len + take].copy_from_slice(&data[..take]);
        self.buf_len += take;
        if self.buf_len == BLOCK {
            let block = self.buf;
            soft::compress(&mut self.state, &block);
            self.buf_len = 0;
        }
        &data[take..]
    }

    fn keep_tail(&mut self, tail: &[u8]) {
        debug_assert!(self.buf_len == 0 && tail.len() < BLOCK);
        self.buf[..tail.len()].copy_from_slice(tail);
        self.buf_len = tail.len();
    }
}

/// One-shot SHA-256.
pub fn digest(data: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(data);
    h.finalize()
}

/// Feeds each hasher its own input, all in one pass where the CPU allows it.
///
/// The inputs may differ in length and content; the result is exactly what
/// calling [`Sha256::update`] on each would give. It is fastest when the
/// hashers are at the same offset modulo 64 and the inputs have the same
/// length (the streams of one layer always are).
pub fn update_many(lanes: &mut [(&mut Sha256, &[u8])]) {
    let mut blocks: Vec<(&mut [u32; 8], &[u8])> = Vec::with_capacity(lanes.len());
    let mut tails: Vec<Option<&[u8]>> = Vec::with_capacity(lanes.len());
    for (h, data) in lanes.iter_mut() {
        let data: &[u8] = data;
        h.len = h.len.wrapping_add(data.len() as u64);
        if let Some(o) = h.ossl.as_mut() {
            o.update(data);
            tails.push(None);
            continue;
        }
        // Complete a partial block first, lane by lane.
        let data = h.fill(data);
        if h.buf_len > 0 {
            // Everything went into the buffer.
            tails.push(None);
            continue;
        }
        let full = data.len() - data.len() % BLOCK;
        tails.push(Some(&data[full..]));
        if full > 0 {
            blocks.push((&mut h.state, &data[..full]));
        }
    }
    compress_lanes(&mut blocks);
    drop(blocks);
    for ((h, _), tail) in lanes.iter_mut().zip(tails) {
        if let Some(tail) = tail {
            h.keep_tail(tail);
        }
    }
}

/// Compress whole blocks: every `(state, blocks)` pair advances by its blocks.
fn compress_lanes(lanes: &mut [(&mut [u32; 8], &[u8])]) {
    match backend() {
        #[cfg(target_arch = "x86_64")]
        Backend::Avx512Lanes => x86::compress_lanes(lanes),
        _ => {
            for (state, blocks) in lanes.iter_mut() {
                soft::compress(state, blocks);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    fn hex(d: [u8; 32]) -> String {
        d.iter().map(|b| format!("{b:02x}")).collect()
    }

    #[test]
    fn known_answers() {
        assert_eq!(hex(digest(b"")), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
        assert_eq!(hex(digest(b"abc")), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
        assert_eq!(
            hex(digest(b"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        );
        let mut h = Sha256::new();
        let chunk = [b'a'; 1000];
        for _ in 0..1000 {
            h.update(&chunk);
        }
        assert_eq!(hex(h.finalize()), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
    }

    /// The lane kernel against the portable code on the same blocks, for every
    /// lane count (run only where the CPU has the kernel).
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn lane_kernel_matches_portable() {
        if !x86::available() {
            eprintln!("no AVX-512VL here: the lane kernel is not exercised");
            return;
        }
        let data: Vec<u8> = (0..64 * 40).map(|i: u32| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        for n in 1..=11usize {
            let mut want = Vec::new();
            let mut got: Vec<[u32; 8]> = Vec::new();
            for i in 0..n {
                let blocks = &data[64 * i..64 * (i + 1 + (i * 7) % 29)];
                let mut s = IV;
                s[0] ^= i as u32;
                let mut p = s;
                soft::compress(&mut p, blocks);
                want.push(p);
                got.push(s);
            }
            let mut lanes: Vec<(&mut [u32; 8], &[u8])> = got
                .iter_mut()
                .enumerate()
                .map(|(i, s)| (s, &data[64 * i..64 * (i + 1 + (i * 7) % 29)]))
                .collect();
            x86::compress_lanes(&mut lanes);
            drop(lanes);
            assert_eq!(got, want, "{n} lanes");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]
        /// Any number of streams, fed in any pieces, hash as OpenSSL hashes them whole.
        #[test]
        fn many_streams_match_openssl(
            streams in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..700), 1..11),
            cuts in prop::collection::vec(0usize..300, 1..6),
        ) {
            let mut hashers: Vec<Sha256> = streams.iter().map(|_| Sha256::new()).collect();
            let mut pos = vec![0usize; streams.len()];
            for (round, cut) in cuts.iter().chain(std::iter::once(&usize::MAX)).enumerate() {
                let mut lanes: Vec<(&mut Sha256, &[u8])> = Vec::new();
                for (i, h) in hashers.iter_mut().enumerate() {
                    let s = &streams[i];
                    let take = if *cut == usize::MAX { s.len() - pos[i] } else { (cut + i * round) % 97 };
                    let end = (pos[i] + take).min(s.len());
                    lanes.push((h, &s[pos[i]..end]));
                    pos[i] = end;
                }
                update_many(&mut lanes);
            }
            for (h, s) in hashers.into_iter().zip(&streams) {
                prop_assert_eq!(h.len(), s.len() as u64);
                prop_assert_eq!(h.finalize(), openssl::sha::sha256(s));
            }
        }
    }
}
