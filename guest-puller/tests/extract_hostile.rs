//! Hostile-tar suite: every escape attempt must leave the outside untouched.
//!
//! Layout per test: a temp dir holding `root/` (the extraction root) and
//! `outside/` (a sentinel tree). After each extraction the outside tree must be
//! byte-for-byte what it was.

mod common;

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use common::rawtar::RawTar;
use guest_puller::extract::{extract, DevicePolicy, ExtractError, ExtractOptions, Limits, WhiteoutMode};

struct Sandbox {
    _tmp: tempfile::TempDir,
    root: PathBuf,
    outside: PathBuf,
}

fn sandbox() -> Sandbox {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("root");
    let outside = tmp.path().join("outside");
    fs::create_dir(&root).expect("root");
    fs::create_dir(&outside).expect("outside");
    fs::write(outside.join("passwd"), b"original").expect("sentinel");
    fs::create_dir(outside.join("etc")).expect("etc");
    Sandbox { _tmp: tmp, root, outside }
}

/// A listing of (relative path, type, size, mode, mtime, nlink) of a tree.
fn snapshot(dir: &Path) -> Vec<(String, String, u64, u32, i64, u64)> {
    let mut out = Vec::new();
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(String, String, u64, u32, i64, u64)>) {
        let mut ents: Vec<_> = fs::read_dir(dir).expect("read_dir").map(|e| e.expect("entry")).collect();
        ents.sort_by_key(|e| e.file_name());
        for e in ents {
            let p = e.path();
            let m = fs::symlink_metadata(&p).expect("meta");
            let rel = p.strip_prefix(base).expect("prefix").display().to_string();
            let kind = format!("{:?}", m.file_type());
            out.push((rel, kind, m.len(), m.mode(), m.mtime(), m.nlink()));
            if m.is_dir() {
                walk(base, &p, out);
            }
        }
    }
    walk(dir, dir, &mut out);
    out
}

fn run(sb: &Sandbox, tar: &[u8], opts: &ExtractOptions) -> Result<(), ExtractError> {
    let before = snapshot(&sb.outside);
    let passwd_before = fs::read(sb.outside.join("passwd")).expect("read");
    let res = extract(tar, &sb.root, opts).map(|_| ());
    assert_eq!(snapshot(&sb.outside), before, "the outside tree changed");
    assert_eq!(fs::read(sb.outside.join("passwd")).expect("read"), passwd_before);
    // Nothing may have appeared next to root/ and outside/ either.
    let parent = sb.root.parent().expect("parent");
    let mut names: Vec<_> = fs::read_dir(parent).expect("ls").map(|e| e.expect("e").file_name()).collect();
    names.sort();
    assert_eq!(names, vec!["outside", "root"]);
    res
}

fn rel_outside(sb: &Sandbox) -> String {
    // root and outside are siblings: ../outside from inside root.
    let _ = sb;
    "../outside".to_string()
}

#[test]
fn dotdot_traversal_is_an_error() {
    let sb = sandbox();
    let tar = RawTar::new().file("../outside/passwd", b"pwned").finish();
    let err = run(&sb, &tar, &ExtractOptions::default()).expect_err("must fail");
    assert!(matches!(err, ExtractError::Traversal { .. }), "{err}");
    let tar = RawTar::new().file("a/../../outside/new", b"pwned").finish();
    assert!(matches!(run(&sb, &tar, &ExtractOptions::default()), Err(ExtractError::Traversal { .. })));
}

#[test]
fn absolute_names_land_inside_root() {
    let sb = sandbox();
    let abs = format!("{}/passwd", sb.outside.display());
    let tar = RawTar::new().file(&abs, b"inside").file("/etc/hosts", b"h").finish();
    run(&sb, &tar, &ExtractOptions::default()).expect("extract");
    let contained = sb.root.join(abs.trim_start_matches('/'));
    assert_eq!(fs::read(contained).expect("contained"), b"inside");
    assert_eq!(fs::read(sb.root.join("etc/hosts")).expect("hosts"), b"h");
}

