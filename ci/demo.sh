#!/usr/bin/env bash
# The README's first command: the whole confidential flow on one machine.
#
#   1. build release binaries
#   2. start cloak-kbs on 127.0.0.1 over TLS (a demo CA and certificate made here
#      with openssl; every client is given the CA with --kbs-cert) with a policy
#      that (for the demo only) accepts sample evidence, and a local registry if
#      docker-registry exists
#   3. build a small demo image and encrypt it with a KEK that cloak generates
#      and registers in the KBS (kbs:///default/image-kek/demo)
#   4. cloak-pull attests (sample evidence), gets the KEK, decrypts, verifies
#      and unpacks the image into a bundle: shows the rootfs and phase timings
#   5. switch the policy so sample evidence no longer passes, pull again, and
#      show the refusal ("attestation rejected: ...") and that no rootfs exists
#   6. print the broker's attestation metrics
#
# Exits 0 only if every step behaved as stated; stops everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

say()  { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
fail() { printf '\nDEMO FAILED: %s\n' "$*" >&2; exit 1; }

WORK=$(mktemp -d /tmp/cloak-demo.XXXXXX)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

. ci/lib.sh
wait_http() {
    for _ in $(seq 1 100); do curl -fs --cacert "$WORK/ca.pem" -o /dev/null "$1" && return 0; sleep 0.1; done
    fail "nothing answered at $1"
}

say "building release binaries (cloak, cloak-kbs, cloak-pull)"
cargo build --release --quiet -p cloak-encryptor -p cloak-kbs-server -p cloak-guest-puller
BIN=$ROOT/target/release
for b in cloak cloak-kbs cloak-pull; do [ -x "$BIN/$b" ] || fail "missing $BIN/$b"; done

say "starting the key broker (cloak-kbs) on 127.0.0.1, over TLS"
openssl genpkey -algorithm ed25519 -out "$WORK/admin.pem" 2>/dev/null
openssl pkey -in "$WORK/admin.pem" -pubout -out "$WORK/admin.pub.pem"
# A demo CA and the broker's certificate for 127.0.0.1 (a real broker's comes from
# your CA); the clients trust the CA with --kbs-cert, beside the system roots.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
    -subj "/CN=cloak demo CA" -addext basicConstraints=critical,CA:TRUE \
    -addext keyUsage=critical,keyCertSign -keyout "$WORK/ca.key" -out "$WORK/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj "/CN=cloak-kbs demo" \
    -keyout "$WORK/kbs.key" -out "$WORK/kbs.csr" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=critical,CA:FALSE\nextendedKeyUsage=serverAuth\n' \
    > "$WORK/kbs.ext"
openssl x509 -req -in "$WORK/kbs.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" -CAcreateserial \
    -days 1 -extfile "$WORK/kbs.ext" -out "$WORK/kbs.pem" 2>/dev/null
KBS_CA=(--kbs-cert "$WORK/ca.pem")
KBS_PORT=$(free_port)
KBS=https://127.0.0.1:$KBS_PORT
mkdir -p "$WORK/resources"
cat > "$WORK/policy.yaml" <<'EOF'
# DEMO ONLY: sample evidence comes from no hardware at all. A real deployment
# pins sev_snp / tdx measurements here and keeps sample.allow false.
default_policy:
  required_attestation:
    sample: {allow: true}
  released_resources: ["default/*"]
EOF
echo "policy in force:"; sed 's/^/    /' "$WORK/policy.yaml"
"$BIN/cloak-kbs" serve --listen "127.0.0.1:$KBS_PORT" --policy "$WORK/policy.yaml" \
    --tls-cert "$WORK/kbs.pem" --tls-key "$WORK/kbs.key" \
    --resources "$WORK/resources" --admin-public-key "$WORK/admin.pub.pem" \
    > "$WORK/kbs.log" 2>&1 &
PIDS+=($!)
wait_http "$KBS/healthz"
echo "cloak-kbs listening at $KBS (TLS; certificate issued by the demo CA $WORK/ca.pem, given to every client with --kbs-cert)"

REG_PORT=""
if command -v docker-registry >/dev/null 2>&1; then
    say "starting a local registry (Debian's docker-registry)"
    REG_PORT=$(free_port)
    cat > "$WORK/registry.yml" <<EOF
version: 0.1
log: {level: error}
storage: {filesystem: {rootdirectory: $WORK/registry-data}}
http: {addr: 127.0.0.1:$REG_PORT}
EOF
    docker-registry serve "$WORK/registry.yml" > "$WORK/registry.log" 2>&1 &
    PIDS+=($!)
    wait_http "http://127.0.0.1:$REG_PORT/v2/"
    DEST="docker://127.0.0.1:$REG_PORT/demo:enc"
    TLS=(--dest-tls-verify=false)
    PULL_TLS=(--src-tls-verify=false)
else
    echo "docker-registry is not installed: using an OCI layout instead"
    DEST="oci:$WORK/enc:demo"
    TLS=()
    PULL_TLS=()
fi

say "building the demo image (2 layers, one whiteout)"
python3 ci/mk-demo-image.py "$WORK/plain" v1 >/dev/null
"$BIN/cloak" inspect "oci:$WORK/plain:v1" | sed 's/^/    /'

say "encrypting it for kbs:///default/image-kek/demo (KEK generated and registered in the KBS)"
"$BIN/cloak" encrypt --quiet --recipient kbs:///default/image-kek/demo \
    --kbs-url "$KBS" --kbs-admin-key "$WORK/admin.pem" "${KBS_CA[@]}" "${TLS[@]}" \
    "oci:$WORK/plain:v1" "$DEST"
INSPECT_TLS=(); [ -n "$REG_PORT" ] && INSPECT_TLS=(--tls-verify=false)
"$BIN/cloak" inspect "${INSPECT_TLS[@]}" "$DEST" | sed 's/^/    /'
[ -f "$WORK/resources/default/image-kek/demo" ] || ls -R "$WORK/resources" | grep -q demo \
    || fail "the KEK was not registered in the broker"

say "pulling inside the 'guest': attest (sample evidence) -> KEK -> decrypt -> verify -> unpack"
"$BIN/cloak-pull" --quiet --json --kbs "$KBS" --attester sample "${KBS_CA[@]}" "${PULL_TLS[@]}" \
    "$DEST" "$WORK/bundle" > "$WORK/pull.json" \
    || fail "the pull with a matching policy failed (see above)"
[ -d "$WORK/bundle/rootfs" ] || fail "no rootfs after a successful pull"
echo "rootfs:"
(cd "$WORK/bundle/rootfs" && find . -mindepth 1 | sort | sed 's/^/    /')
[ -f "$WORK/bundle/rootfs/app/layer1.txt" ] || fail "layer 1 content missing"
[ ! -e "$WORK/bundle/rootfs/app/obsolete.txt" ] || fail "the whiteout was not applied"
echo "app/layer0.txt: $(cat "$WORK/bundle/rootfs/app/layer0.txt")"
echo "timings (ms) and layers:"
python3 - "$WORK/pull.json" <<'EOF'
import json, sys
s = json.load(open(sys.argv[1]))
for k, v in (s.get("timings_ms") or s.get("timings") or {}).items():
    print(f"    {k:<24} {v}")
for l in s.get("layers", []):
    print(f"    layer {l.get('digest','?')[:19]}  diff_id {str(l.get('diff_id','?'))[:19]}")
EOF

say "switching the policy: sample evidence no longer matches (as after a firmware change)"
cat > "$WORK/policy.yaml.new" <<'EOF'
default_policy:
  required_attestation:
    sample: {allow: false}
  released_resources: ["default/*"]
EOF
mv "$WORK/policy.yaml.new" "$WORK/policy.yaml"
kill -HUP "${PIDS[0]}"
sleep 1.2   # the broker also polls the file; HUP makes the reload immediate

say "pulling again: the broker must refuse, and no rootfs may appear"
set +e
"$BIN/cloak-pull" --quiet --kbs "$KBS" --attester sample "${KBS_CA[@]}" "${PULL_TLS[@]}" \
    "$DEST" "$WORK/bundle2" 2> "$WORK/refused.txt"
rc=$?
set -e
sed 's/^/    /' "$WORK/refused.txt"
[ "$rc" -ne 0 ] || fail "the pull succeeded although the policy forbids sample evidence"
grep -q "attestation rejected" "$WORK/refused.txt" || fail "the refusal does not say 'attestation rejected'"
[ ! -e "$WORK/bundle2/rootfs" ] || fail "a refused pull left a rootfs behind"
echo "refused as expected (exit $rc), and $WORK/bundle2/rootfs does not exist"

say "broker metrics"
# Into a file first: `curl | grep -q` fails under pipefail once the page outgrows the
# pipe buffer (grep exits at the first match, curl gets SIGPIPE).
curl -fs --cacert "$WORK/ca.pem" "$KBS/metrics" > "$WORK/metrics.txt" || fail "the broker's /metrics did not answer"
grep -E '^coco_' "$WORK/metrics.txt" | sed 's/^/    /'
grep -q '^coco_attestation_failure_total' "$WORK/metrics.txt" || fail "no failure metric recorded"

say "demo passed: encrypted with a KBS-held KEK, released only to accepted evidence, refused otherwise"
