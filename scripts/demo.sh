#!/usr/bin/env bash
# Installs what is missing, builds shmbus, and runs the demo: a scripted
# chat between three processes (lines on a shared-memory channel, history in
# a durable log, members asleep on eventfd doorbells between lines), a late
# joiner who sees the history, then a publisher and two watchers on a bus.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-deps.sh
[ -d build ] || meson setup build --wrap-mode=nodownload
ninja -C build samples/chat samples/ticker samples/pingpong

work=$(mktemp -d)
trap 'rm -rf "$work"; rm -f /dev/shm/shmbus.chat-"$room" /dev/shm/shmbus.chat-"$room".*' EXIT
room="demo$$"
say() { printf '%s\n' "$@" > "$work/$1.script.tmp"; tail -n +2 "$work/$1.script.tmp" > "$work/$1.script"; }
say alice "@wait-members 3" "hi all, alice here" "shall we ship the durable log today?" "@wait-lines 6"
say bob   "@wait-members 3" "bob here: tests are green" "ship it" "@wait-lines 6"
say carol "@wait-members 3" "benchmarks look good" "agreed" "@wait-lines 6"
say dave  "@quit"
chat() { ./build/samples/chat --room "$room" --name "$1" --script "$work/$1.script" --log-dir "$work/log"; }

echo "=== three members chat (each transcript below is one process's screen) ==="
for who in alice bob carol; do chat "$who" > "$work/$who.out" & done
wait
for who in alice bob carol; do echo "--- $who sees:"; cat "$work/$who.out"; done
echo "=== dave joins after everyone left: the history comes from the durable log ==="
chat dave
echo "=== ticker: a publisher and two watcher processes on a bus ==="
./build/samples/ticker demo 5
