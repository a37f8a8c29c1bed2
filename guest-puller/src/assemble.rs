//! Rootfs assembly: apply verified layer trees from the store, in order, into a
//! rootfs staging directory, honouring the OCI whiteout markers kept in them.
//!
//! Both trees are walked through directory fds: source entries are opened with
//! `O_NOFOLLOW`, destination entries are created relative to their parent fd
//! and never through a symlink, so a symlink in a lower layer cannot redirect
//! where an upper layer's file lands. Hardlinks inside a layer stay hardlinks.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat, Timespec, Timestamps};

use crate::extract::{OPAQUE_MARKER, WHITEOUT_PREFIX};
use crate::fsutil::{self, Node, NodeMeta};

/// How file content gets from the store into the rootfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkMode {
    /// Reflink when the filesystem can, else copy (the rootfs is independent of the store).
    Copy,
    /// Hardlink to the store (fast; only for a private, throw-away store).
    Hardlink,
    /// Not assembled: an overlayfs mount of per-layer views of the store (see
    /// [`crate::overlay`]); [`assemble`] refuses it.
    Overlay,
}

/// Why assembly failed.
#[derive(Debug, thiserror::Error)]
#[error("assembling the rootfs at {path}: {op}")]
pub struct AssembleError {
    pub path: String,
    pub op: &'static str,
    #[source]
    pub source: io::Error,
}

fn err<'a>(path: &'a [u8], op: &'static str) -> impl FnOnce(io::Error) -> AssembleError + 'a {
    move |source| AssembleError { path: String::from_utf8_lossy(path).into_owned(), op, source }
}

fn errno<'a>(path: &'a [u8], op: &'static str) -> impl FnOnce(rustix::io::Errno) -> AssembleError + 'a {
    move |e| AssembleError { path: String::from_utf8_lossy(path).into_owned(), op, source: e.into() }
}

fn node_err(path: &[u8]) -> impl FnOnce(fsutil::NodeError) -> AssembleError + '_ {
    move |e| errno(path, e.op)(e.errno)
}

/// Applies `layers` (tree directories, lowest first) into the existing empty
/// directory `dest`.
pub fn assemble(layers: &[PathBuf], dest: &Path, mode: LinkMode) -> Result<(), AssembleError> {
    if mode == LinkMode::Overlay {
        let source =
            io::Error::new(io::ErrorKind::InvalidInput, "an overlay rootfs is mounted, not assembled");
        return Err(AssembleError { path: dest.display().to_string(), op: "assemble", source });
    }
    let dest_fd = fsutil::open_root(dest).map_err(err(b"", "open rootfs"))?;
    let is_root = fsutil::is_root();
    for layer in layers {
        let src = fsutil::open_root(layer).map_err(err(b"", "open layer tree"))?;
        let mut ctx =
            Ctx { dest_root: dest_fd.as_fd(), mode: Placement::Link(mode), is_root, links: HashMap::new() };
        let st = rustix::fs::fstat(&src).map_err(errno(b".", "stat layer root"))?;
        ctx.apply_dir(src.as_fd(), dest_fd.as_fd(), Vec::new())?;
        set_meta_fd(dest_fd.as_fd(), &st, is_root).map_err(errno(b".", "set root metadata"))?;
    }
    Ok(())
}

/// Applies `layers` (tree directories, lowest first) into the existing empty
/// directory `dest` by renaming their entries instead of linking or copying
/// them: a directory the rootfs lacks moves in one `renameat`, with its whole
/// subtree. The trees are consumed, so this is only for a private store that is
/// removed afterwards (a cold pull without `--store`). A tree listed more than
/// once is hard-linked for all but its last use. Without root, renaming a
/// read-only directory to a new parent is refused, so this falls back to
/// [`LinkMode::Hardlink`].
pub fn assemble_by_moving(layers: &[PathBuf], dest: &Path) -> Result<(), AssembleError> {
    let dest_fd = fsutil::open_root(dest).map_err(err(b"", "open rootfs"))?;
    let is_root = fsutil::is_root();
    for (i, layer) in layers.iter().enumerate() {
        let reused = layers[i + 1..].contains(layer);
        let mode = if is_root && !reused { Placement::Move } else { Placement::Link(LinkMode::Hardlink) };
        let src = fsutil::open_root(layer).map_err(err(b"", "open layer tree"))?;
        let mut ctx = Ctx { dest_root: dest_fd.as_fd(), mode, is_root, links: HashMap::new() };
        let st = rustix::fs::fstat(&src).map_err(errno(b".", "stat layer root"))?;
        ctx.apply_dir(src.as_fd(), dest_fd.as_fd(), Vec::new())?;
        set_meta_fd(dest_fd.as_fd(), &st, is_root).map_err(errno(b".", "set root metadata"))?;
    }
    Ok(())
}

