#!/usr/bin/env bash
# Three long-lived edges on core 0 (wrk on core 1): "off" (build A, recording nothing), "A" and
# "B" (builds A and B, recording what RECORD_A and RECORD_B say: both, log or stats), loaded in
# turn, off-A-B then B-A-off, REPS times. Prints each edge's requests and CPU per request per
# run, its median CPU per request split into user and system time, and the medians as ratios to
# "off".
# Complements bench/logging.sh (fresh edges every round): here the edges live through the whole
# run, so a difference between two builds is not buried in process-to-process layout changes
# round after round, but each edge keeps one layout (run it twice).
#
#   A=target/release/relais B=/tmp/relais-other REPS=10 D=3 SIZE=1024 bench/logging-ab.sh
set -euo pipefail
cd "$(dirname "$0")/.."
A=${A:-target/release/relais}
B=${B:-$A}
# What each recording edge records: both (logs + statistics), log or stats.
RECORD_A=${RECORD_A:-both}
RECORD_B=${RECORD_B:-both}
REPS=${REPS:-8}
D=${D:-3}
SIZE=${SIZE:-1024}
command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
WORK=$(mktemp -d "${TMPDIR:-/tmp}/relais-logab.XXXXXX")
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.3; rm -rf "$WORK"; }
trap cleanup EXIT
# Fresh copies made together (see bench/logging.sh: a binary's file history moves results).
cp "$A" "$WORK/relais-a"; cp "$A" "$WORK/relais-origin"
[ "$B" = "$A" ] && B=$WORK/relais-a || { cp "$B" "$WORK/relais-b"; B=$WORK/relais-b; }
A=$WORK/relais-a
. bench/lib.sh
OP=$(free_port); PORTS=("$(free_port)" "$(free_port)" "$(free_port)")
"$WORK/relais-origin" demo-origin --listen "127.0.0.1:$OP" >/dev/null 2>&1 & PIDS+=($!)
EPIDS=()
for i in 0 1 2; do
  extra=""
  record=none; [ "$i" = 1 ] && record=$RECORD_A; [ "$i" = 2 ] && record=$RECORD_B
  case $record in both|log) extra="access_log = \"$WORK/logs-$i\"";; esac
  case $record in both|stats) extra="$extra
stats_dir = \"$WORK/stats-$i\"";; esac
  edge_config "$WORK/e$i.toml" "${PORTS[$i]}" "$OP" "$extra"
  bin=$A; [ "$i" = 2 ] && bin=$B
  RELAIS_LOG=warn taskset -c 0 "$bin" edge --config "$WORK/e$i.toml" >/dev/null 2>&1 & PIDS+=($!); EPIDS+=($!)
done
for p in "${PORTS[@]}"; do
  for _ in $(seq 200); do curl -sf "http://127.0.0.1:$p/bytes/$SIZE" >/dev/null && break; sleep 0.05; done
  taskset -c 1 wrk -t1 -c64 -d1s "http://127.0.0.1:$p/bytes/$SIZE" >/dev/null
done
# User and system CPU ticks of a process.
cpu() { awk '{print $14, $15}' "/proc/$1/stat"; }
for rep in $(seq "$REPS"); do
  order="0 1 2"; [ $((rep % 2)) = 0 ] && order="2 1 0"
  for i in $order; do
    t0=$(cpu "${EPIDS[$i]}")
    n=$(taskset -c 1 wrk -t1 -c64 -d"${D}s" "http://127.0.0.1:${PORTS[$i]}/bytes/$SIZE" | grep -oP '\d+(?= requests in)')
    t1=$(cpu "${EPIDS[$i]}")
    echo "$i $n $t0 $t1"  # i n user0 sys0 user1 sys1
  done
done | python3 -c '
import os, statistics, sys
hz = os.sysconf("SC_CLK_TCK")
by = {}
for line in sys.stdin:
    i, n, u0, s0, u1, s1 = line.split()
    per = lambda a, b: (int(b) - int(a)) / hz * 1e6 / int(n)
    by.setdefault(i, []).append((int(n), per(u0, u1) + per(s0, s1), per(u0, u1), per(s0, s1)))
names = {"0": "off", "1": "A", "2": "B"}
for i in sorted(by):
    print(f"{names[i]:>3}: requests {[r[0] for r in by[i]]}, µs CPU/request {[round(r[1], 2) for r in by[i]]}")
med = lambda i, k: statistics.median(r[k] for r in by[i])
for i in sorted(by):
    print(f"{names[i]:>3}: median µs per request: CPU {med(i, 1):.2f} = user {med(i, 2):.2f} + system {med(i, 3):.2f}")
off = "0"
for i in ("1", "2"):
    print(f"{names[i]} on / off: requests {med(i, 0) / med(off, 0):.3f}, CPU per request {med(i, 1) / med(off, 1):.3f}")
'
