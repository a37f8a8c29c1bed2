//! Validated configuration for each command, built by `main.rs` from flags.

use std::path::PathBuf;

use oci::{ImageRef, PlatformSpec};

use crate::recipients::Recipient;

/// Options shared by `encrypt` and `decrypt`.
#[derive(Debug, Clone, Default)]
pub struct CommonOptions {
    /// No progress bars.
    pub quiet: bool,
    /// Print the JSON result on stdout.
    pub json: bool,
    /// USER:PASS for the source registry.
    pub src_creds: Option<String>,
    /// USER:PASS for the destination registry.
    pub dest_creds: Option<String>,
    /// docker config.json-style auth file.
    pub authfile: Option<PathBuf>,
    /// Talk plain HTTP to the source registry (`--src-tls-verify=false`).
    pub insecure_src_plain_http: bool,
    /// Talk plain HTTP to the destination registry (`--dest-tls-verify=false`).
    pub insecure_dest_plain_http: bool,
    /// Bound on layers processed at once.
    pub max_concurrent_layers: usize,
}

/// Which layers of a manifest to encrypt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LayerSelection {
    /// Every layer (the default).
    All,
    /// 0-based indices; negative ones count from the end (-1 = last), like skopeo's
    /// `--encrypt-layer`.
    Indices(Vec<i64>),
}

impl LayerSelection {
    /// Resolves the selection against a manifest with `count` layers.
    pub fn resolve(&self, count: usize) -> Result<Vec<bool>, crate::Error> {
        let mut selected = vec![false; count];
        match self {
            LayerSelection::All => selected.iter_mut().for_each(|s| *s = true),
            LayerSelection::Indices(indices) => {
                for &i in indices {
                    let n = i64::try_from(count).unwrap_or(i64::MAX);
                    let idx = if i < 0 { n + i } else { i };
                    if idx < 0 || idx >= n {
                        return Err(crate::Error::LayerOutOfRange { index: i, count });
                    }
                    if let Some(s) = usize::try_from(idx).ok().and_then(|u| selected.get_mut(u)) {
                        *s = true;
                    }
                }
            }
        }
        Ok(selected)
    }
}

/// Which manifests of an index to process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PlatformSelection {
    /// The running platform (like skopeo without `--all`).
    Default,
    /// One platform, `OS/ARCH[/VARIANT]`.
    Only(PlatformSpec),
    /// Every manifest of the index; a new index is written.
    All,
}

/// KBS admin access, for `kbs:///` recipients and `keygen`.
#[derive(Debug, Clone, Default)]
pub struct KbsAdminOptions {
    /// Base URL of the KBS.
    pub url: Option<String>,
    /// Ed25519 admin key, PKCS#8 PEM.
    pub admin_key: Option<PathBuf>,
    /// A 32-byte KEK the user registered at the `kbs:///` id(s) already.
    pub kek_file: Option<PathBuf>,
    /// CA bundle (PEM) trusted for an https KBS beside the built-in roots (`--kbs-cert`).
    pub kbs_cert: Option<PathBuf>,
}

/// `cloak encrypt`.
#[derive(Debug, Clone)]
pub struct EncryptConfig {
    pub src: ImageRef,
    pub dst: ImageRef,
    /// Parsed recipients (`jwe:…`, `provider:…`, `kbs:///…`).
    pub recipients: Vec<Recipient>,
    pub layers: LayerSelection,
    pub platforms: PlatformSelection,
    pub keyprovider_config: Option<PathBuf>,
    pub kbs: KbsAdminOptions,
    pub common: CommonOptions,
}

/// `cloak decrypt`.
#[derive(Debug, Clone)]
pub struct DecryptConfig {
    pub src: ImageRef,
    pub dst: ImageRef,
    pub keys: Vec<PathBuf>,
    pub platforms: PlatformSelection,
    pub common: CommonOptions,
}

/// `cloak inspect`.
#[derive(Debug, Clone)]
pub struct InspectConfig {
    pub image: ImageRef,
    pub platform: Option<PlatformSpec>,
    pub creds: Option<String>,
    pub authfile: Option<PathBuf>,
    pub insecure_plain_http: bool,
}

/// `cloak keygen`.
#[derive(Debug, Clone)]
pub struct KeygenConfig {
    pub kbs: KbsAdminOptions,
    pub rsa: bool,
    pub out: PathBuf,
    pub save_private: Option<PathBuf>,
    pub uri: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negative_layer_counts_from_the_end() {
        let sel = LayerSelection::Indices(vec![-1, 0]);
        assert_eq!(sel.resolve(3).ok(), Some(vec![true, false, true]));
    }

    #[test]
    fn out_of_range_layer_is_an_error_naming_the_index_and_count() {
        // The library names the index, not the flag (main.rs adds `--layer`).
        let err = LayerSelection::Indices(vec![3]).resolve(3).err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("layer index 3") && e.contains("3 layer(s)")));
        assert!(LayerSelection::Indices(vec![-4]).resolve(3).is_err());
    }

    #[test]
    fn all_selects_every_layer() {
        assert_eq!(LayerSelection::All.resolve(2).ok(), Some(vec![true, true]));
    }
}
