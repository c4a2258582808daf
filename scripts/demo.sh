#!/usr/bin/env bash
# Installs what is missing, builds shmbus, and runs the demo: a publisher
# and two watcher processes on a bus (typed channel, watchers asleep on
# their eventfd doorbells between ticks), then the low-level ping-pong of
# two processes through a memfd region and two eventfds.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
[ -d build ] || meson setup build --wrap-mode=nodownload
ninja -C build samples/ticker samples/pingpong
./build/samples/ticker demo 10
./build/samples/pingpong --rounds 10
