//! An independent model of what a rootfs should hold: plaintext layers read
//! with the `tar` crate into a map, OCI whiteouts applied in memory. It shares
//! no code with the extractor, so comparing against it checks the extractor.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Dir { mode: u32 },
    File { mode: u32, data: Vec<u8> },
    Symlink { target: String },
    Other,
}

pub type Tree = BTreeMap<String, Node>;

fn norm(p: &str) -> String {
    p.split('/').filter(|c| !c.is_empty() && *c != ".").collect::<Vec<_>>().join("/")
}

fn remove_subtree(t: &mut Tree, p: &str) {
    t.remove(p);
    let prefix = format!("{p}/");
    t.retain(|k, _| !k.starts_with(&prefix));
}

fn ensure_parents(t: &mut Tree, p: &str) {
    let parts: Vec<&str> = p.split('/').collect();
    for i in 1..parts.len() {
        let q = parts[..i].join("/");
        t.entry(q).or_insert(Node::Dir { mode: 0o755 });
    }
}

/// Applies one uncompressed layer tar to the model.
pub fn apply_layer(t: &mut Tree, tar_bytes: &[u8]) {
    let mut entries = Vec::new();
    let mut ar = tar::Archive::new(tar_bytes);
    for e in ar.entries().expect("entries") {
        let mut e = e.expect("entry");
        let path = norm(&String::from_utf8_lossy(&e.path_bytes()));
        let kind = e.header().entry_type();
        let mode = e.header().mode().expect("mode") & 0o7777;
        let link = e.link_name_bytes().map(|l| String::from_utf8_lossy(&l).into_owned());
        let mut data = Vec::new();
        e.read_to_end(&mut data).expect("data");
        entries.push((path, kind, mode, link, data));
    }
    // Whiteouts hide lower content first.
    for (path, ..) in &entries {
        let (dir, name) = match path.rsplit_once('/') {
            Some((d, n)) => (d.to_string(), n),
            None => (String::new(), path.as_str()),
        };
        if name == ".wh..wh..opq" {
            if dir.is_empty() {
                t.clear();
            } else {
                let prefix = format!("{dir}/");
                t.retain(|k, _| !k.starts_with(&prefix));
            }
        } else if let Some(victim) = name.strip_prefix(".wh.") {
            let v = if dir.is_empty() { victim.to_string() } else { format!("{dir}/{victim}") };
            remove_subtree(t, &v);
        }
    }
    for (path, kind, mode, link, data) in entries {
        if path.is_empty() {
            continue;
        }
        let name = path.rsplit('/').next().unwrap_or("");
        if name.starts_with(".wh.") {
            continue;
        }
        ensure_parents(t, &path);
        let node = match kind {
            tar::EntryType::Directory => Node::Dir { mode },
            tar::EntryType::Regular | tar::EntryType::Continuous => Node::File { mode, data },
            tar::EntryType::Symlink => Node::Symlink { target: link.expect("target") },
            tar::EntryType::Link => {
                let target = norm(&link.expect("target"));
                t.get(&target).cloned().expect("hardlink target in model")
            }
            _ => Node::Other,
        };
        if !matches!(node, Node::Dir { .. }) {
            remove_subtree(t, &path);
        }
        t.insert(path, node);
    }
}

/// Reads a rootfs directory into the same shape.
pub fn read_tree(root: &Path) -> Tree {
    let mut t = Tree::new();
    fn walk(base: &Path, dir: &Path, t: &mut Tree) {
        for e in std::fs::read_dir(dir).expect("read_dir") {
            let p = e.expect("entry").path();
            let rel = p.strip_prefix(base).expect("prefix").to_string_lossy().into_owned();
            let m = std::fs::symlink_metadata(&p).expect("meta");
            let mode = m.permissions().mode() & 0o7777;
            let node = if m.file_type().is_symlink() {
                Node::Symlink { target: std::fs::read_link(&p).expect("link").to_string_lossy().into_owned() }
            } else if m.is_dir() {
                walk(base, &p, t);
                Node::Dir { mode }
            } else if m.is_file() {
                Node::File { mode, data: std::fs::read(&p).expect("read") }
            } else {
                let _ = m.rdev();
                Node::Other
            };
            t.insert(rel, node);
        }
    }
    walk(root, root, &mut t);
    t
}

/// Decompresses a plain layer blob by media type.
pub fn decompress(media_type: &str, blob: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    if media_type.ends_with("gzip") {
        flate2::read::MultiGzDecoder::new(blob).read_to_end(&mut out).expect("gunzip");
    } else if media_type.ends_with("zstd") {
        zstd::stream::read::Decoder::new(blob).expect("zstd").read_to_end(&mut out).expect("unzstd");
    } else {
        out = blob.to_vec();
    }
    out
}

/// The expected rootfs of the manifest `manifest_digest` in a plain layout.
pub fn expected_from_layout(layout: &Path, manifest_digest: &str) -> Tree {
    let blob = |d: &str| {
        std::fs::read(layout.join("blobs/sha256").join(d.trim_start_matches("sha256:"))).expect("blob")
    };
    let m: serde_json::Value = serde_json::from_slice(&blob(manifest_digest)).expect("manifest");
    let mut t = Tree::new();
    for l in m["layers"].as_array().expect("layers") {
        let mt = l["mediaType"].as_str().expect("mt");
        let tar = decompress(mt, &blob(l["digest"].as_str().expect("digest")));
        apply_layer(&mut t, &tar);
    }
    t
}

/// The manifest digest tagged `tag` in a layout's index.json.
pub fn tagged(layout: &Path, tag: &str) -> String {
    let idx: serde_json::Value =
        serde_json::from_slice(&std::fs::read(layout.join("index.json")).expect("index")).expect("json");
    idx["manifests"]
        .as_array()
        .expect("manifests")
        .iter()
        .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == tag)
        .expect("tag")["digest"]
        .as_str()
        .expect("digest")
        .to_string()
}

/// Compares two trees, printing the first differences.
pub fn assert_same(expected: &Tree, actual: &Tree) {
    if expected != actual {
        for (k, v) in expected {
            match actual.get(k) {
                None => eprintln!("missing: {k} {v:?}"),
                Some(a) if a != v => eprintln!("differs: {k}: expected {v:?}, got {a:?}"),
                _ => {}
            }
        }
        for k in actual.keys() {
            if !expected.contains_key(k) {
                eprintln!("unexpected: {k}");
            }
        }
        panic!("rootfs differs from the reference tree");
    }
}