#[test]
fn symlink_escape_then_write_stays_inside() {
    let sb = sandbox();
    let tar = RawTar::new()
        .dir("etc/")
        .symlink("evil", "/etc")
        .file("evil/passwd", b"pwned")
        .dir("outside/")
        .symlink("rel", &rel_outside(&sb))
        .file("rel/passwd", b"pwned2")
        .symlink("dotdots", "../../../../../../")
        .file("dotdots/created-by-tar", b"x")
        .finish();
    run(&sb, &tar, &ExtractOptions::default()).expect("extract");
    // The writes went through the symlinks as if the root were "/".
    assert_eq!(fs::read(sb.root.join("etc/passwd")).expect("in"), b"pwned");
    assert_eq!(fs::read(sb.root.join("outside/passwd")).expect("in"), b"pwned2");
    assert_eq!(fs::read(sb.root.join("created-by-tar")).expect("in"), b"x");
    // The symlinks themselves are kept verbatim.
    assert_eq!(fs::read_link(sb.root.join("evil")).expect("link"), PathBuf::from("/etc"));
}

#[test]
fn write_through_dangling_symlink_to_outside_fails_inside() {
    let sb = sandbox();
    // The symlink points at the real outside dir; inside the root that path does
    // not exist, so the write fails instead of landing on the host.
    let tar = RawTar::new()
        .symlink("evil", &sb.outside.display().to_string())
        .file("evil/passwd", b"pwned")
        .finish();
    let err = run(&sb, &tar, &ExtractOptions::default()).expect_err("dangling");
    assert!(err.to_string().contains("evil/passwd"), "{err}");
}

#[test]
fn symlink_replacing_file_then_write_does_not_follow() {
    let sb = sandbox();
    let target = sb.outside.join("passwd").display().to_string();
    // The final component is a symlink to the outside: writing the same name
    // again must replace the link, not write through it.
    let tar = RawTar::new().symlink("f", &target).file("f", b"replaced").finish();
    run(&sb, &tar, &ExtractOptions::default()).expect("extract");
    let m = fs::symlink_metadata(sb.root.join("f")).expect("meta");
    assert!(m.is_file());
    assert_eq!(fs::read(sb.root.join("f")).expect("read"), b"replaced");
}

#[test]
fn hardlink_to_outside_is_refused() {
    let sb = sandbox();
    let abs = sb.outside.join("passwd").display().to_string();
    let tar = RawTar::new().hardlink("h", &abs).finish();
    assert!(matches!(run(&sb, &tar, &ExtractOptions::default()), Err(ExtractError::BadLink { .. })));
    let tar = RawTar::new().hardlink("h", "../outside/passwd").finish();
    assert!(matches!(run(&sb, &tar, &ExtractOptions::default()), Err(ExtractError::BadLink { .. })));
    // Through a symlink pointing out: resolved inside the root, where nothing is.
    let tar =
        RawTar::new().symlink("out", &sb.outside.display().to_string()).hardlink("h", "out/passwd").finish();
    assert!(matches!(run(&sb, &tar, &ExtractOptions::default()), Err(ExtractError::BadLink { .. })));
    assert_eq!(fs::metadata(sb.outside.join("passwd")).expect("m").nlink(), 1);
}

#[test]
fn hardlink_within_image_works() {
    let sb = sandbox();
    let tar = RawTar::new()
        .file("a/orig", b"data")
        .hardlink("b/link", "a/orig")
        .hardlink("/b/abs", "/a/orig")
        .finish();
    run(&sb, &tar, &ExtractOptions::default()).expect("extract");
    let m = fs::metadata(sb.root.join("a/orig")).expect("m");
    assert_eq!(m.nlink(), 3);
    assert_eq!(fs::read(sb.root.join("b/link")).expect("r"), b"data");
}

#[test]
fn hardlink_to_symlink_links_the_symlink_itself() {
    let sb = sandbox();
    let abs = sb.outside.join("passwd").display().to_string();
    let tar = RawTar::new().symlink("s", &abs).hardlink("h", "s").finish();
    run(&sb, &tar, &ExtractOptions::default()).expect("extract");
    assert!(fs::symlink_metadata(sb.root.join("h")).expect("m").file_type().is_symlink());
}

