//! Paths in the workspace: its root and cloak's built binaries.

use std::path::{Path, PathBuf};

/// The workspace root (this crate lives in `<root>/tests/support`).
pub fn workspace_root() -> PathBuf {
    let here = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    here.ancestors().nth(2).map(Path::to_path_buf).unwrap_or(here)
}

/// `target/<profile>` of the running test binary (`.../target/debug/deps/x` → `.../target/debug`).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    exe.parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| workspace_root().join("target/debug"))
}

/// Path of a workspace binary (`cloak`, `cloak-pull`, `cloak-kbs`, `cloak-keyprovider`).
/// `ci/test.sh` builds all of them before the tests run.
pub fn bin(name: &str) -> PathBuf {
    let p = target_dir().join(name);
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --bins` first (ci/test.sh does)",
        p.display()
    );
    p
}
