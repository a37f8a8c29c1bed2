//! Fuzz the KBS handshake answers: the `/auth` challenge, the `/attest` token
//! answer and the token's claims. Arbitrary bytes must give an error, never a panic.
#![no_main]

use kbs_client::protocol::{parse_attest_response, parse_challenge, Token};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = parse_challenge(data);
    if let Ok(t) = parse_attest_response(data) {
        let _ = t.is_fresh(0, 5);
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = Token::parse(s.to_owned());
    }
});
