#!/usr/bin/env bash
# ci/bench.sh cdh: cloak-cdh, called over its ttRPC socket the way kata-agent calls it
# (guest-puller/examples/cdh-bench.rs, the same generated services), against the real
# registry (Debian's docker-registry) and cloak-kbs (sample evidence), every image
# encrypted by `cloak encrypt` for a KEK held in the broker. Needs root (overlay mounts).
#
#   1. cold PullImage of the ~1 GiB, 4-layer bench image (fresh daemon, empty store) vs
#      `cloak-pull --kbs --store DIR --store-link overlay` of the same image into a fresh
#      bundle (fresh process, empty store): the same work (attest once, fetch the KEK,
#      unpack into the store, mount an overlay rootfs). Median of $BENCH_RUNS.
#      Target: within 5 %.
#   2. warm PullImage: the same image into a new bundle, every layer in the store.
#      Target: under 100 ms.
#   3. four different ~256 MiB images (seeds 11..14): one after another on a fresh daemon
#      and store, then all four at once on another fresh daemon and store ($BENCH_RUNS
#      alternating rounds, medians); the daemon's peak RSS (VmHWM), the highest of the rounds.  Target: concurrent no slower than serial, RSS <= 128 MiB.
#   4. GetResource with the daemon's KBS token cached: with its resource cache off
#      (--resource-cache-secs 0, every call fetches from the broker: a JWE to the
#      guest's key) with 1, 4 and 8 callers, and with the default 10 s cache, 8 callers.
#      Target: >= 2000/s, p50 <= 2 ms.
# Prints a markdown table, also written to $BENCH_DIR/cdh-results.md.
# Env: BENCH_DIR (<repo>/.work/bench), BENCH_SIZE_MIB (1024), BENCH_SMALL_MIB (256), BENCH_RUNS (3),
#      BENCH_RESOURCE_REQUESTS (5000), CLOAK_PEERS_DIR (<repo>/.work/peers).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
[ "$(id -u)" = 0 ] || { echo "bench-cdh: needs root (cloak-cdh mounts overlay rootfs)" >&2; exit 1; }

BENCH_DIR=${BENCH_DIR:-$REPO/.work/bench}
SIZE=${BENCH_SIZE_MIB:-1024} SMALL=${BENCH_SMALL_MIB:-256} RUNS=${BENCH_RUNS:-3}
NRES=${BENCH_RESOURCE_REQUESTS:-5000}
OUTD=$BENCH_DIR/cdh REG=$BENCH_DIR/cdh-registry
REL=$REPO/target/release
mkdir -p "$BENCH_DIR" "$OUTD"

if ! command -v docker-registry >/dev/null || ! [ -x /usr/bin/time ]; then bash "$REPO/ci/install-peers.sh"; fi

echo "bench-cdh: cargo build --release (cloak, cloak-kbs, cloak-pull, cloak-cdh, cdh-bench)" >&2
cargo build --release -q -p cloak-encryptor -p cloak-kbs-server -p cloak-guest-puller --bins >&2
cargo build --release -q -p cloak-guest-puller --example cdh-bench >&2
CLIENT=$REL/examples/cdh-bench

# Images: the 1 GiB bench image (shared with the pull and encrypt benchmarks) and four
# different small ones (other seeds, so no layer is shared).
gen() {  # DIR SIZE SEED
  local dir=$1 size=$2 seed=$3
  local stamp
  stamp="$(sha256sum "$REPO/ci/gen-bench-image.py" | cut -c1-16) size=$size compress=gzip seed=$seed"
  if [ "$(cat "$dir/.stamp" 2>/dev/null)" != "$stamp" ]; then
    echo "bench-cdh: generating the ${size} MiB image (seed $seed) in $dir (once)" >&2
    rm -rf "$dir"
    python3 "$REPO/ci/gen-bench-image.py" "$dir" bench --size-mib "$size" --compress gzip --seed "$seed"
    echo "$stamp" > "$dir/.stamp"
  fi
}
BIG=$BENCH_DIR/src-gzip-$SIZE
# The pull/encrypt benchmarks' image uses seed 1 (the default) and no seed in its stamp.
if [ ! -f "$BIG/index.json" ]; then
  python3 "$REPO/ci/gen-bench-image.py" "$BIG" bench --size-mib "$SIZE" --compress gzip
  echo "$(sha256sum "$REPO/ci/gen-bench-image.py" | cut -c1-16) size=$SIZE compress=gzip" > "$BIG/.stamp"
