//! A full disk stays recognisable: a pull into a bundle on a tiny tmpfs fails
//! with an error whose `source()` chain reaches the `io::Error` ENOSPC, through
//! the decode, extract, store and bundle stages (no cause flattened to text),
//! and the CLI's one-line message names it. Needs root (it mounts a tmpfs).

use std::error::Error as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use guest_puller::keys::{KeySources, Keys};
use guest_puller::policy::PullPolicy;
use guest_puller::progress::Quiet;
use guest_puller::pull::{pull, PullOptions};

fn golden(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../testdata/golden").join(name)
}

/// A 4 KiB tmpfs, unmounted on drop.
struct TinyFs(tempfile::TempDir);

impl TinyFs {
    fn mount() -> Option<Self> {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: mounting a tmpfs needs root");
            return None;
        }
        let dir = tempfile::tempdir().expect("tmp");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=4k,nr_inodes=64", "cloak-enospc"])
            .arg(dir.path())
            .status()
            .expect("mount")
            .success();
        assert!(ok, "mounting a tmpfs as root failed");
        Some(TinyFs(dir))
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

fn is_enospc(top: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(top);
    while let Some(e) = cur {
        if e.downcast_ref::<std::io::Error>().and_then(std::io::Error::raw_os_error) == Some(libc::ENOSPC) {
            return true;
        }
        cur = e.source();
    }
    false
}

#[tokio::test]
async fn full_disk_is_enospc_at_the_top() {
    let Some(fs) = TinyFs::mount() else { return };
    let g = golden("three-layers");
    let bundle = fs.0.path().join("bundle");
    let keys =
        Keys::build(&KeySources { key_files: vec![g.join("keys/rsa.priv.pem")], ..Default::default() })
            .expect("keys");
    let opts = PullOptions {
        image: format!("oci:{}:enc", g.join("enc-oci").display()).parse().expect("image"),
        bundle: bundle.clone(),
        unwrappers: keys.unwrappers,
        policy: PullPolicy::default(),
        platform: None,
        store: None,
        store_link: guest_puller::assemble::LinkMode::Copy,
        source: Default::default(),
        max_concurrent_layers: 1,
        extract: Default::default(),
        progress: Arc::new(Quiet),
        signature_check: None,
    };
    let err = pull(&opts).await.expect_err("a 4 KiB disk cannot hold the rootfs");
    assert!(is_enospc(&err), "ENOSPC lost on the way up: {err} / {:?}", err.source());
    assert!(!bundle.join("rootfs").exists());

    // The CLI says so in its one line.
    let out = Command::new(env!("CARGO_BIN_EXE_cloak-pull"))
        .args(["--key", &g.join("keys/rsa.priv.pem").display().to_string()])
        .arg(format!("oci:{}:enc", g.join("enc-oci").display()))
        .arg(fs.0.path().join("bundle2"))
        .output()
        .expect("cloak-pull");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("No space left on device"), "{stderr}");
}
