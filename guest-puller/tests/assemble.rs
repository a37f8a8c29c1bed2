//! Rootfs assembly by moving entries out of a private store must give the same
//! tree as assembly by hardlinks: whiteouts, opaque directories, type changes,
//! symlinks, hardlinks, modes and timestamps.

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::rawtar::RawTar;
use guest_puller::assemble::{assemble, assemble_by_moving, LinkMode};
use guest_puller::extract::{extract, ExtractOptions, WhiteoutMode};

fn layers() -> Vec<Vec<u8>> {
    vec![
        RawTar::new()
            .dir("etc/")
            .file("etc/passwd", b"root")
            .file("etc/hosts", b"localhost")
            .dir("usr/")
            .dir("usr/lib/")
            .file("usr/lib/a.so", b"a")
            .file("usr/lib/b.so", b"b")
            .hardlink("usr/lib/b-link.so", "usr/lib/b.so")
            .dir("var/")
            .dir("var/cache/")
            .file("var/cache/old", b"old")
            .file("becomes-dir", b"file")
            .dir("becomes-file/")
            .file("becomes-file/inner", b"inner")
            .symlink("lib", "usr/lib")
            .entry("ro/", b'5', b"", "", 0o555)
            .file("ro/kept", b"kept")
            .finish(),
        RawTar::new()
            .dir("etc/")
            .file("etc/.wh.hosts", b"")
            .file("etc/passwd", b"root2")
            .dir("var/cache/")
            .file("var/cache/.wh..wh..opq", b"")
            .file("var/cache/new", b"new")
            .dir("becomes-dir/")
            .file("becomes-dir/x", b"x")
            .file("becomes-file", b"now a file")
            .dir("fresh/")
            .dir("fresh/sub/")
            .file("fresh/sub/.wh.nothing", b"")
            .file("fresh/sub/f", b"f")
            .entry("ro/", b'5', b"", "", 0o555)
            .file("ro/added", b"added")
            .finish(),
        RawTar::new()
            .dir("usr/lib/")
            .file("usr/lib/.wh.a.so", b"")
            .symlink("etc/passwd", "/dev/null")
            .file("lib", b"lib is a file now")
            .finish(),
    ]
}

/// Extracts the layers into store-like trees (whiteouts kept as markers).
fn trees(base: &Path) -> Vec<PathBuf> {
    let opts = ExtractOptions { whiteouts: WhiteoutMode::Keep, ..Default::default() };
    layers()
        .iter()
        .enumerate()
        .map(|(i, tar)| {
            let t = base.join(format!("layer{i}"));
            fs::create_dir_all(&t).expect("mkdir");
            extract(tar.as_slice(), &t, &opts).expect("extract");
            t
        })
        .collect()
}

/// Path, kind, mode, mtime, the first path sharing its inode (hardlinks), content.
type Row = (String, String, u32, i64, String, Vec<u8>);

fn snapshot(root: &Path) -> Vec<Row> {
    fn walk(
        base: &Path,
        dir: &Path,
        out: &mut Vec<Row>,
        inodes: &mut std::collections::HashMap<u64, String>,
    ) {
        let mut ents: Vec<_> = fs::read_dir(dir).expect("read_dir").map(|e| e.expect("entry")).collect();
        ents.sort_by_key(|e| e.file_name());
        for e in ents {
            let p = e.path();
            let m = fs::symlink_metadata(&p).expect("stat");
            let rel = p.strip_prefix(base).expect("rel").display().to_string();
            let (kind, data) = if m.is_dir() {
                ("dir", Vec::new())
            } else if m.file_type().is_symlink() {
                ("symlink", fs::read_link(&p).expect("readlink").into_os_string().into_encoded_bytes())
            } else {
                ("file", fs::read(&p).expect("read"))
            };
            let first = if kind == "file" {
                inodes.entry(m.ino()).or_insert_with(|| rel.clone()).clone()
            } else {
                String::new()
            };
            out.push((rel, kind.into(), m.mode(), m.mtime(), first, data));
            if m.is_dir() {
                walk(base, &p, out, inodes);
            }
        }
    }
    let mut out = Vec::new();
    let m = fs::metadata(root).expect("root");
    out.push((".".into(), "dir".into(), m.mode(), m.mtime(), String::new(), Vec::new()));
    walk(root, root, &mut out, &mut Default::default());
    out
}

#[test]
fn moving_out_of_a_private_store_equals_hardlinking() {
    let tmp = tempfile::tempdir().expect("tmp");
    let linked = tmp.path().join("linked");
    let moved = tmp.path().join("moved");
    fs::create_dir(&linked).expect("mkdir");
    fs::create_dir(&moved).expect("mkdir");
    assemble(&trees(&tmp.path().join("a")), &linked, LinkMode::Hardlink).expect("hardlink assembly");
    // The same tree listed twice (two layers with one diff_id) must apply twice.
    let mut t = trees(&tmp.path().join("b"));
    t.push(t[1].clone());
    let mut want_trees = trees(&tmp.path().join("c"));
    want_trees.push(want_trees[1].clone());
    let twice = tmp.path().join("twice");
    fs::create_dir(&twice).expect("mkdir");
    assemble(&want_trees, &twice, LinkMode::Hardlink).expect("hardlink assembly");
    assemble_by_moving(&t, &moved).expect("move assembly");
    assert_eq!(snapshot(&moved), snapshot(&twice));

    let single = tmp.path().join("single");
    fs::create_dir(&single).expect("mkdir");
    assemble_by_moving(&trees(&tmp.path().join("d")), &single).expect("move assembly");
    let got = snapshot(&single);
    assert_eq!(got, snapshot(&linked));
    let names: Vec<&str> = got.iter().map(|r| r.0.as_str()).collect();
    assert!(!names.iter().any(|n| n.contains(".wh.")), "{names:?}");
    let b = got.iter().find(|r| r.0 == "usr/lib/b.so").expect("b.so");
    assert_eq!(b.4, "usr/lib/b-link.so", "hardlinks stay hardlinks");
    assert!(
        names.contains(&"fresh/sub/f") && !names.contains(&"etc/hosts") && !names.contains(&"var/cache/old"),
        "{names:?}"
    );
}