#[test]
fn dir_replaced_by_symlink_gets_no_deferred_metadata_outside() {
    // The image-rs deferred-utimes bug: dir a/target recorded, then `a` swapped
    // for a symlink to the outside before the end of the archive.
    let sb = sandbox();
    let tar = RawTar::new()
        .dir("sub/")
        .symlink("a", "sub")
        .dir("a/etc/")
        .symlink("a", &sb.outside.display().to_string())
        .finish();
    run(&sb, &tar, &ExtractOptions::default()).expect("extract");
    assert!(sb.root.join("sub/etc").is_dir());
}

#[test]
fn device_nodes_follow_policy() {
    let sb = sandbox();
    let tar = RawTar::new()
        .entry_dev("dev/null2", b'3', b"", "", 0o666, 1, 3)
        .entry("p", b'6', b"", "", 0o644)
        .finish();
    let opts = ExtractOptions { devices: DevicePolicy::Reject, ..Default::default() };
    assert!(matches!(run(&sb, &tar, &opts), Err(ExtractError::DeviceRefused { .. })));
    let opts = ExtractOptions { devices: DevicePolicy::Skip, ..Default::default() };
    let sb = sandbox();
    extract(tar.as_slice(), &sb.root, &opts).expect("skip");
    assert!(!sb.root.join("dev/null2").exists());
    let sb = sandbox();
    extract(tar.as_slice(), &sb.root, &ExtractOptions::default()).expect("create");
    let m = fs::symlink_metadata(sb.root.join("p")).expect("fifo");
    assert!(std::os::unix::fs::FileTypeExt::is_fifo(&m.file_type()));
    if rustix::process::geteuid().is_root() {
        let m = fs::symlink_metadata(sb.root.join("dev/null2")).expect("dev");
        assert!(std::os::unix::fs::FileTypeExt::is_char_device(&m.file_type()));
        assert_eq!(m.rdev(), rustix::fs::makedev(1, 3));
    }
}

#[test]
fn tar_bomb_by_size_fails_clearly() {
    let sb = sandbox();
    let big = vec![7u8; 10_000];
    let tar = RawTar::new().file("a", &big).file("b", &big).finish();
    let opts = ExtractOptions {
        limits: Limits { max_total_size: 15_000, ..Default::default() },
        ..Default::default()
    };
    let err = run(&sb, &tar, &opts).expect_err("bomb");
    assert!(err.to_string().starts_with("tar bomb: unpacked size exceeds 15000"), "{err}");
}

#[test]
fn tar_bomb_by_entries_and_names() {
    let sb = sandbox();
    let mut t = RawTar::new();
    for i in 0..20 {
        t.file(&format!("f{i}"), b"");
    }
    let tar = t.finish();
    let opts =
        ExtractOptions { limits: Limits { max_entries: 10, ..Default::default() }, ..Default::default() };
    assert!(matches!(run(&sb, &tar, &opts), Err(ExtractError::TooManyEntries { max: 10 })));
    let long = "x".repeat(300);
    let tar = RawTar::new().pax(&[("path", long.as_bytes())]).file("short", b"").finish();
    assert!(matches!(run(&sb, &tar, &ExtractOptions::default()), Err(ExtractError::NameTooLong { .. })));
}

#[test]
fn whiteouts_apply_against_lower_layers() {
    let sb = sandbox();
    let lower = RawTar::new()
        .dir("etc/")
        .file("etc/keep", b"k")
        .file("etc/gone", b"g")
        .dir("opq/")
        .file("opq/old", b"o")
        .dir("opq/olddir/")
        .file("opq/olddir/x", b"x")
        .finish();
    extract(lower.as_slice(), &sb.root, &ExtractOptions::default()).expect("lower");
    let upper = RawTar::new()
        .file("etc/.wh.gone", b"")
        .dir("opq/")
        .file("opq/new", b"n")
        .file("opq/.wh..wh..opq", b"")
        .file(".wh.nonexistent", b"")
        .finish();
    let stats = extract(upper.as_slice(), &sb.root, &ExtractOptions::default()).expect("upper");
    assert!(stats.warnings.is_empty(), "{:?}", stats.warnings);
    assert!(sb.root.join("etc/keep").exists());
    assert!(!sb.root.join("etc/gone").exists());
    assert!(!sb.root.join("etc/.wh.gone").exists());
    assert!(sb.root.join("opq/new").exists(), "same-layer entries survive the opaque marker");
    assert!(!sb.root.join("opq/old").exists());
    assert!(!sb.root.join("opq/olddir").exists());
    assert!(!sb.root.join("opq/.wh..wh..opq").exists());
}

