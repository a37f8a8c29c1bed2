//! Manifest rewriting: new layer descriptors in, an OCI manifest out. Encryption
//! needs an OCI manifest (only OCI carries `+encrypted` layers and their
//! annotations), so Docker schema2 manifests are converted, as skopeo does.

use oci::media_type::{DOCKER_CONFIG, DOCKER_MANIFEST, OCI_CONFIG, OCI_MANIFEST};
use oci::{Descriptor, ImageManifest};

/// The OCI equivalent of a Docker schema2 layer type, or the type unchanged
/// (ocicrypt's media-type table decides).
pub(crate) fn oci_layer_type(media_type: &str) -> String {
    ocicrypt::oci_media_type(media_type)
}

/// The manifest with its new layers; converted to OCI when `to_oci` or when it
/// now holds encrypted layers.
pub(crate) fn rewrite_manifest(mut m: ImageManifest, layers: Vec<Descriptor>, to_oci: bool) -> ImageManifest {
    m.layers = layers;
    let is_docker = m.media_type.as_deref().is_some_and(|t| t == DOCKER_MANIFEST);
    if to_oci || is_docker && m.layers.iter().any(|l| ocicrypt::is_encrypted(&l.media_type)) {
        m.media_type = Some(OCI_MANIFEST.to_string());
        if m.config.media_type == DOCKER_CONFIG {
            m.config.media_type = OCI_CONFIG.to_string();
        }
        for l in &mut m.layers {
            l.media_type = oci_layer_type(&l.media_type);
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_layer_types_map_to_oci() {
        assert_eq!(
            oci_layer_type("application/vnd.docker.image.rootfs.diff.tar.gzip"),
            "application/vnd.oci.image.layer.v1.tar+gzip"
        );
        assert_eq!(
            oci_layer_type("application/vnd.oci.image.layer.v1.tar+zstd"),
            "application/vnd.oci.image.layer.v1.tar+zstd"
        );
        // A foreign layer becomes nondistributable, as containers/image converts it.
        assert_eq!(
            oci_layer_type("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"),
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        );
        assert_eq!(oci_layer_type("application/x-unknown"), "application/x-unknown");
    }
}
