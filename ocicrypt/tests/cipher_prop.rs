//! Property tests: chunking never changes the ciphertext, the HMAC or the
//! decrypted bytes, and any single-bit flip is caught at the end.
#![allow(clippy::unwrap_used)]

use ocicrypt::{LayerDecryptor, LayerEncryptor, PrivateOptions};
use proptest::prelude::*;
use zeroize::Zeroizing;

fn opts(key: [u8; 32], nonce: [u8; 16]) -> PrivateOptions {
    PrivateOptions { symkey: Zeroizing::new(key), digest: String::new(), nonce }
}

/// Split `buf` at the (sorted, clamped) cut points and run `f` on each piece.
fn chunked(buf: &mut [u8], cuts: &[usize], mut f: impl FnMut(&mut [u8])) {
    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (buf.len() + 1)).collect();
    cuts.sort_unstable();
    let mut start = 0;
    for c in cuts.into_iter().chain(std::iter::once(buf.len())) {
        f(&mut buf[start..c]);
        start = c;
    }
}

proptest! {
    #[test]
    fn chunking_is_invisible(
        key in any::<[u8; 32]>(),
        nonce in any::<[u8; 16]>(),
        data in proptest::collection::vec(any::<u8>(), 0..4096),
        cuts_a in proptest::collection::vec(any::<usize>(), 0..8),
        cuts_b in proptest::collection::vec(any::<usize>(), 0..8),
    ) {
        let o = opts(key, nonce);
        let mut whole = data.clone();
        let mut e = LayerEncryptor::new(&o);
        e.update(&mut whole);
        let p_whole = e.finish();

        let mut pieces = data.clone();
        let mut e = LayerEncryptor::new(&o);
        chunked(&mut pieces, &cuts_a, |c| e.update(c));
        let p_pieces = e.finish();
        prop_assert_eq!(&whole, &pieces);
        prop_assert_eq!(&p_whole, &p_pieces);

        let mut d = LayerDecryptor::new(&o, &p_whole).unwrap();
        chunked(&mut pieces, &cuts_b, |c| d.update(c));
        prop_assert!(d.finish().is_ok());
        prop_assert_eq!(&pieces, &data);
    }

    #[test]
    fn any_flip_is_caught(
        key in any::<[u8; 32]>(),
        nonce in any::<[u8; 16]>(),
        data in proptest::collection::vec(any::<u8>(), 1..2048),
        pos in any::<usize>(),
        bit in 0u8..8,
    ) {
        let o = opts(key, nonce);
        let mut ct = data.clone();
        let mut e = LayerEncryptor::new(&o);
        e.update(&mut ct);
        let p = e.finish();
        let i = pos % ct.len();
        ct[i] ^= 1 << bit;
        let mut d = LayerDecryptor::new(&o, &p).unwrap();
        d.update(&mut ct);
        prop_assert!(d.finish().is_err());
    }
}
