//! CoCo AnnotationPackets (untrusted: from an image's layer annotation): parsing
//! and opening with a fixed KEK must never panic.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = keyprovider::AnnotationPacket::parse(data) {
        if let Ok(kek) = keyprovider::Kek::from_slice(&[7u8; 32]) {
            let _ = p.open(&kek);
        }
        let _ = p.to_v1_json();
    }
});
