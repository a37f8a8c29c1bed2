//! Directory-fd helpers shared by the extractor and the rootfs assembly.
//!
//! Every multi-component path is resolved with `openat2(RESOLVE_IN_ROOT |
//! RESOLVE_NO_MAGICLINKS)` against a root directory fd, so `..` and symlinks
//! (absolute or relative) are clamped to the root like a chroot. The final
//! component of anything we create, remove or change is handled relative to its
//! already-resolved parent fd with `*at` calls that do not follow symlinks.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, ResolveFlags};

/// Resolution flags used for every path inside an extraction root.
pub(crate) fn in_root() -> ResolveFlags {
    ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS
}

/// Joins normalized components with `/`; the empty list is `.` (the root).
pub(crate) fn join(components: &[&[u8]]) -> Vec<u8> {
    if components.is_empty() {
        return b".".to_vec();
    }
    let mut out = Vec::with_capacity(components.iter().map(|c| c.len() + 1).sum());
    for (i, c) in components.iter().enumerate() {
        if i > 0 {
            out.push(b'/');
        }
        out.extend_from_slice(c);
    }
    out
}

/// Opens directory `path` (relative, `/`-separated) inside `root` as an `O_PATH`
/// handle; intermediate symlinks are followed but stay inside the root.
pub(crate) fn open_dir_in_root(root: BorrowedFd<'_>, path: &[u8]) -> io::Result<OwnedFd> {
    let p = if path.is_empty() { b".".as_slice() } else { path };
    Ok(rustix::fs::openat2(
        root,
        OsStr::from_bytes(p),
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
        in_root(),
    )?)
}

/// Opens directory `path` inside `root` for reading (listing, fchmod, futimens),
/// refusing a symlink as the final component.
pub(crate) fn open_dir_rw_in_root(root: BorrowedFd<'_>, path: &[u8]) -> io::Result<OwnedFd> {
    let p = if path.is_empty() { b".".as_slice() } else { path };
    Ok(rustix::fs::openat2(
        root,
        OsStr::from_bytes(p),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
        in_root(),
    )?)
}

/// Opens directory `path` inside `root`, creating missing components (mode
/// 0755) one at a time, each relative to its resolved parent.
pub(crate) fn mkdir_all_in_root(root: BorrowedFd<'_>, components: &[&[u8]]) -> io::Result<OwnedFd> {
    let full = join(components);
    match open_dir_in_root(root, &full) {
        Ok(fd) => return Ok(fd),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
        Err(e) => return Err(e),
    }
    let mut parent = open_dir_in_root(root, b".")?;
    for i in 0..components.len() {
        let prefix = join(&components[..=i]);
        match open_dir_in_root(root, &prefix) {
            Ok(fd) => parent = fd,
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                match rustix::fs::mkdirat(
                    &parent,
                    OsStr::from_bytes(components[i]),
                    Mode::from_raw_mode(0o755),
                ) {
                    Ok(()) => {}
                    // A dangling symlink occupies the name: the reopen below fails clearly.
                    Err(rustix::io::Errno::EXIST) => {}
                    Err(e) => return Err(e.into()),
                }
                parent = open_dir_in_root(root, &prefix)?;
            }
            Err(e) => return Err(e),
        }
    }
    Ok(parent)
}