fi
for s in 11 12 13 14; do gen "$BENCH_DIR/src-gzip-$SMALL-seed$s" "$SMALL" "$s"; done

. "$REPO/ci/lib.sh"
RPORT=$(free_port) KPORT=$(free_port)
KBS=http://127.0.0.1:$KPORT
W=$(mktemp -d "$OUTD/run.XXXXXX")
PIDS=()
# shellcheck source=ci/registry.sh
source "$REPO/ci/registry.sh"
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  # Only these: a bare `wait` would also wait for the registry, stopped below.
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  registry_stop "$RPORT" "$REG" 2>/dev/null || true
  # Overlay rootfs mounts go first: rm -rf must not walk into a mounted rootfs.
  awk -v d="$W/" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r | xargs -r -n1 umount 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
rm -rf "$REG"; registry_start "$RPORT" "$REG"

# The broker: sample evidence allowed (benchmark only), resources on a local directory.
printf 'default_policy: {required_attestation: {sample: {allow: true}}, released_resources: ["default/*"]}\n' > "$W/policy.yaml"
"$REL/cloak-kbs" gen-admin-key --out "$W/admin.pem" --public-out "$W/admin.pub.pem"
mkdir -p "$W/res"
RUST_LOG=warn "$REL/cloak-kbs" serve --listen "127.0.0.1:$KPORT" --policy "$W/policy.yaml" \
  --resources "$W/res" --admin-public-key "$W/admin.pub.pem" 2> "$W/kbs.log" &
PIDS+=($!)
for _ in $(seq 100); do curl -sf "$KBS/healthz" >/dev/null 2>&1 && break; sleep 0.1; done
head -c 4096 /dev/urandom > "$W/resource.bin"
"$REL/cloak-kbs" put-resource --url "$KBS" --admin-key "$W/admin.pem" default/bench/res "$W/resource.bin"

encrypt() {  # SRC_LAYOUT REPO KEK
  "$REL/cloak" encrypt --quiet --recipient "kbs:///default/image-kek/$3" --kbs-url "$KBS" \
    --kbs-admin-key "$W/admin.pem" --dest-tls-verify=false "oci:$1:bench" "docker://127.0.0.1:$RPORT/$2:enc" >&2
}
echo "bench-cdh: encrypting the images into the registry (KEKs registered in cloak-kbs)" >&2
encrypt "$BIG" big big
SMALL_IMGS=()
for s in 11 12 13 14; do
  encrypt "$BENCH_DIR/src-gzip-$SMALL-seed$s" "small$s" "small$s"
  SMALL_IMGS+=("127.0.0.1:$RPORT/small$s:enc")
done
BIG_IMG=127.0.0.1:$RPORT/big:enc