/// How one layer's entries get into the rootfs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Placement {
    Link(LinkMode),
    Move,
}

struct Ctx<'a> {
    dest_root: BorrowedFd<'a>,
    mode: Placement,
    is_root: bool,
    /// (dev, ino) of a multiply-linked source file → its rootfs path.
    links: HashMap<(u64, u64), Vec<u8>>,
}

fn child(path: &[u8], name: &[u8]) -> Vec<u8> {
    if path.is_empty() {
        name.to_vec()
    } else {
        [path, b"/", name].concat()
    }
}

fn stamp(st: &Stat) -> Timestamps {
    Timestamps {
        last_access: Timespec { tv_sec: st.st_atime, tv_nsec: st.st_atime_nsec as _ },
        last_modification: Timespec { tv_sec: st.st_mtime, tv_nsec: st.st_mtime_nsec as _ },
    }
}

pub(crate) fn set_meta_fd(fd: BorrowedFd<'_>, st: &Stat, is_root: bool) -> rustix::io::Result<()> {
    if is_root {
        rustix::fs::fchown(
            fd,
            Some(rustix::fs::Uid::from_raw(st.st_uid)),
            Some(rustix::fs::Gid::from_raw(st.st_gid)),
        )?;
    }
    rustix::fs::fchmod(fd, Mode::from_raw_mode(st.st_mode & 0o7777))?;
    rustix::fs::futimens(fd, &stamp(st))
}

