//! The OCI image-encryption format (ocicrypt).
pub mod keywrap;
