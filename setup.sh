#!/usr/bin/env bash
# Prepares this machine for Aegis and runs a first VM:
#   system packages, the PyPI packages the tests use (in a venv), guest kernel + modules, the
#   binaries, virtiofsd, the default image, the daemon, `aegis doctor`, then
#   `aegis run -- echo hello from aegis`.
# Idempotent: a second run finds everything in place and only re-checks it.
#
#   ./setup.sh           install what is missing, then check it all with `aegis doctor`
#   ./setup.sh --check   install nothing: print what is present and what would be installed,
#                        check that every program the tests use came from the package
#                        scripts/requirements names (not left on the machine by hand), run
#                        `aegis doctor`; exit 1 if anything is missing
#
# Packages come only from the host's configured apt sources, and no install may remove a package
# the host has (apt-get --no-remove). PyPI packages go only into the virtual environment
# $AEGIS_HOME/tools/venv, made by Debian's python3, never into a system Python.
# Environment: AEGIS_HOME (default ~/.aegis), AEGIS_BIN_DIR (default /usr/local/bin),
#              AEGIS_SKIP_HELLO=1 to skip the final run.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export AEGIS_HOME="${AEGIS_HOME:-$HOME/.aegis}"
bin_dir="${AEGIS_BIN_DIR:-/usr/local/bin}"
default_image="aegis.local/default:latest"
requirements="$repo/scripts/requirements"
tools="$AEGIS_HOME/tools"
kernel_dir="$AEGIS_HOME/kernel"
venv="$tools/venv"
npm_dir="$tools/npm"   # the npm requirements, installed with `npm install --prefix`
# Debian's interpreter (python3-venv's), whatever other python3 comes first in PATH.
system_python=/usr/bin/python3

mode=install
case "${1:-}" in
  "") ;;
  --check) mode=check ;;
  -h|--help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  *) printf 'setup: unknown option %s (try --help)\n' "$1" >&2; exit 2 ;;
esac

say() { printf '\033[1m==>\033[0m %s\n' "$*"; }
die() { printf 'setup: error: %s\n' "$*" >&2; exit 1; }
if [ "$(id -u)" = 0 ]; then sudo=(); else sudo=(sudo); fi

# --- requirements -------------------------------------------------------------------------
# scripts/requirements: `kind name package why`, kinds command | package | built | pip | npm.
packages=()        # Debian packages to install, each once
commands=()        # "program package" pairs
pips=()            # pinned PyPI packages, NAME==VERSION
npms=()            # pinned npm packages, NAME@VERSION
while read -r kind name pkg _; do
  case "$kind" in
    command) commands+=("$name $pkg") ;;
    package|built) ;;
    pip) [[ "$pkg" == "$name=="?* ]] ||
           die "scripts/requirements: pip package $name must be pinned as $name==VERSION, not '$pkg'"
         pips+=("$pkg") ;;
    npm) [[ "$pkg" == "$name@"?* ]] ||
           die "scripts/requirements: npm package $name must be pinned as $name@VERSION, not '$pkg'"
         npms+=("$pkg") ;;
    *) die "scripts/requirements: unknown kind '$kind' for $name" ;;
  esac
  case "$kind" in
    command|package) [[ " ${packages[*]} " == *" $pkg "* ]] || packages+=("$pkg") ;;
  esac
done < <(grep -Ev '^[[:space:]]*(#|$)' "$requirements")
virtiofsd_version="$(awk '$1 == "built" && $2 == "virtiofsd" {sub(/.*@/, "", $3); print $3}' \
                     "$requirements")"

installed_version() {
  dpkg-query -W -f='${Status} ${Version}\n' "$1" 2>/dev/null |
    awk '$3 == "installed" {print $4}'
}
candidate_version() { apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2; exit}'; }

# Every install refuses to remove anything: a package the host has stays.
apt_install() {
  DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq --no-install-recommends \
    --no-remove "$@"
}

# QEMU and qemu-utils come from one source package and must be of one version: a qemu-utils
# from a newer release (bookworm-backports, say) breaks Debian 12's qemu-system-common. Keep the
# host's qemu-utils when its apt sources carry the same QEMU; otherwise take the pair at the
# version those sources offer (qemu-utils is then replaced by that version, never removed).
qemu_pair_version() {
  local have; have="$(installed_version qemu-utils)"
  if [ -n "$have" ] && apt-cache madison qemu-system-x86 2>/dev/null |
       awk -F'|' '{gsub(/ /, "", $2); print $2}' | grep -qxF -- "$have"; then
    echo "$have"
  else
    candidate_version qemu-system-x86
  fi
}
qemu_pair_ok() {
  local sys utils
  sys="$(installed_version qemu-system-x86)"; utils="$(installed_version qemu-utils)"
  [ -n "$sys" ] && [ "$sys" = "$utils" ]
}
missing_packages() {
  local p
  for p in "${packages[@]}"; do [ -n "$(installed_version "$p")" ] || echo "$p"; done
}