#[test]
fn whiteouts_kept_as_markers_in_keep_mode() {
    let sb = sandbox();
    let upper = RawTar::new().file("etc/.wh.gone", b"").file("opq/.wh..wh..opq", b"").finish();
    let opts = ExtractOptions { whiteouts: WhiteoutMode::Keep, ..Default::default() };
    extract(upper.as_slice(), &sb.root, &opts).expect("upper");
    assert!(sb.root.join("etc/.wh.gone").is_file());
    assert!(sb.root.join("opq/.wh..wh..opq").is_file());
}

#[test]
fn whiteout_cannot_remove_outside() {
    let sb = sandbox();
    let tar = RawTar::new()
        .symlink("o", &sb.outside.display().to_string())
        .file("o/.wh.passwd", b"")
        .file(".wh..", b"")
        .finish();
    let res = run(&sb, &tar, &ExtractOptions::default());
    assert!(matches!(res, Err(ExtractError::Traversal { .. })), "{res:?}");
}

#[test]
fn privileged_xattrs_and_setid_by_policy() {
    let sb = sandbox();
    let tar = RawTar::new()
        .pax(&[("SCHILY.xattr.trusted.overlay.opaque", b"y"), ("SCHILY.xattr.user.ok", b"1")])
        .entry("suid", b'0', b"#!", "", 0o4755)
        .finish();
    let opts = ExtractOptions { keep_setid: false, ..Default::default() };
    let stats = extract(tar.as_slice(), &sb.root, &opts).expect("extract");
    assert!(stats.warnings.iter().any(|w| w.contains("trusted.overlay.opaque")), "{:?}", stats.warnings);
    let m = fs::metadata(sb.root.join("suid")).expect("m");
    assert_eq!(m.permissions().mode() & 0o7777, 0o755);
    let mut buf = [0u8; 8];
    assert!(rustix::fs::getxattr(sb.root.join("suid").as_path(), "trusted.overlay.opaque", &mut buf).is_err());
    let sb = sandbox();
    extract(tar.as_slice(), &sb.root, &ExtractOptions::default()).expect("extract");
    assert_eq!(fs::metadata(sb.root.join("suid")).expect("m").permissions().mode() & 0o7777, 0o4755);
}

/// Overlayfs metadata never comes from an image, even when privileged xattrs
/// are allowed (with `--store-link overlay` it would reshape the container's view).
#[test]
fn overlay_xattrs_are_refused_even_when_privileged_ones_are_allowed() {
    let sb = sandbox();
    let tar = RawTar::new()
        .pax(&[
            ("SCHILY.xattr.trusted.overlay.redirect", b"/etc"),
            ("SCHILY.xattr.user.overlay.opaque", b"y"),
            ("SCHILY.xattr.trusted.other", b"1"),
        ])
        .entry("f", b'0', b"x", "", 0o644)
        .finish();
    let opts = ExtractOptions { allow_privileged_xattrs: true, ..Default::default() };
    let stats = extract(tar.as_slice(), &sb.root, &opts).expect("extract");
    for name in ["trusted.overlay.redirect", "user.overlay.opaque"] {
        assert!(
            stats.warnings.iter().any(|w| w.contains(name) && w.contains("refused")),
            "{name}: {:?}",
            stats.warnings
        );
        let mut buf = [0u8; 16];
        assert!(rustix::fs::getxattr(sb.root.join("f").as_path(), name, &mut buf).is_err(), "{name} was set");
    }
    assert!(
        !stats.warnings.iter().any(|w| w.contains("trusted.other") && w.contains("refused")),
        "{:?}",
        stats.warnings
    );
}

