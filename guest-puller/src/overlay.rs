//! `--store-link overlay`: the rootfs is an overlayfs mount whose lower layers
//! are per-layer views of the store and whose upper and work directories live in
//! the bundle, so container writes never reach the store and a warm pull only
//! mounts.
//!
//! Store trees keep the OCI whiteout markers (`.wh.NAME`, `.wh..wh..opq`);
//! overlayfs wants its own format (a 0/0 character device `NAME`, the
//! `trusted.overlay.opaque=y` xattr on the directory). A view is built once per
//! store entry, next to its tree (`layers/sha256/<hex>/overlay`), out of
//! hardlinks to the tree's files and fresh directories carrying the tree's
//! metadata, and is published by one rename, so a reader sees a whole view or
//! none. Needs root (mount, trusted.* xattrs, whiteout devices).

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, XattrFlags};

use crate::assemble::{copy_xattrs, set_meta_fd};
use crate::extract::{OPAQUE_MARKER, WHITEOUT_PREFIX};
use crate::fsutil;

/// Directory name of a store entry's overlay view, beside `tree/`.
pub const VIEW_DIR: &str = "overlay";
/// Directory of the bundle holding the overlay's upper and work directories.
pub const BUNDLE_DIR: &str = ".cloak-overlay";
/// The kernel's limit on mount options (one page).
const MAX_OPTIONS: usize = 4000;

/// Why the overlay rootfs could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OverlayError {
    #[error("an overlay rootfs needs root (it mounts overlayfs and sets trusted.* xattrs)")]
    NotRoot,
    #[error("an overlay rootfs: this kernel has no overlayfs (not in /proc/filesystems)")]
    Unavailable,
    #[error("an overlay rootfs: path {0} has a ',', ':', '\\' or whitespace, which overlayfs options cannot carry")]
    BadPath(String),
    #[error("an overlay rootfs: {layers} layers make the mount options too long ({len} bytes); link the store by hardlink instead")]
    TooManyLayers { layers: usize, len: usize },
    #[error("overlay view of {path}: {op}")]
    View {
        path: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("mounting the overlay rootfs at {path}")]
    Mount {
        path: String,
        #[source]
        source: io::Error,
    },
}

fn view_err<'a>(path: &'a Path, op: &'static str) -> impl FnOnce(io::Error) -> OverlayError + 'a {
    move |source| OverlayError::View { path: path.display().to_string(), op, source }
}

/// Whether an overlay rootfs can be mounted here at all.
pub fn check_available() -> Result<(), OverlayError> {
    if !fsutil::is_root() {
        return Err(OverlayError::NotRoot);
    }
    let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if !fs.lines().any(|l| l.split_whitespace().last() == Some("overlay")) {
        return Err(OverlayError::Unavailable);
    }
    Ok(())
}

/// The overlay view of the store tree `tree` (`…/<hex>/tree`), built now if
/// missing. Call with the entry's store lock held.
pub fn ensure_view(tree: &Path) -> Result<PathBuf, OverlayError> {
    let entry = tree
        .parent()
        .ok_or_else(|| view_err(tree, "locate entry")(io::Error::other("tree has no parent")))?;
    let view = entry.join(VIEW_DIR);
    if view.is_dir() {
        return Ok(view);
    }
    let tmp = entry.join(format!("{VIEW_DIR}.tmp-{}", crate::store::random_suffix()));
    let result = build(tree, &tmp)
        .and_then(|()| std::fs::rename(&tmp, &view).map_err(view_err(&view, "publish view")));
    if result.is_err() {
        let _ = crate::store::remove_tree(&tmp);
    }
    result.map(|()| view)
}

fn build(tree: &Path, tmp: &Path) -> Result<(), OverlayError> {
    std::fs::create_dir(tmp).map_err(view_err(tmp, "create view"))?;
    let src = fsutil::open_root(tree).map_err(view_err(tree, "open tree"))?;
    let dst = fsutil::open_root(tmp).map_err(view_err(tmp, "open view"))?;
    build_dir(src.as_fd(), dst.as_fd()).map_err(view_err(tree, "build view"))?;
    let st = rustix::fs::fstat(&src).map_err(|e| view_err(tree, "stat tree")(e.into()))?;
    copy_xattrs(src.as_fd(), dst.as_fd());
    set_meta_fd(dst.as_fd(), &st, true).map_err(|e| view_err(tmp, "set view metadata")(e.into()))
}

