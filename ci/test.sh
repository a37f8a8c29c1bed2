#!/usr/bin/env bash
# The README's test command. Installs the real peers the tests run against
# (Debian's docker-registry, skopeo 1.9.3, skopeo 1.18 from trixie), checks
# formatting and clippy (warnings are errors), builds every binary, runs the
# workspace and end-to-end tests, the deployment-kit tests (the fuzz regression
# replay among them), and runs every fuzz target briefly. Exits non-zero on any failure.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export CLOAK_PEERS_DIR="${CLOAK_PEERS_DIR:-$ROOT/.work/peers}"
export CLOAK_REQUIRE_PEERS=1
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

step() { printf '\n==> %s\n' "$*"; }
started=$(date +%s)

step "installing peers (docker-registry, skopeo 1.9.3, skopeo 1.18)"
ci/install-peers.sh
# The independent Python peers (KBS client, AnnotationPacket) need these.
python3 -c 'import cryptography, requests' 2>/dev/null || python3 -m pip install -q cryptography requests

step "lints: rustfmt (rustfmt.toml) and clippy with warnings as errors"
cargo fmt --all --check
cargo clippy --workspace --all-targets --locked -- -D warnings

step "building all binaries (the end-to-end tests drive them)"
cargo build --workspace --bins --locked

step "workspace tests (unit, integration, end-to-end against the real peers)"
if cargo nextest --version >/dev/null 2>&1; then
    cargo nextest run --workspace --locked --no-fail-fast --failure-output final
else
    cargo test --workspace --locked --no-fail-fast
fi

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
ci/fuzz.sh "${CLOAK_FUZZ_SECONDS:-4}"

step "all tests passed in $(( $(date +%s) - started )) s"
