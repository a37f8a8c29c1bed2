//! Shared helpers for the oci integration tests (the registry launcher and the other
//! helpers every crate's tests share are in `test_support`, tests/support).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

/// The plain one-layer fixture layout shipped in oci/testdata.
pub fn plain_fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/plain-oci")
}

/// Copy a directory tree (the fixture) somewhere writable.
pub fn copy_tree(src: &Path, dst: &Path) {
    test_support::copy_tree(src, dst).expect("copy the fixture");
}
