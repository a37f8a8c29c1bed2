#!/usr/bin/env bash
# ci/bench.sh pull: the ~1 GiB, 4-layer encrypted image from a local registry to a rootfs.
#   cloak-pull --key                       (cold: fresh bundle, private store)
#   skopeo copy --decryption-key + tar -x  (the baseline: decrypt into a layout, then untar each layer)
#   cloak-pull --store, warm               (every layer already in the store: hardlink, copy, and
#                                           overlay when running as root with overlayfs)
# Median of $BENCH_RUNS (default 3) wall times; peak RSS from /usr/bin/time -v.
# Every timed run writes into a directory of its own and nothing is deleted until all runs
# are done: on a journal-less ext4 (this VM's root) the inode allocator skips inodes freed
# in the last minute or so, scanning past each one, so creating tens of thousands of files
# right after an `rm -rf` of as many costs several extra seconds of system time, and which
# tool ran right after a delete would decide the result. Needs ~4 GB of disk per run.
# Prints a markdown table, also written to $BENCH_DIR/pull-results.md.
# Env: BENCH_DIR (<repo>/.work/bench), BENCH_SIZE_MIB (1024), BENCH_RUNS (3), BENCH_COMPRESS
#      (gzip|zstd), BENCH_PORT, BENCH_LAYERS_PAR (cloak-pull --max-concurrent-layers, default 4),
#      CLOAK_PEERS_DIR (<repo>/.work/peers).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
# shellcheck source=ci/lib.sh
. "$REPO/ci/lib.sh"

BENCH_DIR=${BENCH_DIR:-$REPO/.work/bench}
SIZE=${BENCH_SIZE_MIB:-1024} RUNS=${BENCH_RUNS:-3} COMP=${BENCH_COMPRESS:-gzip}
PAR=${BENCH_LAYERS_PAR:-4}
S118=${CLOAK_PEERS_DIR:-$REPO/.work/peers}/bin/skopeo-1.18
TAG=bench
SRC=$BENCH_DIR/src-$COMP-$SIZE KEYS=$BENCH_DIR/keys OUTD=$BENCH_DIR/pull REG=$BENCH_DIR/pull-registry
PULL=$REPO/target/release/cloak-pull
mkdir -p "$BENCH_DIR" "$KEYS" "$OUTD"

if ! command -v skopeo >/dev/null || ! command -v docker-registry >/dev/null || ! [ -x /usr/bin/time ]; then
  bash "$REPO/ci/install-peers.sh"
fi
SKOPEO=$S118; [ -x "$SKOPEO" ] || SKOPEO=$(command -v skopeo)

echo "bench-pull: cargo build --release -p cloak-guest-puller" >&2
cargo build --release -q -p cloak-guest-puller >&2

# Same cached source image and key as the encrypt benchmark.
stamp="$(sha256sum "$REPO/ci/gen-bench-image.py" | cut -c1-16) size=$SIZE compress=$COMP"
if [ "$(cat "$SRC/.stamp" 2>/dev/null)" != "$stamp" ]; then
  echo "bench-pull: generating the ${SIZE} MiB bench image in $SRC (once)" >&2
  rm -rf "$SRC"
  python3 "$REPO/ci/gen-bench-image.py" "$SRC" "$TAG" --size-mib "$SIZE" --compress "$COMP"
  echo "$stamp" > "$SRC/.stamp"
fi
if [ ! -f "$KEYS/pub.pem" ]; then
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$KEYS/priv.pem" 2>/dev/null
  openssl pkey -in "$KEYS/priv.pem" -pubout -out "$KEYS/pub.pem"
fi

PORT=${BENCH_PORT:-$(free_port)}
# shellcheck source=ci/registry.sh
source "$REPO/ci/registry.sh"
# shellcheck disable=SC2064
trap "registry_stop '$PORT' '$REG' 2>/dev/null || true" EXIT
rm -rf "$REG"; registry_start "$PORT" "$REG"
IMG=docker://127.0.0.1:$PORT/bench:enc
echo "bench-pull: encrypting the bench image into $IMG" >&2
"$SKOPEO" copy -q --dest-tls-verify=false --encryption-key "jwe:$KEYS/pub.pem" "oci:$SRC:$TAG" "$IMG" >&2

