#!/usr/bin/env bash
# Cache-hit throughput of the edge with access logging and per-minute statistics on versus both
# off (issue 6: the cost must stay under 5 %). Two edges from the same release binary, same origin, same objects, measured
# in interleaved rounds (the machine is shared: servers drift together, so compare per round).
# On a machine with two cores or more, the edges run on core 0 and wrk on core 1 (PIN=0 to
# share them): the edge is then the bottleneck, so its cost shows whole instead of being diluted
# by the load generator competing for the same cores. Besides req/s, each round reports the
# edge's CPU time per request (user + system, from /proc), the steadier of the two figures.
#
#   cargo build --release -p relais && bench/logging.sh      # ROUNDS=9 DURATION=6s CONNS=64 PIN=1
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-9}
DURATION=${DURATION:-6s}
PIN=${PIN:-1}
CONNS=${CONNS:-64}
BIN=target/release/relais
EDGE_CPU=""; WRK_CPU=""
if [ "$PIN" = 1 ] && [ "$(nproc)" -ge 2 ]; then EDGE_CPU="taskset -c 0"; WRK_CPU="taskset -c 1"; fi
command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
WORK=$(mktemp -d /tmp/relais-logbench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.3; rm -rf "$WORK"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
OPORT=$(free_port); OFF=$(free_port); ON=$(free_port)
"$BIN" demo-origin --listen "127.0.0.1:$OPORT" >/dev/null 2>&1 & PIDS+=($!)
for mode in off on; do
  port=$OFF; extra=""
  if [ "$mode" = on ]; then port=$ON; extra="access_log = \"$WORK/logs\"
stats_dir = \"$WORK/stats\""; fi
  cat > "$WORK/$mode.toml" <<TOML
version = 1
[edge]
listen = ["127.0.0.1:$port"]
$extra
[[site]]
name = "bench"
hosts = ["*"]
[[site.origin]]
url = "http://127.0.0.1:$OPORT"
TOML
  RELAIS_LOG=warn $EDGE_CPU "$BIN" edge --config "$WORK/$mode.toml" >/dev/null 2>&1 & PIDS+=($!)
  [ "$mode" = off ] && OFF_PID=$! || ON_PID=$!
done
for p in $OFF $ON; do
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$p/bytes/1024" >/dev/null && break; sleep 0.05; done
  curl -sf "http://127.0.0.1:$p/bytes/1024" >/dev/null
done
# Prints "req/s µs-of-edge-CPU-per-request" for one wrk run against port $1, edge pid $2.
run() {
  local t0 t1 out
  t0=$(awk '{print $14+$15}' "/proc/$2/stat")
  out=$($WRK_CPU wrk -t1 -c"$CONNS" -d"$DURATION" "http://127.0.0.1:$1/bytes/1024")
  t1=$(awk '{print $14+$15}' "/proc/$2/stat")
  python3 - "$t0" "$t1" "$(getconf CLK_TCK)" "$out" <<'PY'
import re, sys
t0, t1, hz, out = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
n = int(re.search(r"(\d+) requests in", out).group(1))
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
print(f"{rps:.0f} {(t1 - t0) / hz * 1e6 / n:.2f}")
PY
}
echo "| Round | off (req/s) | on (req/s) | on/off req/s | off (µs CPU/req) | on (µs CPU/req) | on/off CPU |"
echo "|---|---|---|---|---|---|---|"
ratios=()
cpu_ratios=()
for r in $(seq "$ROUNDS"); do
  # Alternate which goes first, so a drift of the machine does not favour one side.
  if [ $((r % 2)) -eq 1 ]; then a=$(run $OFF $OFF_PID); b=$(run $ON $ON_PID); else b=$(run $ON $ON_PID); a=$(run $OFF $OFF_PID); fi
  read -r a_rps a_cpu <<<"$a"; read -r b_rps b_cpu <<<"$b"
  ratio=$(python3 -c "print(f'{$b_rps/$a_rps:.3f}')")
  cpu_ratio=$(python3 -c "print(f'{$b_cpu/$a_cpu:.3f}')")
  ratios+=("$ratio"); cpu_ratios+=("$cpu_ratio")
  echo "| $r | $a_rps | $b_rps | $ratio | $a_cpu | $b_cpu | $cpu_ratio |"
done
python3 - "${ratios[*]}" "${cpu_ratios[*]}" <<'PY'
import statistics, sys
r = [float(x) for x in sys.argv[1].split()]
c = [float(x) for x in sys.argv[2].split()]
print(f"\nMedian on/off throughput: {statistics.median(r):.3f} (cost {100*(1-statistics.median(r)):.1f} %)")
print(f"Median on/off CPU per request: {statistics.median(c):.3f} (cost {100*(statistics.median(c)-1):.1f} %)")
PY
lines=$(cat "$WORK"/logs/bench/*.log 2>/dev/null | wc -l)
echo "Lines written by the logging edge: $lines"
