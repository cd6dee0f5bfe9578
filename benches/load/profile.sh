#!/usr/bin/env bash
# Instructions per proxied request, from callgrind: deterministic where timings are not.
#
#   benches/load/profile.sh [--requests N] [--stream] [--out DIR] [--nexus PATH] [--log-level L]
#                           [--floor]
#
# Starts nexus-mock, then `nexus serve` (release) under callgrind with the 100-backend
# config (health checks every hour, so none run during the count), warms it with 1 000
# requests, zeroes the counters, sends N requests (default 20 000, 4 connections, oha),
# dumps, and prints the gateway process's instructions divided by N (everything the
# process did: both HTTP sides, tokio, the decision) and the top inclusive functions.
# Needs valgrind and oha. Builds nexus and nexus-mock in release first; `--nexus PATH`
# profiles that binary instead (a build kept from before a change, to compare).
# `--log-level` is the gateway's (default error; `info` is what `nexus serve` runs by
# default, and counts the request log line and the spans). `--floor` profiles the
# passthrough instead (crates/gateway/examples/passthrough.rs: the gateway's HTTP server
# and upstream client with nothing between them), the floor Nexus's own work sits on.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
requests=20000
stream=false
nexus=
log_level=error
floor=false
out="$root/target/load/profile"
while [ $# -gt 0 ]; do
  case "$1" in
    --requests) requests=$2; shift 2 ;;
    --stream) stream=true; shift ;;
    --out) out=$2; shift 2 ;;
    --nexus) nexus=$2; shift 2 ;;
    --log-level) log_level=$2; shift 2 ;;
    --floor) floor=true; shift ;;
    *) echo "profile.sh: unknown argument $1 (see the header of this script)" >&2; exit 2 ;;
  esac
done
script=profile.sh
. "$here/valgrind-common.sh"
rm -f "$out"/callgrind.out*
mock_port=9381
gw_port=9382
"$release/nexus-mock" --listen "127.0.0.1:$mock_port" --threads 1 >"$out/mock.log" 2>&1 &
pids+=($!)
python3 "$here/fleet.py" --backends 100 --upstream "http://127.0.0.1:$mock_port" --health-secs 3600 >"$out/fleet.toml"
if [ "$floor" = true ]; then
  (cd "$root" && cargo build --release -q -p nexus-gateway --example passthrough)
  valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.out" \
    "$release/examples/passthrough" --listen "127.0.0.1:$gw_port" --upstream "http://127.0.0.1:$mock_port" \
    >"$out/gateway.log" 2>&1 &
else
  valgrind --tool=callgrind --callgrind-out-file="$out/callgrind.out" \
    "$nexus" serve --config "$out/fleet.toml" --listen "127.0.0.1:$gw_port" --log-level "$log_level" \
    >"$out/gateway.log" 2>&1 &
fi
gw=$!
pids+=($gw)
# The floor forwards every path, /health too: the mock answers its own 404, which curl -f
# counts as not yet up, so ask for the model list instead.
wait_healthy "$gw_port" "$([ "$floor" = true ] && echo /v1/models || echo /health)"
if [ "$stream" = true ]; then
  body='{"model":"mock-model","messages":[{"role":"user","content":"Say hello in five words."}],"max_tokens":32,"stream":true,"stream_options":{"include_usage":true}}'
else
  body='{"model":"mock-model","messages":[{"role":"user","content":"Say hello in five words."}],"max_tokens":32}'
fi
send() {
  oha --no-tui -m POST -T application/json -d "$body" -c 4 -n "$1" "http://127.0.0.1:$gw_port/v1/chat/completions" >"$out/oha-$1.txt"
}
send 1000
callgrind_control -z "$gw" >/dev/null
send "$requests"
callgrind_control -d "$gw" >/dev/null
grep -E "Success rate|\] [0-9]+ responses" "$out/oha-$requests.txt" || true
dump=$(ls -t "$out"/callgrind.out.* | head -1)
total=$(callgrind_annotate "$dump" | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}')
echo "instructions: $total over $requests requests = $((total / requests)) per request"
# A count is only worth its division if exactly the sent requests were decided in it:
# another run on the same ports, failed requests or counters not zeroed after the
# warm-up would all skew it (seen once in about ten runs on a shared machine).
ok=$(grep -cE "^ *\[200\] $requests responses" "$out/oha-$requests.txt" || true)
decided=$(callgrind_annotate --tree=calling --inclusive=yes --threshold=100 "$dump" 2>/dev/null |
  grep -m1 -oE "> +[^ ]*nexus_gateway::proxy::timed_decision \([0-9,]+x\)" |
  grep -oE "[0-9,]+x" | tr -d ',x' || true)
if [ "$floor" = true ]; then
  decided=$requests # the floor decides nothing: oha's count alone
fi
if [ "$ok" != 1 ] || [ "${decided:-0}" != "$requests" ]; then
  echo "profile.sh: NOT a valid count: oha's answers or the decisions counted (${decided:-none}) are not exactly $requests; run it again" >&2
  exit 3
fi
callgrind_annotate --inclusive=yes "$dump" 2>/dev/null | sed -n '1,60p' >"$out/inclusive.txt"
callgrind_annotate "$dump" 2>/dev/null | sed -n '1,45p' >"$out/exclusive.txt"
echo "top functions: $out/inclusive.txt, $out/exclusive.txt; dump: $dump"