LOAD0=$(cut -d' ' -f1-3 /proc/loadavg)
RES=$OUTD/pull-runs.tsv
: > "$RES"
# Outputs of earlier benchmarks are moved aside, deleted only when this one ends.
RUND=$OUTD/runs
[ -e "$RUND" ] && mv "$RUND" "$OUTD/old-runs.$$"
for old in "$OUTD"/bundle "$OUTD"/dec "$OUTD"/base-rootfs "$OUTD"/store "$OUTD"/warm; do
  [ -e "$old" ] && mkdir -p "$OUTD/old-runs.$$" && mv "$old" "$OUTD/old-runs.$$/"
done
mkdir -p "$RUND"
cleanup() {
  registry_stop "$PORT" "$REG" 2>/dev/null || true
  # Overlay rootfs mounts go first: rm -rf must not walk into a mounted rootfs.
  awk -v d="$OUTD/" 'index($2, d) == 1 {print $2}' /proc/mounts | sort -r | xargs -r -n1 umount 2>/dev/null || true
  rm -rf "$RUND" "$OUTD"/old-runs.*
}
trap cleanup EXIT

# timed LABEL I CMD... : wall and peak RSS of one command.
timed() {
  local label=$1 i=$2; shift 2
  local tv=$OUTD/time.txt t0 t1 wall rss
  sync
  t0=$(date +%s%N)
  if ! /usr/bin/time -v -o "$tv" "$@" > "$OUTD/$label-$i.log" 2>&1; then
    echo "bench-pull: FAILED: $*" >&2; tail -5 "$OUTD/$label-$i.log" >&2; return 1
  fi
  t1=$(date +%s%N)
  wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", (b-a)/1e9}')
  rss=$(awk -F': ' '/Maximum resident set size/{print $2}' "$tv")
  LAST_CPU=$(awk -F': ' '/User time|System time/{s += $2} END{printf "%.3f", s}' "$tv")
  LAST_WALL=$wall LAST_RSS=$rss
}

# record LABEL I WALL RSS CPU (CPU = user+sys seconds: steadier than wall on a busy machine)
record() { printf '%s\t%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" "$5" >> "$RES"; echo "bench-pull: $1 run $2: $3 s, user+sys $5 s, max RSS $(($4 / 1024)) MiB" >&2; }

untar_flag=-xzf; [ "$COMP" = zstd ] && untar_flag="--zstd -xf"
for i in $(seq "$RUNS"); do
  # cloak-pull, cold.
  timed cloak-pull "$i" "$PULL" --quiet --src-tls-verify=false --max-concurrent-layers "$PAR" --key "$KEYS/priv.pem" "$IMG" "$RUND/bundle-$i"
  [ -d "$RUND/bundle-$i/rootfs" ] || { echo "bench-pull: no rootfs" >&2; exit 1; }
  record cloak-pull "$i" "$LAST_WALL" "$LAST_RSS" "$LAST_CPU"

