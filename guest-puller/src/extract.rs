//! Safe tar extraction into a directory root.
//!
//! The layer tar is hostile input: every path is resolved inside the root with
//! `openat2(RESOLVE_IN_ROOT)`, `..` in a name is an error, the final component is
//! created with `O_EXCL`/`O_NOFOLLOW`-style `*at` calls relative to a resolved
//! parent fd, and modes, owners, xattrs and mtimes are set through file
//! descriptors. Deferred directory metadata is applied at the end through a
//! fresh in-root, no-follow open that must land on the same inode. Limits on
//! entries, names and unpacked bytes turn tar bombs into clear errors.
//!
//! OCI whiteouts are either kept as marker files (`WhiteoutMode::Keep`, for the
//! per-layer store; the rootfs assembly applies them) or applied at once against
//! what lower layers left in the root (`WhiteoutMode::Apply`).

use std::collections::{HashMap, HashSet};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Timespec, Timestamps, XattrFlags};

use crate::fsutil;

/// Prefix of an OCI whiteout file name.
pub const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// Name of the OCI opaque-directory marker.
pub const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// What to do with OCI whiteout entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WhiteoutMode {
    /// Keep `.wh.*` entries as empty marker files (a layer tree in the store).
    Keep,
    /// Apply them against the root's existing content (layers applied in order).
    Apply,
}

/// What to do with character/block devices and FIFOs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DevicePolicy {
    /// Create them (devices only when running as root; otherwise skipped with a warning).
    Create,
    /// Skip them with a warning.
    Skip,
    /// Fail the extraction.
    Reject,
}

/// Resource limits; exceeding one fails the extraction.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Maximum number of tar entries.
    pub max_entries: u64,
    /// Maximum length of an entry path in bytes.
    pub max_path_len: usize,
    /// Maximum length of one path component in bytes.
    pub max_name_len: usize,
    /// Maximum total of regular-file bytes (plus trailing stream bytes); the
    /// decode stage also caps the decompressed stream of a layer at this size.
    pub max_total_size: u64,
    /// Maximum size of one xattr value.
    pub max_xattr_size: usize,
    /// Largest ratio of decompressed bytes to compressed bytes read so far that
    /// the decode stage accepts (checked once `ratio_floor` bytes are out).
    pub max_ratio: u64,
    /// Decompressed bytes of a layer allowed before the ratio is checked: tiny
    /// layers (a few files and the tar padding) compress far beyond any ratio
    /// and are harmless.
    pub ratio_floor: u64,
}

/// Default [`Limits::max_ratio`]: real layers compress about 2:1 to 20:1; a
/// gzip of zeros is about 1000:1, a zstd of zeros far more.
pub const DEFAULT_MAX_RATIO: u64 = 100;
/// Default [`Limits::ratio_floor`].
pub const DEFAULT_RATIO_FLOOR: u64 = 1 << 20;
/// Default [`Limits::max_total_size`].
pub const DEFAULT_MAX_LAYER_SIZE: u64 = 64 << 30;

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_entries: 1_000_000,
            max_path_len: 4096,
            max_name_len: 255,
            max_total_size: DEFAULT_MAX_LAYER_SIZE,
            max_xattr_size: 64 << 10,
            max_ratio: DEFAULT_MAX_RATIO,
            ratio_floor: DEFAULT_RATIO_FLOOR,
        }
    }
}

/// How to extract.
#[derive(Debug, Clone)]
pub struct ExtractOptions {
    /// Whiteout handling.
    pub whiteouts: WhiteoutMode,
    /// Device node / FIFO policy.
    pub devices: DevicePolicy,
    /// Apply `SCHILY.xattr.*` records at all.
    pub xattrs: bool,
    /// Also apply `trusted.*` and `security.*` xattrs (normally refused).
    pub allow_privileged_xattrs: bool,
    /// Keep setuid/setgid bits.
    pub keep_setid: bool,
    /// Set numeric owners from the header (only effective as root).
    pub same_owner: bool,
    /// Limits.
    pub limits: Limits,
}

