//! Fuzz the simple-signing payload parser and docker reference parser (both
//! read bytes a registry serves): never a panic; a parsed reference prints
//! to a string that parses back to the same reference.
#![no_main]

use imgsig::payload::{ATOMIC_TYPE, COSIGN_TYPE};
use imgsig::{DockerRef, Payload};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for kind in [COSIGN_TYPE, ATOMIC_TYPE] {
        if let Ok(p) = Payload::parse(data, kind) {
            let again = DockerRef::parse(&p.docker_reference.to_string()).expect("printed reference parses");
            assert_eq!(again, p.docker_reference);
        }
    }
    if let Ok(r) = DockerRef::parse(&String::from_utf8_lossy(data)) {
        assert_eq!(DockerRef::parse(&r.to_string()).expect("round trip"), r);
    }
});
