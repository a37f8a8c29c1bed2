#!/bin/sh
# The guest's /init for ci/vm-securemount.sh (busybox sh, no network). Runs the real
# cloak-cdh as the guest's CDH and calls SecureMount over its ttRPC socket with
# securemount-client, the way kata-agent does; every check prints one line
# "VMTEST ok NAME" or "VMTEST FAIL NAME: why" on the serial console, then
# "VMTEST RESULT pass|fail" and the VM powers off.
#
# The host boots it twice (kernel argument cloak.phase=1, then 2) with the same disks:
#   vda  kata's ephemeral emptyDir (and the SIGTERM volume)    phase 1
#   vdb  the same with dataIntegrity=true, a sector flipped    phase 1
#   vdc  a persistent volume with a kbs:/// key, written in phase 1, reopened in phase 2
#   vdd  kata's trusted image store (/dev/trusted_store on the image work dir), then a
#        PullImage that unpacks onto it                                            phase 1
#   vde  read-only: the guest registry's storage (docker-registry on its loopback)
# The guest has no network: its KBS is the real cloak-kbs on its own loopback (sample
# evidence), with resources and policies the host put in the initramfs for this run:
# /etc/cloak/kbs/resources/default/disk/{pvc1,other} (random keys) and
# /etc/cloak/kbs/{allow,deny}.yaml.
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mkdir -p /proc /sys /dev /run /tmp /mnt
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
# No udev in this guest: libdevmapper creates the /dev/mapper nodes itself.
export DM_DISABLE_UDEV=1
for m in $(cat /modules.order); do insmod "/modules/$m" 2>/dev/null || echo "insmod $m failed"; done
PHASE=$(sed -n 's/.*cloak\.phase=\([a-z0-9]*\).*/\1/p' /proc/cmdline)
echo "VMTEST booted (phase ${PHASE:-?}) after $(cut -d' ' -f1 /proc/uptime) s"

FAILED=0
ok() { echo "VMTEST ok $1"; }
# A refusal that passed, with what the caller (kata-agent) was told.
refused_ok() { echo "VMTEST ok $1 -- $OUT"; }
fail() { echo "VMTEST FAIL $1: $2"; FAILED=1; }
finish() {
    if [ "$FAILED" = 0 ]; then echo "VMTEST RESULT pass"; else echo "VMTEST RESULT fail"; fi
    sync
    poweroff -f
}
t0=$(cut -d' ' -f1 /proc/uptime)
took() { awk -v a="$t0" -v b="$(cut -d' ' -f1 /proc/uptime)" 'BEGIN { printf "%.1f", b - a }'; }
step() { t0=$(cut -d' ' -f1 /proc/uptime); }