impl Default for ExtractOptions {
    fn default() -> Self {
        Self {
            whiteouts: WhiteoutMode::Apply,
            devices: DevicePolicy::Create,
            xattrs: true,
            allow_privileged_xattrs: false,
            keep_setid: true,
            same_owner: true,
            limits: Limits::default(),
        }
    }
}

/// What an extraction did.
#[derive(Debug, Default, Clone)]
pub struct ExtractStats {
    /// Number of tar entries seen.
    pub entries: u64,
    /// Regular-file bytes written.
    pub bytes: u64,
    /// Entries skipped by policy, with the reason.
    pub warnings: Vec<String>,
}

/// Why an extraction failed. Paths are the (lossy) entry names from the tar.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExtractError {
    #[error("reading the tar stream")]
    Read(#[source] io::Error),
    #[error("opening the extraction root {path}")]
    Root {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("tar entry {path:?}: '..' is not allowed in entry names")]
    Traversal { path: String },
    #[error("tar entry {path:?}: hardlink target {target:?} is invalid: {reason}")]
    BadLink { path: String, target: String, reason: String },
    #[error("tar entry {path:?}: name too long ({len} bytes, limit {max})")]
    NameTooLong { path: String, len: usize, max: usize },
    #[error("tar bomb: more than {max} entries")]
    TooManyEntries { max: u64 },
    #[error(
        "tar bomb: unpacked size exceeds {max} bytes; if the image is trusted, raise the limit \
         (cloak-pull --max-layer-size, cloak-cdh [image] max_layer_size)"
    )]
    TooLarge { max: u64 },
    #[error("tar entry {path:?}: {kind} refused by the device policy")]
    DeviceRefused { path: String, kind: &'static str },
    #[error("tar entry {path:?}: {op}")]
    Io {
        path: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("this kernel has no openat2 (Linux 5.6 or later is needed for safe extraction)")]
    NoOpenat2,
}

/// An xattr name and value from a PAX record.
type Xattr = (Vec<u8>, Vec<u8>);

/// A directory whose mode and mtime are applied after all entries.
struct DeferredDir {
    path: Vec<u8>,
    dev: u64,
    ino: u64,
    mode: u32,
    mtime: Timespec,
}

/// Extracts the tar stream `reader` into the existing directory `root`, then
/// reads the stream to its end so that a hashing reader underneath sees every byte.
pub fn extract<R: Read>(reader: R, root: &Path, opts: &ExtractOptions) -> Result<ExtractStats, ExtractError> {
    let root_fd = fsutil::open_root(root)
        .map_err(|source| ExtractError::Root { path: root.display().to_string(), source })?;
    extract_at(reader, root_fd.as_fd(), opts)
}

/// Like [`extract`], with the root given as a directory fd.
pub fn extract_at<R: Read>(
    reader: R,
    root: BorrowedFd<'_>,
    opts: &ExtractOptions,
) -> Result<ExtractStats, ExtractError> {
    // Probe openat2 once so an old kernel gives one clear error.
    match fsutil::open_dir_in_root(root, b".") {
        Ok(_) => {}
        Err(e) if e.raw_os_error() == Some(libc::ENOSYS) => return Err(ExtractError::NoOpenat2),
        Err(source) => return Err(ExtractError::Root { path: ".".into(), source }),
    }
    let counted = CountingReader { inner: reader, count: 0 };
    let mut archive = tar::Archive::new(counted);
    let mut ex = Extractor {
        root,
        opts,
        stats: ExtractStats::default(),
        deferred: Vec::new(),
        deferred_index: HashMap::new(),
        created: HashSet::new(),
        parent_cache: None,
        is_root: fsutil::is_root(),
        ids: (rustix::process::geteuid().as_raw(), rustix::process::getegid().as_raw()),
        umask: fsutil::process_umask(),
        copy_buf: vec![0u8; COPY_BUF],
    };
    {
        let entries = archive.entries().map_err(ExtractError::Read)?;
        for entry in entries {
            let entry = entry.map_err(ExtractError::Read)?;
            ex.stats.entries += 1;
            if ex.stats.entries > opts.limits.max_entries {
                return Err(ExtractError::TooManyEntries { max: opts.limits.max_entries });
            }
            ex.entry(entry)?;
        }
    }
    ex.finish_dirs()?;
    // Drain what follows the end-of-archive marker (padding), bounded by the size limit.
    let mut inner = archive.into_inner();
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = inner.read(&mut buf).map_err(ExtractError::Read)?;
        if n == 0 {
            break;
        }
        if inner.count > opts.limits.max_total_size.saturating_add(1 << 20) {
            return Err(ExtractError::TooLarge { max: opts.limits.max_total_size });
        }
    }
    Ok(ex.stats)
}

