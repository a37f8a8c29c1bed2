#!/usr/bin/env bash
# cloak-cdh's SecureMount inside a real Linux guest (this machine's kernel has no
# device-mapper). Boots Debian's cloud kernel (unpacked by ci/install-peers.sh into
# $CLOAK_PEERS_DIR/vm-kernel) under qemu with an initramfs built here from the host's
# busybox-static, cryptsetup and mkfs.ext4 (with the shared libraries ldd names), the
# dm-crypt/dm-integrity/virtio modules (and what modules.dep says they need), the real
# cloak-cdh, cloak-kbs (the guest's KBS, on its loopback), docker-registry (the guest's
# registry, on its loopback, serving an image from a read-only disk made here) and the
# securemount-client example. Four raw files are the guest's
# virtio disks. The guest's /init is ci/vm/securemount-guest.sh: it runs cloak-cdh and
# calls SecureMount over its socket as kata-agent does, and reports on the serial
# console; this script checks that report and the raw disk images. Two boots on the
# same disks: the second reopens the volume the first wrote (a PVC that outlives its Pod).
#
#   ci/vm-securemount.sh [CLOAK_CDH] [SECUREMOUNT_CLIENT] [CLOAK_KBS]
#     (defaults: target/debug/cloak-cdh, target/debug/examples/securemount-client,
#      target/debug/cloak-kbs)
# Env: CLOAK_PEERS_DIR, CLOAK_VM_WORK (default .work/vm-securemount), CLOAK_VM_TIMEOUT
# (seconds, default 280). For ci/bench-securemount.sh: CLOAK_VM_IMAGE (the image the guest
# registry serves, an oci:DIR:TAG layout; default testdata's three-layer image),
# CLOAK_VM_PHASES (default "1 2"; "bench" for the benchmark boot), CLOAK_VM_MEM_MIB (1024),
# CLOAK_VM_STORE_MIB (size of the trusted-store disk, 32). KVM when /dev/kvm is usable, else TCG. Exit 0 only if every
# guest check passed and no plaintext marker is on the raw disks.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PEERS=${CLOAK_PEERS_DIR:-$REPO/.work/peers}
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
CDH=${1:-$TARGET/debug/cloak-cdh}
CLIENT=${2:-$TARGET/debug/examples/securemount-client}
KBS=${3:-$TARGET/debug/cloak-kbs}
WORK=${CLOAK_VM_WORK:-$REPO/.work/vm-securemount}
TIMEOUT=${CLOAK_VM_TIMEOUT:-280}
IMAGE=${CLOAK_VM_IMAGE:-oci:$REPO/testdata/golden/three-layers/plain-oci:v1}
PHASES=${CLOAK_VM_PHASES:-1 2}
MEM=${CLOAK_VM_MEM_MIB:-1024}
STORE_MIB=${CLOAK_VM_STORE_MIB:-32}
MARKER=CLOAK-VMTEST-PLAINTEXT-MARKER-7f3a9c

log() { echo "vm-securemount: $*" >&2; }
die() { log "error: $*"; exit 1; }