i=0
while [ ! -b /dev/vde ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
[ -b /dev/vde ] || { fail disks "virtio disks vda..vde did not appear"; finish; }

ip link set lo up 2>/dev/null || ifconfig lo 127.0.0.1 up
SOCK=/run/cdh.sock
CDH_LOG=/tmp/cdh.log
KBS=http://127.0.0.1:8080
KBS_LOG=/tmp/kbs.log
# start_kbs allow|deny: cloak-kbs with that policy, once /healthz answers.
start_kbs() {
    cloak-kbs serve --listen 127.0.0.1:8080 --policy "/etc/cloak/kbs/$1.yaml" \
        --resources /etc/cloak/kbs/resources >>"$KBS_LOG" 2>&1 &
    KBS_PID=$!
    i=0
    while ! wget -q -O /dev/null "$KBS/healthz" 2>/dev/null && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
    wget -q -O /dev/null "$KBS/healthz" 2>/dev/null || { fail kbs-start "no /healthz after 30 s"; cat "$KBS_LOG"; finish; }
}
stop() { kill -TERM "$1" 2>/dev/null; wait "$1" 2>/dev/null; }
start_cdh() {
    rm -f "$SOCK"
    cloak-cdh --socket "unix://$SOCK" --kbs "$KBS" --attester sample --kbs-timeout 20 \
        --store /run/cloak-store --bundle-root /run/kata-containers --insecure-registry 127.0.0.1:5000 \
        --log-format text >>"$CDH_LOG" 2>&1 &
    CDH_PID=$!
    i=0
    while [ ! -S "$SOCK" ] && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
    [ -S "$SOCK" ] || { fail cdh-start "no socket after 30 s"; cat "$CDH_LOG"; finish; }
}
# sm MOUNT_POINT [--flag F]... NAME=VALUE... : SecureMount block-device, output in $OUT.
# Like kata-agent (rpc.rs, cdh_secure_mount), the mount point is made before the call.
sm() { mkdir -p "$1"; OUT=$(securemount-client "$SOCK" block-device "$@" 2>&1); }
mounted() { grep -q " $1 " /proc/mounts; }
# Every device-mapper device the kernel has (a LUKS2 volume with integrity is two).
mappings() { n=0; for m in /sys/block/dm-*; do [ -e "$m" ] && n=$((n + 1)); done; echo "$n"; }
# Waits up to 10 s for the daemon's reaper to close the mappings once their mount is gone.
wait_no_mappings() {
    i=0
    while [ "$(mappings)" != 0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i + 1)); done
    [ "$(mappings)" = 0 ]
}
devid() { cat "/sys/block/$1/dev"; }
MARKER=CLOAK-VMTEST-PLAINTEXT-MARKER-7f3a9c
# kata-agent's options for a block emptyDir with encryption_key=ephemeral, as in
# kata-containers (main after 4.1.0, 7c6ba40c) src/agent/src/storage/block_handler.rs,
# handle_block_storage (mkfs options BLOCK_EMPTYDIR_EXT4_MKFS_OPTS), which calls
# src/agent/src/rpc.rs, cdh_secure_mount: deviceId MAJ:MIN, sourceType empty, targetType
# fileSystem, filesystemType ext4, encryptionType luks2, dataIntegrity from
# agent.secure_storage_integrity, no key, no flags.
kata_empty_dir() { # DEVICE MOUNT_POINT INTEGRITY
    sm "$2" "deviceId=$(devid "$1")" sourceType=empty targetType=fileSystem filesystemType=ext4 \
        "mkfsOpts=-O ^has_journal -m 0 -i 163840 -I 128" encryptionType=luks2 "dataIntegrity=$3"
}
phase1() {
start_kbs allow
start_cdh

# 1. kata's emptyDir request, ephemeral key, no integrity: mounts, data round-trips, and after
#    kata's unmount the mapping is closed and the plaintext is nowhere on the raw disk.
step
kata_empty_dir vda /mnt/e1 false
if [ "$OUT" = ok ] && mounted /mnt/e1; then
    for n in 1 2 3 4 5 6 7 8; do echo "$MARKER $n"; done > /mnt/e1/marker
    sync
    if grep -q "$MARKER 8" /mnt/e1/marker; then ok "emptydir-kata-request-mounts ($(took) s)"; else fail emptydir-kata-request-mounts "read back"; fi
    umount /mnt/e1
    if wait_no_mappings; then ok emptydir-closed-after-unmount; else fail emptydir-closed-after-unmount "mapping still open"; fi
    if grep -q "$MARKER" /dev/vda; then fail emptydir-raw "plaintext marker on /dev/vda"; else ok emptydir-raw-has-no-plaintext; fi
else
    fail emptydir-kata-request-mounts "$OUT"
fi

# 2. The same with agent.secure_storage_integrity=true: a sector changed on the raw device
#    (outside the mapping) reads as EIO, not as altered data.
step
kata_empty_dir vdb /mnt/e2 true
if [ "$OUT" = ok ] && mounted /mnt/e2; then
    ok "integrity-mount ($(took) s)"
    # Fill the filesystem, so nearly every data sector belongs to the file.
    dd if=/dev/zero of=/mnt/e2/fill bs=1M 2>/dev/null
    sync
    echo 3 > /proc/sys/vm/drop_caches
    if cat /mnt/e2/fill > /dev/null 2>&1; then ok integrity-clean-read; else fail integrity-clean-read "unchanged data did not read"; fi
    SIZE=$(($(cat /sys/block/vdb/size) / 8))   # 4 KiB blocks
    for at in $((SIZE * 6 / 10)) $((SIZE * 7 / 10)) $((SIZE * 8 / 10)) $((SIZE * 9 / 10)); do
        # One byte of the block flipped (XOR 0xff) and the block written back past the
        # mapping (O_DIRECT both ways: no stale page cache of /dev/vdb).
        dd if=/dev/vdb of=/tmp/blk bs=4096 skip="$at" count=1 iflag=direct 2>/dev/null
        b=$(dd if=/tmp/blk bs=1 skip=100 count=1 2>/dev/null | od -An -tu1 | tr -d ' ')
        # shellcheck disable=SC2059 # the format is the one octal escape of the flipped byte
        printf "\\$(printf %o $(( (${b:-0} ^ 255) & 255 )))" | dd of=/tmp/blk bs=1 seek=100 conv=notrunc 2>/dev/null
        dd if=/tmp/blk of=/dev/vdb bs=4096 seek="$at" count=1 conv=notrunc oflag=direct 2>/dev/null
    done
    sync
    echo 3 > /proc/sys/vm/drop_caches
    ERR=$(cat /mnt/e2/fill 2>&1 >/dev/null)
    case "$ERR" in
        *"I/O error"*|*"Input/output error"*)
            ok integrity-flipped-byte-reads-as-eio
            dmesg | grep -i 'device-mapper' | grep -m 2 -i 'error\|fail' | sed 's/^/VMTEST info kernel: /' ;;
        *) fail integrity-flipped-byte-reads-as-eio "read gave: ${ERR:-no error}" ;;
    esac
    umount /mnt/e2
    wait_no_mappings || fail integrity-closed "mapping still open"
