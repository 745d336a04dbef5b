#!/usr/bin/env bash
# Cache-hit throughput of the edge with access logging and per-minute statistics on versus both
# off (issue 6: the cost must stay under 5 %). Two edges from the same release binary, same origin, same objects, measured
# in interleaved rounds (the machine is shared: servers drift together, so compare per round).
#
#   cargo build --release -p relais && bench/logging.sh      # ROUNDS=5 DURATION=8s CONNS=64
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-5}
DURATION=${DURATION:-8s}
CONNS=${CONNS:-64}
BIN=target/release/relais
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
  RELAIS_LOG=warn "$BIN" edge --config "$WORK/$mode.toml" >/dev/null 2>&1 & PIDS+=($!)
done
for p in $OFF $ON; do
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$p/bytes/1024" >/dev/null && break; sleep 0.05; done
  curl -sf "http://127.0.0.1:$p/bytes/1024" >/dev/null
done
rps() { wrk -t1 -c"$CONNS" -d"$DURATION" "http://127.0.0.1:$1/bytes/1024" | awk '/Requests\/sec/ {print $2}'; }
echo "| Round | logs+stats off (req/s) | logs+stats on (req/s) | on/off |"
echo "|---|---|---|---|"
ratios=()
for r in $(seq "$ROUNDS"); do
  # Alternate which goes first, so a drift of the machine does not favour one side.
  if [ $((r % 2)) -eq 1 ]; then a=$(rps $OFF); b=$(rps $ON); else b=$(rps $ON); a=$(rps $OFF); fi
  ratio=$(python3 -c "print(f'{$b/$a:.3f}')")
  ratios+=("$ratio")
  echo "| $r | $a | $b | $ratio |"
done
python3 - "${ratios[@]}" <<'PY'
import statistics, sys
r = [float(x) for x in sys.argv[1:]]
print(f"\nMedian on/off: {statistics.median(r):.3f} (cost {100*(1-statistics.median(r)):.1f} %)")
PY
lines=$(cat "$WORK"/logs/bench/*.log 2>/dev/null | wc -l)
echo "Lines written by the logging edge: $lines"
