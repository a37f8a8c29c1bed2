//! Keyprovider request/answer JSON (untrusted: from skopeo/containerd or from a
//! provider process): parsing and validating must never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(input) = keyprovider::protocol::KeyProviderInput::from_slice(data) {
        let _ = input.to_vec();
        let _ = input.into_request();
    }
    let _ = keyprovider::protocol::KeyProviderOutput::from_slice(data);
});
