//! The `AES_256_CTR_HMAC_SHA256` layer cipher as a sans-IO state machine.
//!
//! AES-256-CTR with the whole 16-byte nonce as the initial big-endian counter
//! block, then HMAC-SHA256 (keyed with the same key, as ocicrypt does) over the
//! ciphertext. Callers feed buffers to `update()` in place and get the verdict
//! from `finish()`. Bytes returned by a decryptor before `finish()` succeeds are
//! NOT authenticated: consumers must not commit anything before that.

use aes::cipher::{KeyIvInit as _, StreamCipher as _};
use subtle::ConstantTimeEq as _;
use zeroize::Zeroizing;

use sha256x::Sha256;

use crate::options::{PrivateOptions, PublicOptions, AES_256_CTR_HMAC_SHA256, HMAC_LEN};

type Aes256Ctr = ctr::Ctr128BE<aes::Aes256>;

/// HMAC-SHA256 (RFC 2104).
///
/// The inner hash runs on OpenSSL's SHA-256 when it is the only hash of the
/// stream (OpenSSL's single-stream code is the fastest on CPUs without SHA-NI),
/// and on `sha256x` when it shares one SIMD pass with the blob digests computed
/// over the same bytes ([`LayerEncryptor::with_digests`],
/// [`LayerDecryptor::with_ciphertext_digest`]).
struct HmacSha256 {
    /// The inner hash while it runs alone (`None` once switched to `lanes`).
    single: Option<openssl::sha::Sha256>,
    /// The inner hash for combined passes (started with the same key block).
    multi: Sha256,
    /// The key XOR opad block, kept until `finalize`.
    outer_key: Zeroizing<[u8; 64]>,
}

impl HmacSha256 {
    fn new(key: &[u8; 32]) -> Self {
        let mut ipad = Zeroizing::new([0x36u8; 64]);
        let mut opad = Zeroizing::new([0x5cu8; 64]);
        for (i, k) in key.iter().enumerate() {
            ipad[i] ^= k;
            opad[i] ^= k;
        }
        let mut single = openssl::sha::Sha256::new();
        single.update(ipad.as_ref());
        let mut multi = Sha256::new();
        multi.update(ipad.as_ref());
        HmacSha256 { single: Some(single), multi, outer_key: opad }
    }

    /// The inner hash for a combined pass; only before any data.
    fn lanes(&mut self) -> &mut Sha256 {
        self.single = None;
        &mut self.multi
    }

    fn update(&mut self, data: &[u8]) {
        match &mut self.single {
            Some(h) => h.update(data),
            None => self.multi.update(data),
        }
    }

    fn finalize(self) -> [u8; HMAC_LEN] {
        let inner = match self.single {
            Some(h) => h.finish(),
            None => self.multi.finalize(),
        };
        let mut outer = openssl::sha::Sha256::new();
        outer.update(self.outer_key.as_ref());
        outer.update(&inner);
        outer.finish()
    }
}

/// Plaintext is copied aside in pieces of this size so that its digest and the
/// ciphertext's can be computed in the same pass.
const PIECE: usize = 16 << 10;

/// The digests a [`LayerEncryptor`] computes besides the HMAC.
struct SideDigests {
    plaintext: Sha256,
    ciphertext: Sha256,
    scratch: Vec<u8>,
}

/// What [`LayerEncryptor::finish_with_digests`] returns.
#[derive(Debug, Clone)]
pub struct Sealed {
    /// The public options carrying the HMAC.
    pub public: PublicOptions,
    /// SHA-256 of the plaintext (the source blob), if requested.
    pub plaintext_sha256: Option<[u8; 32]>,
    /// SHA-256 of the ciphertext (the new blob), if requested.
    pub ciphertext_sha256: Option<[u8; 32]>,
}

/// Why a layer could not be decrypted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CipherError {
    /// The HMAC over the ciphertext did not match `pubopts`: the blob was
    /// tampered with, truncated, or the wrong key was used.
    #[error("layer HMAC mismatch: the ciphertext was modified or truncated, or the key is wrong")]
    HmacMismatch,
    /// The public options name a cipher other than AES_256_CTR_HMAC_SHA256.
    #[error("unsupported layer cipher {0:?}")]
    UnsupportedCipher(String),
    /// The ciphertext (decrypting) or plaintext (encrypting) does not hash to the
    /// blob digest it was expected to have.
    #[error("blob digest mismatch: expected {expected}, content hashes to {actual}")]
    DigestMismatch {
        /// The expected SHA-256.
        expected: Sha256Digest,
        /// The SHA-256 of what was read.
        actual: Sha256Digest,
    },
}

/// A SHA-256 value, shown as `sha256:<hex>`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Sha256Digest(pub [u8; 32]);

impl std::fmt::Display for Sha256Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("sha256:")?;
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

