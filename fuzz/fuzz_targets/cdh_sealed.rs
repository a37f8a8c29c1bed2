//! Fuzz the sealed-secret parser (`sealed.<header>.<payload>.<signature>`) and
//! its payload reader. A parsed secret's signing input must be what was sent.
#![no_main]

use guest_puller::cdh::sealed;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = sealed::parse(data) {
        let text = std::str::from_utf8(data).expect("parsed input is UTF-8");
        assert!(text.contains(&s.signing_input));
        let _ = sealed::interpret(&s.payload);
    }
    let _ = sealed::interpret(data);
});
