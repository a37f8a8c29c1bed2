//! Replays, without the fuzzer, every input the fuzzer once crashed on
//! (`regressions/TARGET/*`) and every committed seed (`seeds/TARGET/*`) through
//! the same body the fuzz target runs, under the ordinary workspace
//! `cargo test` / `cargo nextest run` (no fuzzer, no nightly). A panic in a body
//! is a regression.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

fn dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(name)
}

/// (target, file) for every file under `top/TARGET/`, sorted.
fn inputs(top: &str) -> Vec<(String, PathBuf)> {
    let mut out = Vec::new();
    let Ok(targets) = std::fs::read_dir(dir(top)) else { return out };
    for t in targets.flatten().filter(|t| t.path().is_dir()) {
        let name = t.file_name().to_string_lossy().into_owned();
        for f in std::fs::read_dir(t.path()).expect("read target dir").flatten() {
            if f.path().is_file() && f.file_name() != "README.md" {
                out.push((name.clone(), f.path()));
            }
        }
    }
    out.sort();
    out
}

/// Runs each input through its target's body; returns the failures.
fn replay(top: &str) -> (usize, Vec<String>) {
    let mut failures = Vec::new();
    let all = inputs(top);
    for (target, path) in &all {
        let Some(body) = cloak_fuzz_lib::entry(target) else {
            failures.push(format!(
                "{top}/{target}/ has inputs but no body in cloak_fuzz_lib::ENTRIES (fuzz/lib/src/lib.rs): \
                 move the target's body into fuzz/lib/src/targets.rs so it can be replayed"
            ));
            continue;
        };
        let data = std::fs::read(path).expect("read input");
        if catch_unwind(AssertUnwindSafe(|| body(&data))).is_err() {
            failures.push(format!("{} panicked on {}", target, path.display()));
        }
    }
    (all.len(), failures)
}

#[test]
fn regressions_stay_fixed() {
    let (n, failures) = replay("regressions");
    assert!(
        failures.is_empty(),
        "{} of {n} regression inputs fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn committed_seeds_pass() {
    let (n, failures) = replay("seeds");
    assert!(n > 0, "no committed seeds found under fuzz/seeds/");
    assert!(failures.is_empty(), "{} of {n} seeds fail:\n{}", failures.len(), failures.join("\n"));
}

/// The replay table and the fuzz targets name the same things: every body is a
/// target, and its target file calls that body.
#[test]
fn every_body_is_a_target() {
    for (name, _) in cloak_fuzz_lib::ENTRIES {
        let src = std::fs::read_to_string(dir("fuzz_targets").join(format!("{name}.rs")))
            .unwrap_or_else(|e| panic!("fuzz_targets/{name}.rs: {e}"));
        assert!(
            src.contains(&format!("cloak_fuzz_lib::targets::{name}(")),
            "fuzz_targets/{name}.rs does not call cloak_fuzz_lib::targets::{name}"
        );
    }
}

/// Every cargo-fuzz target has its body here, so that its seeds and regressions
/// are replayed by the tests above.
#[test]
fn every_fuzz_target_has_a_library_body() {
    let mut missing = Vec::new();
    for f in std::fs::read_dir(dir("fuzz_targets")).expect("fuzz/fuzz_targets").flatten() {
        let name = f.file_name().to_string_lossy().into_owned();
        if let Some(target) = name.strip_suffix(".rs") {
            if cloak_fuzz_lib::entry(target).is_none() {
                missing.push(target.to_owned());
            }
        }
    }
    assert!(missing.is_empty(), "fuzz targets without a body in cloak_fuzz_lib::ENTRIES: {missing:?}");
}
