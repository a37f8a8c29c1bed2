#!/usr/bin/env bash
# Regenerates the golden vectors under testdata/golden/ with the REAL peers: skopeo 1.9.3
# (Debian bookworm, Go ocicrypt 1.0.3) and skopeo 1.18 (Debian trixie, ocicrypt 1.1.10), both
# installed by ci/install-peers.sh. Plaintext layouts come from testdata/golden/tools/mk_layout.py
# (deterministic); keys are fresh test-only keys, so ciphertexts change on every run.
# Every vector is checked before the script succeeds: each private key decrypts each encrypted
# layout with both skopeo versions back to the plaintext layer digests.
#
# usage: testdata/make-golden.sh [OUT_DIR]     (default testdata/golden)
# env:   CLOAK_PEERS_DIR (default <repo>/.work/peers), SHARED_FIXTURES (default /work/shared/fixtures)
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
OUT=$(mkdir -p "${1:-$REPO/testdata/golden}" && cd "${1:-$REPO/testdata/golden}" && pwd)
TOOLS=$REPO/testdata/golden/tools
S19=$(command -v skopeo || true)
S118=${CLOAK_PEERS_DIR:-$REPO/.work/peers}/bin/skopeo-1.18
SHARED=${SHARED_FIXTURES:-/work/shared/fixtures}
TMP=$(mktemp -d); trap 'rm -rf "$TMP"' EXIT

die() { echo "make-golden: $*" >&2; exit 1; }
[ -n "$S19" ] && "$S19" --version | grep -q 'version 1\.9\.' || die "skopeo 1.9.x not on PATH (run ci/install-peers.sh)"
[ -x "$S118" ] && "$S118" --version | grep -q 'version 1\.18\.' || die "$S118 missing (run ci/install-peers.sh)"
for t in jq openssl python3 zstd; do command -v $t >/dev/null || die "$t not found"; done
V19="skopeo $("$S19" --version | awk '{print $3}') (Debian bookworm, ocicrypt 1.0.3)"
V118="skopeo $("$S118" --version | awk '{print $3}') (Debian trixie, ocicrypt 1.1.10)"
echo "make-golden: $V19; $V118" >&2

# ---------- (a) fixtures made earlier by the peers, copied as they are ----------
if [ -d "$SHARED" ]; then
  rm -rf "$OUT/shared-fixtures"; mkdir -p "$OUT/shared-fixtures"
  for f in jwe keyprovider-exec keyprovider-grpc multi-recipient plain-oci mk_oci_layout.py jwe_decrypt.py ci-interop.sh README.md; do
    cp -a "$SHARED/$f" "$OUT/shared-fixtures/"
  done
else
  echo "make-golden: $SHARED not found; keeping the committed shared-fixtures/" >&2
fi

# ---------- helpers ----------
rsa_key() {  # DIR NAME: RSA-2048, PKCS#8 private key, SPKI public key
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$1/keys/$2.priv.pem" 2>/dev/null
  openssl pkey -in "$1/keys/$2.priv.pem" -pubout -out "$1/keys/$2.pub.pem"
}
ec_key() {   # DIR NAME CURVE: PKCS#8 private key (what skopeo reads), SEC1 copy, SPKI public key
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:"$3" -pkeyopt ec_param_enc:named_curve \
    -out "$1/keys/$2.priv.pem"
  openssl ec -in "$1/keys/$2.priv.pem" -out "$1/keys/$2.sec1.pem" 2>/dev/null
  openssl pkey -in "$1/keys/$2.priv.pem" -pubout -out "$1/keys/$2.pub.pem"
}
new_vector() {  # NAME KIND -> fresh dir with plain-oci:v1 and keys/
  rm -rf "${OUT:?}/$1"; mkdir -p "$OUT/$1/keys"
  python3 "$TOOLS/mk_layout.py" "$OUT/$1/plain-oci" "$2" v1
}
layer_digests() {  # LAYOUT TAG -> every layer digest of the image (all platforms of an index)
  local L=$1 d mt
  d=$(jq -r --arg t "$2" '.manifests[]|select(.annotations["org.opencontainers.image.ref.name"]==$t)|.digest' "$L/index.json")
  mt=$(jq -r .mediaType "$L/blobs/sha256/${d#sha256:}")
  if [ "$mt" = application/vnd.oci.image.index.v1+json ]; then
    for m in $(jq -r '.manifests[].digest' "$L/blobs/sha256/${d#sha256:}"); do
      jq -r '.layers[].digest' "$L/blobs/sha256/${m#sha256:}"
    done
  else
    jq -r '.layers[].digest' "$L/blobs/sha256/${d#sha256:}"
  fi
}
# encrypt VDIR ENC_LAYOUT TOOL(19|118) ARGS... : runs "skopeo copy ARGS" inside VDIR (so the
# recorded command has relative paths), then records the result in VDIR/vector.json.
encrypt() {
  local v=$1 enc=$2 which=$3; shift 3
  local bin=$S19 ver=$V19 name=skopeo
  if [ "$which" = 118 ]; then bin=$S118; ver=$V118; name=skopeo-1.18; fi
  (cd "$OUT/$v" && "$bin" copy -q "$@" "oci:$enc:enc")
  local plain=${PLAIN:-plain-oci}  # PLAIN=plain-dir for a skopeo dir: source
  [ -d "$OUT/$v/$plain" ] || die "$v has no $plain"
  python3 "$TOOLS/describe.py" "$OUT/$v" "$plain" v1 "$enc" enc "$ver" "$name copy $* oci:$enc:enc"
  echo "made $v/$enc: $name copy $*" >&2
}
# verify VDIR ENC_LAYOUT PRIVKEY... : each key alone, with both skopeo versions, must decrypt the
# layout to exactly the plaintext layer digests.
verify() {
  local v=$1 enc=$2; shift 2
  local want all=() k bin got
  want=$(layer_digests "$OUT/$v/plain-oci" v1)
  jq -e '.manifests|length==1' "$OUT/$v/$enc/index.json" >/dev/null || die "$v/$enc: expected one tag"
  if [ "$(layer_digests "$OUT/$v/$enc" enc | wc -l)" != "$(echo "$want" | wc -l)" ]; then die "$v/$enc: layer count"; fi
  grep -q index.v1 "$OUT/$v/$enc/index.json" && all=(--all)
  for k in "$@"; do
    for bin in "$S19" "$S118"; do
      rm -rf "$TMP/dec"
      "$bin" copy -q "${all[@]}" --decryption-key "$OUT/$v/keys/$k" "oci:$OUT/$v/$enc:enc" "oci:$TMP/dec:x"
      got=$(layer_digests "$TMP/dec" x)
      [ "$got" = "$want" ] || die "$v/$enc: decrypting with $k using $bin did not give the plaintext layers"
    done
  done
  echo "verified $v/$enc with keys: $*" >&2
}