# Where a program is: PATH, then the sbin directories a normal user's PATH often lacks.
find_program() {
  command -v "$1" 2>/dev/null && return
  local d; for d in /usr/sbin /sbin /usr/local/sbin; do
    [ -x "$d/$1" ] && { echo "$d/$1"; return; }
  done
  return 1
}
# The package that installed file $1 ("" when none did), trying the merged-/usr spellings.
file_owner() {
  local f real c
  real="$(readlink -f "$1")"
  for f in "$1" "$real"; do
    for c in "$f" "${f#/usr}" "/usr$f"; do
      dpkg-query -S "$c" 2>/dev/null | awk -F': ' 'NR == 1 {sub(/:.*/, "", $1); print $1}' |
        grep . && return
    done
  done
  return 0
}
# Whether package $2 is $1 or one of its direct dependencies (pkg-config is pkgconf's).
provided_by() {
  [ "$1" = "$2" ] && return 0
  dpkg-query -W -f='${Depends}' "$1" 2>/dev/null | tr ',|' '\n\n' |
    awk '{print $1}' | grep -qxF -- "$2"
}

# The virtual environment of the pip requirements: its python runs, and is Debian's.
venv_ok() { "$venv/bin/python" -c 'import sys; sys.exit(sys.prefix == sys.base_prefix)' 2>/dev/null; }
# The pinned PyPI packages the venv lacks (or has at another version), one per line.
missing_pips() {
  local have="" spec
  if venv_ok; then
    have="$("$venv/bin/python" -m pip freeze --disable-pip-version-check 2>/dev/null |
            tr '[:upper:]_' '[:lower:]-')"
  fi
  for spec in "${pips[@]}"; do
    grep -qxF -- "$(printf %s "$spec" | tr '[:upper:]_' '[:lower:]-')" <<<"$have" || echo "$spec"
  done
}

# The pinned npm packages $npm_dir lacks (or has at another version), one per line.
missing_npms() {
  local spec name version have
  for spec in "${npms[@]}"; do
    name="${spec%@*}" version="${spec##*@}"
    have="$(node -p "require('$npm_dir/node_modules/$name/package.json').version" 2>/dev/null || true)"
    [ "$have" = "$version" ] || echo "$spec"
  done
}

kernel_package() {
  apt-cache depends linux-image-cloud-amd64 2>/dev/null |
    awk '/Depends: linux-image-[0-9]/ {print $2; exit}'
}
kernel_ok() { [ "$(cat "$kernel_dir/package" 2>/dev/null)" = "$1" ] && [ -f "$kernel_dir/vmlinuz" ]; }
virtiofsd_ok() { "$tools/bin/virtiofsd" --version 2>/dev/null | grep -q "$virtiofsd_version"; }
# The unprivileged user a root aegisd hands each QEMU to (aegis-vmm's qemu/confinement.rs).
vm_user=aegis-vm
vm_user_ok() { id -u "$vm_user" >/dev/null 2>&1; }