CDH_PID=
# start_cdh NAME [EXTRA...]: a fresh daemon with an empty store under $W/NAME.
start_cdh() {
  local name=$1; shift
  local d=$W/$name
  mkdir -p "$d/bundles"
  RUST_LOG=warn "$REL/cloak-cdh" --socket "unix://$d/cdh.sock" --kbs "$KBS" --attester sample \
    --store "$d/store" --bundle-root "$d/bundles" --insecure-registry "127.0.0.1:$RPORT" "$@" \
    > /dev/null 2> "$d/cdh.log" &
  CDH_PID=$!
  PIDS+=("$CDH_PID")
  for _ in $(seq 300); do [ -S "$d/cdh.sock" ] && return 0; sleep 0.02; done
  echo "bench-cdh: no socket after 6 s" >&2; cat "$d/cdh.log" >&2; return 1
}
stop_cdh() {
  kill "$CDH_PID" 2>/dev/null || true
  wait "$CDH_PID" 2>/dev/null || true
}
hwm_mib() { awk '/VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; }
field() { tr ' ' '\n' | sed -n "s/^$1=//p" | head -1; }

LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
: > "$OUTD/pulls.tsv"
for i in $(seq "$RUNS"); do
  # cloak-pull, cold: a fresh process attests, fetches the KEK and pulls into a fresh bundle.
  sync
  t0=$(date +%s%N)
  "$REL/cloak-pull" --quiet --src-tls-verify=false --kbs "$KBS" --attester sample \
    --store "$W/pull-store-$i" --store-link overlay "docker://$BIG_IMG" "$W/pull-bundle-$i" 2> "$W/pull-$i.log" \
    || { cat "$W/pull-$i.log" >&2; exit 1; }
  t1=$(date +%s%N)
  printf 'cloak-pull\t%s\n' "$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.4f", (b - a) / 1e9}')" >> "$OUTD/pulls.tsv"

  # cloak-cdh, cold: a fresh daemon (its first call attests), empty store.
  start_cdh "cdh-$i"
  sync
  out=$("$CLIENT" pull --socket "unix://$W/cdh-$i/cdh.sock" "$BIG_IMG=$W/cdh-$i/bundles/cold")
  printf 'cdh-cold\t%s\n' "$(echo "$out" | grep '^pull ' | field seconds)" >> "$OUTD/pulls.tsv"
  awk -v m="$W/cdh-$i/bundles/cold/rootfs" '$2 == m {f = 1} END {exit !f}' /proc/mounts \
    || { echo "bench-cdh: PullImage left no rootfs mount" >&2; exit 1; }
  # Warm: the same image into a new bundle, every layer in the store.
  out=$("$CLIENT" pull --socket "unix://$W/cdh-$i/cdh.sock" "$BIG_IMG=$W/cdh-$i/bundles/warm")
  printf 'cdh-warm\t%s\n' "$(echo "$out" | grep '^pull ' | field seconds)" >> "$OUTD/pulls.tsv"
  CDH_RSS_BIG=$(hwm_mib "$CDH_PID")
  stop_cdh
  echo "bench-cdh: run $i: $(tail -3 "$OUTD/pulls.tsv" | tr '\t\n' '= ')" >&2
done

# Four different images, serial then concurrent, each on a fresh daemon and store.
pairs() { local d=$1 k=0 img; for img in "${SMALL_IMGS[@]}"; do k=$((k + 1)); printf '%s=%s ' "$img" "$W/$d/bundles/b$k"; done; }
# Alternating rounds (serial, then concurrent), medians: the order cancels drift.
: > "$OUTD/four.tsv"
for i in $(seq "$RUNS"); do
  start_cdh "serial-$i"
  # shellcheck disable=SC2046
  t=$("$CLIENT" pull --socket "unix://$W/serial-$i/cdh.sock" $(pairs "serial-$i") | sed -n 's/^total seconds=//p')
  printf 'serial\t%s\t%s\n' "$t" "$(hwm_mib "$CDH_PID")" >> "$OUTD/four.tsv"
  stop_cdh
  start_cdh "concurrent-$i"
  # shellcheck disable=SC2046
  t=$("$CLIENT" pull --concurrent --socket "unix://$W/concurrent-$i/cdh.sock" $(pairs "concurrent-$i") | sed -n 's/^total seconds=//p')
  printf 'concurrent\t%s\t%s\n' "$t" "$(hwm_mib "$CDH_PID")" >> "$OUTD/four.tsv"
  stop_cdh
done
SERIAL=$(awk -F'\t' '$1 == "serial" {print $2}' "$OUTD/four.tsv" | median)
CONC=$(awk -F'\t' '$1 == "concurrent" {print $2}' "$OUTD/four.tsv" | median)
RSS_SERIAL=$(awk -F'\t' '$1 == "serial" && $3 > m {m = $3} END {print m}' "$OUTD/four.tsv")
RSS_CONC=$(awk -F'\t' '$1 == "concurrent" && $3 > m {m = $3} END {print m}' "$OUTD/four.tsv")
echo "bench-cdh: 4 x ${SMALL} MiB: serial $SERIAL s (RSS $RSS_SERIAL MiB), concurrent $CONC s (RSS $RSS_CONC MiB)" >&2

