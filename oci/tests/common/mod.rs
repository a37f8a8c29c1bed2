//! Shared helpers for the oci integration tests.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod registry;

use std::path::{Path, PathBuf};

/// The plain one-layer fixture layout shipped in oci/testdata.
pub fn plain_fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/plain-oci")
}

/// Copy a directory tree (the fixture) somewhere writable.
pub fn copy_tree(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).expect("mkdir");
    for e in std::fs::read_dir(src).expect("read_dir") {
        let e = e.expect("entry");
        let to = dst.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_tree(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), &to).expect("copy");
        }
    }
}
