//! CoCo AnnotationPackets (untrusted: from an image's layer annotation): parsing
//! and opening with a fixed KEK must never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| cloak_fuzz_lib::targets::keyprovider_packet(data));