# GetResource: token cached in the daemon, resource cache off.
RES_ROWS=()
start_cdh resource --resource-cache-secs 0
for c in 1 4 8; do
  r=$("$CLIENT" resource --socket "unix://$W/resource/cdh.sock" --path kbs:///default/bench/res --requests "$NRES" --concurrency "$c")
  echo "bench-cdh: no resource cache: $r" >&2
  RES_ROWS+=("no resource cache|$r")
done
stop_cdh
start_cdh resource-cached
r=$("$CLIENT" resource --socket "unix://$W/resource-cached/cdh.sock" --path kbs:///default/bench/res --requests "$((NRES * 4))" --concurrency 8)
echo "bench-cdh: default 10 s resource cache: $r" >&2
RES_ROWS+=("default 10 s resource cache|$r")
stop_cdh

PULL_MED=$(awk -F'\t' '$1 == "cloak-pull" {print $2}' "$OUTD/pulls.tsv" | median)
COLD_MED=$(awk -F'\t' '$1 == "cdh-cold" {print $2}' "$OUTD/pulls.tsv" | median)
WARM_MED=$(awk -F'\t' '$1 == "cdh-warm" {print $2}' "$OUTD/pulls.tsv" | median)
verdict() { if awk "BEGIN {exit !($1)}"; then echo met; else echo "NOT met"; fi; }
cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')
shani=$(grep -qw sha_ni /proc/cpuinfo && echo "SHA-NI" || echo "no SHA-NI")
{
  echo "### cloak-cdh over ttRPC ($(date -u +%F); ${SIZE} MiB 4-layer gzip image; 4 x ${SMALL} MiB images)"
  echo
  echo "Machine: $(nproc) cores ($cpu, $shani), load average at the start $LOAD0; registry and cloak-kbs on 127.0.0.1; median of $RUNS."
  echo
  echo "| measure | figure | target | verdict |"
  echo "|---|---:|---|---|"
  echo "| cloak-pull --kbs --store-link overlay, cold, 1 GiB | ${PULL_MED} s | (baseline) | |"
  echo "| PullImage, cold, 1 GiB | ${COLD_MED} s ($(awk -v a="$COLD_MED" -v b="$PULL_MED" 'BEGIN {printf "%+.1f %%", (a / b - 1) * 100}')) | within 5 % of cloak-pull | $(verdict "$COLD_MED <= $PULL_MED * 1.05") |"
  echo "| PullImage, warm (layers in the store) | $(awk -v a="$WARM_MED" 'BEGIN {printf "%.1f", a * 1000}') ms | < 100 ms | $(verdict "$WARM_MED < 0.1") |"
  echo "| daemon peak RSS, 1 GiB cold + warm | ${CDH_RSS_BIG} MiB | | |"
  echo "| 4 different images, one after another | ${SERIAL} s, peak RSS ${RSS_SERIAL} MiB | | |"
  echo "| 4 different images, at once | ${CONC} s, peak RSS ${RSS_CONC} MiB | <= serial, RSS <= 128 MiB | $(verdict "$CONC <= $SERIAL && $RSS_CONC <= 128") |"
  for row in "${RES_ROWS[@]}"; do
    what=${row%%|*} r=${row#*|}
    c=$(echo "$r" | field concurrency) ps=$(echo "$r" | field per_second) p50=$(echo "$r" | field p50_ms) p99=$(echo "$r" | field p99_ms)
    echo "| GetResource, token cached, $what, $c caller(s) | ${ps}/s, p50 ${p50} ms, p99 ${p99} ms | >= 2000/s, p50 <= 2 ms | $(verdict "$ps >= 2000 && $p50 <= 2") |"
  done
} | tee "$BENCH_DIR/cdh-results.md"
