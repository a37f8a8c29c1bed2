#!/usr/bin/env bash
# Coverage-guided fuzzing of every cargo-fuzz target in fuzz/, one after another.
#
#   ci/fuzz.sh [SECONDS_PER_TARGET] [TARGET ...]      (default: 60 s, every target)
#
# Installs cargo-fuzz when it is missing, builds every target (stable toolchain,
# RUSTC_BOOTSTRAP=1, no sanitizer), builds each target's starting corpus from
# real artifacts (fuzz/make_corpus.py: fuzz/seeds/TARGET/ plus inputs derived
# from testdata/), runs each target for SECONDS with an RSS, input-size and
# per-input time limit, and prints a summary table (target, executions,
# coverage, crashes). Past crashers in fuzz/regressions/TARGET/ are given to
# the fuzzer as a second corpus. Exits non-zero when any target crashed, leaked,
# timed out or ran out of memory; the input is left in fuzz/artifacts/TARGET/.
#
# Targets are discovered with `cargo fuzz list`: a new [[bin]] in
# fuzz/Cargo.toml is fuzzed with no change here. One job at a time; on a shared
# machine run it niced: `nice -n 15 ci/fuzz.sh 600` (a long campaign).
#
# Environment: FUZZ_RSS_MB (default 2048), FUZZ_MAX_LEN (65536 bytes),
# FUZZ_INPUT_TIMEOUT (10 s per input), FUZZ_CORPUS (fuzz/corpus),
# FUZZ_SUMMARY (also write the table there, markdown), FUZZ_BUILD_ARGS (extra
# `cargo fuzz build` arguments, e.g. "--codegen-units 16" for a quicker build),
# FUZZ_PROFILE (release, the default, for campaigns; dev builds the targets
# unoptimised, in 40 % of the time, for a smoke run of seconds: ci/test.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SECONDS_PER_TARGET="${1:-60}"
shift || true
RSS_MB="${FUZZ_RSS_MB:-2048}"
MAX_LEN="${FUZZ_MAX_LEN:-65536}"
INPUT_TIMEOUT="${FUZZ_INPUT_TIMEOUT:-10}"
CORPUS="${FUZZ_CORPUS:-$ROOT/fuzz/corpus}"
export RUSTC_BOOTSTRAP=1
export CARGO_TERM_COLOR="${CARGO_TERM_COLOR:-never}"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "==> installing cargo-fuzz"
    cargo install cargo-fuzz --version 0.13.2 --locked
fi

cd fuzz
mapfile -t ALL < <(cargo fuzz list)
if [ "$#" -gt 0 ]; then TARGETS=("$@"); else TARGETS=("${ALL[@]}"); fi
for t in "${TARGETS[@]}"; do
    printf '%s\n' "${ALL[@]}" | grep -qx -- "$t" || { echo "no fuzz target named $t" >&2; exit 2; }
done

PROFILE="${FUZZ_PROFILE:-release}"
case "$PROFILE" in
    release) PROFILE_ARGS=() PROFILE_DIR=release ;;
    dev) PROFILE_ARGS=(--dev) PROFILE_DIR=debug ;;
    *) echo "FUZZ_PROFILE must be release or dev, not $PROFILE" >&2; exit 2 ;;
esac
echo "==> building ${#TARGETS[@]} fuzz targets ($PROFILE profile)"
build_started=$(date +%s)
# shellcheck disable=SC2086
cargo fuzz build -s none "${PROFILE_ARGS[@]}" ${FUZZ_BUILD_ARGS:-}
echo "built in $(( $(date +%s) - build_started )) s"
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
BIN_DIR="$ROOT/fuzz/target/$TRIPLE/$PROFILE_DIR"

echo "==> starting corpora (fuzz/make_corpus.py)"
python3 "$ROOT/fuzz/make_corpus.py" "$CORPUS" "${TARGETS[@]}"

LOGS="$ROOT/fuzz/artifacts/logs"
mkdir -p "$LOGS"
rows=()
failed=()
for t in "${TARGETS[@]}"; do
    echo "==> fuzzing $t for $SECONDS_PER_TARGET s"
    art="$ROOT/fuzz/artifacts/$t"
    mkdir -p "$art"
    before=$(find "$art" -maxdepth 1 -type f | wc -l)
    dirs=("$CORPUS/$t")
    [ -d "$ROOT/fuzz/regressions/$t" ] && dirs+=("$ROOT/fuzz/regressions/$t")
    log="$LOGS/$t.log"
    set +e
    "$BIN_DIR/$t" "${dirs[@]}" \
        -max_total_time="$SECONDS_PER_TARGET" -rss_limit_mb="$RSS_MB" -malloc_limit_mb="$RSS_MB" \
        -max_len="$MAX_LEN" -timeout="$INPUT_TIMEOUT" -print_final_stats=1 \
        -artifact_prefix="$art/" >"$log" 2>&1
    rc=$?
    set -e
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -1)
    cov=$(grep -oE ' cov: [0-9]+' "$log" | tail -1 | grep -oE '[0-9]+' || true)
    ft=$(grep -oE ' ft: [0-9]+' "$log" | tail -1 | grep -oE '[0-9]+' || true)
    corp=$(grep -oE ' corp: [0-9]+' "$log" | tail -1 | grep -oE '[0-9]+' || true)
    found=$(( $(find "$art" -maxdepth 1 -type f | wc -l) - before ))
    result=ok
    if [ "$rc" -ne 0 ] || [ "$found" -gt 0 ]; then
        result="FAILED (exit $rc)"
        failed+=("$t")
        grep -E '^(==[0-9]+== ?ERROR|thread .* panicked|SUMMARY|artifact_prefix|Test unit written)' "$log" | head -5 >&2 || true
    fi
    rows+=("| $t | ${execs:-?} | ${cov:-?} | ${ft:-?} | ${corp:-?} | ${rss:-?} | $found | $result |")
done

table=$(
    echo "| target | executions | coverage (cov) | features (ft) | corpus | peak RSS MB | crashes | result |"
    echo "|---|---:|---:|---:|---:|---:|---:|---|"
    printf '%s\n' "${rows[@]}"
)
echo
echo "fuzzing summary: $SECONDS_PER_TARGET s per target, -rss_limit_mb=$RSS_MB -max_len=$MAX_LEN -timeout=$INPUT_TIMEOUT"
echo "$table"
[ -n "${FUZZ_SUMMARY:-}" ] && printf '%s s per target on %s\n\n%s\n' "$SECONDS_PER_TARGET" "$(date -u +%FT%TZ)" "$table" >"$FUZZ_SUMMARY"
if [ "${#failed[@]}" -gt 0 ]; then
    echo "crashes in: ${failed[*]} (inputs in fuzz/artifacts/TARGET/, logs in fuzz/artifacts/logs/);" >&2
    echo "fix the parser, then keep each input in fuzz/regressions/TARGET/ (fuzz/lib/tests/replay.rs replays it)" >&2
    exit 1
fi
