#!/usr/bin/env bash
# Cache-hit throughput of the edge with access logging and per-minute statistics on versus both
# off (issue 6: the cost must stay under 5 %). Two edges from the same release binary, same
# origin, same objects.
#
# METHOD=paired (default, needs 2 cores): each edge has a core of its own (one worker thread
# each) and both are loaded at the same time by two wrk processes that float over both cores;
# the cores are swapped every round. The machine is a shared VM whose speed drifts by ±20 % over
# tens of seconds (steal time 5–20 %): measured at the same moment, both edges see the same
# drift, and the cheaper one simply gets more requests done in the same CPU time.
# METHOD=sequential: both edges on core 0, wrk on core 1, rounds of four runs off-on-on-off
# (REPEAT=n: n times in a round, with shorter runs, so that the machine's drift over a round
# touches both edges alike).
# Each round also reports the edges' CPU time per request (user + system, from /proc), and the
# run ends with the lines the logging edge dropped (its metric: a run that drops lines measured
# less work than it claims).
# RECORD=none runs an A/A comparison (two identical edges): it shows the method's own noise.
# BASELINE=path/to/another/relais compares two builds: the "off" edge runs that binary and
# records exactly as the "on" one does (what RECORD says), so the ratio is the new build's
# against the old one's.
# BIN=path/to/relais measures that build instead of target/release/relais.
# COPIES=round (default): the edges run a fresh copy of their binary every round; COPIES=run:
# one copy for the whole run. Two sequential runs of one build 12 minutes apart gave 0.928 and
# 0.952 with each run's rounds tightly grouped (0.905-0.938, 0.940-0.966): an effect that lasts
# a run, and a run used one copy of the binary, whose place in the page cache is known to change
# its speed by several per cent (bench/lib.sh). With a copy per round, each round has its own
# placement and the median is taken over them.
# PEER=nginx measures nginx (proxy_cache, one worker, no master) the same way, access_log off
# versus on (combined, buffer=64k flush=1s: nginx's cheapest setting), for comparison.
#
#   cargo build --release -p relais && bench/logging.sh      # ROUNDS=15 DURATION=5s CONNS=64 SIZE=1024
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-15}
DURATION=${DURATION:-5s}
METHOD=${METHOD:-paired}
# What the "on" edge records: both (the issue's figure), log (access log only), stats (only),
# none (an A/A run: shows the noise of the machine).
RECORD=${RECORD:-both}
PEER=${PEER:-relais}
CONNS=${CONNS:-64}
# Size of the cached object, in bytes.
SIZE=${SIZE:-1024}
REPEAT=${REPEAT:-1}
BIN=${BIN:-target/release/relais}
OFF_BIN=${BASELINE:-$BIN}
[ "$(nproc)" -ge 2 ] || { echo "this benchmark needs two cores" >&2; exit 1; }
WRK_CPU=""
[ "$METHOD" = sequential ] && WRK_CPU="taskset -c 1"
command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
# The logs go where TMPDIR says (default /tmp, on the disk: its write-back is part of the cost).
WORK=$(mktemp -d "${TMPDIR:-/tmp}/relais-logbench.XXXXXX")
PIDS=()
OFF_PID=""; ON_PID=""
cleanup() { for p in "${PIDS[@]}" $OFF_PID $ON_PID; do kill "$p" 2>/dev/null || true; done; sleep 0.3; rm -rf "$WORK"; }
trap cleanup EXIT
. bench/lib.sh
# Fresh copies (see `fresh_copies`); without BASELINE both edges run the same copy.
COPIES=${COPIES:-round}
SRC_BIN=$BIN; SRC_OFF_BIN=$OFF_BIN
fresh_copies "$WORK" "$BIN" relais-origin
# Copies the edges' binaries afresh (named after $1), removing the previous copies.
copy_edges() {
  rm -f "$WORK"/relais-on.* "$WORK"/relais-off.*
  fresh_copies "$WORK" "$SRC_BIN" "relais-on.$1"
  BIN=$WORK/relais-on.$1; OFF_BIN=$BIN
  if [ -n "${BASELINE:-}" ]; then
    fresh_copies "$WORK" "$SRC_OFF_BIN" "relais-off.$1"
    OFF_BIN=$WORK/relais-off.$1
  fi
}
OPORT=$(free_port); OFF=$(free_port); ON=$(free_port); ON_ADMIN=$(free_port)
"$WORK/relais-origin" demo-origin --listen "127.0.0.1:$OPORT" >/dev/null 2>&1 & PIDS+=($!)
for mode in off on; do
  port=$OFF; extra=""
  [ "$mode" = on ] && port=$ON
  if [ "$mode" = on ] || [ -n "${BASELINE:-}" ]; then
    case $RECORD in both|log) extra="access_log = \"$WORK/logs-$mode\"";; esac
    case $RECORD in both|stats) extra="$extra