impl std::fmt::Debug for Sha256Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Sha256Digest({self})")
    }
}

fn new_parts(opts: &PrivateOptions, nonce: &[u8; 16]) -> (Aes256Ctr, HmacSha256) {
    let ctr = Aes256Ctr::new(opts.symkey.as_ref().into(), nonce.into());
    (ctr, HmacSha256::new(&opts.symkey))
}

/// Encrypts one layer: `update()` each buffer in place, then `finish()`.
pub struct LayerEncryptor {
    ctr: Aes256Ctr,
    mac: HmacSha256,
    len: u64,
    side: Option<Box<SideDigests>>,
}

impl LayerEncryptor {
    /// Start encrypting with the key and nonce of `opts`.
    pub fn new(opts: &PrivateOptions) -> Self {
        let (ctr, mac) = new_parts(opts, &opts.nonce);
        LayerEncryptor { ctr, mac, len: 0, side: None }
    }

    /// Like [`new`](Self::new), and also compute the SHA-256 of the plaintext and
    /// of the ciphertext (the source and the new blob digests) in the same pass
    /// as the HMAC: three hashes for about the price of one where the CPU has
    /// wide vectors. Read them with [`finish_with_digests`](Self::finish_with_digests).
    pub fn with_digests(opts: &PrivateOptions) -> Self {
        let mut e = Self::new(opts);
        e.mac.lanes();
        e.side = Some(Box::new(SideDigests {
            plaintext: Sha256::new(),
            ciphertext: Sha256::new(),
            scratch: vec![0; PIECE],
        }));
        e
    }

    /// Encrypt `buf` in place (any length; chunking does not change the output).
    pub fn update(&mut self, buf: &mut [u8]) {
        self.len += buf.len() as u64;
        let Some(side) = self.side.as_deref_mut() else {
            self.ctr.apply_keystream(buf);
            self.mac.update(buf);
            return;
        };
        for piece in buf.chunks_mut(PIECE) {
            let plain = &mut side.scratch[..piece.len()];
            plain.copy_from_slice(piece);
            self.ctr.apply_keystream(piece);
            sha256x::update_many(&mut [
                (&mut side.plaintext, &*plain),
                (self.mac.lanes(), &*piece),
                (&mut side.ciphertext, &*piece),
            ]);
        }
    }

    /// Whether the plaintext and ciphertext digests are computed ([`with_digests`](Self::with_digests)).
    pub fn computes_digests(&self) -> bool {
        self.side.is_some()
    }

    /// Bytes encrypted so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing has been encrypted yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// End of the layer: the public options carrying the HMAC.
    pub fn finish(self) -> PublicOptions {
        self.finish_with_digests().public
    }

    /// End of the layer: the public options and, if the encryptor was made
    /// [`with_digests`](Self::with_digests), the plaintext and ciphertext SHA-256.
    pub fn finish_with_digests(self) -> Sealed {
        let (plaintext_sha256, ciphertext_sha256) = match self.side {
            Some(side) => (Some(side.plaintext.finalize()), Some(side.ciphertext.finalize())),
            None => (None, None),
        };
        Sealed { public: PublicOptions::new(self.mac.finalize()), plaintext_sha256, ciphertext_sha256 }
    }
}

impl std::fmt::Debug for LayerEncryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The cipher state holds the key schedule: show only progress.
        f.debug_struct("LayerEncryptor").field("len", &self.len).finish_non_exhaustive()
    }
}

impl std::fmt::Debug for LayerDecryptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LayerDecryptor").field("len", &self.len).finish_non_exhaustive()
    }
}

/// Decrypts one layer: `update()` each buffer in place, then `finish()` verifies
/// the HMAC in constant time.
pub struct LayerDecryptor {
    ctr: Aes256Ctr,
    mac: HmacSha256,
    expected: [u8; HMAC_LEN],
    len: u64,
    /// The blob digest to check at the end, and its running hash.
    blob: Option<([u8; 32], Sha256)>,
}

impl LayerDecryptor {
    /// Start decrypting. The nonce comes from the public options if they carry
    /// one (Go's lookup order), else from the private options.
    pub fn new(opts: &PrivateOptions, public: &PublicOptions) -> Result<Self, CipherError> {
        if public.cipher != AES_256_CTR_HMAC_SHA256 {
            return Err(CipherError::UnsupportedCipher(public.cipher.clone()));
        }
        let nonce = public.public_nonce.unwrap_or(opts.nonce);
        let (ctr, mac) = new_parts(opts, &nonce);
        Ok(LayerDecryptor { ctr, mac, expected: public.hmac, len: 0, blob: None })
    }

