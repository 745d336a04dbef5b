#!/usr/bin/env bash
# Three edges on core 0 (wrk on core 1): "off" (build A, recording nothing), "A" and "B" (builds
# A and B, recording what RECORD_A and RECORD_B say: both, log or stats), loaded in turn,
# off-A-B then B-A-off, REPS times. Prints each edge's requests and CPU per request per run, its
# median CPU per request split into user and system time, and the medians as ratios to "off".
# Complements bench/logging.sh: the three edges share each moment of the machine's drift, so a
# difference between two builds (or two settings) shows within one round.
# ROUNDS=1 (default): the edges live through the whole run, so a difference is not buried in
# process-to-process layout changes, but each edge keeps one layout (run it twice).
# ROUNDS=n: fresh edges every round (REPS runs each), and each round's ratios are printed:
# layouts are averaged out, and the rounds show how often A beats B.
#
#   A=target/release/relais B=/tmp/relais-other REPS=10 D=3 SIZE=1024 bench/logging-ab.sh
#   A=... B=... ROUNDS=8 REPS=4 D=2 bench/logging-ab.sh        # the 2026-12-06 A/B comparisons
set -euo pipefail
cd "$(dirname "$0")/.."
A=${A:-target/release/relais}
B=${B:-$A}
# What each recording edge records: both (logs + statistics), log or stats.
RECORD_A=${RECORD_A:-both}
RECORD_B=${RECORD_B:-both}
REPS=${REPS:-8}
ROUNDS=${ROUNDS:-1}
D=${D:-3}
SIZE=${SIZE:-1024}
command -v wrk >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; }
WORK=$(mktemp -d "${TMPDIR:-/tmp}/relais-logab.XXXXXX")
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; sleep 0.3; rm -rf "$WORK"; }
trap cleanup EXIT
. bench/lib.sh
# Fresh copies (see `fresh_copies`); with B unset, or the same file as A, one copy runs both.
fresh_copies "$WORK" "$A" relais-a "$A" relais-origin
[ "$B" = "$A" ] && B=$WORK/relais-a || { fresh_copies "$WORK" "$B" relais-b; B=$WORK/relais-b; }
A=$WORK/relais-a
OP=$(free_port); PORTS=("$(free_port)" "$(free_port)" "$(free_port)")
"$WORK/relais-origin" demo-origin --listen "127.0.0.1:$OP" >/dev/null 2>&1 & PIDS+=($!)
EPIDS=()
start_edges() {
  local i p extra record bin
  for p in "${EPIDS[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
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
}
# User and system CPU ticks of a process.
cpu() { awk '{print $14, $15}' "/proc/$1/stat"; }
for round in $(seq "$ROUNDS"); do
  start_edges
  for rep in $(seq "$REPS"); do
    order="0 1 2"; [ $((rep % 2)) = 0 ] && order="2 1 0"
    for i in $order; do
      t0=$(cpu "${EPIDS[$i]}")
      n=$(taskset -c 1 wrk -t1 -c64 -d"${D}s" "http://127.0.0.1:${PORTS[$i]}/bytes/$SIZE" | grep -oP '\d+(?= requests in)')
      t1=$(cpu "${EPIDS[$i]}")
      echo "$round $i $n $t0 $t1"  # round i n user0 sys0 user1 sys1
    done
  done
done > "$WORK/runs.txt"
python3 -c '
import os, statistics, sys
hz = os.sysconf("SC_CLK_TCK")
by, rounds = {}, {}
for line in sys.stdin:
    rnd, i, n, u0, s0, u1, s1 = line.split()
    per = lambda a, b: (int(b) - int(a)) / hz * 1e6 / int(n)
    by.setdefault(i, []).append((int(n), per(u0, u1) + per(s0, s1), per(u0, u1), per(s0, s1)))
    rounds.setdefault(rnd, {}).setdefault(i, []).append(int(n))
names = {"0": "off", "1": "A", "2": "B"}
for i in sorted(by):
    print(f"{names[i]:>3}: requests {[r[0] for r in by[i]]}, µs CPU/request {[round(r[1], 2) for r in by[i]]}")
med = lambda i, k: statistics.median(r[k] for r in by[i])
for i in sorted(by):
    print(f"{names[i]:>3}: median µs per request: CPU {med(i, 1):.2f} = user {med(i, 2):.2f} + system {med(i, 3):.2f}")
if len(rounds) > 1:
    per_round = []
    for rnd in sorted(rounds, key=int):
        r = rounds[rnd]
        off_n = statistics.mean(r["0"])
        a, b = statistics.mean(r["1"]) / off_n, statistics.mean(r["2"]) / off_n
        per_round.append((a, b))
        print(f"round {rnd}: off {off_n:.0f} requests per run | A/off {a:.3f} | B/off {b:.3f}")
    print(f"median of rounds: A/off {statistics.median(a for a, _ in per_round):.3f}, B/off {statistics.median(b for _, b in per_round):.3f}; A ahead in {sum(a > b for a, b in per_round)} of {len(per_round)} rounds")
off = "0"
for i in ("1", "2"):
    print(f"{names[i]} on / off: requests {med(i, 0) / med(off, 0):.3f}, CPU per request {med(i, 1) / med(off, 1):.3f}")
' < "$WORK/runs.txt"