else
    fail integrity-mount "$OUT"
fi

# 2b. kata-agent's trusted image store request: src/agent/src/rpc.rs,
#     cdh_handler_trusted_storage (the container's /dev/trusted_store device, MAJ:MIN from
#     the OCI spec) calling cdh_secure_mount with mkfs options "-E lazy_journal_init" and
#     KATA_IMAGE_WORK_DIR (src/agent/src/confidential_data_hub/image.rs) as the mount
#     point; dataIntegrity as agent.secure_storage_integrity (default true).
step
WORK_DIR=/run/kata-containers/image/
sm "$WORK_DIR" "deviceId=$(devid vdd)" sourceType=empty targetType=fileSystem filesystemType=ext4 \
    "mkfsOpts=-E lazy_journal_init" encryptionType=luks2 dataIntegrity=true
if [ "$OUT" = ok ] && mounted /run/kata-containers/image; then
    ok "trusted-store-kata-request-mounts-on-work-dir ($(took) s)"
    # A PullImage after it (kata pulls after cdh_handler_trusted_storage): the layers
    # unpack onto the encrypted disk, not into guest memory (--store /run/cloak-store).
    mkdir -p /srv/registry /run/kata-containers/c1
    mount -o ro /dev/vde /srv/registry
    docker-registry serve /etc/cloak-registry.yml >/tmp/registry.log 2>&1 &
    REGISTRY_PID=$!
    i=0
    while ! wget -q -O /dev/null http://127.0.0.1:5000/v2/ 2>/dev/null && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
    step
    OUT=$(securemount-client "$SOCK" --pull 127.0.0.1:5000/cloak/plain:v1 /run/kata-containers/c1 2>&1)
    layers=$(ls "$WORK_DIR/cloak-store/layers/sha256" 2>/dev/null | wc -l)
    in_ram=$(ls /run/cloak-store/layers/sha256 2>/dev/null | wc -l)
    case "$OUT" in
        "ok sha256:"*)
            if [ "$layers" -ge 3 ] && [ "$in_ram" = 0 ] && grep -q ' /run/kata-containers/c1/rootfs overlay ' /proc/mounts; then
                ok "pullimage-unpacks-onto-trusted-store ($(took) s; $layers layers on the encrypted disk, none in memory)"
            else
                fail pullimage-on-trusted-store "layers on the trusted store: $layers, in memory: $in_ram; $(grep c1/rootfs /proc/mounts)"
            fi ;;
        *) fail pullimage-on-trusted-store "$OUT"; cat /tmp/registry.log ;;
    esac
    umount /run/kata-containers/c1/rootfs 2>/dev/null
    stop "$REGISTRY_PID"
    umount /srv/registry
    echo "$MARKER trusted store" > "$WORK_DIR/marker"
    sync
    umount "$WORK_DIR" || fail trusted-store-unmount "$(grep kata-containers /proc/mounts)"
    wait_no_mappings || fail trusted-store-closed "mapping still open"
    if grep -q "$MARKER" /dev/vdd; then fail trusted-store-raw "plaintext marker on /dev/vdd"; fi
