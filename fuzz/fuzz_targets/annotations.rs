//! Fuzz the annotation and cipher-options parsers: they read untrusted
//! manifest bytes. Parsed values must survive a serialize/parse round trip.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use ocicrypt::{EncAnnotations, PrivateOptions, PublicOptions};

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = PrivateOptions::from_json(data) {
        let again = PrivateOptions::from_json(&p.to_json()).expect("private options round trip");
        assert_eq!(again, p);
    }
    if let Ok(p) = PublicOptions::from_json(data) {
        assert_eq!(PublicOptions::from_json(&p.to_json()).expect("public options round trip"), p);
    }
    // Annotations as `key=value` lines, or as a JSON object.
    let text = String::from_utf8_lossy(data);
    let mut map: BTreeMap<String, String> =
        text.lines().filter_map(|l| l.split_once('=')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect();
    if let Ok(json) = serde_json::from_slice::<BTreeMap<String, String>>(data) {
        map.extend(json);
    }
    if let Ok(enc) = EncAnnotations::parse(&map) {
        let back = EncAnnotations::parse(&enc.to_annotations()).expect("annotations round trip");
        assert_eq!(back.wrapped, enc.wrapped);
        assert_eq!(back.pubopts, enc.pubopts);
    }
    let stripped = ocicrypt::annotations::strip_enc_annotations(&map);
    assert!(stripped.keys().all(|k| !k.starts_with(ocicrypt::annotations::ENC_PREFIX)));
});
