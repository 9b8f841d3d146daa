#!/usr/bin/env bash
# Prepares this machine for Aegis and runs a first VM:
#   system packages, guest kernel + modules, the binaries, the default image, the daemon,
#   then `aegis run -- echo hello from aegis`.
# Idempotent: a second run finds everything in place and only re-checks it.
# Environment: AEGIS_HOME (default ~/.aegis), AEGIS_BIN_DIR (default /usr/local/bin),
#              AEGIS_SKIP_HELLO=1 to skip the final run.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export AEGIS_HOME="${AEGIS_HOME:-$HOME/.aegis}"
bin_dir="${AEGIS_BIN_DIR:-/usr/local/bin}"
default_image="aegis.local/default:latest"

say() { printf '\033[1m==>\033[0m %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }
if [ "$(id -u)" = 0 ]; then sudo=(); else sudo=(sudo); fi

# --- 1. system packages -------------------------------------------------------------------
packages=(qemu-system-x86 qemu-utils e2fsprogs mmdebstrap cpio kmod fakeroot zstd
          docker-registry ca-certificates pkg-config gcc libseccomp-dev libcap-ng-dev)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing system packages: ${missing[*]}"
  "${sudo[@]}" apt-get update -qq
  if ! DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
      "${missing[@]}"; then
    # A host whose qemu-utils came from bookworm-backports cannot take Debian 12's own
    # qemu-system-x86 (they must match); install both from backports then.
    say "retrying QEMU from bookworm-backports"
    echo 'deb http://deb.debian.org/debian bookworm-backports main' |
      "${sudo[@]}" tee /etc/apt/sources.list.d/aegis-backports.list >/dev/null
    "${sudo[@]}" apt-get update -qq
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
      -t bookworm-backports qemu-system-x86 qemu-utils
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
      "${missing[@]}"
  fi
else
  say "system packages present"
fi
command -v cargo >/dev/null || die "cargo not found: install the Rust toolchain (rustup) first"

# --- 2. guest kernel ----------------------------------------------------------------------
kernel_dir="$AEGIS_HOME/kernel"
kpkg="$(apt-cache depends linux-image-cloud-amd64 2>/dev/null |
        awk '/Depends: linux-image-[0-9]/ {print $2; exit}')"
[ -n "$kpkg" ] || die "cannot resolve linux-image-cloud-amd64 (is apt's package list up to date?)"
if [ "$(cat "$kernel_dir/package" 2>/dev/null)" != "$kpkg" ] || [ ! -f "$kernel_dir/vmlinuz" ]; then
  say "fetching guest kernel $kpkg (not installed into /boot)"
  work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
  chmod 755 "$work"
  (cd "$work" && apt-get download "$kpkg" >/dev/null 2>&1) ||
    (cd "$work" && "${sudo[@]}" apt-get download "$kpkg" >/dev/null)
  dpkg-deb -x "$work"/"$kpkg"_*.deb "$work/x"
  kver="${kpkg#linux-image-}"
  rm -rf "$kernel_dir.new" && mkdir -p "$kernel_dir.new/lib/modules"
  cp "$work/x/boot/vmlinuz-$kver" "$kernel_dir.new/vmlinuz"
  cp -a "$work/x/lib/modules/$kver" "$kernel_dir.new/lib/modules/"
  depmod -b "$kernel_dir.new" "$kver"
  echo "$kpkg" > "$kernel_dir.new/package"
  rm -rf "$kernel_dir" && mv "$kernel_dir.new" "$kernel_dir"
else
  say "guest kernel $kpkg present"
fi

# --- 3. binaries --------------------------------------------------------------------------
say "building aegis (release)"
"$repo/scripts/build.sh"
for b in aegis aegisd; do
  if [ "$(readlink "$bin_dir/$b" 2>/dev/null)" != "$repo/target/release/$b" ]; then
    "${sudo[@]}" ln -sfn "$repo/target/release/$b" "$bin_dir/$b"
  fi
done
export PATH="$repo/target/release:$PATH"

# --- 3b. virtiofsd (host-directory workspaces) ----------------------------------------------
# Debian 12 does not package it; it is built from its crates.io release into $AEGIS_HOME/tools.
virtiofsd_version=1.14.0
tools="$AEGIS_HOME/tools"
if ! "$tools/bin/virtiofsd" --version 2>/dev/null | grep -q "$virtiofsd_version"; then
  say "building virtiofsd $virtiofsd_version from crates.io"
  cargo install --quiet --locked --root "$tools" "virtiofsd@$virtiofsd_version"
else
  say "virtiofsd $virtiofsd_version present"
fi
if [ "$(readlink "$bin_dir/virtiofsd" 2>/dev/null)" != "$tools/bin/virtiofsd" ]; then
  "${sudo[@]}" ln -sfn "$tools/bin/virtiofsd" "$bin_dir/virtiofsd"
fi

# --- 4. daemon and default image ----------------------------------------------------------
# A daemon from an earlier build is replaced. SIGTERM leaves its VMs running; the new daemon
# re-attaches to them.
if [ -f "$AEGIS_HOME/aegisd.pid" ] && kill -0 "$(cat "$AEGIS_HOME/aegisd.pid")" 2>/dev/null; then
  pid="$(cat "$AEGIS_HOME/aegisd.pid")"
  if [ "$(readlink "/proc/$pid/exe" 2>/dev/null)" != "$repo/target/release/aegisd" ] ||
     [ "$repo/target/release/aegisd" -nt "$AEGIS_HOME/aegisd.pid" ]; then
    say "restarting aegisd (new build)"
    kill -TERM "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
  fi
fi
aegis up
if ! aegis image inspect "$default_image" >/dev/null 2>&1; then
  say "building the default image $default_image (Debian bookworm minbase + python3)"
  work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
  chmod 755 "$work"
  "${sudo[@]}" mmdebstrap --quiet --variant=minbase --include=python3,iproute2,procps \
    --mode=root bookworm "$work/rootfs.tar"
  "${sudo[@]}" chown "$(id -u):$(id -g)" "$work/rootfs.tar"
  aegis image import --rootfs "$work/rootfs.tar" --tag "$default_image"
  rm -f "$work/rootfs.tar"
else
  say "default image $default_image present"
fi

# --- 5. first run -------------------------------------------------------------------------
if [ "${AEGIS_SKIP_HELLO:-0}" != 1 ]; then
  say "aegis run -- echo hello from aegis"
  aegis run -- echo hello from aegis
fi
