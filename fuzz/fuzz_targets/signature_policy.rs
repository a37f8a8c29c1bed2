//! Fuzz containers-policy.json parsing (the policy may come from the KBS or a
//! config map) and scope lookup: never a panic; every scope found for a parsed
//! image reference belongs to the policy.
#![no_main]

use std::path::Path;

use imgsig::policy::ImageIdentity;
use imgsig::{DockerRef, Policy};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (policy, reference) = match data.iter().position(|&b| b == 0) {
        Some(i) => (&data[..i], &data[i + 1..]),
        None => (data, &b"127.0.0.1:5000/app/hello:v1"[..]),
    };
    let Ok(p) = Policy::parse(policy, Path::new("/etc/containers")) else { return };
    if let Ok(r) = DockerRef::parse(&String::from_utf8_lossy(reference)) {
        let scope = p.scope_for(&ImageIdentity::Docker(r));
        assert!(!scope.requirements.is_empty(), "a scope never has an empty requirement list");
    }
});
