//! CoCo init-data: the TOML document a Pod carries in the annotation
//! `io.katacontainers.config.hypervisor.cc_init_data` (KBS URL and certificate,
//! `cdh.toml`, agent policy), and its digest as the hardware measures it.
//!
//! The rules are kata-runtime's (4.1.0, `src/runtime/pkg/oci/utils.go` and
//! `pkg/govmm/qemu/qemu.go`), which is what decides the value in the report:
//! - the annotation is base64 (standard alphabet) of the gzip of the TOML bytes;
//! - the digest is the `algorithm` hash (`sha256`, `sha384`, `sha512`) of those
//!   bytes exactly as written, not of a re-serialised document;
//! - the digest is zero-padded or truncated to the field: SNP `HOST_DATA` 32
//!   bytes, TDX `MRCONFIGID` 48, CCA personalization value 64.
//!
//! Only the shape is checked here (`version`, `algorithm`, a `[data]` table of
//! strings); what the entries mean is for their readers.

use sha2::Digest as _;

/// The Pod annotation kata-runtime reads init-data from.
pub const ANNOTATION: &str = "io.katacontainers.config.hypervisor.cc_init_data";
/// Largest init-data document accepted (kata-runtime sets no limit of its own; the
/// whole Pod annotation set is limited to 256 KiB by Kubernetes).
pub const MAX_INITDATA: usize = 256 << 10;

/// Why a document is not init-data.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InitdataError {
    #[error("init-data is {size} bytes, more than the {max} a Pod annotation can hold")]
    TooLarge { size: usize, max: usize },
    #[error("init-data is not UTF-8 TOML")]
    NotUtf8,
    #[error("init-data is not valid TOML: {0}")]
    Toml(String),
    #[error("init-data has no {0:?} string at the top level")]
    Missing(&'static str),
    #[error("init-data algorithm {0:?} is not sha256, sha384 or sha512")]
    Algorithm(String),
    #[error("init-data [data] entry {0:?} is not a string")]
    NotAString(String),
}

/// Why an init-data file could not be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InitdataFileError {
    #[error("reading init-data file {path}")]
    Read {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("init-data file {path}")]
    Invalid {
        path: std::path::PathBuf,
        #[source]
        source: InitdataError,
    },
}

/// The hash named by `algorithm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InitdataAlgorithm {
    Sha256,
    Sha384,
    Sha512,
}

impl InitdataAlgorithm {
    /// The name as init-data writes it.
    pub fn name(self) -> &'static str {
        match self {
            InitdataAlgorithm::Sha256 => "sha256",
            InitdataAlgorithm::Sha384 => "sha384",
            InitdataAlgorithm::Sha512 => "sha512",
        }
    }

    fn digest(self, bytes: &[u8]) -> Vec<u8> {
        match self {
            InitdataAlgorithm::Sha256 => sha2::Sha256::digest(bytes).to_vec(),
            InitdataAlgorithm::Sha384 => sha2::Sha384::digest(bytes).to_vec(),
            InitdataAlgorithm::Sha512 => sha2::Sha512::digest(bytes).to_vec(),
        }
    }
}

/// A checked init-data document, with the bytes it was read from.
#[derive(Debug, Clone)]
pub struct Initdata {
    /// The document as read; UTF-8 was checked, so it is kept as text.
    raw: String,
    version: String,
    algorithm: InitdataAlgorithm,
    data: Vec<(String, String)>,
}