# ---------- (b) new vectors ----------
for c in P-256 P-384; do
  v=ec-${c,,}; v=${v/-p-/-p}      # ec-p256, ec-p384
  new_vector "$v" single
  ec_key "$OUT/$v" ec "$c"
  encrypt "$v" enc-oci 19 --encryption-key jwe:keys/ec.pub.pem oci:plain-oci:v1
  encrypt "$v" enc-oci-1.18 118 --encryption-key jwe:keys/ec.pub.pem oci:plain-oci:v1
  verify "$v" enc-oci ec.priv.pem; verify "$v" enc-oci-1.18 ec.priv.pem
done

v=three-layers; new_vector $v 3layer; rsa_key "$OUT/$v" rsa
encrypt $v enc-oci 19 --encryption-key jwe:keys/rsa.pub.pem oci:plain-oci:v1
encrypt $v enc-oci-1.18 118 --encryption-key jwe:keys/rsa.pub.pem oci:plain-oci:v1
verify $v enc-oci rsa.priv.pem; verify $v enc-oci-1.18 rsa.priv.pem

v=zstd; new_vector $v zstd; rsa_key "$OUT/$v" rsa
encrypt $v enc-oci 19 --encryption-key jwe:keys/rsa.pub.pem oci:plain-oci:v1
encrypt $v enc-oci-1.18 118 --encryption-key jwe:keys/rsa.pub.pem oci:plain-oci:v1
verify $v enc-oci rsa.priv.pem; verify $v enc-oci-1.18 rsa.priv.pem
# The multi-frame layer must really be two frames (zstd magic 28 b5 2f fd twice).
ml=$(jq -r '.layers[1].digest' "$OUT/$v/plain-oci/blobs/sha256/$(jq -r '.manifests[0].digest' "$OUT/$v/plain-oci/index.json" | cut -d: -f2)")
[ "$(od -An -tx1 -v "$OUT/$v/plain-oci/blobs/sha256/${ml#sha256:}" | tr -d ' \n' | grep -o 28b52ffd | wc -l)" -ge 2 ] \
  || die "zstd: layer 1 is not multi-frame"

# skopeo 1.18 recompresses gzip -> zstd and encrypts in the same copy. Its zstd bytes are not
# ours, so plain-oci here is skopeo's own decryption of the result (encryption covers the
# compressed blob, so these are the exact pre-encryption blobs); src-oci is the gzip input.
v=zstd-recompressed; rm -rf "${OUT:?}/$v"; mkdir -p "$OUT/$v/keys"; rsa_key "$OUT/$v" rsa
python3 "$TOOLS/mk_layout.py" "$OUT/$v/src-oci" 3layer v1
(cd "$OUT/$v" && "$S118" copy -q --dest-compress-format zstd --encryption-key jwe:keys/rsa.pub.pem oci:src-oci:v1 oci:enc-oci:enc)
(cd "$OUT/$v" && "$S118" copy -q --decryption-key keys/rsa.priv.pem oci:enc-oci:enc oci:plain-oci:v1)
(cd "$OUT/$v" && "$S118" copy -q --dest-compress-format zstd oci:src-oci:v1 "oci:$TMP/zplain:v1")
[ "$(layer_digests "$OUT/$v/plain-oci" v1)" = "$(layer_digests "$TMP/zplain" v1)" ] \
  || die "$v: decrypted layers differ from skopeo's unencrypted zstd recompression"
python3 "$TOOLS/describe.py" "$OUT/$v" plain-oci v1 enc-oci enc "$V118" \
  "skopeo-1.18 copy --dest-compress-format zstd --encryption-key jwe:keys/rsa.pub.pem oci:src-oci:v1 oci:enc-oci:enc"
verify $v enc-oci rsa.priv.pem

# Docker schema 2 source: skopeo's dir: transport keeps the v2s2 manifest and the
# application/vnd.docker.image.rootfs.diff.tar.gzip layer types; encrypting maps them to OCI
# (+encrypted) and writes an OCI manifest. plain-oci is the OCI image plain-dir was made from
# (same layer blobs, so the layer digests match).
v=docker-v2s2-source; new_vector $v 3layer; rsa_key "$OUT/$v" rsa
(cd "$OUT/$v" && "$S19" copy -q --format v2s2 oci:plain-oci:v1 dir:plain-dir)
jq -e '.mediaType=="application/vnd.docker.distribution.manifest.v2+json" and
       ([.layers[].mediaType]|all(.=="application/vnd.docker.image.rootfs.diff.tar.gzip"))' \
  "$OUT/$v/plain-dir/manifest.json" >/dev/null || die "$v: plain-dir is not docker v2s2"
PLAIN=plain-dir encrypt $v enc-oci 19 --encryption-key jwe:keys/rsa.pub.pem dir:plain-dir
PLAIN=plain-dir encrypt $v enc-oci-1.18 118 --encryption-key jwe:keys/rsa.pub.pem dir:plain-dir
verify $v enc-oci rsa.priv.pem; verify $v enc-oci-1.18 rsa.priv.pem
jq -e '([.encryptions[].manifests[].layers[].enc.mediaType]|all(.=="application/vnd.oci.image.layer.v1.tar+gzip+encrypted"))
       and ([.encryptions[].manifests[].layers[].plain.mediaType]|all(.=="application/vnd.docker.image.rootfs.diff.tar.gzip"))' \
  "$OUT/$v/vector.json" >/dev/null || die "$v: expected OCI +encrypted layer types"

v=multi-recipient-rsa-ec; new_vector $v 3layer; rsa_key "$OUT/$v" rsa; ec_key "$OUT/$v" ec P-256
encrypt $v enc-oci 19 --encryption-key jwe:keys/rsa.pub.pem --encryption-key jwe:keys/ec.pub.pem oci:plain-oci:v1
encrypt $v enc-oci-1.18 118 --encryption-key jwe:keys/rsa.pub.pem --encryption-key jwe:keys/ec.pub.pem oci:plain-oci:v1
verify $v enc-oci rsa.priv.pem ec.priv.pem; verify $v enc-oci-1.18 rsa.priv.pem ec.priv.pem

v=partial-last-layer; new_vector $v 3layer; rsa_key "$OUT/$v" rsa
encrypt $v enc-oci 19 --encrypt-layer -1 --encryption-key jwe:keys/rsa.pub.pem oci:plain-oci:v1
encrypt $v enc-oci-1.18 118 --encrypt-layer -1 --encryption-key jwe:keys/rsa.pub.pem oci:plain-oci:v1
verify $v enc-oci rsa.priv.pem; verify $v enc-oci-1.18 rsa.priv.pem

v=index-two-platforms; new_vector $v index; rsa_key "$OUT/$v" rsa
encrypt $v enc-oci 19 --all --encryption-key jwe:keys/rsa.pub.pem oci:plain-oci:v1
encrypt $v enc-oci-1.18 118 --all --encryption-key jwe:keys/rsa.pub.pem oci:plain-oci:v1
verify $v enc-oci rsa.priv.pem; verify $v enc-oci-1.18 rsa.priv.pem

# Sanity on the recorded expectations, so a silently wrong vector cannot be committed.
jq -e '[.encryptions[].manifests[].layers[]|.encrypted]|all' "$OUT/three-layers/vector.json" >/dev/null || die "three-layers: not all encrypted"
jq -e '[.encryptions[].manifests[].layers[]|.encrypted]==[false,false,true,false,false,true]' "$OUT/partial-last-layer/vector.json" >/dev/null \
  || die "partial-last-layer: expected only the last layer encrypted"
jq -e '[.encryptions[].manifests[].layers[]|.jwe_recipients]|all(.==2)' "$OUT/multi-recipient-rsa-ec/vector.json" >/dev/null \
  || die "multi-recipient: expected 2 JWE recipients per layer"
jq -e '[.encryptions[].manifests[].platform]|sort==["linux/amd64","linux/amd64","linux/arm64","linux/arm64"]' "$OUT/index-two-platforms/vector.json" >/dev/null \
  || die "index: expected amd64 and arm64 in both encryptions"
echo "make-golden: all vectors made and verified in $OUT ($(du -sh "$OUT" | cut -f1))" >&2