/// Mirrors the directory `src` into the empty directory `dst`: files (of any
/// non-directory kind) hard-linked, directories recreated with the same
/// metadata, OCI markers turned into overlayfs whiteouts.
fn build_dir(src: BorrowedFd<'_>, dst: BorrowedFd<'_>) -> io::Result<()> {
    let entries = fsutil::list_dir(src)?;
    let present: HashSet<&[u8]> =
        entries.iter().map(|(n, _)| n.as_slice()).filter(|n| !n.starts_with(WHITEOUT_PREFIX)).collect();
    for (name, ftype) in &entries {
        if name.as_slice() == OPAQUE_MARKER {
            rustix::fs::fsetxattr(dst, "trusted.overlay.opaque", b"y", XattrFlags::empty())?;
            continue;
        }
        if let Some(victim) = name.strip_prefix(WHITEOUT_PREFIX) {
            // Other aufs metadata, nonsense names, or an entry of this very layer
            // by that name (which hides the lower one already): nothing to do.
            if name.starts_with(b".wh..wh.")
                || victim.is_empty()
                || victim == b"."
                || victim == b".."
                || present.contains(victim)
            {
                continue;
            }
            rustix::fs::mknodat(
                dst,
                OsStr::from_bytes(victim),
                FileType::CharacterDevice,
                Mode::empty(),
                rustix::fs::makedev(0, 0),
            )?;
            continue;
        }
        let ftype = match ftype {
            FileType::Unknown => fsutil::kind_at(src, name)?.unwrap_or(FileType::Unknown),
            t => *t,
        };
        if ftype == FileType::Directory {
            let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
            let sub_src = rustix::fs::openat(src, OsStr::from_bytes(name), flags, Mode::empty())?;
            rustix::fs::mkdirat(dst, OsStr::from_bytes(name), Mode::from_raw_mode(0o700))?;
            let sub_dst = rustix::fs::openat(dst, OsStr::from_bytes(name), flags, Mode::empty())?;
            build_dir(sub_src.as_fd(), sub_dst.as_fd())?;
            let st = rustix::fs::fstat(&sub_src)?;
            copy_xattrs(sub_src.as_fd(), sub_dst.as_fd());
            set_meta_fd(sub_dst.as_fd(), &st, true)?;
        } else {
            // flags = 0: a symlink is linked itself, never followed.
            rustix::fs::linkat(src, OsStr::from_bytes(name), dst, OsStr::from_bytes(name), AtFlags::empty())?;
        }
    }
    Ok(())
}

fn option_path(p: &Path) -> Result<&str, OverlayError> {
    match p.to_str() {
        Some(s) if !s.chars().any(|c| matches!(c, ',' | ':' | '\\') || c.is_whitespace()) => Ok(s),
        _ => Err(OverlayError::BadPath(p.display().to_string())),
    }
}

/// Mounts `views` (lowest layer first) at `bundle/rootfs`, with the upper and
/// work directories in `bundle/.cloak-overlay/`. The root directory's metadata
/// is the top layer's, as in an assembled rootfs. On error nothing is left at
/// `bundle/rootfs`.
pub fn mount(views: &[PathBuf], bundle: &Path) -> Result<PathBuf, OverlayError> {
    // Absolute paths in the options: the kernel would resolve relative ones against our cwd.
    let bundle = &std::fs::canonicalize(bundle)
        .map_err(|source| OverlayError::Mount { path: bundle.display().to_string(), source })?;
    let state = bundle.join(BUNDLE_DIR);
    let (upper, work, rootfs) = (state.join("upper"), state.join("work"), bundle.join("rootfs"));
    let mut lower = Vec::new();
    for v in views.iter().rev() {
        lower.push(option_path(v)?);
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        option_path(&upper)?,
        option_path(&work)?
    );
    if options.len() > MAX_OPTIONS {
        return Err(OverlayError::TooManyLayers { layers: views.len(), len: options.len() });
    }
    let data =
        std::ffi::CString::new(options).map_err(|_| OverlayError::BadPath(bundle.display().to_string()))?;
    let setup = || -> io::Result<()> {
        std::fs::create_dir(&state)?;
        std::fs::create_dir(&upper)?;
        std::fs::create_dir(&work)?;
        if let Some(top) = views.last() {
            let top_fd = fsutil::open_root(top)?;
            let st = rustix::fs::fstat(&top_fd)?;
            let up = fsutil::open_root(&upper)?;
            set_meta_fd(up.as_fd(), &st, true)?;
        }
        std::fs::create_dir(&rootfs)?;
        rustix::mount::mount(
            "overlay",
            &rootfs,
            "overlay",
            rustix::mount::MountFlags::empty(),
            data.as_c_str(),
        )?;
        Ok(())
    };
    setup().map_err(|source| {
        let _ = std::fs::remove_dir(&rootfs);
        let _ = crate::store::remove_tree(&state);
        OverlayError::Mount { path: rootfs.display().to_string(), source }
    })?;
    Ok(rootfs)
}
