//! Fuzz cosign signature manifest parsing (served by the registry under the
//! `sha256-<hex>.sig` tag): never a panic, never more signatures than the cap,
//! and appending a signature to a parsed manifest keeps it parseable.
#![no_main]

use imgsig::cosign::{append_signature, parse_signature_manifest, MAX_SIGNATURES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(sigs) = parse_signature_manifest(data) else { return };
    assert!(sigs.len() <= MAX_SIGNATURES);
    if let Ok(built) = append_signature(Some(data), b"payload", b"signature") {
        let again = parse_signature_manifest(&built.manifest).expect("appended manifest parses");
        assert!(again.len() <= sigs.len() + 1);
    }
});
