#!/usr/bin/env bash
# Installs the real peers that cloak's tests and benchmarks run against, on Debian 12 (bookworm),
# as root, idempotently:
#   * system-wide from the system's apt sources: docker-registry (distribution 2.8), skopeo 1.9.3
#     (ocicrypt 1.0.3: JWE only), and the small tools the scripts use;
#   * skopeo 1.18 (ocicrypt 1.1.10: keyprovider cmd + gRPC) from Debian trixie .debs, unpacked into
#     $CLOAK_PEERS_DIR/trixie-root and run through trixie's own ld.so, because the binary needs
#     GLIBC_2.38 and bookworm has 2.36. The system's apt sources are never touched: apt runs with a
#     private config under $CLOAK_PEERS_DIR/apt-alt.
#   * cosign 2.5 (Debian trixie's package; its Go binary needs only glibc >= 2.34, so it runs
#     directly) unpacked into $CLOAK_PEERS_DIR/cosign-root, for the signature interop tests.
#   * the guest VM rig of ci/vm-securemount.sh (this machine's kernel has no device-mapper):
#     qemu-system-x86, busybox-static, cryptsetup-bin and e2fsprogs system-wide, and Debian
#     bookworm's linux-image-cloud-amd64 (dm-crypt, dm-integrity, virtio) unpacked with dpkg-deb -x
#     (never installed: the host's boot is not touched) into $CLOAK_PEERS_DIR/vm-kernel.
# Wrappers: $CLOAK_PEERS_DIR/bin/skopeo-1.18, $CLOAK_PEERS_DIR/bin/cosign
# (default CLOAK_PEERS_DIR=<repo>/.work/peers).
# Env: CLOAK_PEERS_FORCE=1 re-downloads the trixie packages even if the wrapper works.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PEERS=${CLOAK_PEERS_DIR:-$REPO/.work/peers}
WRAPPER=$PEERS/bin/skopeo-1.18
SYS_PKGS=(docker-registry skopeo jq openssl curl time ca-certificates python3 python3-cryptography
          python3-requests apache2-utils pigz zstd
          libssl-dev pkg-config python3-venv  # libssl-dev + pkg-config: the openssl crate links the system OpenSSL
          gnupg  # GPG simple-signing (skopeo --sign-by, cloak's signedBy verification)
          etcd-server etcd-client  # etcd 3.4 (server + etcdctl): cloak-kbs's shared store (kbs/server/tests/ha_etcd.rs)
          tinyproxy  # a real HTTP proxy for the private-registry tests (image_pull_proxy, --proxy)
          swtpm swtpm-tools tpm2-tools  # a real TPM 2.0 for the Azure vTPM attester (kbs/client/tests/azure_vtpm.rs)
          qemu-system-x86 busybox-static cryptsetup-bin e2fsprogs)  # the SecureMount guest VM (ci/vm-securemount.sh)
# The guest kernel's package (a metapackage; its one linux-image-* dependency is what is unpacked).
VM_KERNEL_PKG=linux-image-cloud-amd64
# skopeo/trixie plus the libraries it links that bookworm has too old (or under another name).
TRIXIE_PKGS=(skopeo libc6 libgpgme11t64 libassuan9 libgpg-error0 libsqlite3-0)

log() { echo "install-peers: $*" >&2; }
die() { log "error: $*"; exit 1; }

[ "$(uname -m)" = x86_64 ] || die "only x86_64 is supported (the wrapper uses ld-linux-x86-64.so.2)"

# ---------- fast path ----------
system_ok() {
  local p
  for p in "${SYS_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || return 1
  done
  [ -x /usr/bin/docker-registry ] && command -v skopeo >/dev/null && [ -x /usr/bin/qemu-system-x86_64 ]
}
# The wrapper resolves its root at run time (through symlinks), so the peers dir can be moved,
# carried to another machine or linked into PATH.
WRAPPER_TEXT='#!/bin/sh
# skopeo 1.18 from Debian trixie, run with trixie'"'"'s own loader and libc (written by ci/install-peers.sh).
R=$(dirname "$(readlink -f "$0")")/../trixie-root
exec "$R/usr/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2" --library-path "$R/usr/lib/x86_64-linux-gnu" "$R/usr/bin/skopeo" "$@"'
write_wrapper() {
  mkdir -p "$PEERS/bin"
  if [ "$(cat "$WRAPPER" 2>/dev/null)" != "$WRAPPER_TEXT" ]; then
    printf '%s\n' "$WRAPPER_TEXT" > "$WRAPPER"; chmod +x "$WRAPPER"
  fi
}
wrapper_ok() {
  [ -x "$PEERS/trixie-root/usr/bin/skopeo" ] || return 1
  write_wrapper
  "$WRAPPER" --version 2>/dev/null | grep -q 'version 1\.18\.'
}

