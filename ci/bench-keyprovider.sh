#!/usr/bin/env bash
# ci/bench-keyprovider.sh: UnWrapKey throughput of cloak-keyprovider over loopback gRPC
# with a warm KEK cache, and the latency of the first (cold) call, which attests to
# cloak-kbs once (sample evidence) and fetches the KEK.
#   Env: BENCH_CALLS (20000), BENCH_CONCURRENCY (64), BENCH_PROFILE (release|debug, default release).
# Prints one JSON line from the load generator plus a markdown summary; target >= 5000 calls/s.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PROFILE=${BENCH_PROFILE:-release}
CALLS=${BENCH_CALLS:-20000}
CONC=${BENCH_CONCURRENCY:-64}
cd "$REPO"
flag=(); [ "$PROFILE" = release ] && flag=(--release)
cargo build -q "${flag[@]}" -p cloak-keyprovider -p cloak-kbs-server --bins
cargo build -q "${flag[@]}" -p cloak-keyprovider --example bench-unwrap
BIN="$REPO/target/$PROFILE"
W=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$W"' EXIT
. "$REPO/ci/lib.sh"
wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return 0; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }

# KEK provisioned straight into the broker's file store; the provider wraps with keypath.
mkdir -p "$W/res/default/bench"
head -c 32 /dev/urandom > "$W/kek"; cp "$W/kek" "$W/res/default/bench/kek"
printf 'default_policy: {required_attestation: {sample: {allow: true}}, released_resources: ["default/*"]}\n' > "$W/policy.yaml"
KP=$(free_port); KB=$(free_port)
"$BIN/cloak-kbs" serve --listen "127.0.0.1:$KB" --policy "$W/policy.yaml" --resources "$W/res" 2>"$W/kbs.log" &
wait_port "$KB"
params=$(printf 'keyid=kbs:///default/bench/kek::keypath=%s' "$W/kek" | base64 -w0)
printf '{"op":"keywrap","keywrapparams":{"ec":{"Parameters":{"attestation-agent":["%s"]},"DecryptConfig":{"Parameters":{}}},"optsdata":"%s"},"keyunwrapparams":{"dc":null,"annotation":null}}' \
  "$params" "$(printf '{"symkey":"AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=","digest":"","cipheroptions":{"nonce":"AAECAwQFBgcICQoLDA0ODw=="}}' | base64 -w0)" \
  | "$BIN/cloak-keyprovider" exec | python3 -c 'import sys,json,base64; sys.stdout.buffer.write(base64.b64decode(json.load(sys.stdin)["keywrapresults"]["annotation"]))' > "$W/packet.json"
CLOAK_LOG=warn "$BIN/cloak-keyprovider" serve --grpc "127.0.0.1:$KP" --kbs-url "http://127.0.0.1:$KB" --attester sample 2>"$W/kp.log" &
wait_port "$KP"
out=$("$BIN/examples/bench-unwrap" --grpc "127.0.0.1:$KP" --packet "$W/packet.json" --calls "$CALLS" --concurrency "$CONC")
echo "$out"
python3 - "$out" <<'PY'
import json, sys
r = json.loads(sys.argv[1])
print("| metric | value |\n|---|---|")
print(f"| cold UnWrapKey (attest + fetch KEK) | {r['first_call_ms']:.1f} ms |")
print(f"| warm UnWrapKey calls/s | {r['warm_calls_per_s']:.0f} (target >= 5000) |")
PY