struct CountingReader<R> {
    inner: R,
    count: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

/// One entry's name and header fields, parsed once for the function of its kind.
struct Head<'e> {
    /// The name as the tar gives it (for messages).
    raw: &'e [u8],
    /// Its normalized components; never empty (the root entry is handled apart).
    comps: &'e [&'e [u8]],
    /// The last component.
    name: &'e [u8],
    /// The components joined: the key in `created` and the deferred directories.
    full: Vec<u8>,
    header: &'e tar::Header,
    /// Permission bits after the setid policy.
    mode_bits: u32,
    mtime: u64,
    uid: u64,
    gid: u64,
}

struct Extractor<'r, 'o> {
    root: BorrowedFd<'r>,
    opts: &'o ExtractOptions,
    stats: ExtractStats,
    deferred: Vec<DeferredDir>,
    deferred_index: HashMap<Vec<u8>, usize>,
    /// Paths created by this layer (for opaque dirs in `Apply` mode).
    created: HashSet<Vec<u8>>,
    /// The last resolved parent directory. Dropped whenever an entry could
    /// change how paths resolve (symlinks, links, removals).
    parent_cache: Option<(Vec<u8>, OwnedFd, u32)>,
    is_root: bool,
    /// Effective uid and gid: a new file owned by them needs no fchown.
    ids: (u32, u32),
    /// The process umask, when known: a file created with a mode the umask
    /// leaves alone needs no fchmod.
    umask: Option<u32>,
    /// Reused for every file's content (no allocation or memset per file).
    copy_buf: Vec<u8>,
}

/// Size of the buffer file content is copied through.
const COPY_BUF: usize = 256 * 1024;

fn lossy(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

/// Splits a tar name into normal components: leading `/` and `.` components are
/// dropped (absolute names are contained in the root), `..` is an error.
fn normalize<'a>(raw: &'a [u8], limits: &Limits) -> Result<Vec<&'a [u8]>, ExtractError> {
    if raw.len() > limits.max_path_len {
        return Err(ExtractError::NameTooLong { path: lossy(raw), len: raw.len(), max: limits.max_path_len });
    }
    if raw.contains(&0) {
        return Err(ExtractError::Io {
            path: lossy(raw),
            op: "parse name",
            source: io::Error::new(io::ErrorKind::InvalidData, "NUL byte in name"),
        });
    }
    let mut out = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => return Err(ExtractError::Traversal { path: lossy(raw) }),
            c if c.len() > limits.max_name_len => {
                return Err(ExtractError::NameTooLong {
                    path: lossy(raw),
                    len: c.len(),
                    max: limits.max_name_len,
                })
            }
            c => out.push(c),
        }
    }
    Ok(out)
}

fn ts(secs: u64) -> Timespec {
    Timespec { tv_sec: i64::try_from(secs).unwrap_or(i64::MAX), tv_nsec: 0 }
}

fn times(secs: u64) -> Timestamps {
    Timestamps { last_access: ts(secs), last_modification: ts(secs) }
}

impl Extractor<'_, '_> {
    fn io_err<'a>(path: &'a [u8], op: &'static str) -> impl FnOnce(io::Error) -> ExtractError + 'a {
        move |source| ExtractError::Io { path: lossy(path), op, source }
    }

    fn errno<'a>(path: &'a [u8], op: &'static str) -> impl FnOnce(rustix::io::Errno) -> ExtractError + 'a {
        move |e| ExtractError::Io { path: lossy(path), op, source: e.into() }
    }

