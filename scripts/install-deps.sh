#!/usr/bin/env bash
# Installs what building and testing shmbus needs on Debian 12, and only
# what is missing (run as root; uses sudo when not root).
set -euo pipefail

packages=(
  g++ clang            # both compilers are kept warning-free
  meson ninja-build pkg-config
  cmake                # Meson finds Debian's range-v3 through its CMake package
  liburing-dev libfmt-dev librange-v3-dev
  libcli11-dev         # the shmbus command's argument parser (header-only)
  catch2               # Catch2 v2, for the tests
  python3              # Meson itself, and the layout tests
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
echo "installing: ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q
$sudo apt-get install -y -q --no-install-recommends "${missing[@]}"
