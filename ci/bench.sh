#!/usr/bin/env bash
# Benchmarks against the real peers. Dispatcher:
#   ci/bench.sh encrypt       cloak encrypt vs skopeo copy --encryption-key (this file)
#   ci/bench.sh pull          -> ci/bench-pull.sh
#   ci/bench.sh kbs           -> ci/bench-kbs.sh
#   ci/bench.sh keyprovider   -> ci/bench-keyprovider.sh
#   ci/bench.sh signatures    -> ci/bench-signatures.sh (what a signature policy adds to a pull)
#   ci/bench.sh cdh           -> ci/bench-cdh.sh (cloak-cdh over ttRPC: cold/warm PullImage, concurrency, GetResource; root)
#   ci/bench.sh securemount   -> ci/bench-securemount.sh (PullImage onto kata's trusted store in a qemu guest vs dd; root)
#   ci/bench.sh all           all of the above that exist
# Extra arguments after the target are passed to the sub-script.
#
# encrypt: a deterministic ~1 GiB image (4 gzip layers, ~790 MB compressed; ci/gen-bench-image.py,
# cached in $BENCH_DIR) is encrypted for one RSA-2048 JWE recipient, layout->layout and
# layout->registry (docker-registry on 127.0.0.1, plain HTTP), by `cloak encrypt` and
# `skopeo-1.18 copy --encryption-key` (median of $BENCH_RUNS, default 3) and skopeo 1.9.3 (once).
# Wall time and peak RSS (/usr/bin/time -v); prints a markdown table with the ratios and the date,
# also written to $BENCH_DIR/encrypt-results.md.
# Env: BENCH_DIR (default <repo>/.work/bench), BENCH_SIZE_MIB (1024), BENCH_RUNS (3),
#      BENCH_COMPRESS (gzip|zstd, default gzip), BENCH_PORT (free port), BENCH_SKIP_CLOAK=1 (peers only), BENCH_REQUIRE_CLOAK=1 (fail if
#      cloak cannot be built), CLOAK_PEERS_DIR (default <repo>/.work/peers).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
# shellcheck source=ci/lib.sh
. "$REPO/ci/lib.sh"

usage() { echo "usage: $0 encrypt|pull|kbs|keyprovider|signatures|cdh|securemount|all [ARGS...]" >&2; exit 2; }

run_sub() {  # NAME ARGS... : ci/bench-NAME.sh, owned by the engineer of that part
  local name=$1; shift
  local s="$REPO/ci/bench-$name.sh"
  if [ ! -f "$s" ]; then echo "bench: $s does not exist yet" >&2; return 3; fi
  bash "$s" "$@"
}