    fn node_err(path: &[u8]) -> impl FnOnce(fsutil::NodeError) -> ExtractError + '_ {
        move |e| ExtractError::Io { path: lossy(path), op: e.op, source: e.errno.into() }
    }

    /// Resolves (creating if needed) the parent directory of an entry.
    fn parent(&mut self, comps: &[&[u8]], raw: &[u8]) -> Result<BorrowedFd<'_>, ExtractError> {
        let parent_comps = &comps[..comps.len() - 1];
        let key = fsutil::join(parent_comps);
        let hit = matches!(&self.parent_cache, Some((k, _, _)) if *k == key);
        if !hit {
            let fd = fsutil::mkdir_all_in_root(self.root, parent_comps)
                .map_err(Self::io_err(raw, "resolve parent directory"))?;
            for i in 1..=parent_comps.len() {
                let p = fsutil::join(&parent_comps[..i]);
                self.created.insert(p);
            }
            let gid = rustix::fs::fstat(&fd).map_err(Self::errno(raw, "stat parent directory"))?.st_gid;
            self.parent_cache = Some((key, fd, gid));
        }
        match &self.parent_cache {
            Some((_, fd, _)) => Ok(fd.as_fd()),
            None => Err(ExtractError::Io {
                path: lossy(raw),
                op: "resolve parent directory",
                source: io::Error::other("parent cache empty"),
            }),
        }
    }

    fn mode_bits(&self, mode: u32) -> u32 {
        let m = mode & 0o7777;
        if self.opts.keep_setid {
            m
        } else {
            m & !0o6000
        }
    }

    /// One entry: its name and header are checked and parsed here, then the
    /// function for its kind creates it.
    fn entry<R: Read>(&mut self, mut entry: tar::Entry<'_, R>) -> Result<(), ExtractError> {
        let raw: Vec<u8> = entry.path_bytes().into_owned();
        let comps_owned: Vec<Vec<u8>> =
            normalize(&raw, &self.opts.limits)?.into_iter().map(<[u8]>::to_vec).collect();
        let comps: Vec<&[u8]> = comps_owned.iter().map(Vec::as_slice).collect();
        let header = entry.header().clone();
        let kind = header.entry_type();
        let mode = header.mode().map_err(Self::io_err(&raw, "parse mode"))?;
        let mtime = header.mtime().unwrap_or(0);

        // The layer root itself ("./"): only its metadata matters.
        let Some(&name) = comps.last() else {
            if kind.is_dir() {
                self.defer_dir(b"".to_vec(), mode, mtime, &raw)?;
            }
            return Ok(());
        };
        if name.starts_with(WHITEOUT_PREFIX) && self.opts.whiteouts == WhiteoutMode::Apply {
            return self.whiteout(&comps, &raw);
        }
        if name.starts_with(b".wh..wh.") && name != OPAQUE_MARKER {
            // Other aufs meta entries (e.g. hardlink dirs) carry nothing for us.
            self.stats.warnings.push(format!("{}: aufs metadata entry skipped", lossy(&raw)));
            return Ok(());
        }

        let xattrs = self.collect_xattrs(&mut entry, &raw)?;
        let head = Head {
            raw: &raw,
            comps: &comps,
            name,
            full: fsutil::join(&comps),
            header: &header,
            mode_bits: self.mode_bits(mode),
            mtime,
            uid: header.uid().unwrap_or(0),
            gid: header.gid().unwrap_or(0),
        };
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                self.regular(&mut entry, head, &xattrs)
            }
            tar::EntryType::Directory => self.directory(head, &xattrs),
            tar::EntryType::Symlink => self.symlink(&entry, head),
            tar::EntryType::Link => self.hardlink(&entry, head),
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => self.special(kind, head),
            other => {
                self.stats
                    .warnings
                    .push(format!("{}: unsupported entry type {other:?} skipped", lossy(&raw)));
                Ok(())
            }
        }
    }

    /// A regular file: created under its parent fd, its content copied within
    /// the size limit, then its metadata set through the fd.
    fn regular<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        head: Head<'_>,
        xattrs: &[Xattr],
    ) -> Result<(), ExtractError> {
        let size = entry.size();
        if self.stats.bytes.saturating_add(size) > self.opts.limits.max_total_size {
            return Err(ExtractError::TooLarge { max: self.opts.limits.max_total_size });
        }
        let (raw, name, mode_bits) = (head.raw, head.name, head.mode_bits);
        // Created with its final permission bits when the umask leaves
        // them as they are (never setid/sticky bits: a write may clear
        // those), else 0600 and an fchmod after the content.
        let plain_mode = mode_bits & 0o7000 == 0 && self.umask.is_some_and(|u| u & mode_bits == 0);
        let create_mode = if plain_mode { mode_bits } else { 0o600 };
        let parent = self.parent(head.comps, raw)?;
        let create = || {
            rustix::fs::openat(
                parent,
                OsStr::from_bytes(name),
                OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(create_mode),
            )
        };
        // Most names are new: create first, clear only what is in the way.
        let fd = match create() {
            Err(rustix::io::Errno::EXIST) => {
                fsutil::clear_for_create(parent, name)
                    .map_err(Self::io_err(raw, "replace existing entry"))?;
                create()
            }
            other => other,
        }
        .map_err(Self::errno(raw, "create file"))?;
        let parent_gid = match &self.parent_cache {
            Some((_, _, g)) => *g,
            None => u32::MAX,
        };
        let mut file = File::from(fd);
        let max = self.opts.limits.max_total_size;
        let limit = max - self.stats.bytes;
        let written = copy_limited(entry, &mut file, limit, &mut self.copy_buf).map_err(|e| match e {
            CopyError::Read(e) => ExtractError::Read(e),
            CopyError::Write(source) => ExtractError::Io { path: lossy(raw), op: "write file", source },
            CopyError::Limit => ExtractError::TooLarge { max },
        })?;
        self.stats.bytes += written;
        self.finish_file(&file, &head, plain_mode, parent_gid, xattrs)?;
        self.created.insert(head.full);
        Ok(())
    }

    /// Owner, mode, xattrs and mtime of a file just written, through its fd;
    /// the owner and mode only where the file does not have them already.
    fn finish_file(
        &mut self,
        file: &File,
        head: &Head<'_>,
        plain_mode: bool,
        parent_gid: u32,
        xattrs: &[Xattr],
    ) -> Result<(), ExtractError> {
        let (own_uid, own_gid) = self.ids;
        let (uid, gid) = (uid_of(head.uid), gid_of(head.gid));
        // A new file is owned by our euid and by our egid when the parent's
        // group is ours too (setgid directories and `grpid` mounts give the
        // parent's group); then the header's ids need no fchown.
        let owned_already = uid.as_raw() == own_uid && gid.as_raw() == own_gid && parent_gid == own_gid;
        if self.is_root && self.opts.same_owner && !owned_already {
            rustix::fs::fchown(file, Some(uid), Some(gid)).map_err(Self::errno(head.raw, "fchown"))?;
        }
        if !plain_mode {
            rustix::fs::fchmod(file, Mode::from_raw_mode(head.mode_bits))
                .map_err(Self::errno(head.raw, "fchmod"))?;
        }
        self.set_xattrs(file.as_fd(), xattrs, head.raw);
        rustix::fs::futimens(file, &times(head.mtime)).map_err(Self::errno(head.raw, "futimens"))
    }

    fn directory(&mut self, head: Head<'_>, xattrs: &[Xattr]) -> Result<(), ExtractError> {
        let raw = head.raw;
        let parent = self.parent(head.comps, raw)?;
        let dir =
            fsutil::ensure_subdir(parent, head.name, 0o700).map_err(Self::io_err(raw, "create directory"))?;
        if self.is_root && self.opts.same_owner {
            rustix::fs::fchown(&dir, Some(uid_of(head.uid)), Some(gid_of(head.gid)))
                .map_err(Self::errno(raw, "fchown"))?;
        }
        self.set_xattrs(dir.as_fd(), xattrs, raw);
        // Mode and mtime wait until the children exist (a 0555 dir must stay writable).
        let st = rustix::fs::fstat(&dir).map_err(Self::errno(raw, "fstat"))?;
        self.created.insert(head.full.clone());
        self.record_deferred(head.full, st.st_dev, st.st_ino, head.mode_bits, head.mtime);
        Ok(())
    }

    fn symlink<R: Read>(&mut self, entry: &tar::Entry<'_, R>, head: Head<'_>) -> Result<(), ExtractError> {
        let raw = head.raw;
        let target = link_name(entry, raw)?;
        let meta = self.node_meta(&head, None);
        let parent = self.make_room(&head)?;
        // The target is stored verbatim: it only ever resolves inside a root.
        fsutil::make_node(parent, head.name, fsutil::Node::Symlink(&target), &meta)
            .map_err(Self::node_err(raw))?;
        self.created.insert(head.full);
        self.parent_cache = None;
        Ok(())
    }

    /// A hardlink, to a non-directory that an earlier entry put in the root.
    fn hardlink<R: Read>(&mut self, entry: &tar::Entry<'_, R>, head: Head<'_>) -> Result<(), ExtractError> {
        let raw = head.raw;
        let target_raw = link_name(entry, raw)?;
        let Some((tparent, tname)) = self.link_target(&target_raw, &head)? else {
            return Ok(());
        };
        let parent = self.make_room(&head)?;
        // flags = 0: a symlink target is linked itself, never followed.
        rustix::fs::linkat(
            tparent.as_fd(),
            OsStr::from_bytes(&tname),
            parent,
            OsStr::from_bytes(head.name),
            AtFlags::empty(),
        )
        .map_err(Self::errno(raw, "create hardlink"))?;
        self.created.insert(head.full);
        self.parent_cache = None;
        Ok(())
    }

    /// The hardlink target's parent directory (resolved in the root) and its
    /// name, once the target is known to be an existing non-directory; `None`
    /// for an entry that links to itself (nothing to do).
    fn link_target(
        &self,
        target_raw: &[u8],
        head: &Head<'_>,
    ) -> Result<Option<(OwnedFd, Vec<u8>)>, ExtractError> {
        let bad = |reason: String| ExtractError::BadLink {
            path: lossy(head.raw),
            target: lossy(target_raw),
            reason,
        };
        let tcomps: Vec<&[u8]> = match normalize(target_raw, &self.opts.limits) {
            Ok(c) => c,
            Err(_) => return Err(bad("'..' or over-long name".into())),
        };
        let Some((&tname, tparent_comps)) = tcomps.split_last() else {
            return Err(bad("points at the root".into()));
        };
        if tcomps.as_slice() == head.comps {
            return Ok(None);
        }
        let tparent = fsutil::open_dir_in_root(self.root, &fsutil::join(tparent_comps))
            .map_err(|e| bad(e.to_string()))?;
        match fsutil::kind_at(tparent.as_fd(), tname) {
            Ok(Some(FileType::Directory)) | Ok(None) => Err(bad("target is missing or a directory".into())),
            Ok(Some(_)) => Ok(Some((tparent, tname.to_vec()))),
            Err(e) => Err(bad(e.to_string())),
        }
    }

    /// A character or block device or a FIFO, as the device policy allows.
    fn special(&mut self, kind: tar::EntryType, head: Head<'_>) -> Result<(), ExtractError> {
        let raw = head.raw;
        let (ftype, label) = match kind {
            tar::EntryType::Char => (FileType::CharacterDevice, "character device"),
            tar::EntryType::Block => (FileType::BlockDevice, "block device"),
            _ => (FileType::Fifo, "fifo"),
        };
        match self.opts.devices {
            DevicePolicy::Reject => {
                return Err(ExtractError::DeviceRefused { path: lossy(raw), kind: label })
            }
            DevicePolicy::Skip => {
                self.stats.warnings.push(format!("{}: {label} skipped by policy", lossy(raw)));
                return Ok(());
            }
            DevicePolicy::Create if !self.is_root && ftype != FileType::Fifo => {
                self.stats.warnings.push(format!("{}: {label} skipped (not running as root)", lossy(raw)));
                return Ok(());
            }
            DevicePolicy::Create => {}
        }
        let major = head.header.device_major().ok().flatten().unwrap_or(0);
        let minor = head.header.device_minor().ok().flatten().unwrap_or(0);
        let meta = self.node_meta(&head, Some(head.mode_bits));
        let parent = self.make_room(&head)?;
        let node = fsutil::Node::Special(ftype, rustix::fs::makedev(major, minor));
        fsutil::make_node(parent, head.name, node, &meta).map_err(Self::node_err(raw))?;
        self.created.insert(head.full);
        Ok(())
    }

    /// The entry's parent directory, with nothing left at the entry's name.
    fn make_room(&mut self, head: &Head<'_>) -> Result<BorrowedFd<'_>, ExtractError> {
        let parent = self.parent(head.comps, head.raw)?;
        fsutil::clear_for_create(parent, head.name)
            .map_err(Self::io_err(head.raw, "replace existing entry"))?;
        Ok(parent)
    }

    /// Owner (as root, when the policy keeps owners), mode and mtime from the
    /// header, for a node made by name.
    fn node_meta(&self, head: &Head<'_>, mode: Option<u32>) -> fsutil::NodeMeta {
        fsutil::NodeMeta {
            owner: (self.is_root && self.opts.same_owner).then(|| (uid_of(head.uid), gid_of(head.gid))),
            mode,
            times: Some(times(head.mtime)),
        }
    }

    /// `Apply` mode: `.wh.NAME` removes NAME from lower layers; `.wh..wh..opq`
    /// empties the directory of everything lower layers put there.
    fn whiteout(&mut self, comps: &[&[u8]], raw: &[u8]) -> Result<(), ExtractError> {
        let name = comps[comps.len() - 1];
        let parent_comps = &comps[..comps.len() - 1];
        let parent_path = fsutil::join(parent_comps);
        if name == OPAQUE_MARKER {
            let dir = fsutil::mkdir_all_in_root(self.root, parent_comps)
                .map_err(Self::io_err(raw, "resolve opaque directory"))?;
            let readable = rustix::fs::openat(
                &dir,
                c".",
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(Self::errno(raw, "open opaque directory"))?;
            let created = &self.created;
            let prefix =
                if parent_comps.is_empty() { Vec::new() } else { [parent_path.as_slice(), b"/"].concat() };
            fsutil::clear_dir(readable.as_fd(), &|child: &[u8]| {
                created.contains(&[prefix.as_slice(), child].concat())
            })
            .map_err(Self::io_err(raw, "clear opaque directory"))?;
        } else if name.starts_with(b".wh..wh.") {
            self.stats.warnings.push(format!("{}: aufs metadata entry skipped", lossy(raw)));
        } else {
            let victim = &name[WHITEOUT_PREFIX.len()..];
            if victim.is_empty() || victim == b"." || victim == b".." {
                return Err(ExtractError::Traversal { path: lossy(raw) });
            }
            match fsutil::open_dir_in_root(self.root, &parent_path) {
                Ok(dir) => {
                    fsutil::remove_at(dir.as_fd(), victim).map_err(Self::io_err(raw, "apply whiteout"))?
                }
                // Nothing below to hide.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => {}
                Err(e) => return Err(Self::io_err(raw, "resolve whiteout parent")(e)),
            }
        }
        self.parent_cache = None;
        Ok(())
    }

    fn collect_xattrs<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        raw: &[u8],
    ) -> Result<Vec<Xattr>, ExtractError> {
        let mut out = Vec::new();
        if !self.opts.xattrs {
            return Ok(out);
        }
        let Some(exts) = entry.pax_extensions().map_err(ExtractError::Read)? else {
            return Ok(out);
        };
        for ext in exts {
            let ext = ext.map_err(ExtractError::Read)?;
            let Some(name) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") else { continue };
            // Overlayfs metadata (whiteouts, opaque dirs, redirects, metacopy) is
            // cloak's to write, never the image's: with `--store-link overlay`
            // an image-supplied one could reshape what the container sees.
            if name.starts_with(b"trusted.overlay.") || name.starts_with(b"user.overlay.") {
                self.stats.warnings.push(format!("{}: overlayfs xattr {} refused", lossy(raw), lossy(name)));
                continue;
            }
            let privileged = name.starts_with(b"trusted.") || name.starts_with(b"security.");
            if privileged && !self.opts.allow_privileged_xattrs {
                self.stats.warnings.push(format!("{}: xattr {} refused", lossy(raw), lossy(name)));
                continue;
            }
            if ext.value_bytes().len() > self.opts.limits.max_xattr_size {
                return Err(ExtractError::NameTooLong {
                    path: lossy(raw),
                    len: ext.value_bytes().len(),
                    max: self.opts.limits.max_xattr_size,
                });
            }
            out.push((name.to_vec(), ext.value_bytes().to_vec()));
        }
        Ok(out)
    }

    fn set_xattrs(&mut self, fd: BorrowedFd<'_>, xattrs: &[Xattr], raw: &[u8]) {
        for (name, value) in xattrs {
            // A filesystem without xattr support (tmpfs without user xattrs) only
            // loses the attribute; the file content is unaffected.
            if let Err(e) = rustix::fs::fsetxattr(fd, OsStr::from_bytes(name), value, XattrFlags::empty()) {
                self.stats.warnings.push(format!("{}: xattr {} not set: {e}", lossy(raw), lossy(name)));
            }
        }
    }

    fn defer_dir(&mut self, path: Vec<u8>, mode: u32, mtime: u64, raw: &[u8]) -> Result<(), ExtractError> {
        let fd =
            fsutil::open_dir_rw_in_root(self.root, &path).map_err(Self::io_err(raw, "open directory"))?;
        let st = rustix::fs::fstat(&fd).map_err(Self::errno(raw, "fstat"))?;
        let bits = self.mode_bits(mode);
        self.record_deferred(path, st.st_dev, st.st_ino, bits, mtime);
        Ok(())
    }

    fn record_deferred(&mut self, path: Vec<u8>, dev: u64, ino: u64, mode: u32, mtime: u64) {
        let d = DeferredDir { path: path.clone(), dev, ino, mode, mtime: ts(mtime) };
        if let Some(&i) = self.deferred_index.get(&path) {
            self.deferred[i] = d;
        } else {
            self.deferred_index.insert(path, self.deferred.len());
            self.deferred.push(d);
        }
    }

    /// Applies directory modes and mtimes, deepest last-created first. Each
    /// directory is reopened inside the root without following a final symlink
    /// and must still be the inode recorded at creation; otherwise (it was
    /// replaced by a later entry) it is skipped, so no metadata lands elsewhere.
    fn finish_dirs(&mut self) -> Result<(), ExtractError> {
        for d in self.deferred.iter().rev() {
            let fd = match fsutil::open_dir_rw_in_root(self.root, &d.path) {
                Ok(fd) => fd,
                Err(_) => continue,
            };
            let st = rustix::fs::fstat(&fd).map_err(Self::errno(&d.path, "fstat"))?;
            if st.st_dev != d.dev || st.st_ino != d.ino {
                continue;
            }
            rustix::fs::fchmod(&fd, Mode::from_raw_mode(d.mode))
                .map_err(Self::errno(&d.path, "fchmod directory"))?;
            let t = Timestamps { last_access: d.mtime, last_modification: d.mtime };
            rustix::fs::futimens(&fd, &t).map_err(Self::errno(&d.path, "futimens directory"))?;
        }
        Ok(())
    }
}

