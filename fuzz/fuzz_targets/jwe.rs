//! Fuzz the JWE parser and unwrapper with fixed test keys (RSA and EC), and the
//! header-only `jwe_recipients`: arbitrary bytes must give an error, never a panic.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use ocicrypt::{jwe_recipients, load_private_key, JweUnwrapper};

fn unwrapper() -> &'static JweUnwrapper {
    static U: OnceLock<JweUnwrapper> = OnceLock::new();
    U.get_or_init(|| {
        let keys = [
            &include_bytes!("../../testdata/ocicrypt/keys/rsa2048.pem")[..],
            &include_bytes!("../../testdata/ocicrypt/keys/ec-P-256.pem")[..],
        ];
        JweUnwrapper::new(keys.iter().map(|k| load_private_key(k).expect("test key")).collect())
    })
}

fuzz_target!(|data: &[u8]| {
    let _ = jwe_recipients(data);
    let _ = unwrapper().unwrap_jwe(data);
});