/// What sits at `name` in `dir` (not following a final symlink), if anything.
pub(crate) fn kind_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Option<FileType>> {
    match rustix::fs::statat(dir, OsStr::from_bytes(name), AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(FileType::from_raw_mode(st.st_mode))),
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// Removes `name` in `dir` whatever it is, directories recursively, never
/// following symlinks. Missing names are not an error.
pub(crate) fn remove_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    match kind_at(dir, name)? {
        None => Ok(()),
        Some(FileType::Directory) => {
            let sub = rustix::fs::openat(
                dir,
                OsStr::from_bytes(name),
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            clear_dir(sub.as_fd(), &|_| false)?;
            rustix::fs::unlinkat(dir, OsStr::from_bytes(name), AtFlags::REMOVEDIR)?;
            Ok(())
        }
        Some(_) => {
            rustix::fs::unlinkat(dir, OsStr::from_bytes(name), AtFlags::empty())?;
            Ok(())
        }
    }
}

/// Names of the entries of the readable directory `dir` (without `.` and `..`).
pub(crate) fn list_dir(dir: BorrowedFd<'_>) -> io::Result<Vec<(Vec<u8>, FileType)>> {
    let mut d = rustix::fs::Dir::read_from(dir)?;
    let mut out = Vec::new();
    while let Some(ent) = d.read() {
        let ent = ent?;
        let name = ent.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        out.push((name.to_vec(), ent.file_type()));
    }
    Ok(out)
}

/// Removes every entry of the readable directory `dir` for which `keep` is false.
pub(crate) fn clear_dir(dir: BorrowedFd<'_>, keep: &dyn Fn(&[u8]) -> bool) -> io::Result<()> {
    for (name, _) in list_dir(dir)? {
        if !keep(&name) {
            remove_at(dir, &name)?;
        }
    }
    Ok(())
}

/// Makes room for a new non-directory at `name`: removes whatever is there.
pub(crate) fn clear_for_create(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    remove_at(dir, name)
}

/// A node that is made by name and never opened: opening a symlink follows it,
/// opening a device or FIFO has side effects or blocks.
#[derive(Clone, Copy)]
pub(crate) enum Node<'a> {
    /// A symlink with this target, stored verbatim (it only ever resolves inside a root).
    Symlink(&'a [u8]),
    /// A character or block device or a FIFO, with its device number.
    Special(FileType, rustix::fs::Dev),
}

/// What [`make_node`] gives a node after creating it; `None` leaves it as created.
pub(crate) struct NodeMeta {
    pub(crate) owner: Option<(rustix::fs::Uid, rustix::fs::Gid)>,
    /// Permission bits; never applied to a symlink, where `chmod` would follow it.
    pub(crate) mode: Option<u32>,
    pub(crate) times: Option<rustix::fs::Timestamps>,
}

/// The step of [`make_node`] that failed, named as the errors of both callers
/// (extraction and rootfs assembly) name it.
pub(crate) struct NodeError {
    pub(crate) op: &'static str,
    pub(crate) errno: rustix::io::Errno,
}

/// Creates `node` at `name` in `parent` (where the caller has made room), then
/// sets its owner, mode and times, in that order (a chown clears setid bits the
/// mode may carry). The node cannot be opened, so each step works by name
/// relative to the parent fd, without following the name: it is the node we
/// just created.
pub(crate) fn make_node(
    parent: BorrowedFd<'_>,
    name: &[u8],
    node: Node<'_>,
    meta: &NodeMeta,
) -> Result<(), NodeError> {
    let at = OsStr::from_bytes(name);
    let step = |op| move |errno| NodeError { op, errno };
    let (chown_op, mtime_op) = match node {
        Node::Symlink(target) => {
            rustix::fs::symlinkat(OsStr::from_bytes(target), parent, at).map_err(step("create symlink"))?;
            ("chown symlink", "set symlink mtime")
        }
        Node::Special(ftype, dev) => {
            rustix::fs::mknodat(parent, at, ftype, Mode::from_raw_mode(0o600), dev).map_err(step("mknod"))?;
            ("chown node", "set node mtime")
        }
    };
    if let Some((uid, gid)) = meta.owner {
        rustix::fs::chownat(parent, at, Some(uid), Some(gid), AtFlags::SYMLINK_NOFOLLOW)
            .map_err(step(chown_op))?;
    }
    if let (Some(mode), Node::Special(..)) = (meta.mode, &node) {
        rustix::fs::chmodat(parent, at, Mode::from_raw_mode(mode), AtFlags::empty())
            .map_err(step("chmod node"))?;
    }
    if let Some(times) = &meta.times {
        rustix::fs::utimensat(parent, at, times, AtFlags::SYMLINK_NOFOLLOW).map_err(step(mtime_op))?;
    }
    Ok(())
}

/// Opens (creating if needed) subdirectory `name` of `dir`, replacing a
/// non-directory at that name. Returns a readable fd (never through a symlink).
pub(crate) fn ensure_subdir(dir: BorrowedFd<'_>, name: &[u8], mode: u32) -> io::Result<OwnedFd> {
    match kind_at(dir, name)? {
        Some(FileType::Directory) => {}
        Some(_) => {
            remove_at(dir, name)?;
            rustix::fs::mkdirat(dir, OsStr::from_bytes(name), Mode::from_raw_mode(mode))?;
        }
        None => rustix::fs::mkdirat(dir, OsStr::from_bytes(name), Mode::from_raw_mode(mode))?,
    }
    Ok(rustix::fs::openat(
        dir,
        OsStr::from_bytes(name),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// Writes `bytes` as `dir/name`, replacing what is there, so that nothing
/// planted in `dir` can redirect the write: `dir` is opened without following a
/// final symlink, the data goes to a fresh temp file with an unpredictable name
/// created `O_EXCL | O_NOFOLLOW` relative to that fd, and a rename puts it in
/// place (a rename replaces a symlink at `name`, it never follows one). A crash
/// leaves the old file or the new one, never half of either; on error the temp
/// file is removed.
pub(crate) fn write_file_replacing(
    dir: &std::path::Path,
    name: &str,
    bytes: &[u8],
    mode: u32,
) -> io::Result<()> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{name:?} is not a file name")));
    }
    let dir_fd = rustix::fs::open(
        dir,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let tmp = format!(".{name}.{}.tmp", unpredictable_suffix()?);
    let file = rustix::fs::openat(
        &dir_fd,
        tmp.as_str(),
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
    )?;
    let written = (|| -> io::Result<()> {
        let mut f = std::fs::File::from(file);
        std::io::Write::write_all(&mut f, bytes)?;
        f.sync_all()?;
        rustix::fs::renameat(&dir_fd, tmp.as_str(), &dir_fd, name)?;
        Ok(())
    })();
    if written.is_err() {
        let _ = rustix::fs::unlinkat(&dir_fd, tmp.as_str(), AtFlags::empty());
    }
    written
}

/// 128 random bits as hex, for names another process must not be able to guess;
/// an error rather than a weaker name when the kernel's generator cannot be read.
pub(crate) fn unpredictable_suffix() -> io::Result<String> {
    let mut b = [0u8; 16];
    openssl::rand::rand_bytes(&mut b).map_err(io::Error::other)?;
    Ok(hex::encode(b))
}

/// Opens a directory path on the host (not inside any root) for use as a root fd.
pub(crate) fn open_root(path: &std::path::Path) -> io::Result<OwnedFd> {
    Ok(rustix::fs::open(path, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?)
}

/// Whether the process may do root-only things (chown to any id, mknod).
pub(crate) fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// The process umask from `/proc/self/status` (Linux 4.7+); `None` when unknown.
/// Read, never set: setting it to find it out would race with other threads.
pub(crate) fn process_umask() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Umask:"))?;
    u32::from_str_radix(line.trim(), 8).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn write_file_replacing_never_follows_links_and_leaves_no_temp() {
        let outside = tempfile::tempdir().unwrap();
        let victim = outside.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(&victim, dir.path().join("image.json")).unwrap();
        write_file_replacing(dir.path(), "image.json", b"{}", 0o644).unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert_eq!(std::fs::read(dir.path().join("image.json")).unwrap(), b"{}");
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("image.json")], "a temp file was left behind");
    }

    #[test]
    fn write_file_replacing_refuses_a_linked_directory_and_path_names() {
        let real = tempfile::tempdir().unwrap();
        let links = tempfile::tempdir().unwrap();
        let link = links.path().join("bundle");
        std::os::unix::fs::symlink(real.path(), &link).unwrap();
        assert!(write_file_replacing(&link, "config.json", b"{}", 0o644).is_err());
        assert!(!real.path().join("config.json").exists());
        for bad in ["", ".", "..", "a/b"] {
            assert!(write_file_replacing(real.path(), bad, b"{}", 0o644).is_err(), "{bad:?}");
        }
    }
}