impl Ctx<'_> {
    fn apply_dir(
        &mut self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        path: Vec<u8>,
    ) -> Result<(), AssembleError> {
        let entries = fsutil::list_dir(src).map_err(err(&path, "list layer directory"))?;
        // Whiteouts hide what lower layers put here, so they go first.
        if entries.iter().any(|(n, _)| n == OPAQUE_MARKER) {
            fsutil::clear_dir(dst, &|_| false).map_err(err(&path, "apply opaque marker"))?;
        }
        for (name, _) in &entries {
            if let Some(victim) = name.strip_prefix(WHITEOUT_PREFIX) {
                if !name.starts_with(b".wh..wh.") && !victim.is_empty() && victim != b"." && victim != b".." {
                    fsutil::remove_at(dst, victim).map_err(err(&path, "apply whiteout"))?;
                }
            }
        }
        for (name, ftype) in entries {
            if name.starts_with(WHITEOUT_PREFIX) {
                continue;
            }
            let p = child(&path, &name);
            if self.mode == Placement::Move {
                self.move_entry(src, dst, &name, ftype, p)?;
            } else {
                self.link_entry(src, dst, &name, p)?;
            }
        }
        Ok(())
    }

    /// Link or copy mode: one entry of a layer directory into the rootfs directory.
    fn link_entry(
        &mut self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        name: &[u8],
        p: Vec<u8>,
    ) -> Result<(), AssembleError> {
        let st = rustix::fs::statat(src, OsStr::from_bytes(name), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(errno(&p, "stat layer entry"))?;
        let owner = self
            .is_root
            .then(|| (rustix::fs::Uid::from_raw(st.st_uid), rustix::fs::Gid::from_raw(st.st_gid)));
        match FileType::from_raw_mode(st.st_mode) {
            FileType::Directory => self.subdir(src, dst, name, p, &st),
            FileType::RegularFile => self.file(src, dst, name, &p, &st),
            FileType::Symlink => {
                let target = rustix::fs::readlinkat(src, OsStr::from_bytes(name), Vec::new())
                    .map_err(errno(&p, "read symlink"))?;
                fsutil::clear_for_create(dst, name).map_err(err(&p, "replace entry"))?;
                let meta = NodeMeta { owner, mode: None, times: Some(stamp(&st)) };
                fsutil::make_node(dst, name, Node::Symlink(target.as_bytes()), &meta).map_err(node_err(&p))
            }
            other => {
                // Devices and FIFOs were admitted by the extraction policy.
                fsutil::clear_for_create(dst, name).map_err(err(&p, "replace entry"))?;
                let meta = NodeMeta { owner, mode: Some(st.st_mode & 0o7777), times: None };
                fsutil::make_node(dst, name, Node::Special(other, st.st_rdev), &meta).map_err(node_err(&p))
            }
        }
    }

    /// Link or copy mode: a directory, merged into the rootfs's one (or a new
    /// one), then given the layer's metadata.
    fn subdir(
        &mut self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        name: &[u8],
        p: Vec<u8>,
        st: &Stat,
    ) -> Result<(), AssembleError> {
        let sub_src = rustix::fs::openat(
            src,
            OsStr::from_bytes(name),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno(&p, "open layer directory"))?;
        let sub_dst = fsutil::ensure_subdir(dst, name, 0o700).map_err(err(&p, "create directory"))?;
        // Writable while children are added; final mode below.
        rustix::fs::fchmod(&sub_dst, Mode::from_raw_mode(0o700)).map_err(errno(&p, "chmod directory"))?;
        self.apply_dir(sub_src.as_fd(), sub_dst.as_fd(), p.clone())?;
        copy_xattrs(sub_src.as_fd(), sub_dst.as_fd());
        set_meta_fd(sub_dst.as_fd(), st, self.is_root).map_err(errno(&p, "set directory metadata"))
    }

    fn file(
        &mut self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        name: &[u8],
        p: &[u8],
        st: &Stat,
    ) -> Result<(), AssembleError> {
        fsutil::clear_for_create(dst, name).map_err(err(p, "replace entry"))?;
        if self.mode == Placement::Link(LinkMode::Hardlink) {
            return rustix::fs::linkat(
                src,
                OsStr::from_bytes(name),
                dst,
                OsStr::from_bytes(name),
                AtFlags::empty(),
            )
            .map_err(errno(p, "hardlink from store"));
        }
        if st.st_nlink > 1 {
            let key = (st.st_dev, st.st_ino);
            if let Some(first) = self.links.get(&key) {
                if let Some((parent, leaf)) = split_last(first) {
                    let pfd = fsutil::open_dir_in_root(self.dest_root, parent)
                        .map_err(err(p, "resolve hardlink"))?;
                    return rustix::fs::linkat(
                        &pfd,
                        OsStr::from_bytes(leaf),
                        dst,
                        OsStr::from_bytes(name),
                        AtFlags::empty(),
                    )
                    .map_err(errno(p, "hardlink"));
                }
            }
            self.links.insert(key, p.to_vec());
        }
        let sfd: OwnedFd = rustix::fs::openat(
            src,
            OsStr::from_bytes(name),
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(errno(p, "open layer file"))?;
        let dfd: OwnedFd = rustix::fs::openat(
            dst,
            OsStr::from_bytes(name),
            OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )
        .map_err(errno(p, "create file"))?;
        copy_content(sfd.as_fd(), dfd.as_fd(), u64::try_from(st.st_size).unwrap_or(0))
            .map_err(err(p, "copy file"))?;
        copy_xattrs(sfd.as_fd(), dfd.as_fd());
        set_meta_fd(dfd.as_fd(), st, self.is_root).map_err(errno(p, "set file metadata"))
    }
}

impl Ctx<'_> {
    /// Move mode: one entry of a layer directory into the rootfs directory.
    fn move_entry(
        &mut self,
        src: BorrowedFd<'_>,
        dst: BorrowedFd<'_>,
        name: &[u8],
        ftype: FileType,
        p: Vec<u8>,
    ) -> Result<(), AssembleError> {
        let ftype = match ftype {
            FileType::Unknown => {
                fsutil::kind_at(src, name).map_err(err(&p, "stat layer entry"))?.unwrap_or(FileType::Unknown)
            }
            t => t,
        };
        let existing = fsutil::kind_at(dst, name).map_err(err(&p, "stat rootfs entry"))?;
        if ftype == FileType::Directory && existing == Some(FileType::Directory) {
            // Both layers have the directory: merge, then the upper one's metadata.
            let open = |dir: BorrowedFd<'_>, what| {
                rustix::fs::openat(
                    dir,
                    OsStr::from_bytes(name),
                    OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::empty(),
                )
                .map_err(errno(&p, what))
            };
            let sub_src = open(src, "open layer directory")?;
            let sub_dst = open(dst, "open rootfs directory")?;
            let st = rustix::fs::fstat(&sub_src).map_err(errno(&p, "stat layer directory"))?;
            self.apply_dir(sub_src.as_fd(), sub_dst.as_fd(), p.clone())?;
            copy_xattrs(sub_src.as_fd(), sub_dst.as_fd());
            return set_meta_fd(sub_dst.as_fd(), &st, self.is_root)
                .map_err(errno(&p, "set directory metadata"));
        }
        if existing.is_some() && (ftype == FileType::Directory || existing == Some(FileType::Directory)) {
            // rename(2) replaces only a non-directory with a non-directory.
            fsutil::remove_at(dst, name).map_err(err(&p, "replace entry"))?;
        }
        if ftype == FileType::Directory {
            // Nothing below it in the rootfs: its whiteout markers hide nothing.
            strip_markers(src, name).map_err(err(&p, "drop whiteout markers"))?;
        }
        rustix::fs::renameat(src, OsStr::from_bytes(name), dst, OsStr::from_bytes(name))
            .map_err(errno(&p, "move from layer tree"))
    }
}