    /// Like [`new`](Self::new), and also check that the ciphertext hashes to
    /// `blob_sha256` (the layer's blob digest), computed in the same pass as
    /// the HMAC. `finish()` then fails unless both match.
    ///
    /// A constructor, not a setter: the digest is in place before the first
    /// byte, so a caller that switched its blob reader's own check off cannot
    /// end up with no check at all.
    pub fn with_ciphertext_digest(
        opts: &PrivateOptions,
        public: &PublicOptions,
        blob_sha256: [u8; 32],
    ) -> Result<Self, CipherError> {
        let mut d = Self::new(opts, public)?;
        d.mac.lanes();
        d.blob = Some((blob_sha256, Sha256::new()));
        Ok(d)
    }

    /// Decrypt `buf` in place. The output is unauthenticated until `finish()`.
    pub fn update(&mut self, buf: &mut [u8]) {
        match &mut self.blob {
            Some((_, h)) => sha256x::update_many(&mut [(self.mac.lanes(), &*buf), (h, &*buf)]),
            None => self.mac.update(buf),
        }
        self.ctr.apply_keystream(buf);
        self.len += buf.len() as u64;
    }

    /// Like [`update`](Self::update), and also hash `extra.1` into `extra.0` in
    /// the same SIMD pass (e.g. the decompressed bytes of an earlier chunk into
    /// the layer's diff_id), where the CPU allows. `extra` may have any length.
    pub fn update_with(&mut self, buf: &mut [u8], extra: (&mut Sha256, &[u8])) {
        let (xh, xd) = extra;
        if self.mac.single.is_some() {
            // A combined pass needs the HMAC on the lanes too; only before any data.
            if self.len != 0 {
                xh.update(xd);
                self.update(buf);
                return;
            }
            self.mac.lanes();
        }
        match &mut self.blob {
            Some((_, h)) => sha256x::update_many(&mut [(&mut self.mac.multi, &*buf), (h, &*buf), (xh, xd)]),
            None => sha256x::update_many(&mut [(&mut self.mac.multi, &*buf), (xh, xd)]),
        }
        self.ctr.apply_keystream(buf);
        self.len += buf.len() as u64;
    }

    /// Bytes decrypted so far.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether nothing has been decrypted yet.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// End of the layer: `Ok` only if the HMAC over all ciphertext matches (and
    /// the blob digest, when one was given).
    pub fn finish(self) -> Result<(), CipherError> {
        if let Some((expected, h)) = self.blob {
            let actual = h.finalize();
            if actual != expected {
                return Err(CipherError::digest_mismatch(&expected, &actual));
            }
        }
        let tag = self.mac.finalize();
        if bool::from(tag.ct_eq(&self.expected)) {
            Ok(())
        } else {
            Err(CipherError::HmacMismatch)
        }
    }
}