# --- check mode ---------------------------------------------------------------------------
if [ "$mode" = check ]; then
  problems=0
  report() { printf '%-14s %-20s %s\n' "$1" "$2" "$3"; }
  mapfile -t missing < <(missing_packages)
  for p in "${missing[@]}"; do report "would install" "$p" "(Debian package)"; problems=1; done
  if [ -n "$(installed_version qemu-system-x86)" ] && ! qemu_pair_ok; then
    report "would install" "qemu pair" "qemu-system-x86 $(installed_version qemu-system-x86)" \
      "and qemu-utils $(installed_version qemu-utils) differ"
    problems=1
  fi
  for entry in "${commands[@]}"; do
    read -r program pkg <<<"$entry"
    [[ " ${missing[*]} " == *" $pkg "* ]] && continue
    if ! path="$(find_program "$program")"; then
      report "MISSING" "$program" "package $pkg is installed but does not provide it"
      problems=1
      continue
    fi
    owner="$(file_owner "$path")"
    if [ -z "$owner" ]; then
      report "NOT FROM APT" "$program" "$path belongs to no package (installed by hand?)"
      problems=1
    elif ! provided_by "$pkg" "$owner"; then
      report "NOT FROM APT" "$program" "$path comes from $owner, not from $pkg"
      problems=1
    else
      report "ok" "$program" "$path ($owner $(installed_version "$owner"))"
    fi
  done
  if [ ${#pips[@]} -gt 0 ]; then
    if ! venv_ok; then
      report "would create" "venv" "$venv (with $system_python -m venv)"; problems=1
    else
      owner="$(file_owner "$venv/bin/python")"
      if [ -z "$owner" ]; then
        report "NOT FROM APT" "venv" "$venv/bin/python is not Debian's python3 (made by hand?)"
        problems=1
      else
        report "ok" "venv" "$venv ($owner $(installed_version "$owner"))"
      fi
    fi
    mapfile -t missing_pip < <(missing_pips)
    for spec in "${pips[@]}"; do
      if [[ " ${missing_pip[*]} " == *" $spec "* ]]; then
        report "would install" "${spec%%==*}" "$spec from PyPI into $venv"; problems=1
      else
        report "ok" "${spec%%==*}" "$spec in $venv"
      fi
    done
  fi
  if [ ${#npms[@]} -gt 0 ]; then
    mapfile -t missing_npm < <(missing_npms)
    for spec in "${npms[@]}"; do
      if [[ " ${missing_npm[*]} " == *" $spec "* ]]; then
        report "would install" "${spec%@*}" "$spec from npm into $npm_dir"; problems=1
      else
        report "ok" "${spec%@*}" "$spec in $npm_dir"
      fi
    done
  fi
  if vm_user_ok; then report "ok" "VM user" "$vm_user (uid $(id -u "$vm_user")): QEMU runs as it"
  else report "would create" "VM user" "$vm_user (system user QEMU runs as)"; problems=1; fi
  kpkg="$(kernel_package)"
  if [ -z "$kpkg" ]; then report "would fetch" "guest kernel" "(run apt-get update first)"; problems=1
  elif kernel_ok "$kpkg"; then report "ok" "guest kernel" "$kpkg in $kernel_dir"
  else report "would fetch" "guest kernel" "$kpkg into $kernel_dir"; problems=1; fi
  if virtiofsd_ok; then report "ok" "virtiofsd" "$tools/bin/virtiofsd $virtiofsd_version"
  else report "would build" "virtiofsd" "$virtiofsd_version into $tools"; problems=1; fi
  for b in aegis aegisd guest/aegis-harness; do
    if [ -x "$repo/target/release/$b" ]; then report "ok" "$b" "$repo/target/release/$b"
    else report "would build" "$b" "scripts/build.sh"; problems=1; fi
  done
  if [ -x "$repo/target/release/aegis" ]; then
    say "aegis doctor"
    PATH="$repo/target/release:$bin_dir:$PATH" "$repo/target/release/aegis" doctor || problems=1
  fi
  [ "$problems" = 0 ] || { echo "setup --check: the machine is not set up; run ./setup.sh" >&2; exit 1; }
  say "everything the tests use is installed by setup.sh"
  exit 0
fi

# --- 1. system packages -------------------------------------------------------------------
mapfile -t missing < <(missing_packages)
if [ ${#missing[@]} -gt 0 ] || ! qemu_pair_ok; then
  say "installing system packages: ${missing[*]:-(none)}; QEMU and qemu-utils as one version"
  "${sudo[@]}" apt-get update -qq
  pair="$(qemu_pair_version)"
  [ -n "$pair" ] && [ "$pair" != "(none)" ] ||
    die "no qemu-system-x86 in this host's apt sources (see \`apt-cache policy qemu-system-x86\`)"
  have="$(installed_version qemu-utils)"
  if [ -n "$have" ] && [ "$have" != "$pair" ]; then
    say "qemu-utils $have has no matching qemu-system-x86 in this host's apt sources;" \
        "installing both at $pair"
  fi
  rest=()
  for p in "${missing[@]}"; do
    case "$p" in qemu-system-x86|qemu-utils) ;; *) rest+=("$p") ;; esac
  done
  apt_install --allow-downgrades "qemu-system-x86=$pair" "qemu-utils=$pair" "${rest[@]}" ||
    die "apt-get refused the packages above: it would have had to remove an installed package," \
        "or one is not in this host's apt sources; nothing was removed"
  qemu_pair_ok || die "qemu-system-x86 $(installed_version qemu-system-x86) and qemu-utils" \
                      "$(installed_version qemu-utils) still differ"
else
  say "system packages present"
fi

# --- 1b. PyPI packages (test tools), in a virtual environment --------------------------------
if [ ${#pips[@]} -gt 0 ]; then
  if ! venv_ok; then
    say "creating the virtual environment $venv"
    rm -rf "$venv"
    "$system_python" -m venv "$venv" ||
      die "cannot create $venv with $system_python -m venv (is python3-venv installed?)"
  fi
  mapfile -t missing_pip < <(missing_pips)
  if [ ${#missing_pip[@]} -gt 0 ]; then
    say "installing from PyPI into $venv: ${missing_pip[*]}"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${missing_pip[@]}" ||
      die "pip could not install ${missing_pip[*]} into $venv (see its message above)"
    mapfile -t missing_pip < <(missing_pips)
    [ ${#missing_pip[@]} -eq 0 ] || die "after pip install, $venv still lacks ${missing_pip[*]}"
  else
    say "PyPI packages present: ${pips[*]}"
  fi
fi
# --- 1b'. npm packages (test tools), in their own prefix ------------------------------------
if [ ${#npms[@]} -gt 0 ]; then
  mapfile -t missing_npm < <(missing_npms)
  if [ ${#missing_npm[@]} -gt 0 ]; then
    say "installing from npm into $npm_dir: ${missing_npm[*]}"
    mkdir -p "$npm_dir"
    npm install --prefix "$npm_dir" --no-audit --no-fund --silent "${missing_npm[@]}" ||
      die "npm could not install ${missing_npm[*]} into $npm_dir (see its message above)"
    mapfile -t missing_npm < <(missing_npms)
    [ ${#missing_npm[@]} -eq 0 ] || die "after npm install, $npm_dir still lacks ${missing_npm[*]}"
  else
    say "npm packages present: ${npms[*]}"
  fi
fi
# --- 1c. the user QEMU runs as --------------------------------------------------------------
# A root aegisd switches each QEMU to this user once it has opened its files, so a guest that
# escapes QEMU cannot read ~/.aegis (master key, secrets, other disks).
if ! vm_user_ok; then
  say "creating the system user $vm_user (QEMU runs as it)"
  "${sudo[@]}" useradd --system --no-create-home --home-dir /nonexistent \
    --shell /usr/sbin/nologin "$vm_user" || die "useradd could not create the user $vm_user"
else
  say "VM user $vm_user present"
fi
command -v cargo >/dev/null || die "cargo not found: install the Rust toolchain (rustup) first"

# --- 2. guest kernel ----------------------------------------------------------------------
kpkg="$(kernel_package)"
[ -n "$kpkg" ] || die "cannot resolve linux-image-cloud-amd64 (is apt's package list up to date?)"
if ! kernel_ok "$kpkg"; then
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
if ! virtiofsd_ok; then
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
  say "building the default image $default_image (Debian minbase + python3)"
  work="$(mktemp -d)"; trap 'rm -rf "$work"' EXIT
  chmod 755 "$work"
  # From the host's own apt sources for its release, not from a mirror named here.
  suite="$(. /etc/os-release && echo "${VERSION_CODENAME:-bookworm}")"
  mapfile -t mirrors < <(apt-get indextargets --format '$(REPO_URI) $(RELEASE) $(COMPONENT)' \
      'Created-By: Packages' | awk -v s="$suite" '$2 == s || index($2, s "-") == 1' | sort -u |
      awk '{print "deb " $0}')
  [ ${#mirrors[@]} -gt 0 ] || die "no apt source for $suite on this host (see /etc/apt/sources.list.d)"
  "${sudo[@]}" mmdebstrap --quiet --variant=minbase --include=python3,iproute2,procps \
    --mode=root "$suite" "$work/rootfs.tar" "${mirrors[@]}"
  "${sudo[@]}" chown "$(id -u):$(id -g)" "$work/rootfs.tar"
  aegis image import --rootfs "$work/rootfs.tar" --tag "$default_image"
  rm -f "$work/rootfs.tar"
else
  say "default image $default_image present"
fi

# --- 5. check, then a first run -------------------------------------------------------------
say "aegis doctor"
aegis doctor || die "aegis doctor found a problem (its FAIL lines above say how to fix it)"
if [ "${AEGIS_SKIP_HELLO:-0}" != 1 ]; then
  say "aegis run -- echo hello from aegis"
  aegis run -- echo hello from aegis
fi