bench_encrypt() {
  local BENCH_DIR=${BENCH_DIR:-$REPO/.work/bench}
  local SIZE=${BENCH_SIZE_MIB:-1024} RUNS=${BENCH_RUNS:-3} COMP=${BENCH_COMPRESS:-gzip}
  local S118=${CLOAK_PEERS_DIR:-$REPO/.work/peers}/bin/skopeo-1.18
  local S19 CLOAK=$REPO/target/release/cloak TAG=bench
  local SRC=$BENCH_DIR/src-$COMP-$SIZE KEYS=$BENCH_DIR/keys OUTD=$BENCH_DIR/out REG=$BENCH_DIR/registry
  mkdir -p "$BENCH_DIR" "$KEYS" "$OUTD"

  # Peers (fast no-op when already installed).
  if ! [ -x "$S118" ] || ! command -v skopeo >/dev/null || ! command -v docker-registry >/dev/null \
     || ! [ -x /usr/bin/time ]; then
    bash "$REPO/ci/install-peers.sh"
  fi
  S19=$(command -v skopeo)

  # cloak, release build. Until the encryptor exists this may fail: then only the peers are timed.
  local have_cloak=0 no_cloak_why="BENCH_SKIP_CLOAK=1"
  if [ "${BENCH_SKIP_CLOAK:-0}" != 1 ]; then
    echo "bench: cargo build --release -p cloak-encryptor" >&2
    if cargo build --release -q -p cloak-encryptor >&2 && [ -x "$CLOAK" ]; then
      have_cloak=1
    elif [ "${BENCH_REQUIRE_CLOAK:-0}" = 1 ]; then
      echo "bench: cloak did not build and BENCH_REQUIRE_CLOAK=1" >&2; return 1
    else
      no_cloak_why="cargo build --release -p cloak-encryptor failed"
      echo "bench: cloak did not build; timing the peers only" >&2
    fi
  fi

  # Bench image, cached; regenerated when the generator or the size changes.
  local stamp
  stamp="$(sha256sum "$REPO/ci/gen-bench-image.py" | cut -c1-16) size=$SIZE compress=$COMP"
  if [ "$(cat "$SRC/.stamp" 2>/dev/null)" != "$stamp" ]; then
    echo "bench: generating the ${SIZE} MiB bench image in $SRC (once)" >&2
    rm -rf "$SRC"
    python3 "$REPO/ci/gen-bench-image.py" "$SRC" "$TAG" --size-mib "$SIZE" --compress "$COMP"
    echo "$stamp" > "$SRC/.stamp"
  fi
  if [ ! -f "$KEYS/pub.pem" ]; then
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$KEYS/priv.pem" 2>/dev/null
    openssl pkey -in "$KEYS/priv.pem" -pubout -out "$KEYS/pub.pem"
  fi
  # Read the source once so every timed run starts from the page cache, not the disk.
  cat "$SRC"/blobs/sha256/* > /dev/null

  local PORT=${BENCH_PORT:-$(free_port)}
  # shellcheck source=ci/registry.sh
  source "$REPO/ci/registry.sh"
  # Expanded now: the trap may run after this function's locals are gone.
  # shellcheck disable=SC2064
  trap "registry_stop '$PORT' '$REG' 2>/dev/null || true" EXIT

  local RES=$BENCH_DIR/encrypt-runs.tsv
  : > "$RES"

  # one_run LABEL DEST_KIND(layout|registry) CMD... ; DST/REF placeholders are substituted.
  one_run() {
    local label=$1 kind=$2 i=$3; shift 3
    local dst ref args=() a tv wall rss
    if [ "$kind" = layout ]; then
      dst=$OUTD/dst; rm -rf "$dst"; ref="oci:$dst:$TAG"
    else
      # A fresh, empty registry per run: nothing to deduplicate, same disk state every time.
      registry_stop "$PORT" "$REG" 2>/dev/null || true
      rm -rf "$REG"; registry_start "$PORT" "$REG"
      ref="docker://127.0.0.1:$PORT/bench:enc"
    fi
    for a in "$@"; do args+=("${a//@DST@/$ref}"); done
    sync
    tv=$OUTD/time.txt
    local t0 t1
    t0=$(date +%s%N)
    if ! /usr/bin/time -v -o "$tv" "${args[@]}" > "$OUTD/$label-$kind-$i.log" 2>&1; then
      echo "bench: FAILED: ${args[*]}" >&2; tail -5 "$OUTD/$label-$kind-$i.log" >&2; return 1
    fi
    t1=$(date +%s%N)
    wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", (b-a)/1e9}')
    rss=$(awk -F': ' '/Maximum resident set size/{print $2}' "$tv")
    # A fast run that did not encrypt would be worthless: check what it wrote, once per series.
    if [ "$i" = 1 ]; then
      local raw
      if [ "$kind" = layout ]; then raw=$("$S118" inspect --raw "$ref"); else raw=$("$S118" inspect --raw --tls-verify=false "$ref"); fi
      echo "$raw" | jq -e '.layers|length==4 and all(.mediaType|endswith("+encrypted"))' >/dev/null \
        || { echo "bench: $label ($kind) did not produce 4 encrypted layers" >&2; return 1; }
    fi
    printf '%s\t%s\t%s\t%s\t%s\n' "$label" "$kind" "$i" "$wall" "$rss" >> "$RES"
    echo "bench: $label $kind run $i: ${wall}s, max RSS $((rss / 1024)) MiB" >&2
  }

  series() {  # LABEL RUNS CMD...
    local label=$1 n=$2 kind i; shift 2
    for kind in layout registry; do
      for i in $(seq "$n"); do
        if [ "$kind" = layout ]; then
          one_run "$label" "$kind" "$i" "$@"
        else
          local c=() a
          for a in "$@"; do c+=("$a"); done
          # Registry destinations need plain HTTP on 127.0.0.1; the flag must precede the refs.
          one_run "$label" "$kind" "$i" "${c[0]}" "${c[@]:1:${#c[@]}-3}" --dest-tls-verify=false "${c[@]: -2}"
        fi
      done
    done
  }

  local SRCREF="oci:$SRC:$TAG"
  if [ "$have_cloak" = 1 ]; then
    series cloak "$RUNS" "$CLOAK" encrypt --recipient "jwe:$KEYS/pub.pem" "$SRCREF" @DST@
  fi
  series skopeo-1.18 "$RUNS" "$S118" copy -q --encryption-key "jwe:$KEYS/pub.pem" "$SRCREF" @DST@
  series skopeo-1.9.3 1 "$S19" copy -q --encryption-key "jwe:$KEYS/pub.pem" "$SRCREF" @DST@
  registry_stop "$PORT" "$REG" || true
  rm -rf "$OUTD/dst" "$REG"

  # ---------- report ----------
  local comp_mb
  comp_mb=$(du -cb "$SRC"/blobs/sha256/* | tail -1 | awk '{printf "%.0f", $1/1e6}')
  {
    echo "### cloak encrypt vs skopeo — $(date -u '+%Y-%m-%d %H:%M UTC')"
    echo
    echo "Image: ci/gen-bench-image.py, ${SIZE} MiB tar in 4 $COMP layers, ${comp_mb} MB compressed; one JWE recipient (RSA-2048)."
    echo "Machine: $(nproc) cores, $(awk -F': ' '/model name/{print $2; exit}' /proc/cpuinfo), $(awk '/MemTotal/{printf "%.0f GiB", $2/1048576}' /proc/meminfo) RAM."
    echo "Peers: $("$S118" --version), $("$S19" --version) (ocicrypt 1.1.10 and 1.0.3)."
    echo
    awk -F'\t' -v runs="$RUNS" '
      { k = $1 SUBSEP $2; n[k]++; w[k, n[k]] = $4; if ($5 > r[k]) r[k] = $5;
        if (!(k in seen)) { seen[k] = 1; order[++m] = k } }
      function median(k,   i, j, t, a, c) {
        c = n[k]; for (i = 1; i <= c; i++) a[i] = w[k, i]
        for (i = 1; i <= c; i++) for (j = i + 1; j <= c; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
        return (c % 2) ? a[(c + 1) / 2] : (a[c / 2] + a[c / 2 + 1]) / 2
      }
      END {
        for (i = 1; i <= m; i++) med[order[i]] = median(order[i])
        print "| tool | destination | runs | wall (median) | vs skopeo 1.18 | peak RSS |"
        print "|---|---|---:|---:|---:|---:|"
        for (i = 1; i <= m; i++) {
          k = order[i]; split(k, p, SUBSEP)
          base = (("skopeo-1.18" SUBSEP p[2]) in med) ? med["skopeo-1.18" SUBSEP p[2]] : 0
          ratio = base > 0 ? sprintf("%.2fx", med[k] / base) : "-"
          dest = p[2] == "layout" ? "layout -> layout" : "layout -> registry"
          printf "| %s | %s | %d | %.2f s | %s | %.0f MiB |\n", p[1], dest, n[k], med[k], ratio, r[k] / 1024
        }
      }' "$RES"
    echo
    echo "Commands (SRC = oci:$SRC:$TAG):"
    echo
    [ "$have_cloak" = 1 ] && echo "- \`target/release/cloak encrypt --recipient jwe:pub.pem SRC oci:DST:$TAG\` / \`... --dest-tls-verify=false SRC docker://127.0.0.1:PORT/bench:enc\`"
    echo "- \`skopeo-1.18 copy --encryption-key jwe:pub.pem SRC oci:DST:$TAG\` / \`... --dest-tls-verify=false SRC docker://127.0.0.1:PORT/bench:enc\`"
    echo "- \`skopeo copy ...\` (1.9.3), same arguments"
    [ "$have_cloak" = 1 ] || echo "- cloak: not measured ($no_cloak_why)"
  } | tee "$BENCH_DIR/encrypt-results.md"
}

[ $# -ge 1 ] || usage
target=$1; shift
case "$target" in
  encrypt) bench_encrypt ;;
  pull|kbs|keyprovider|signatures|cdh|securemount) run_sub "$target" "$@" ;;
  all)
    rc=0
    bench_encrypt || rc=1
    for t in pull kbs keyprovider signatures cdh securemount; do
      if [ -f "$REPO/ci/bench-$t.sh" ]; then run_sub "$t" || rc=1
      else echo "bench: skipping $t (ci/bench-$t.sh not written yet)" >&2; fi
    done
    exit $rc ;;
  -h|--help) usage ;;
  *) usage ;;
esac