COSIGN_WRAPPER=$PEERS/bin/cosign
cosign_ok() {
  [ -x "$PEERS/cosign-root/usr/bin/cosign" ] || return 1
  mkdir -p "$PEERS/bin"
  ln -sfn ../cosign-root/usr/bin/cosign "$COSIGN_WRAPPER"
  # Debian's build reports GitVersion "devel"; the package version is recorded at unpack time.
  grep -q '^2\.' "$PEERS/cosign-version.txt" 2>/dev/null || return 1
  "$COSIGN_WRAPPER" version 2>/dev/null | grep -q '^GoVersion:'
}

VM_KERNEL=$PEERS/vm-kernel
# A kernel with its modules.dep and the device-mapper modules the guest loads.
vm_kernel_ok() {
  local k ver
  k=$(ls "$VM_KERNEL"/boot/vmlinuz-* 2>/dev/null | sed -n 1p)
  [ -n "$k" ] || return 1
  ver=${k##*/vmlinuz-}
  [ -s "$VM_KERNEL/lib/modules/$ver/modules.dep" ] || return 1
  find "$VM_KERNEL/lib/modules/$ver" -name 'dm-crypt.ko*' | grep -q . || return 1
  find "$VM_KERNEL/lib/modules/$ver" -name 'dm-integrity.ko*' | grep -q .
}

ensure_policy() {
  # skopeo refuses to copy without a signature policy; tests only use local, unsigned images.
  if [ ! -s /etc/containers/policy.json ]; then
    mkdir -p /etc/containers
    printf '%s\n' '{"default":[{"type":"insecureAcceptAnything"}]}' > /etc/containers/policy.json
    log "wrote /etc/containers/policy.json (insecureAcceptAnything)"
  fi
}

print_versions() {
  echo "skopeo (system):   $(skopeo --version)"
  echo "skopeo (trixie):   $("$WRAPPER" --version)   [$WRAPPER]"
  echo "docker-registry:   $(dpkg-query -W -f='${Version}' docker-registry)"
  echo "cosign:            $(cat "$PEERS/cosign-version.txt" 2>/dev/null)   [$COSIGN_WRAPPER]"
  echo "etcd-server:       $(dpkg-query -W -f='${Version}' etcd-server)"
  echo "qemu-system-x86:   $(dpkg-query -W -f='${Version}' qemu-system-x86)"
  echo "cryptsetup-bin:    $(dpkg-query -W -f='${Version}' cryptsetup-bin)"
  echo "vm kernel:         $(cat "$PEERS/vm-kernel-version.txt" 2>/dev/null)   [$VM_KERNEL]"
  if [ -f "$PEERS/trixie-versions.txt" ]; then
    echo "trixie packages:   $(tr '\n' ' ' < "$PEERS/trixie-versions.txt")"
  fi
}

verify() {
  skopeo --version | grep -q 'version 1\.9\.' || die "system skopeo is not 1.9.x: $(skopeo --version)"
  "$WRAPPER" --version | grep -q 'version 1\.18\.' || die "$WRAPPER is not 1.18.x: $("$WRAPPER" --version 2>&1)"
  cosign_ok || die "$COSIGN_WRAPPER is not a working cosign 2.x (package version: $(cat "$PEERS/cosign-version.txt" 2>/dev/null))"
  vm_kernel_ok || die "$VM_KERNEL has no kernel with dm-crypt and dm-integrity modules"
  /bin/busybox --list 2>/dev/null | grep -qx insmod || die "/bin/busybox has no insmod (is busybox-static installed?)"
}

if [ "${CLOAK_PEERS_FORCE:-0}" != 1 ] && system_ok && wrapper_ok && cosign_ok && vm_kernel_ok; then
  ensure_policy; verify; print_versions
  exit 0
fi

[ "$(id -u)" = 0 ] || die "must run as root (apt-get install)"

# ---------- system packages ----------
export DEBIAN_FRONTEND=noninteractive
if ! system_ok; then
  log "installing system packages: ${SYS_PKGS[*]}"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${SYS_PKGS[@]}" >/dev/null
fi
ensure_policy

# ---------- private apt config for Debian trixie (the system's sources are never touched) ----------
APT_ALT_READY=0
apt_alt_setup() {
  [ "$APT_ALT_READY" = 1 ] && return 0
  ALT=$PEERS/apt-alt
  mkdir -p "$ALT/lists/partial" "$ALT/cache/archives/partial" "$PEERS/debs" "$PEERS/bin"
  # Same mirror the system already uses (first ".../debian" URI, not -security), so a machine
  # behind a proxy or on a snapshot mirror keeps working.
  MIRROR=$( { cat /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null || true; } \
           | grep -v '^[[:space:]]*#' | grep -oE '[a-z]+://[^[:space:]]+' | grep -E '/debian/?$' \
           | sed -n 1p || true)
  [ -n "$MIRROR" ] || die "no Debian mirror found in /etc/apt/sources.list.d/*.sources or /etc/apt/sources.list"
  echo "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] $MIRROR trixie main" > "$ALT/sources.list"
  APTALT=(-o Dir::Etc::SourceList="$ALT/sources.list" -o Dir::Etc::SourceParts=/dev/null
          -o Dir::State::Lists="$ALT/lists" -o Dir::Cache="$ALT/cache" -o Dir::Etc::Preferences=/dev/null
          -o Dir::Etc::PreferencesParts=/dev/null -o APT::Sandbox::User=root)
  log "fetching trixie package lists from $MIRROR"
  apt-get "${APTALT[@]}" update -qq
  APT_ALT_READY=1
}

# ---------- skopeo 1.18 from trixie, private apt config ----------
if [ "${CLOAK_PEERS_FORCE:-0}" = 1 ] || ! wrapper_ok; then
  apt_alt_setup
  rm -f "$PEERS"/debs/*.deb
  specs=(); for p in "${TRIXIE_PKGS[@]}"; do specs+=("$p/trixie"); done
  (cd "$PEERS/debs" && apt-get "${APTALT[@]}" download -qq "${specs[@]}")
  # Unpack into a fresh root so a re-run never mixes two point releases.
  rm -rf "$PEERS/trixie-root.new"; mkdir -p "$PEERS/trixie-root.new"
  : > "$PEERS/trixie-versions.txt.new"
  for d in "$PEERS"/debs/*.deb; do
    dpkg-deb -x "$d" "$PEERS/trixie-root.new"
    dpkg-deb -f "$d" Package Version | paste -sd= - | sed 's/^Package: //; s/=Version: /=/' \
      >> "$PEERS/trixie-versions.txt.new"
  done
  rm -rf "$PEERS/trixie-root"; mv "$PEERS/trixie-root.new" "$PEERS/trixie-root"
  mv "$PEERS/trixie-versions.txt.new" "$PEERS/trixie-versions.txt"
  [ -x "$PEERS/trixie-root/usr/bin/skopeo" ] || die "trixie skopeo missing after unpack"
  write_wrapper
fi

# ---------- cosign 2.5 from trixie (a plain Go binary: no loader wrapper needed) ----------
if [ "${CLOAK_PEERS_FORCE:-0}" = 1 ] || ! cosign_ok; then
  apt_alt_setup
  mkdir -p "$PEERS/debs-cosign"; rm -f "$PEERS"/debs-cosign/*.deb
  (cd "$PEERS/debs-cosign" && apt-get "${APTALT[@]}" download -qq cosign/trixie)
  rm -rf "$PEERS/cosign-root.new"; mkdir -p "$PEERS/cosign-root.new"
  for d in "$PEERS"/debs-cosign/*.deb; do
    dpkg-deb -x "$d" "$PEERS/cosign-root.new"
    dpkg-deb -f "$d" Version > "$PEERS/cosign-version.txt"
  done
  rm -rf "$PEERS/cosign-root"; mv "$PEERS/cosign-root.new" "$PEERS/cosign-root"
  [ -x "$PEERS/cosign-root/usr/bin/cosign" ] || die "trixie cosign missing after unpack"
fi

# ---------- the guest kernel for the VM rig: bookworm's cloud kernel, unpacked, not installed ----------
if [ "${CLOAK_PEERS_FORCE:-0}" = 1 ] || ! vm_kernel_ok; then
  # The system's own (bookworm) sources: the guest runs the kernel Debian 12 ships.
  kpkg=$(apt-cache depends "$VM_KERNEL_PKG" 2>/dev/null | awk '/Depends: linux-image-/ { print $2; exit }')
  if [ -z "$kpkg" ]; then
    apt-get update -qq
    kpkg=$(apt-cache depends "$VM_KERNEL_PKG" | awk '/Depends: linux-image-/ { print $2; exit }')
  fi
  [ -n "$kpkg" ] || die "$VM_KERNEL_PKG names no linux-image-* package"
  log "unpacking $kpkg into $VM_KERNEL"
  mkdir -p "$PEERS/debs-vm"; rm -f "$PEERS"/debs-vm/*.deb
  (cd "$PEERS/debs-vm" && apt-get -o APT::Sandbox::User=root download -qq "$kpkg")
  rm -rf "$VM_KERNEL.new"; mkdir -p "$VM_KERNEL.new"
  for d in "$PEERS"/debs-vm/*.deb; do
    dpkg-deb -x "$d" "$VM_KERNEL.new"
    dpkg-deb -f "$d" Package Version | paste -sd= - | sed 's/^Package: //; s/=Version: /=/' \
      > "$PEERS/vm-kernel-version.txt"
  done
  # Unpacked without its postinst, the package has no modules.dep: busybox's depmod writes it
  # (kmod need not be installed on the host).
  kver=$(ls "$VM_KERNEL.new"/boot/vmlinuz-* | sed -n 1p); kver=${kver##*/vmlinuz-}
  /bin/busybox depmod -b "$VM_KERNEL.new" "$kver" || die "depmod for $kver failed"
  rm -rf "$VM_KERNEL"; mv "$VM_KERNEL.new" "$VM_KERNEL"
  rm -f "$PEERS"/debs-vm/*.deb
fi

verify
print_versions
