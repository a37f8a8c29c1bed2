//! The media-type table against what real skopeo (1.9.3 and 1.18) wrote: every
//! layer type in the golden vectors (`testdata/golden/*/vector.json`, made by
//! `testdata/make-golden.sh`) parses, and for every layer skopeo encrypted,
//! [`ocicrypt::encrypted_media_type`] of the plaintext type is exactly the
//! type skopeo gave the encrypted layer (Docker types mapped to OCI).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use ocicrypt::{encrypted_media_type, LayerMediaType};

#[test]
fn encrypted_types_equal_what_skopeo_wrote() {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/golden");
    let mut checked = 0;
    let mut plain_types = std::collections::BTreeSet::new();
    for entry in std::fs::read_dir(&golden).expect("testdata/golden") {
        let vector = entry.expect("entry").path().join("vector.json");
        let Ok(text) = std::fs::read_to_string(&vector) else { continue };
        let v: serde_json::Value = serde_json::from_str(&text).expect("vector.json");
        for enc in v["encryptions"].as_array().expect("encryptions") {
            for m in enc["manifests"].as_array().expect("manifests") {
                for l in m["layers"].as_array().expect("layers") {
                    let plain = l["plain"]["mediaType"].as_str().expect("plain type");
                    let written = l["enc"]["mediaType"].as_str().expect("enc type");
                    let p = LayerMediaType::parse(plain).expect("plain type parses");
                    let w = LayerMediaType::parse(written).expect("skopeo's type parses");
                    plain_types.insert(plain.to_string());
                    if l["encrypted"].as_bool().expect("encrypted") {
                        assert!(w.encrypted && !p.encrypted, "{vector:?}: {plain} -> {written}");
                        assert_eq!(encrypted_media_type(plain).expect(plain), written, "{vector:?}");
                        assert_eq!(w.decrypt(), p.to_oci(), "{vector:?}");
                        assert_eq!(w.compression, p.compression);
                    } else {
                        // Layers skopeo left alone keep their type (OCI manifests only).
                        assert!(!w.encrypted, "{vector:?}: {written}");
                    }
                    checked += 1;
                }
            }
        }
    }
    assert!(checked >= 20, "only {checked} layers found under {golden:?}");
    // The vectors cover OCI gzip and zstd and Docker schema2 gzip sources.
    for t in [
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
    ] {
        assert!(plain_types.contains(t), "no {t} in the vectors: {plain_types:?}");
    }
}