/// Removes the OCI whiteout markers from the directory `name` in `parent` and
/// below, keeping each directory's timestamps as they were.
fn strip_markers(parent: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    let dir = rustix::fs::openat(
        parent,
        OsStr::from_bytes(name),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let st = rustix::fs::fstat(&dir)?;
    let mut changed = false;
    for (child, ftype) in fsutil::list_dir(dir.as_fd())? {
        if child.starts_with(WHITEOUT_PREFIX) {
            rustix::fs::unlinkat(&dir, OsStr::from_bytes(&child), AtFlags::empty())?;
            changed = true;
            continue;
        }
        let ftype = match ftype {
            FileType::Unknown => fsutil::kind_at(dir.as_fd(), &child)?.unwrap_or(FileType::Unknown),
            t => t,
        };
        if ftype == FileType::Directory {
            strip_markers(dir.as_fd(), &child)?;
        }
    }
    if changed {
        rustix::fs::futimens(&dir, &stamp(&st))?;
    }
    Ok(())
}

fn split_last(p: &[u8]) -> Option<(&[u8], &[u8])> {
    match p.iter().rposition(|b| *b == b'/') {
        Some(i) => Some((&p[..i], &p[i + 1..])),
        None => Some((b"".as_slice(), p)),
    }
}

/// Reflink, else in-kernel copy, else a plain read/write loop.
fn copy_content(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, size: u64) -> io::Result<()> {
    if size == 0 || rustix::fs::ioctl_ficlone(dst, src).is_ok() {
        return Ok(());
    }
    let mut left = size;
    while left > 0 {
        let chunk = usize::try_from(left.min(1 << 30)).unwrap_or(1 << 30);
        match rustix::fs::copy_file_range(src, None, dst, None, chunk) {
            Ok(0) => break,
            Ok(n) => left -= n as u64,
            Err(_) => {
                let mut s = File::from(src.try_clone_to_owned()?);
                let mut d = File::from(dst.try_clone_to_owned()?);
                io::copy(&mut s, &mut d)?;
                return Ok(());
            }
        }
    }
    Ok(())
}

/// Copies user-visible xattrs the extractor admitted; failures only lose the attribute.
pub(crate) fn copy_xattrs(src: BorrowedFd<'_>, dst: BorrowedFd<'_>) {
    let mut names = vec![0u8; 4096];
    let Ok(n) = rustix::fs::flistxattr(src, &mut names[..]) else { return };
    for name in names[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let mut val = vec![0u8; 64 * 1024];
        if let Ok(len) = rustix::fs::fgetxattr(src, OsStr::from_bytes(name), &mut val[..]) {
            let _ = rustix::fs::fsetxattr(
                dst,
                OsStr::from_bytes(name),
                &val[..len],
                rustix::fs::XattrFlags::empty(),
            );
        }
    }
}
