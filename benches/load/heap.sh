#!/usr/bin/env bash
# Heap bytes per open stream, by allocation site, from valgrind's massif: deterministic
# where resident memory is not.
#
#   benches/load/heap.sh [--streams N] [--out DIR] [--nexus PATH] [--log-level L] [--depth D]
#
# Starts nexus-mock (40 events a second apart: each stream stays open about 40 s), then
# `nexus serve` (release) under massif with the 100-backend config, warms it with one
# stream, takes a detailed heap snapshot (through valgrind's gdbserver: `vgdb ...
# detailed_snapshot`), opens N streams at once (default 500, oha), waits until they are
# all open, takes a second snapshot, and prints the difference per stream, by allocation
# path (the first D frames above the allocator, default 3): what one more open stream
# holds on the heap. Needs valgrind and oha. Builds nexus and nexus-mock in release first;
# `--nexus PATH` measures that binary instead. Resident memory is lower than the heap
# (untouched pages of large buffers are never resident): see docs/performance.md, "Memory
# per open stream".
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
streams=500
nexus=
log_level=info
depth=3
out="$root/target/load/heap"
while [ $# -gt 0 ]; do
  case "$1" in
    --streams) streams=$2; shift 2 ;;
    --out) out=$2; shift 2 ;;
    --nexus) nexus=$2; shift 2 ;;
    --log-level) log_level=$2; shift 2 ;;
    --depth) depth=$2; shift 2 ;;
    *) echo "heap.sh: unknown argument $1 (see the header of this script)" >&2; exit 2 ;;
  esac
done
command -v vgdb >/dev/null || { echo "heap.sh: vgdb (valgrind's gdbserver client) is not installed" >&2; exit 1; }
script=heap.sh
. "$here/valgrind-common.sh"
rm -f "$out"/massif.out "$out"/*.ms "$out"/vgdb*
mock_port=9391
gw_port=9392
"$release/nexus-mock" --listen "127.0.0.1:$mock_port" --threads 1 --chunks 40 --chunk-interval-ms 1000 \
  >"$out/mock.log" 2>&1 &
pids+=($!)
python3 "$here/fleet.py" --backends 100 --upstream "http://127.0.0.1:$mock_port" --health-secs 3600 \
  --max-concurrency $((streams + 200)) >"$out/fleet.toml"
valgrind --tool=massif --vgdb=yes --vgdb-prefix="$out/vgdb" --pages-as-heap=no --depth=40 \
  --threshold=0.01 --massif-out-file="$out/massif.out" \
  "$nexus" serve --config "$out/fleet.toml" --listen "127.0.0.1:$gw_port" --log-level "$log_level" \
  >"$out/gateway.log" 2>&1 &
gw=$!
pids+=($gw)
wait_healthy "$gw_port"
body='{"model":"mock-model","messages":[{"role":"user","content":"Say hello in five words."}],"max_tokens":32,"stream":true,"stream_options":{"include_usage":true}}'
send() {
  oha --no-tui -m POST -T application/json -d "$body" -c "$1" -n "$1" -t 300s \
    "http://127.0.0.1:$gw_port/v1/chat/completions" >"$out/oha-$1.txt"
}
send 1
sleep 2
vgdb --vgdb-prefix="$out/vgdb" --pid="$gw" detailed_snapshot "$out/warm.ms" >/dev/null
send "$streams" &
load=$!
# Every stream open: the mock has answered the headers of all of them (its log counts
# nothing, so wait on the gateway's sockets: one to the client and one upstream each).
for _ in $(seq 1 240); do
  open=$(ls /proc/"$gw"/fd 2>/dev/null | wc -l)
  [ "$open" -ge $((2 * streams)) ] && break
  sleep 0.5
done
sleep 3
vgdb --vgdb-prefix="$out/vgdb" --pid="$gw" detailed_snapshot "$out/open.ms" >/dev/null
wait "$load"
grep -E "Success rate|\] [0-9]+ responses" "$out/oha-$streams.txt" || true
python3 "$here/heap_diff.py" "$out/warm.ms" "$out/open.ms" "$streams" --depth "$depth" | tee "$out/per-stream.txt"