impl Initdata {
    /// Checks `raw` (the TOML bytes as the Pod annotation carries them).
    pub fn parse(raw: &[u8]) -> Result<Self, InitdataError> {
        if raw.len() > MAX_INITDATA {
            return Err(InitdataError::TooLarge { size: raw.len(), max: MAX_INITDATA });
        }
        let text = std::str::from_utf8(raw).map_err(|_| InitdataError::NotUtf8)?;
        let doc: toml::Table =
            text.parse().map_err(|e: toml::de::Error| InitdataError::Toml(e.message().into()))?;
        let string = |key: &'static str| {
            doc.get(key).and_then(toml::Value::as_str).map(str::to_owned).ok_or(InitdataError::Missing(key))
        };
        let version = string("version")?;
        let algorithm = match string("algorithm")?.as_str() {
            "sha256" => InitdataAlgorithm::Sha256,
            "sha384" => InitdataAlgorithm::Sha384,
            "sha512" => InitdataAlgorithm::Sha512,
            other => return Err(InitdataError::Algorithm(other.chars().take(32).collect())),
        };
        let mut data = Vec::new();
        if let Some(table) = doc.get("data").and_then(toml::Value::as_table) {
            for (k, v) in table {
                let v = v.as_str().ok_or_else(|| InitdataError::NotAString(k.chars().take(64).collect()))?;
                data.push((k.clone(), v.to_owned()));
            }
        } else {
            return Err(InitdataError::Missing("data"));
        }
        Ok(Self { raw: text.to_owned(), version, algorithm, data })
    }

    /// Reads and checks the file at `path`, reading no more than [`MAX_INITDATA`] + 1
    /// bytes (where kata-agent leaves it: `/run/confidential-containers/initdata/initdata.toml`).
    pub fn read_file(path: &std::path::Path) -> Result<Self, InitdataFileError> {
        use std::io::Read as _;
        let read_err = |source| InitdataFileError::Read { path: path.to_owned(), source };
        let mut raw = Vec::new();
        std::fs::File::open(path)
            .map_err(read_err)?
            .take(MAX_INITDATA as u64 + 1)
            .read_to_end(&mut raw)
            .map_err(read_err)?;
        Self::parse(&raw).map_err(|source| InitdataFileError::Invalid { path: path.to_owned(), source })
    }

    /// The bytes as read (what is hashed and what the annotation carries).
    pub fn raw(&self) -> &[u8] {
        self.raw.as_bytes()
    }

    /// The document as read, as text (the `body` of the RCAR's `init-data`).
    pub fn text(&self) -> &str {
        &self.raw
    }

    /// The `[data]` entry `name`, if present.
    pub fn entry(&self, name: &str) -> Option<&str> {
        self.data.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    /// `version`.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// `algorithm`.
    pub fn algorithm(&self) -> InitdataAlgorithm {
        self.algorithm
    }

    /// The `[data]` entries (name, text), in the document's order.
    pub fn data(&self) -> &[(String, String)] {
        &self.data
    }

    /// The digest of the raw bytes with the document's algorithm.
    pub fn digest(&self) -> Vec<u8> {
        self.algorithm.digest(self.raw.as_bytes())
    }

    /// The digest fitted to a report field of `len` bytes: zero-padded, or cut.
    pub fn field(&self, len: usize) -> Vec<u8> {
        let mut out = self.digest();
        out.resize(len, 0);
        out
    }

    /// SNP `HOST_DATA` (32 bytes).
    pub fn snp_host_data(&self) -> [u8; 32] {
        let mut out = [0u8; 32];
        out.copy_from_slice(&self.field(32));
        out
    }

    /// TDX `MRCONFIGID` (48 bytes).
    pub fn tdx_mrconfigid(&self) -> [u8; 48] {
        let mut out = [0u8; 48];
        out.copy_from_slice(&self.field(48));
        out
    }

    /// Arm CCA realm personalization value (64 bytes).
    pub fn cca_personalization_value(&self) -> [u8; 64] {
        let mut out = [0u8; 64];
        out.copy_from_slice(&self.field(64));
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    const DOC: &str = "version = \"0.1.0\"\nalgorithm = \"sha384\"\n[data]\n\"cdh.toml\" = '''\n[kbc]\nname = \"cc_kbc\"\nurl = \"https://kbs.example:8080\"\n'''\n";

    #[test]
    fn digest_is_of_the_bytes_as_written_and_fitted_to_each_field() {
        let d = Initdata::parse(DOC.as_bytes()).unwrap();
        assert_eq!(d.algorithm(), InitdataAlgorithm::Sha384);
        assert_eq!(d.version(), "0.1.0");
        assert_eq!(d.data()[0].0, "cdh.toml");
        let full = sha2::Sha384::digest(DOC.as_bytes()).to_vec();
        assert_eq!(d.digest(), full);
        assert_eq!(&d.snp_host_data()[..], &full[..32], "SNP takes the first 32 bytes");
        assert_eq!(&d.tdx_mrconfigid()[..], &full[..], "TDX takes all 48");
        assert_eq!(&d.cca_personalization_value()[..48], &full[..]);
        assert_eq!(&d.cca_personalization_value()[48..], &[0u8; 16], "CCA is zero-padded");
        // The same document with one more space hashes differently: bytes, not meaning.
        let spaced = DOC.replace("version = ", "version =  ");
        assert_ne!(Initdata::parse(spaced.as_bytes()).unwrap().digest(), full);
    }

    /// `testdata/initdata/expected*.json`: computed with Python's hashlib by kata-runtime's
    /// rules (the README there says how), one per algorithm.
    #[test]
    fn digests_match_the_independently_computed_vectors() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../testdata/initdata");
        for (doc, expected) in [
            ("initdata.toml", "expected.json"),
            ("initdata-sha256.toml", "expected-sha256.json"),
            ("initdata-sha512.toml", "expected-sha512.json"),
        ] {
            let d = Initdata::read_file(&dir.join(doc)).unwrap();
            let want: serde_json::Value =
                serde_json::from_slice(&std::fs::read(dir.join(expected)).unwrap()).unwrap();
            assert_eq!(d.algorithm().name(), want["algorithm"], "{doc}");
            assert_eq!(hex::encode(d.digest()), want["digest"], "{doc}");
            assert_eq!(hex::encode(d.snp_host_data()), want["snp_host_data"], "{doc}");
            assert_eq!(hex::encode(d.tdx_mrconfigid()), want["tdx_mrconfigid"], "{doc}");
            assert_eq!(
                hex::encode(d.cca_personalization_value()),
                want["cca_personalization_value"],
                "{doc}"
            );
        }
    }

    #[test]
    fn sha256_is_zero_padded_for_tdx() {
        let doc = DOC.replace("sha384", "sha256");
        let d = Initdata::parse(doc.as_bytes()).unwrap();
        let full = sha2::Sha256::digest(doc.as_bytes());
        assert_eq!(&d.snp_host_data()[..], &full[..]);
        assert_eq!(&d.tdx_mrconfigid()[..32], &full[..]);
        assert_eq!(&d.tdx_mrconfigid()[32..], &[0u8; 16]);
    }

    #[test]
    fn bad_documents_name_what_is_wrong() {
        let cases: [(&str, &str); 5] = [
            ("version = \"0.1.0\"\n[data]\n", "\"algorithm\""),
            ("version = \"0.1.0\"\nalgorithm = \"md5\"\n[data]\n", "md5"),
            ("version = \"0.1.0\"\nalgorithm = \"sha256\"\n", "\"data\""),
            ("version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\nx = 1\n", "\"x\""),
            ("version = [", "TOML"),
        ];
        for (doc, needle) in cases {
            let e = Initdata::parse(doc.as_bytes()).unwrap_err().to_string();
            assert!(e.contains(needle), "{doc:?}: {e}");
        }
        assert!(matches!(Initdata::parse(&[0xff, 0xfe]), Err(InitdataError::NotUtf8)));
        let big = vec![b'#'; MAX_INITDATA + 1];
        assert!(matches!(Initdata::parse(&big), Err(InitdataError::TooLarge { .. })));
    }
}
