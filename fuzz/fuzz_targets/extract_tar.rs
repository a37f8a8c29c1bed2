//! Fuzzes the safe tar extractor with arbitrary bytes, in both whiteout modes,
//! into a fresh root inside a sandbox directory. Beyond "no panic", it checks
//! that nothing was created next to the root (the escape property).
#![no_main]

use guest_puller::extract::{extract, ExtractOptions, Limits, WhiteoutMode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(tmp) = tempfile::tempdir() else { return };
    let root = tmp.path().join("root");
    if std::fs::create_dir(&root).is_err() {
        return;
    }
    let limits = Limits { max_total_size: 16 << 20, max_entries: 10_000, ..Limits::default() };
    for mode in [WhiteoutMode::Apply, WhiteoutMode::Keep] {
        let opts = ExtractOptions { whiteouts: mode, limits, ..ExtractOptions::default() };
        let _ = extract(data, &root, &opts);
        let names: Vec<_> = std::fs::read_dir(tmp.path())
            .map(|r| r.flatten().map(|e| e.file_name()).collect())
            .unwrap_or_default();
        assert_eq!(names, vec![std::ffi::OsString::from("root")], "an entry escaped the root");
    }
});