KROOT=$PEERS/vm-kernel
VMLINUZ=$(ls "$KROOT"/boot/vmlinuz-* 2>/dev/null | head -n1 || true)
[ -n "$VMLINUZ" ] || die "no kernel in $KROOT (run ci/install-peers.sh)"
KVER=${VMLINUZ##*/vmlinuz-}
MODDIR=$KROOT/lib/modules/$KVER
# A kernel package unpacked without its postinst has no modules.dep yet.
if [ ! -s "$MODDIR/modules.dep" ]; then
    # busybox's depmod: kmod need not be installed on the host.
    /bin/busybox depmod -b "$KROOT" "$KVER" || die "depmod for $MODDIR failed"
fi
command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 not found (run ci/install-peers.sh)"
for b in "$CDH" "$CLIENT" "$KBS"; do
    [ -x "$b" ] || die "$b is missing (cargo build -p cloak-guest-puller --bin cloak-cdh --example securemount-client; cargo build -p cloak-kbs-server --bin cloak-kbs)"
done
BUSYBOX=/bin/busybox
file_is_static() { ! ldd "$1" >/dev/null 2>&1; }
file_is_static "$BUSYBOX" || die "$BUSYBOX is not busybox-static (run ci/install-peers.sh)"
CRYPTSETUP=$(command -v cryptsetup || echo /usr/sbin/cryptsetup)
MKFS=$(command -v mkfs.ext4 || echo /usr/sbin/mkfs.ext4)
[ -x "$CRYPTSETUP" ] || die "cryptsetup not found (run ci/install-peers.sh)"

started=$(date +%s)
rm -rf "$WORK"; mkdir -p "$WORK/root"
R=$WORK/root
mkdir -p "$R"/{bin,sbin,usr/bin,usr/sbin,etc,modules,proc,sys,dev,run,tmp,mnt}

# ---------- programs and their shared libraries ----------
cp "$BUSYBOX" "$R/bin/busybox"; ln -s busybox "$R/bin/sh"
copy_libs() {
    local lib
    for lib in $(ldd "$1" | awk '/=>/ { print $3 } /^[[:space:]]*\/lib/ { print $1 }'); do
        [ -e "$R$lib" ] && continue
        mkdir -p "$R$(dirname "$lib")"; cp -L "$lib" "$R$lib"
    done
}
cp "$CRYPTSETUP" "$R/sbin/cryptsetup"; copy_libs "$CRYPTSETUP"
cp "$MKFS" "$R/sbin/mkfs.ext4"; copy_libs "$MKFS"
[ -f /etc/mke2fs.conf ] && cp /etc/mke2fs.conf "$R/etc/"
# cloak-cdh's HTTP client loads the system's roots even for a plain-HTTP KBS on loopback.
if [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    mkdir -p "$R/etc/ssl/certs"; cp /etc/ssl/certs/ca-certificates.crt "$R/etc/ssl/certs/"
fi
# Debug info is most of a debug build's size; the guest needs none of it.
strip -o "$R/usr/bin/cloak-cdh" "$CDH"; copy_libs "$CDH"
strip -o "$R/usr/bin/securemount-client" "$CLIENT"; copy_libs "$CLIENT"
strip -o "$R/usr/bin/cloak-kbs" "$KBS"; copy_libs "$KBS"
REGISTRY_BIN=/usr/bin/docker-registry
[ -x "$REGISTRY_BIN" ] || die "$REGISTRY_BIN not found (run ci/install-peers.sh)"
cp "$REGISTRY_BIN" "$R/usr/bin/docker-registry"; copy_libs "$REGISTRY_BIN"
printf '%s\n' 'version: 0.1' 'log: {level: warn}' 'storage:' '  filesystem: {rootdirectory: /srv/registry}' \
    '  maintenance:' '    uploadpurging: {enabled: false}' '    readonly: {enabled: true}' \
    'http: {addr: "127.0.0.1:5000"}' > "$R/etc/cloak-registry.yml"
# glibc's loader path is /lib64 on x86_64.
if [ -e /lib64/ld-linux-x86-64.so.2 ] && [ ! -e "$R/lib64/ld-linux-x86-64.so.2" ]; then
    mkdir -p "$R/lib64"; cp -L /lib64/ld-linux-x86-64.so.2 "$R/lib64/"
fi
cp "$REPO/ci/vm/securemount-guest.sh" "$R/init"; chmod +x "$R/init"
# The guest's KBS: the persistent volume's key and another one, random for this run (deleted
# with the work dir on success), and two policies: sample evidence accepted and default/disk/*
# released, or this guest's evidence refused.
K=$R/etc/cloak/kbs
mkdir -p "$K/resources/default/disk"
head -c 32 /dev/urandom > "$K/resources/default/disk/pvc1"
head -c 32 /dev/urandom > "$K/resources/default/disk/other"
chmod 600 "$K"/resources/default/disk/*
printf '%s\n' '# TEST ONLY: sample evidence comes from no hardware.' 'default_policy:' \
    '  required_attestation:' '    sample: {allow: true}' '  released_resources: ["default/disk/*"]' > "$K/allow.yaml"
printf '%s\n' 'default_policy:' '  required_attestation:' '    sample: {allow: false}' \
    '  released_resources: ["default/disk/*"]' > "$K/deny.yaml"

# ---------- kernel modules, dependencies first (from modules.dep) ----------
declare -A SEEN=()
ORDER=()
mod_path() { awk -F: -v m="/$1.ko" 'index($1, m) == length($1) - length(m) + 1 { print $1; exit }' "$MODDIR/modules.dep"; }
add_mod() { # module path as in modules.dep
    local p=$1 d
    [ -n "${SEEN[$p]:-}" ] && return 0
    SEEN[$p]=1
    for d in $(awk -F: -v m="$p" '$1 == m { print $2 }' "$MODDIR/modules.dep"); do add_mod "$d"; done
    ORDER+=("$p")
}
# The kernel cannot autoload crypto modules here (no modprobe in the guest): every algorithm
# LUKS2 aes-xts-plain64 (+ hmac-sha256) uses that is not built in is loaded up front.
for m in virtio_pci virtio_blk dm-mod dm-crypt dm-integrity ecb xts authenc af_alg algif_skcipher algif_hash overlay; do
    p=$(mod_path "$m")
    if [ -z "$p" ]; then log "module $m: built in"; continue; fi
    add_mod "$p"
done
: > "$R/modules.order"
for p in "${ORDER[@]}"; do
    cp "$MODDIR/$p" "$R/modules/$(basename "$p")"
    basename "$p" >> "$R/modules.order"
done
log "modules: $(tr '\n' ' ' < "$R/modules.order")"

(cd "$R" && find . | "$BUSYBOX" cpio -o -H newc 2>/dev/null) > "$WORK/initramfs.cpio"
log "initramfs: $(( $(stat -c %s "$WORK/initramfs.cpio") / 1048576 )) MiB, built in $(( $(date +%s) - started )) s"

# ---------- disks: emptyDir, integrity, persistent, trusted store ----------
# A LUKS2 header takes 16 MiB of each. Small disks keep the VM step short: the raw disks
# are read whole, in the guest and from the host.
truncate -s 64M "$WORK/vda.img"
truncate -s 32M "$WORK/vdb.img"
truncate -s 32M "$WORK/vdc.img"
truncate -s "${STORE_MIB}M" "$WORK/vdd.img"
# vde: a registry's storage holding $IMAGE (testdata's three-layer image) as 127.0.0.1:5000/cloak/plain:v1,
# filled by the host's docker-registry and skopeo, as an ext4 image the guest mounts read-only.
REG=$WORK/registry
mkdir -p "$REG/data"
# shellcheck source=ci/lib.sh
. "$REPO/ci/lib.sh"
REG_PORT=$(free_port)
printf '%s\n' 'version: 0.1' 'log: {level: warn}' "storage: {filesystem: {rootdirectory: $REG/data}}" \
    "http: {addr: \"127.0.0.1:$REG_PORT\"}" > "$REG/config.yml"
"$REGISTRY_BIN" serve "$REG/config.yml" > "$REG/log" 2>&1 &
REG_PID=$!
for _ in $(seq 100); do curl -fs "http://127.0.0.1:$REG_PORT/v2/" >/dev/null && break; sleep 0.1; done
kill -0 "$REG_PID" 2>/dev/null || { cat "$REG/log" >&2; die "the host registry (to fill the guest's registry disk) did not start"; }
skopeo copy -q --dest-tls-verify=false "$IMAGE" \
    "docker://127.0.0.1:$REG_PORT/cloak/plain:v1" || { kill "$REG_PID"; cat "$REG/log" >&2; die "skopeo copy into the host registry failed"; }
kill "$REG_PID"; wait "$REG_PID" 2>/dev/null || true
# ext4 with room for its metadata: the data plus an eighth, at least 16 MiB.
REG_MIB=$(du -sm "$REG/data" | cut -f1)
truncate -s "$(( REG_MIB + REG_MIB / 8 + 16 ))M" "$WORK/vde.img"
"$MKFS" -q -F -d "$REG/data" "$WORK/vde.img"

ACCEL=(-accel tcg -cpu max)
if [ -w /dev/kvm ] && grep -qE 'vmx|svm' /proc/cpuinfo; then ACCEL=(-accel kvm -cpu host); fi
FAIL=0
boot() { # PHASE: boots the guest once; its serial console goes to serial-PHASE.log
    local phase=$1 booted rc
    log "phase $phase: booting ${KVER} with ${ACCEL[1]} (timeout ${TIMEOUT} s)"
    booted=$(date +%s)
    set +e
    timeout "$TIMEOUT" qemu-system-x86_64 "${ACCEL[@]}" -m "$MEM" -smp 2 -nodefaults -no-reboot \
        -display none -serial "file:$WORK/serial-$phase.log" -monitor none \
        -kernel "$VMLINUZ" -initrd "$WORK/initramfs.cpio" \
        -append "console=ttyS0 panic=-1 quiet loglevel=3 rdinit=/init cloak.phase=$phase" \
        -drive "file=$WORK/vda.img,format=raw,if=virtio,cache=unsafe" \
        -drive "file=$WORK/vdb.img,format=raw,if=virtio,cache=unsafe" \
        -drive "file=$WORK/vdc.img,format=raw,if=virtio,cache=unsafe" \
        -drive "file=$WORK/vdd.img,format=raw,if=virtio,cache=unsafe" \
        -drive "file=$WORK/vde.img,format=raw,if=virtio,readonly=on"
    rc=$?
    set -e
    log "phase $phase: VM ran $(( $(date +%s) - booted )) s (qemu exit $rc)"
    grep -a '^VMTEST\|^VMBENCH\|^--- \|^insmod' "$WORK/serial-$phase.log" >&2 || true
    if [ "$rc" = 124 ]; then
        tail -n 60 "$WORK/serial-$phase.log" >&2
        log "phase $phase: the VM did not finish in ${TIMEOUT} s"; FAIL=1; return
    fi
    if ! grep -aq '^VMTEST RESULT pass' "$WORK/serial-$phase.log"; then
        log "phase $phase: guest checks failed (serial log: $WORK/serial-$phase.log)"; FAIL=1
    fi
}
# From the host too: the marker written through the mappings is on no raw disk.
check_raw() {
    local d
    for d in vda vdb vdc vdd; do
        if grep -aq "$MARKER" "$WORK/$d.img"; then log "plaintext marker found on the raw disk $d.img"; FAIL=1; fi
    done
}

for phase in $PHASES; do
    [ "$FAIL" = 0 ] || break
    boot "$phase"
    check_raw
done
if [ "$FAIL" = 0 ]; then
    log "host: no plaintext marker on the raw disks"
    log "pass in $(( $(date +%s) - started )) s"
    rm -rf "$WORK"/*.img "$WORK/initramfs.cpio" "$R" "$REG"
fi
exit "$FAIL"
