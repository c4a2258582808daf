#!/usr/bin/env bash
# Installs what is missing, builds shmbus, and runs the demo: two processes
# exchanging messages through shared memory and eventfd doorbells.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
[ -d build ] || meson setup build --wrap-mode=nodownload
ninja -C build samples/pingpong
./build/samples/pingpong --rounds 10
