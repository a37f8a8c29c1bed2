//! Fuzz the KBS resource answer: arbitrary bytes go through the JWE parser and
//! the decryptor with fixed EC and RSA TEE keys; they must give an error, never
//! a panic.
#![no_main]

use std::sync::OnceLock;

use kbs_client::protocol::{decrypt_response, parse_response};
use kbs_client::{TeeKeyKind, TeeKeyPair};
use libfuzzer_sys::fuzz_target;

fn keys() -> &'static [TeeKeyPair; 2] {
    static K: OnceLock<[TeeKeyPair; 2]> = OnceLock::new();
    K.get_or_init(|| {
        [
            TeeKeyPair::generate(TeeKeyKind::EcP256).expect("EC key"),
            TeeKeyPair::generate(TeeKeyKind::Rsa).expect("RSA key"),
        ]
    })
}

fuzz_target!(|data: &[u8]| {
    if let Ok(resp) = parse_response(data) {
        for k in keys() {
            let _ = decrypt_response(k, &resp);
        }
    }
});
