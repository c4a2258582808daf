#!/usr/bin/env bash
# Installs what is missing, builds shmbus, and runs every test: in a plain
# build (gcc, warnings as errors), in an AddressSanitizer+UBSan build, in a
# ThreadSanitizer build, and compiles the library with clang. Prints one
# closing line "shmbus: N passed, N failed, N skipped".
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh

jobs=$(nproc)
passed=0 failed=0 skipped=0

# meson test's summary lines ("Ok:", "Fail:", ...) added to the totals.
count() {
  local log=$1
  local ok fail timeout skip xfail xpass
  ok=$(awk '/^Ok:/ {print $2}' "$log"); fail=$(awk '/^Fail:/ {print $2}' "$log")
  timeout=$(awk '/^Timeout:/ {print $2}' "$log"); skip=$(awk '/^Skipped:/ {print $2}' "$log")
  xfail=$(awk '/^Expected Fail:/ {print $3}' "$log"); xpass=$(awk '/^Unexpected Pass:/ {print $3}' "$log")
  passed=$((passed + ${ok:-0} + ${xfail:-0}))
  failed=$((failed + ${fail:-0} + ${timeout:-0} + ${xpass:-0}))
  skipped=$((skipped + ${skip:-0}))
}

# run_suite NAME BUILD_DIR [meson setup options...]
run_suite() {
  local name=$1 dir=$2
  shift 2
  echo "=== $name"
  if [ ! -d "$dir" ]; then
    meson setup "$dir" --wrap-mode=nodownload -Dwerror=true "$@"
  fi
  ninja -C "$dir" -j "$jobs"
  local log
  log=$(mktemp)
  # Sanitizer reports fail the test instead of scrolling by.
  ASAN_OPTIONS=abort_on_error=1:detect_leaks=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
  TSAN_OPTIONS=halt_on_error=1:second_deadlock_stack=1 \
    meson test -C "$dir" --print-errorlogs --num-processes "$jobs" 2>&1 | tee "$log" || true
  count "$log"
  rm -f "$log"
}

# CI must stay under 20 minutes on two cores, and compiling is most of it,
# so each build is set up to compile what it needs and no more:
# - the plain build optimizes (-O2) but carries no debug information, which
#   costs an eighth of the compile and is only read in a debugger;
# - the sanitized builds leave out the benchmarks (their smoke runs belong
#   to the plain build);
# - ThreadSanitizer's build uses -O1, which its documentation names as
#   enough for reasonable speed, and which compiles in two thirds of the
#   time of -O2.
run_suite "gcc, -O2" build-ci -Ddebug=false
run_suite "gcc, address + undefined sanitizers" build-ci-asan -Db_sanitize=address,undefined -Db_lundef=false \
  -Dbuildtype=debug -Dbenchmarks=disabled
run_suite "gcc, thread sanitizer" build-ci-tsan -Db_sanitize=thread -Db_lundef=false -Dbenchmarks=disabled \
  -Doptimization=1

# clang compiles the library (what users build, with the public headers
# it includes); the tests, tools and samples took it four more minutes,
# which CI on two slow cores cannot spare.
echo "=== clang (the library, compile only, warnings as errors)"
[ -d build-ci-clang ] || CXX=clang++ meson setup build-ci-clang --wrap-mode=nodownload -Dwerror=true
meson compile -C build-ci-clang -j "$jobs" lib/shmbus:shared_library

echo "shmbus: $passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ] && [ "$passed" -gt 0 ]
