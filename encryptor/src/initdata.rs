//! `cloak initdata FILE`: what an operator needs before deploying a Pod with
//! init-data: the digest each TEE's report will carry (so a broker policy can pin
//! it) and the annotation value kata-runtime reads (base64 of the gzip of the
//! document's bytes; see `kbs_client::initdata` for the rules and their source).

use std::io::Write;

use base64::Engine as _;
use kbs_client::initdata::{Initdata, InitdataFileError, ANNOTATION};

/// Why `cloak initdata` failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum InitdataToolError {
    /// Reading or parsing the file (its path and what was wrong, once).
    #[error(transparent)]
    File(#[from] InitdataFileError),
    #[error("compressing the annotation")]
    Compress(#[source] std::io::Error),
}

/// The digests and the annotation of one init-data document.
#[derive(Debug, Clone, serde::Serialize)]
pub struct InitdataReport {
    pub version: String,
    pub algorithm: &'static str,
    /// The full digest, hex.
    pub digest: String,
    /// SNP `HOST_DATA` (32 bytes), hex.
    pub snp_host_data: String,
    /// TDX `MRCONFIGID` (48 bytes), hex.
    pub tdx_mrconfigid: String,
    /// Arm CCA personalization value (64 bytes), hex.
    pub cca_personalization_value: String,
    /// The `[data]` entry names.
    pub entries: Vec<String>,
    /// The Pod annotation's name.
    pub annotation: &'static str,
    /// Its value: base64 of the gzip of the document's bytes.
    pub annotation_value: String,
}

/// Reads `path` (at most `MAX_INITDATA` bytes) and reports on it.
pub fn initdata_report(path: &std::path::Path) -> Result<InitdataReport, InitdataToolError> {
    let doc = Initdata::read_file(path)?;
    Ok(InitdataReport {
        version: doc.version().to_owned(),
        algorithm: doc.algorithm().name(),
        digest: hex::encode(doc.digest()),
        snp_host_data: hex::encode(doc.snp_host_data()),
        tdx_mrconfigid: hex::encode(doc.tdx_mrconfigid()),
        cca_personalization_value: hex::encode(doc.cca_personalization_value()),
        entries: doc.data().iter().map(|(k, _)| k.clone()).collect(),
        annotation: ANNOTATION,
        annotation_value: annotation_value(doc.raw())?,
    })
}

/// base64 (standard alphabet) of the gzip of `raw`, as kata-runtime decodes it.
pub fn annotation_value(raw: &[u8]) -> Result<String, InitdataToolError> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    gz.write_all(raw).map_err(InitdataToolError::Compress)?;
    let packed = gz.finish().map_err(InitdataToolError::Compress)?;
    Ok(base64::engine::general_purpose::STANDARD.encode(packed))
}

impl InitdataReport {
    /// The text form `cloak initdata` prints.
    pub fn render_text(&self) -> String {
        format!(
            "init-data version {}, algorithm {}, entries: {}\n\
             digest            {}\n\
             SNP HOST_DATA     {}\n\
             TDX MRCONFIGID    {}\n\
             CCA personalization value {}\n\
             Pod annotation {}:\n{}\n",
            self.version,
            self.algorithm,
            self.entries.join(", "),
            self.digest,
            self.snp_host_data,
            self.tdx_mrconfigid,
            self.cca_personalization_value,
            self.annotation,
            self.annotation_value,
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::io::Read as _;

    /// `testdata/initdata/expected.json` was computed with Python's hashlib by
    /// kata-runtime's rules (its README says how).
    #[test]
    fn report_matches_the_independently_computed_vector() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/initdata");
        let r = initdata_report(&dir.join("initdata.toml")).unwrap();
        let want: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("expected.json")).unwrap()).unwrap();
        assert_eq!(r.algorithm, want["algorithm"]);
        assert_eq!(r.digest, want["digest"]);
        assert_eq!(r.snp_host_data, want["snp_host_data"]);
        assert_eq!(r.tdx_mrconfigid, want["tdx_mrconfigid"]);
        assert_eq!(r.cca_personalization_value, want["cca_personalization_value"]);
        assert_eq!(r.entries, ["aa.toml", "cdh.toml"]);
    }

    #[test]
    fn annotation_value_decodes_back_to_the_exact_bytes() {
        let raw = b"version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n";
        let v = annotation_value(raw).unwrap();
        let packed = base64::engine::general_purpose::STANDARD.decode(v).unwrap();
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&packed[..]).read_to_end(&mut out).unwrap();
        assert_eq!(out, raw);
    }
}
