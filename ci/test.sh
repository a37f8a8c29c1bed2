#!/usr/bin/env bash
# The README's test command. Installs the real peers the tests run against
# (Debian's docker-registry, skopeo 1.9.3, skopeo 1.18 from trixie, qemu and a
# guest kernel), checks formatting and clippy (warnings are errors), builds every
# binary, runs the workspace and end-to-end tests, cloak-cdh's SecureMount inside a
# qemu guest, the deployment-kit tests (the fuzz regression
# replay among them), and runs every fuzz target briefly. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export CLOAK_PEERS_DIR="${CLOAK_PEERS_DIR:-$ROOT/.work/peers}"
export CLOAK_REQUIRE_PEERS=1
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"
# A from-scratch build of the workspace with full debug info and incremental
# caches takes ~25 GB; CI needs neither. Line tables keep backtraces readable.
export CARGO_INCREMENTAL="${CARGO_INCREMENTAL:-0}"
export CARGO_PROFILE_DEV_DEBUG="${CARGO_PROFILE_DEV_DEBUG:-line-tables-only}"

# Free space where cargo writes, in GiB.
free_gib() { df -Pk "${CARGO_TARGET_DIR:-$ROOT/target}" 2>/dev/null | awk 'NR==2 {print int($4 / 1048576)}' || df -Pk "$ROOT" | awk 'NR==2 {print int($4 / 1048576)}'; }

step() { printf '\n==> %s\n' "$*"; }
started=$(date +%s)

step "installing peers (docker-registry, skopeo 1.9.3, skopeo 1.18, qemu and the guest kernel)"
ci/install-peers.sh
# The independent Python peers (KBS client, AnnotationPacket) need these.
python3 -c 'import cryptography, requests' 2>/dev/null || python3 -m pip install -q cryptography requests

mkdir -p "${CARGO_TARGET_DIR:-$ROOT/target}"
echo "free disk for the build: $(free_gib) GiB"
step "lints: rustfmt (rustfmt.toml) and clippy with warnings as errors"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings

step "building all binaries (the end-to-end tests drive them)"
cargo build --workspace --bins --locked

step "workspace tests (unit, integration, end-to-end against the real peers)"
# A failing test's message (with its file:line) is what says why; a backtrace after it
# would push it out of the tail that a CI summary shows. RUST_BACKTRACE=1 to get them.
export RUST_BACKTRACE="${CLOAK_TEST_BACKTRACE:-0}"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast --failure-output final
else
    cargo test --workspace --locked --no-fail-fast
fi

step "SecureMount in a Linux guest (qemu; dm-crypt and dm-integrity, which this kernel lacks)"
# Two boots of Debian's cloud kernel with cloak-cdh as the guest's CDH and raw virtio
# disks checked from the host too (ci/vm-securemount.sh; ~2 minutes under TCG).
cargo build --locked -p cloak-guest-puller --example securemount-client
ci/vm-securemount.sh

step "hashing and cipher again on the fallback SHA-256 backend (what CPUs without SHA-NI or AVX-512 run)"
CLOAK_SHA256_BACKEND=portable cargo test --locked -q -p cloak-sha256x -p cloak-ocicrypt --lib

if [ -x deploy/tests/run.sh ]; then
    step "deployment kit: admission-policy CEL and Kubernetes schema tests"
    deploy/tests/run.sh
fi

# (The fuzz regression replay, fuzz/lib/tests/replay.rs, ran with the workspace tests.)
step "fuzzing: every target coverage-guided for ${CLOAK_FUZZ_SECONDS:-4} s from the seed corpora"
# Every target `cargo fuzz list` knows (installs cargo-fuzz when missing). A long
# campaign: `nice -n 15 ci/fuzz.sh 600` (README, "Reliability: fuzzing").
# The instrumented build needs ~4 GB of its own (fuzz/target; ~7 GB optimised). A linker that
# runs out of disk dies with SIGBUS, which says nothing about disk: check first,
# and when space is short drop the debug build, which the steps above are done with.
if [ "$(free_gib)" -lt 12 ] && [ -d "${CARGO_TARGET_DIR:-$ROOT/target}/debug" ]; then
    echo "only $(free_gib) GiB free: removing the debug build (target/debug) before the fuzz build"
    rm -rf "${CARGO_TARGET_DIR:-$ROOT/target}/debug"
fi
echo "free disk for the fuzz build: $(free_gib) GiB"
[ "$(free_gib)" -ge 8 ] || echo "warning: the fuzz build needs ~8 GiB free and $(free_gib) GiB are left; a linker that dies with SIGBUS (signal 7) below means the disk filled up" >&2
# Unoptimised targets (the dev profile, overflow checks and debug assertions on, as
# in a release fuzz build): they build in ~4 minutes where an optimised build takes
# ~10, and a run of seconds needs coverage feedback more than speed. A campaign
# (ci/fuzz.sh alone) builds them optimised.
FUZZ_PROFILE="${FUZZ_PROFILE:-dev}" ci/fuzz.sh "${CLOAK_FUZZ_SECONDS:-4}"

step "all tests passed in $(( $(date +%s) - started )) s"
