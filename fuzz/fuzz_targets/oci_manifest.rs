//! Manifests, indexes and image configs come from registries the guest does
//! not trust: parsing any bytes under any media type must return, never panic;
//! a layer media type that parses prints back as the same string.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for media_type in [
        oci::media_type::OCI_MANIFEST,
        oci::media_type::OCI_INDEX,
        oci::media_type::DOCKER_MANIFEST,
        oci::media_type::DOCKER_MANIFEST_LIST,
    ] {
        if let Ok(oci::Manifest::Index(idx)) = oci::parse_manifest(data, media_type) {
            let _ = oci::select_platform(&idx, &oci::PlatformSpec::current());
        }
    }
    if let Ok(c) = oci::ImageConfig::parse(data.to_vec()) {
        let _ = c.check_layer_count(c.diff_ids().len());
    }
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = s.parse::<oci::ImageRef>();
        let _ = s.parse::<oci::Digest>();
        if let Ok(t) = ocicrypt::LayerMediaType::parse(s) {
            assert_eq!(t.to_string(), s);
            let _ = t.encrypt();
        }
    }
});