stats_dir = \"$WORK/stats-$mode\"";; esac
  fi
  # The "on" edge's admin listener tells how many lines it dropped (none, or the figure is void).
  if [ "$mode" = on ]; then extra="$extra
admin = \"127.0.0.1:$ON_ADMIN\""; fi
  edge_config "$WORK/$mode.toml" "$port" "$OPORT" "$extra"
  mkdir -p "$WORK/nginx-$mode"
  log="access_log off;"
  [ "$mode" = on ] && log="access_log $WORK/nginx-$mode/access.log combined buffer=64k flush=1s;"
  cat > "$WORK/nginx-$mode.conf" <<NGINX
daemon off;
master_process off;
worker_processes 1;
user root;
pid $WORK/nginx-$mode/nginx.pid;
error_log $WORK/nginx-$mode/error.log warn;
events { worker_connections 4096; }
http {
  $log
  keepalive_requests 1000000;
  client_body_temp_path $WORK/nginx-$mode;
  proxy_temp_path $WORK/nginx-$mode;
  proxy_cache_path $WORK/nginx-$mode/cache levels=1:2 keys_zone=bench:16m inactive=1h use_temp_path=off;
  server {
    listen 127.0.0.1:$port;
    location / {
      proxy_pass http://127.0.0.1:$OPORT;
      proxy_cache bench;
      proxy_cache_valid 200 1h;
    }
  }
}
NGINX
done
# Fresh edge processes every round: two runs of one binary can differ by several per cent from
# memory layout alone (an A/A comparison of two long-lived edges showed it), so no process
# carries over, and the median over rounds averages the layouts out.
# Starts fresh edges for round $1 (stopping the previous ones first, so that their copies can go).
start_edges() {
  local core p
  for p in $OFF_PID $ON_PID; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  OFF_PID=""; ON_PID=""
  if [ "$COPIES" = round ] || [ "$1" = 1 ]; then copy_edges "$1"; fi
  for mode in off on; do
    core=0
    [ "$METHOD" = paired ] && [ "$mode" = on ] && core=1
    if [ "$PEER" = nginx ]; then
      taskset -c $core nginx -c "$WORK/nginx-$mode.conf" >/dev/null 2>&1 &
    else
      bin=$BIN; [ "$mode" = off ] && bin=$OFF_BIN
      RELAIS_LOG=warn taskset -c $core "$bin" edge --config "$WORK/$mode.toml" >/dev/null 2>&1 &
    fi
    if [ "$mode" = off ]; then OFF_PID=$!; else ON_PID=$!; fi
  done
  for p in $OFF $ON; do
    for _ in $(seq 200); do curl -sf "http://127.0.0.1:$p/bytes/$SIZE" >/dev/null && break; sleep 0.05; done
    curl -sf "http://127.0.0.1:$p/bytes/$SIZE" >/dev/null
    wrk -t1 -c"$CONNS" -d1s "http://127.0.0.1:$p/bytes/$SIZE" >/dev/null
  done
}
# Prints "req/s µs-of-edge-CPU-per-request" for one wrk run against port $1, edge pid $2.
run() {
  local t0 t1 out
  t0=$(awk '{print $14+$15}' "/proc/$2/stat")
  out=$($WRK_CPU wrk -t1 -c"$CONNS" -d"$DURATION" "http://127.0.0.1:$1/bytes/$SIZE")
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
dropped=0
cpu_of() { awk '{print $14+$15}' "/proc/$1/stat"; }
# Prints "off-req/s off-µs/req on-req/s on-µs/req" for one round of the paired method.
paired() {
  local a0 b0 a1 b1 wa wb
  taskset -a -pc "$1" "$OFF_PID" >/dev/null; taskset -a -pc "$2" "$ON_PID" >/dev/null
  a0=$(cpu_of "$OFF_PID"); b0=$(cpu_of "$ON_PID")
  wrk -t1 -c"$CONNS" -d"$DURATION" "http://127.0.0.1:$OFF/bytes/$SIZE" >"$WORK/a.txt" & wa=$!
  wrk -t1 -c"$CONNS" -d"$DURATION" "http://127.0.0.1:$ON/bytes/$SIZE" >"$WORK/b.txt" & wb=$!
  wait "$wa" "$wb"
  a1=$(cpu_of "$OFF_PID"); b1=$(cpu_of "$ON_PID")
  python3 - "$a0" "$a1" "$b0" "$b1" "$(getconf CLK_TCK)" "$WORK/a.txt" "$WORK/b.txt" <<'PY'
import re, sys
a0, a1, b0, b1, hz = (int(x) for x in sys.argv[1:6])
out = []
for (t0, t1), f in (((a0, a1), sys.argv[6]), ((b0, b1), sys.argv[7])):
    text = open(f).read()
    n = int(re.search(r"(\d+) requests in", text).group(1))
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    out += [f"{rps:.0f}", f"{(t1 - t0) / hz * 1e6 / n:.2f}"]
print(" ".join(out))
PY
}
for r in $(seq "$ROUNDS"); do
  start_edges "$r"
  if [ "$METHOD" = paired ]; then
    if [ $((r % 2)) -eq 1 ]; then res=$(paired 0 1); else res=$(paired 1 0); fi
    read -r a_rps a_cpu b_rps b_cpu <<<"$res"
  else
    offs=(); ons=()
    for _ in $(seq "$REPEAT"); do
      offs+=("$(run $OFF $OFF_PID)"); ons+=("$(run $ON $ON_PID)")
      ons+=("$(run $ON $ON_PID)"); offs+=("$(run $OFF $OFF_PID)")
    done
    read -r a_rps a_cpu b_rps b_cpu < <(python3 - "${#offs[@]}" "${offs[@]}" "${ons[@]}" <<'PY'
import sys
n = int(sys.argv[1])
runs = [[float(x) for x in v.split()] for v in sys.argv[2:]]
a, b = runs[:n], runs[n:]
mean = lambda rs, i: sum(r[i] for r in rs) / len(rs)
print(f"{mean(a, 0):.0f} {mean(a, 1):.2f} {mean(b, 0):.0f} {mean(b, 1):.2f}")
PY
)
  fi
  if [ "$PEER" = relais ]; then
    d=$(curl -s "http://127.0.0.1:$ON_ADMIN/metrics" | awk '/^relais_access_log_dropped_total/ {s += $2} END {print s + 0}')
    dropped=$((dropped + d))
  fi
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
lines=$( (cat "$WORK"/logs-on/bench/*.log "$WORK"/nginx-on/access.log 2>/dev/null || true) | wc -l)
echo "Lines written by the logging $PEER: $lines"
if [ "$PEER" = relais ]; then echo "Lines dropped by the logging relais (its metric, summed over rounds): $dropped"; fi