/// The target a symlink or hardlink entry names.
fn link_name<R: Read>(entry: &tar::Entry<'_, R>, raw: &[u8]) -> Result<Vec<u8>, ExtractError> {
    entry.link_name_bytes().map(|t| t.into_owned()).ok_or_else(|| ExtractError::BadLink {
        path: lossy(raw),
        target: String::new(),
        reason: "missing target".into(),
    })
}

fn uid_of(uid: u64) -> rustix::fs::Uid {
    rustix::fs::Uid::from_raw(u32::try_from(uid).unwrap_or(u32::MAX - 1))
}

fn gid_of(gid: u64) -> rustix::fs::Gid {
    rustix::fs::Gid::from_raw(u32::try_from(gid).unwrap_or(u32::MAX - 1))
}

enum CopyError {
    Read(io::Error),
    Write(io::Error),
    Limit,
}

/// Copies at most `limit` bytes; one byte more is a tar bomb.
fn copy_limited<R: Read, W: Write>(
    r: &mut R,
    w: &mut W,
    limit: u64,
    buf: &mut [u8],
) -> Result<u64, CopyError> {
    let mut total = 0u64;
    loop {
        let n = match r.read(buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        total += n as u64;
        if total > limit {
            return Err(CopyError::Limit);
        }
        w.write_all(&buf[..n]).map_err(CopyError::Write)?;
    }
}