else
    fail trusted-store-kata-request-mounts-on-work-dir "$OUT"
fi

# 3. A persistent volume (a PVC that outlives its Pod), part 1: formatted with a key the
#    KBS releases after attestation, written, unmounted, closed. Phase 2 reopens it.
step
sm /mnt/p1 "deviceId=$(devid vdc)" sourceType=empty targetType=fileSystem encryptionType=luks2 key=kbs:///default/disk/pvc1
if [ "$OUT" = ok ] && mounted /mnt/p1; then
    echo "persisted $MARKER" > /mnt/p1/data
    umount /mnt/p1
    if wait_no_mappings; then ok "persistent-format-write-close ($(took) s)"; else fail persistent-closed "mapping still open"; fi
else
    fail persistent-format "$OUT"
fi

# 4. Refusals name what is wrong, and nothing is done.
OUT=$(securemount-client "$SOCK" zfs /mnt/z "pool=tank" 2>&1)
case "$OUT" in *"code=UNIMPLEMENTED"*zfs*) refused_ok unknown-type-unimplemented-names-it ;; *) fail unknown-type "$OUT" ;; esac
OUT=$(securemount-client "$SOCK" alibaba-cloud-oss /mnt/z "bucket=b" 2>&1)
case "$OUT" in *"code=UNIMPLEMENTED"*alibaba-cloud-oss*) refused_ok oss-type-unimplemented-names-it ;; *) fail oss-type "$OUT" ;; esac
kata_empty_dir vda /mnt/bad yes
case "$OUT" in *"code=INVALID_ARGUMENT"*dataIntegrity*) refused_ok bad-option-value-named ;; *) fail bad-option-value "$OUT" ;; esac
sm /mnt/bad "deviceId=$(devid vda)" sourceType=empty targetType=fileSystem encryptionType=luks2 integrity=true
case "$OUT" in *"code=INVALID_ARGUMENT"*"option integrity"*) refused_ok unknown-option-named ;; *) fail unknown-option "$OUT" ;; esac
sm /mnt/bad "deviceId=$(devid vda)" sourceType=empty targetType=fileSystem encryptionType=luks1
case "$OUT" in *"code=INVALID_ARGUMENT"*encryptionType*) refused_ok luks1-refused-named ;; *) fail luks1 "$OUT" ;; esac
if mounted /mnt/bad || [ "$(mappings)" != 0 ]; then fail refusals "something was mounted or mapped"; fi

# 5. SIGTERM with a volume mounted: the daemon unmounts and closes it before exiting.
step
kata_empty_dir vda /mnt/e3 false
if [ "$OUT" = ok ] && mounted /mnt/e3; then
    echo "$MARKER sigterm" > /mnt/e3/marker
    kill -TERM "$CDH_PID"
    wait "$CDH_PID"
    if mounted /mnt/e3 || [ "$(mappings)" != 0 ]; then
        fail sigterm "a volume outlived the daemon"
    else
        ok "sigterm-unmounts-and-closes ($(took) s)"
    fi
else
    fail sigterm-mount "$OUT"
fi
}

phase2() {
# 3. A persistent volume, part 2: a fresh boot, a fresh daemon, a fresh attestation.
before=$(sha256sum /dev/vdc | cut -d' ' -f1)
unchanged() { [ "$(sha256sum /dev/vdc | cut -d' ' -f1)" = "$before" ]; }
# A refusal that must leave /mnt/p2 unmounted, no mapping and the disk as it was.
refused_untouched() { # LABEL NAME
    if mounted /mnt/p2 || [ "$(mappings)" != 0 ]; then fail "$1" "something is mounted or mapped"
    elif ! unchanged; then fail "$1" "the disk changed"
    else refused_ok "$2 ($(took) s)"; fi
}
PVC="devicePath=/dev/vdc sourceType=encrypted targetType=fileSystem encryptionType=luks2"
# A KBS whose policy refuses this guest: no key, nothing mounted, the disk unchanged.
start_kbs deny
start_cdh
step
# shellcheck disable=SC2086 # PVC is several NAME=VALUE words
sm /mnt/p2 $PVC key=kbs:///default/disk/pvc1
case "$OUT" in
    *"code=PERMISSION_DENIED"*) refused_untouched denied-policy denying-policy-nothing-mounted-disk-unchanged ;;
    *) fail denied-policy "$OUT" ;;