impl CipherError {
    /// A [`DigestMismatch`](Self::DigestMismatch) between two SHA-256 values.
    pub fn digest_mismatch(expected: &[u8; 32], actual: &[u8; 32]) -> Self {
        CipherError::DigestMismatch { expected: Sha256Digest(*expected), actual: Sha256Digest(*actual) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zeroize::Zeroizing;

    fn kat_opts(nonce: [u8; 16]) -> PrivateOptions {
        let key: [u8; 32] = core::array::from_fn(|i| i as u8);
        PrivateOptions { symkey: Zeroizing::new(key), digest: String::new(), nonce }
    }

    fn seq16() -> [u8; 16] {
        core::array::from_fn(|i| i as u8)
    }

    fn check_kat(nonce: [u8; 16], plain_hex: &str, ct_hex: &str, hmac_hex: &str, pubopts_b64: &str) {
        use base64::Engine as _;
        let opts = kat_opts(nonce);
        let mut buf = hex::decode(plain_hex).unwrap();
        let mut enc = LayerEncryptor::new(&opts);
        enc.update(&mut buf);
        assert_eq!(hex::encode(&buf), ct_hex);
        let public = enc.finish();
        assert_eq!(hex::encode(public.hmac), hmac_hex);
        assert_eq!(base64::engine::general_purpose::STANDARD.encode(public.to_json()), pubopts_b64);
        let mut dec = LayerDecryptor::new(&opts, &public).unwrap();
        dec.update(&mut buf);
        assert_eq!(hex::encode(&buf), plain_hex);
        dec.finish().unwrap();
    }

    #[test]
    fn kat1_short() {
        check_kat(
            seq16(),
            "5468697320697320736f6d65207465787421",
            "0e066d24289202b68341385822b7c3ea14d2",
            "db00618044a0e5af29587aeea2a3a21e5f3cda50c6d8a8aa49eabb7533bbfa5e",
            "eyJjaXBoZXIiOiJBRVNfMjU2X0NUUl9ITUFDX1NIQTI1NiIsImhtYWMiOiIyd0JoZ0VTZzVhOHBXSHJ1b3FPaUhsODgybERHMktpcVNlcTdkVE83K2w0PSIsImNpcGhlcm9wdGlvbnMiOnt9fQ==",
        );
    }

    #[test]
    fn kat2_counter_wraps() {
        check_kat(
            [0xff; 16],
            "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f2021222324252627",
            "e998e61e48a276dd5b8e1b70518259e1e28112a53e5c89c7b1ea8071c133699fd07c548d6e9cb9c2",
            "6445c7a0dc4e53010b5cbf85e3b609fe141f228a7ae3ceaeb7fb3629a47bb2e6",
            "eyJjaXBoZXIiOiJBRVNfMjU2X0NUUl9ITUFDX1NIQTI1NiIsImhtYWMiOiJaRVhIb054T1V3RUxYTCtGNDdZSi9oUWZJb3A2NDg2dXQvczJLYVI3c3VZPSIsImNpcGhlcm9wdGlvbnMiOnt9fQ==",
        );
    }

    #[test]
    fn kat3_empty_layer() {
        check_kat(
            seq16(),
            "",
            "",
            "d38b42096d80f45f826b44a9d5607de72496a415d3f4a1a8c88e3bb9da8dc1cb",
            "eyJjaXBoZXIiOiJBRVNfMjU2X0NUUl9ITUFDX1NIQTI1NiIsImhtYWMiOiIwNHRDQ1cyQTlGK0NhMFNwMVdCOTV5U1dwQlhUOUtHb3lJNDd1ZHFOd2NzPSIsImNpcGhlcm9wdGlvbnMiOnt9fQ==",
        );
    }

    /// `update_with` gives the same plaintext and verdicts as `update`, and the
    /// extra lane the same digest as hashing it alone, with or without a blob digest.
    #[test]
    fn update_with_hashes_the_extra_lane() {
        let opts = kat_opts(seq16());
        let data: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8).collect();
        let mut ct = data.clone();
        let mut enc = LayerEncryptor::new(&opts);
        enc.update(&mut ct);
        let public = enc.finish();
        let extra: Vec<u8> = (0..777_777u32).map(|i| (i % 253) as u8).collect();
        for with_blob in [false, true] {
            let mut dec = if with_blob {
                LayerDecryptor::with_ciphertext_digest(&opts, &public, openssl::sha::sha256(&ct)).unwrap()
            } else {
                LayerDecryptor::new(&opts, &public).unwrap()
            };
            let mut buf = ct.clone();
            let mut x = sha256x::Sha256::new();
            let mut xs = extra.chunks(100_000);
            for chunk in buf.chunks_mut(65_536) {
                dec.update_with(chunk, (&mut x, xs.next().unwrap_or(&[])));
            }
            for rest in xs {
                x.update(rest);
            }
            assert_eq!(buf, data);
            dec.finish().unwrap();
            assert_eq!(x.finalize(), openssl::sha::sha256(&extra));
        }
        // A flipped ciphertext byte still fails.
        let mut bad = ct.clone();
        bad[12_345] ^= 4;
        let mut dec = LayerDecryptor::new(&opts, &public).unwrap();
        let mut x = sha256x::Sha256::new();
        dec.update_with(&mut bad, (&mut x, b"abc"));
        assert_eq!(dec.finish(), Err(CipherError::HmacMismatch));
    }

    #[test]
    fn flipped_byte_fails_hmac() {
        let opts = kat_opts(seq16());
        let mut buf = b"This is some text!".to_vec();
        let mut enc = LayerEncryptor::new(&opts);
        enc.update(&mut buf);
        let public = enc.finish();
        let last = buf.len() - 1;
        buf[last] ^= 1;
        let mut dec = LayerDecryptor::new(&opts, &public).unwrap();
        dec.update(&mut buf);
        assert_eq!(dec.finish(), Err(CipherError::HmacMismatch));
    }

    #[test]
    fn unknown_cipher_refused() {
        let opts = kat_opts(seq16());
        let mut public = PublicOptions::new([0; 32]);
        public.cipher = "ROT13".into();
        assert!(matches!(
            LayerDecryptor::new(&opts, &public),
            Err(CipherError::UnsupportedCipher(c)) if c == "ROT13"
        ));
    }

    /// The mismatch names both digests as `sha256:<hex>`, typed.
    #[test]
    fn digest_mismatch_is_typed_and_readable() {
        let e = CipherError::digest_mismatch(&[0xab; 32], &[0x01; 32]);
        let CipherError::DigestMismatch { expected, actual } = &e else { panic!("{e:?}") };
        assert_eq!(expected.0, [0xab; 32]);
        assert_eq!(actual.0, [0x01; 32]);
        let text = e.to_string();
        assert!(text.contains(&format!("expected sha256:{}", "ab".repeat(32))), "{text}");
        assert!(text.contains(&format!("hashes to sha256:{}", "01".repeat(32))), "{text}");
    }
}
