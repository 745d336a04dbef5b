#!/usr/bin/env bash
# User-space instructions per 1 KiB cache hit, recording off versus logs + statistics on: a
# deterministic complement to bench/logging.sh on machines whose speed drifts. Each edge runs
# under valgrind's callgrind (one core), is warmed with wrk, then counted during one wrk run.
# The kernel's share (TCP on loopback, about two thirds of a hit) is not counted.
#
#   cargo build --release -p relais && bench/instructions.sh        # DURATION=20s SIZE=1024
#   callgrind_annotate /tmp/relais-instr.*/on/cg.out*                # where the instructions go
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=$PWD/target/release/relais
DURATION=${DURATION:-20s}
SIZE=${SIZE:-1024}
for tool in valgrind wrk; do
  command -v $tool >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $tool >/dev/null; }
done
WORK=$(mktemp -d "${TMPDIR:-/tmp}/relais-instr.XXXXXX")
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
. bench/lib.sh
OP=$(free_port)
"$BIN" demo-origin --listen "127.0.0.1:$OP" >/dev/null 2>&1 & PIDS+=($!)
for mode in off on; do
  W=$WORK/$mode; mkdir -p "$W"
  EP=$(free_port)
  extra=""
  [ "$mode" = on ] && extra="access_log = \"$W/logs\"
stats_dir = \"$W/stats\""
  edge_config "$W/edge.toml" "$EP" "$OP" "$extra"
  (cd "$W" && RELAIS_LOG=warn exec taskset -c 0 valgrind --tool=callgrind --callgrind-out-file="$W/cg.out" \
    "$BIN" edge --config "$W/edge.toml" >/dev/null 2>"$W/valgrind.err") & E=$!; PIDS+=($E)
  for _ in $(seq 600); do curl -sf "http://127.0.0.1:$EP/bytes/$SIZE" >/dev/null && break; sleep 0.1; done
  taskset -c 1 wrk -t1 -c16 -d5s "http://127.0.0.1:$EP/bytes/$SIZE" >/dev/null
  callgrind_control -z "$E" >/dev/null
  out=$(taskset -c 1 wrk -t1 -c16 -d"$DURATION" "http://127.0.0.1:$EP/bytes/$SIZE")
  callgrind_control -d "$E" >/dev/null
  sleep 1
  n=$(echo "$out" | grep -oP '\d+(?= requests in)')
  f=$(ls -t "$W"/cg.out* | head -1)
  ir=$(grep -m1 -P '^(summary|totals):' "$f" | awk '{print $2}')
  echo "$mode: $n requests, $ir instructions, $((ir / n)) per request"
  kill "$E" 2>/dev/null || true; wait "$E" 2>/dev/null || true
done
echo "profiles: $WORK/{off,on}/cg.out*"
