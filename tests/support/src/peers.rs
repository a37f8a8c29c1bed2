//! The real peers the tests run against, and the one rule for a missing one: skip
//! with a printed reason, unless `CLOAK_REQUIRE_PEERS=1` (CI), where it fails.

use std::path::PathBuf;

use crate::workspace::workspace_root;

/// Whether a missing peer must fail the test instead of skipping it
/// (`CLOAK_REQUIRE_PEERS` set to anything but empty or `0`; `ci/test.sh` sets `1`).
pub fn peers_required() -> bool {
    std::env::var("CLOAK_REQUIRE_PEERS").is_ok_and(|v| !v.is_empty() && v != "0")
}

/// Returns `Some(path)` for a peer, `None` to skip (printing why), or panics when
/// peers are required.
pub fn peer(path: PathBuf, what: &str) -> Option<PathBuf> {
    if path.is_file() {
        return Some(path);
    }
    let msg = format!("{what} not found at {} (run ci/install-peers.sh)", path.display());
    assert!(!peers_required(), "{msg}; CLOAK_REQUIRE_PEERS=1 forbids skipping");
    eprintln!("SKIP: {msg}");
    None
}

/// `name` on `PATH`, else `/usr/bin/name` (where Debian installs the peers).
pub fn which(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join(name)).find(|p| p.is_file()))
        .unwrap_or_else(|| PathBuf::from(format!("/usr/bin/{name}")))
}

/// Where `ci/install-peers.sh` unpacks the peers that are not system packages.
pub fn peers_dir() -> PathBuf {
    std::env::var_os("CLOAK_PEERS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join(".work/peers"))
}

/// Debian bookworm's skopeo 1.9.3 (ocicrypt 1.0.3: JWE only).
pub fn skopeo_193() -> Option<PathBuf> {
    peer(which("skopeo"), "skopeo 1.9.3")
}

/// skopeo 1.18 (ocicrypt 1.1.10: JWE and keyprovider), unpacked from trixie.
pub fn skopeo_118() -> Option<PathBuf> {
    peer(peers_dir().join("bin/skopeo-1.18"), "skopeo 1.18")
}