  # Baseline: skopeo decrypts into a layout, then tar extracts each layer in order.
  dec=$RUND/dec-$i base=$RUND/base-rootfs-$i
  mkdir -p "$base"
  timed skopeo-decrypt "$i" "$SKOPEO" copy -q --src-tls-verify=false --decryption-key "$KEYS/priv.pem" "$IMG" "oci:$dec:$TAG"
  w1=$LAST_WALL r1=$LAST_RSS c1=$LAST_CPU
  man=$(jq -r '.manifests[0].digest' "$dec/index.json" | sed 's/sha256://')
  layers=$(jq -r '.layers[].digest' "$dec/blobs/sha256/$man" | sed 's/sha256://' | tr '\n' ' ')
  # shellcheck disable=SC2086
  timed tar-extract "$i" bash -c "for l in $layers; do tar $untar_flag $dec/blobs/sha256/\$l -C $base || exit 1; done"
  w2=$LAST_WALL r2=$LAST_RSS c2=$LAST_CPU
  record "skopeo+tar" "$i" "$(awk -v a="$w1" -v b="$w2" 'BEGIN{printf "%.3f", a+b}')" "$(( r1 > r2 ? r1 : r2 ))" \
    "$(awk -v a="$c1" -v b="$c2" 'BEGIN{printf "%.3f", a+b}')"
  # A handful of blob inodes: deleting them costs the next runs nothing measurable.
  rm -rf "$dec"
done

# Warm store: prime once, then time re-pulls into fresh bundles.
"$PULL" --quiet --src-tls-verify=false --key "$KEYS/priv.pem" --store "$RUND/store" "$IMG" "$RUND/warm-prime" >&2
for i in $(seq "$RUNS"); do
  timed cloak-pull-warm "$i" "$PULL" --quiet --src-tls-verify=false --key "$KEYS/priv.pem" --store "$RUND/store" --store-link hardlink "$IMG" "$RUND/warm-link-$i"
  record "cloak-pull (warm store, hardlink)" "$i" "$LAST_WALL" "$LAST_RSS" "$LAST_CPU"
  timed cloak-pull-warm-copy "$i" "$PULL" --quiet --src-tls-verify=false --key "$KEYS/priv.pem" --store "$RUND/store" "$IMG" "$RUND/warm-copy-$i"
  record "cloak-pull (warm store, copy)" "$i" "$LAST_WALL" "$LAST_RSS" "$LAST_CPU"
  if [ "$(id -u)" = 0 ] && grep -qw overlay /proc/filesystems; then
    # The first overlay pull also builds each entry's overlay view (once per store entry).
    timed cloak-pull-warm-overlay "$i" "$PULL" --quiet --src-tls-verify=false --key "$KEYS/priv.pem" --store "$RUND/store" --store-link overlay "$IMG" "$RUND/warm-ovl-$i"
    record "cloak-pull (warm store, overlay)" "$i" "$LAST_WALL" "$LAST_RSS" "$LAST_CPU"
    umount "$RUND/warm-ovl-$i/rootfs"
  fi
done

comp_mb=$(du -cb "$SRC"/blobs/sha256/* | tail -1 | awk '{printf "%.0f", $1/1e6}')
{
  echo "### cloak-pull vs skopeo copy --decryption-key + tar ($(date -u +%F), ${SIZE} MiB image, 4 $COMP layers, ~${comp_mb} MB blobs)"
  echo
  echo "Machine: $(nproc) cores, $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM, load average at the start $LOAD0; registry on 127.0.0.1; baseline skopeo: $("$SKOPEO" --version | awk '{print $3}')."
  echo
  awk -F'\t' '
    function median(k,   i, j, t, a, c) {
      c = n[k]; for (i = 1; i <= c; i++) a[i] = w[k, i]
      for (i = 1; i <= c; i++) for (j = i + 1; j <= c; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
      return a[int((c + 1) / 2)]
    }
    function median_cpu(k,   i, j, t, a, c) {
      c = n[k]; for (i = 1; i <= c; i++) a[i] = u[k, i]
      for (i = 1; i <= c; i++) for (j = i + 1; j <= c; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
      return a[int((c + 1) / 2)]
    }
    { k = $1; if (!(k in n)) order[++m] = k; n[k]++; w[k, n[k]] = $3; u[k, n[k]] = $5; if ($4 > r[k]) r[k] = $4 }
    END {
      for (i = 1; i <= m; i++) med[order[i]] = median(order[i])
      base = med["skopeo+tar"]
      print "| tool | runs | wall (median) | vs skopeo+tar | user+sys (median) | peak RSS |"
      print "|---|---|---|---|---|---|"
      for (i = 1; i <= m; i++) {
        k = order[i]
        ratio = base > 0 ? sprintf("%.2fx", med[k] / base) : "-"
        printf "| %s | %d | %.2f s | %s | %.2f s | %.0f MiB |\n", k, n[k], med[k], ratio, median_cpu(k), r[k] / 1024
      }
    }' "$RES"
} | tee "$BENCH_DIR/pull-results.md"