esac
stop "$CDH_PID"
stop "$KBS_PID"
# The policy that releases the keys, and a daemon that attests afresh.
start_kbs allow
start_cdh
step
# shellcheck disable=SC2086
sm /mnt/p2 $PVC key=kbs:///default/disk/other
case "$OUT" in
    *"code=PERMISSION_DENIED"*"does not open"*) refused_untouched wrong-key wrong-key-refused-nothing-mounted-disk-unchanged ;;
    *) fail wrong-key "$OUT" ;;
esac
step
# shellcheck disable=SC2086
sm /mnt/p3 $PVC key=kbs:///default/disk/pvc1
if [ "$OUT" = ok ] && grep -q "persisted $MARKER" /mnt/p3/data; then ok "reopened-next-boot-after-attestation-data-survives ($(took) s)"; else fail reopen "$OUT"; fi
umount /mnt/p3 2>/dev/null
wait_no_mappings || fail reopen-closed "mapping still open"
}

# ci/bench-securemount.sh: a PullImage onto kata's trusted store against the write floor
# of the same dm-crypt device (dd of as many bytes, in the same boot), and cloak-cdh's
# peak RSS, with an image larger than the guest's RAM.
phasebench() {
start_cdh
WORK_DIR=/run/kata-containers/image/
sm "$WORK_DIR" "deviceId=$(devid vdd)" sourceType=empty targetType=fileSystem filesystemType=ext4 \
    "mkfsOpts=-E lazy_journal_init" encryptionType=luks2 dataIntegrity=true
[ "$OUT" = ok ] || { fail bench-mount "$OUT"; return; }
mkdir -p /srv/registry /run/kata-containers/c1
mount -o ro /dev/vde /srv/registry
docker-registry serve /etc/cloak-registry.yml >/tmp/registry.log 2>&1 &
i=0
while ! wget -q -O /dev/null http://127.0.0.1:5000/v2/ 2>/dev/null && [ $i -lt 300 ]; do sleep 0.1; i=$((i + 1)); done
sync; echo 3 > /proc/sys/vm/drop_caches
step
OUT=$(securemount-client "$SOCK" --pull 127.0.0.1:5000/cloak/plain:v1 /run/kata-containers/c1 2>&1)
pull_s=$(took)
case "$OUT" in "ok sha256:"*) ;; *) fail bench-pull "$OUT"; return ;; esac
hwm_kib=$(awk '/^VmHWM/ { print $2 }' "/proc/$CDH_PID/status")
store_mib=$(du -sm "$WORK_DIR/cloak-store" | cut -f1)
umount /run/kata-containers/c1/rootfs
sync; echo 3 > /proc/sys/vm/drop_caches
step
dd if=/dev/zero of="$WORK_DIR/floor" bs=1M count="$store_mib" conv=fsync 2>/dev/null
dd_s=$(took)
mem_mib=$(awk '/^MemTotal/ { print int($2 / 1024) }' /proc/meminfo)
echo "VMBENCH pull_s=$pull_s dd_s=$dd_s store_mib=$store_mib peak_rss_kib=$hwm_kib guest_mem_mib=$mem_mib"
ok "bench-pull ($pull_s s)"
}

case "$PHASE" in
    1) phase1 ;;
    2) phase2 ;;
    bench) phasebench ;;
    *) fail phase "no cloak.phase=1|2|bench on the kernel command line" ;;
esac
if grep -q "$MARKER" "$CDH_LOG" "$KBS_LOG"; then fail log "data in a daemon's log"; fi
if [ "$FAILED" != 0 ]; then
    echo "--- cloak-cdh log"; cat "$CDH_LOG"; echo "--- cloak-kbs log"; cat "$KBS_LOG"; echo "--- dmesg"; dmesg | tail -n 40
fi
finish