#[test]
fn modes_and_mtimes_are_applied() {
    let sb = sandbox();
    let tar =
        RawTar::new().entry("ro/", b'5', b"", "", 0o555).entry("ro/file", b'0', b"abc", "", 0o640).finish();
    extract(tar.as_slice(), &sb.root, &ExtractOptions::default()).expect("extract");
    let d = fs::metadata(sb.root.join("ro")).expect("d");
    assert_eq!(d.permissions().mode() & 0o7777, 0o555);
    assert_eq!(d.mtime(), 1_600_000_000);
    let f = fs::metadata(sb.root.join("ro/file")).expect("f");
    assert_eq!(f.permissions().mode() & 0o7777, 0o640);
    assert_eq!(f.mtime(), 1_600_000_000);
}

#[test]
fn truncated_stream_is_an_error_not_a_panic() {
    let sb = sandbox();
    let tar = RawTar::new().file("a", &[1u8; 5000]).finish();
    let res = extract(&tar[..1500], &sb.root, &ExtractOptions::default());
    assert!(res.is_err());
}

/// name, type, mode, uid, gid, content.
type OwnedEntry<'a> = (&'a str, tar::EntryType, u32, u64, u64, &'a [u8]);

/// A tar built with explicit owners and modes.
fn owned_tar(entries: &[OwnedEntry<'_>]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, kind, mode, uid, gid, data) in entries {
        let mut h = tar::Header::new_ustar();
        h.set_entry_type(*kind);
        h.set_mode(*mode);
        h.set_uid(*uid);
        h.set_gid(*gid);
        h.set_mtime(1_600_000_000);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, name, *data).expect("append");
    }
    b.into_inner().expect("tar")
}

/// Files are created with their final mode and owner when that saves an
/// fchmod/fchown; this pins that the result is the same as setting them.
#[test]
fn owners_and_modes_of_new_files_match_the_headers() {
    use tar::EntryType::{Directory, Regular};
    let sb = sandbox();
    let tar = owned_tar(&[
        ("root-owned", Regular, 0o644, 0, 0, b"r"),
        ("user-owned", Regular, 0o640, 1000, 1001, b"u"),
        ("read-only", Regular, 0o444, 0, 0, b"content of a read-only file"),
        ("no-perms", Regular, 0o000, 0, 0, b"x"),
        ("group-write", Regular, 0o664, 0, 0, b"g"),
        ("sgid/", Directory, 0o2775, 0, 1001, b""),
        ("sgid/root-file", Regular, 0o644, 0, 0, b"s"),
        ("again", Regular, 0o600, 0, 0, b"first"),
        ("again", Regular, 0o755, 0, 0, b"second"),
    ]);
    extract(tar.as_slice(), &sb.root, &ExtractOptions::default()).expect("extract");
    let meta = |p: &str| fs::metadata(sb.root.join(p)).expect(p);
    assert_eq!(meta("root-owned").mode() & 0o7777, 0o644);
    assert_eq!(meta("user-owned").mode() & 0o7777, 0o640);
    assert_eq!(meta("read-only").mode() & 0o7777, 0o444);
    assert_eq!(fs::read(sb.root.join("read-only")).expect("read"), b"content of a read-only file");
    assert_eq!(meta("no-perms").mode() & 0o7777, 0o000);
    assert_eq!(meta("group-write").mode() & 0o7777, 0o664);
    assert_eq!(meta("again").mode() & 0o7777, 0o755);
    assert_eq!(fs::read(sb.root.join("again")).expect("read"), b"second");
    assert_eq!(meta("again").mtime(), 1_600_000_000);
    if rustix::process::geteuid().is_root() {
        assert_eq!((meta("root-owned").uid(), meta("root-owned").gid()), (0, 0));
        assert_eq!((meta("user-owned").uid(), meta("user-owned").gid()), (1000, 1001));
        // The setgid parent would hand its group to a new file: the header's gid wins.
        assert_eq!(meta("sgid").gid(), 1001);
        assert_eq!((meta("sgid/root-file").uid(), meta("sgid/root-file").gid()), (0, 0));
    }
}
