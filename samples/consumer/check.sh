#!/usr/bin/env bash
# Builds and runs samples/consumer the two ways a user would use shmbus,
# from a clean temporary directory:
#   (a) shmbus under the consumer's subprojects/ (the dependency() fallback);
#   (b) shmbus built, `meson install`ed to a prefix, found by pkg-config,
#       with no subproject to fall back to.
#
#   check.sh SHMBUS_SOURCE_ROOT
#
# Exits non-zero on any failure. SHMBUS_KEEP_TMP=1 keeps the directory.
set -euo pipefail

root=$(cd "${1:?usage: check.sh SHMBUS_SOURCE_ROOT}" && pwd)
tmp=$(mktemp -d "${TMPDIR:-/tmp}/shmbus-consumer.XXXXXX")
cleanup() {
  if [ "${SHMBUS_KEEP_TMP:-0}" = 1 ]; then echo "check.sh: kept $tmp"; else rm -rf "$tmp"; fi
}
trap cleanup EXIT

# Only what the user's environment would give: no library path from a
# surrounding build (meson test), no pkg-config path but ours.
unset LD_LIBRARY_PATH PKG_CONFIG_PATH

step() { echo; echo "=== check.sh: $*"; }
run() { echo "+ $*"; "$@"; }

# A copy of the shmbus sources: the files git knows (tracked, or untracked
# and not ignored), or, outside a git checkout, everything but build*/ and
# .git. Never build directories or unpacked wrap subprojects.
copy_sources() {
  local dest=$1
  mkdir -p "$dest"
  if git -C "$root" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    (
      cd "$root"
      git ls-files -z --cached --others --exclude-standard |
        while IFS= read -r -d '' f; do
          case $f in
            build*/* | .git/* | samples/consumer/build*/* | samples/consumer/subprojects/*) continue ;;
            subprojects/packagefiles/*) ;;
            subprojects/*/*) continue ;;
          esac
          [ -e "$f" ] || [ -L "$f" ] || continue  # deleted in the working tree
          printf '%s\0' "$f"
        done |
        tar --null -T - -cf -
    ) | tar -C "$dest" -xf -
  else
    tar -C "$root" --exclude='./build*' --exclude=./.git --exclude='./samples/consumer/build*' \
      --exclude=./samples/consumer/subprojects -cf - . | tar -C "$dest" -xf -
  fi
  [ -f "$dest/meson.build" ] || { echo "check.sh: no meson.build copied from $root" >&2; exit 1; }
}

# Runs the consumer and checks that it uses the libshmbus it should.
run_consumer() {
  local exe=$1 expect_lib_under=$2
  local lib
  lib=$(ldd "$exe" | awk '$1 ~ /^libshmbus\.so/ {print $3}')
  echo "libshmbus: ${lib:-(not found)}"
  case $lib in
    "$expect_lib_under"/*) ;;
    *) echo "check.sh: $exe should load libshmbus from $expect_lib_under" >&2; exit 1 ;;
  esac
  run "$exe"
}

step "copying $root to $tmp"
copy_sources "$tmp/shmbus-src"

# ---- (a) as a subproject ------------------------------------------------------
step "(a) shmbus as a subproject of the consumer"
mkdir -p "$tmp/with-subproject/subprojects"
cp -R "$tmp/shmbus-src/samples/consumer/." "$tmp/with-subproject/"
cp -R "$tmp/shmbus-src" "$tmp/with-subproject/subprojects/shmbus"
# --force-fallback-for: the subproject even where an installed shmbus.pc exists.
run meson setup "$tmp/with-subproject/build" "$tmp/with-subproject" \
  --wrap-mode=nodownload --force-fallback-for=shmbus -Dbuildtype=plain
run ninja -C "$tmp/with-subproject/build"
run_consumer "$tmp/with-subproject/build/consumer" "$tmp/with-subproject/build/subprojects/shmbus"

# ---- (b) installed, found by pkg-config ------------------------------------------
step "(b) shmbus installed to $tmp/prefix, found by pkg-config"
# Only the library: no tests, samples, benchmarks or tool (the plain build
# tests the tool; here it would double the compile).
run meson setup "$tmp/shmbus-build" "$tmp/shmbus-src" --prefix="$tmp/prefix" \
  --wrap-mode=nodownload -Dbuildtype=plain -Dtests=disabled -Dsamples=disabled -Dbenchmarks=disabled \
  -Dtools=disabled
run ninja -C "$tmp/shmbus-build"
run meson install -C "$tmp/shmbus-build" --quiet
pc=$(find "$tmp/prefix" -name shmbus.pc -path '*/pkgconfig/*' | head -n 1)
[ -n "$pc" ] || { echo "check.sh: meson install wrote no shmbus.pc" >&2; exit 1; }
echo "$pc:"
cat "$pc"
export PKG_CONFIG_PATH=${pc%/shmbus.pc}
libdir=$(pkg-config --variable=libdir shmbus)

mkdir -p "$tmp/installed"
cp -R "$tmp/shmbus-src/samples/consumer/." "$tmp/installed/"
# nofallback: a missing or broken shmbus.pc fails here instead of being hidden.
run meson setup "$tmp/installed/build" "$tmp/installed" --wrap-mode=nofallback -Dbuildtype=plain
run ninja -C "$tmp/installed/build"
export LD_LIBRARY_PATH=$libdir
run_consumer "$tmp/installed/build/consumer" "$libdir"

step "both ways passed"
