#!/usr/bin/env bash
# Cache-hit benchmark: Relais vs nginx proxy_cache vs Varnish, same origin, same run.
#
#   bench/run.sh            # 8 s per measurement, 64 connections
#   DURATION=20s CONNS=128 bench/run.sh
#
# Installs nginx, varnish and wrk from Debian if missing. Everything listens on 127.0.0.1
# only; every process started here is stopped by PID at the end. Prints a Markdown table
# (requests/s, p99 latency, ratios) and the memory each server spends per cached object.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${DURATION:-8s}
CONNS=${CONNS:-64}
OBJECTS=${OBJECTS:-20000}
OUT=bench/out
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/relais-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  if [ -f "$WORK/nginx.pid" ]; then kill "$(cat "$WORK/nginx.pid")" 2>/dev/null || true; fi
  if [ -f "$WORK/varnish.pid" ]; then kill "$(cat "$WORK/varnish.pid")" 2>/dev/null || true; fi
  sleep 0.5
  rm -rf "$WORK"
}
trap cleanup EXIT

need=()
command -v nginx >/dev/null || need+=(nginx)
command -v varnishd >/dev/null || need+=(varnish)
command -v wrk >/dev/null || need+=(wrk)
if [ ${#need[@]} -gt 0 ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}" >/dev/null
fi

cargo build --release --quiet -p relais
. bench/lib.sh
fresh_copies "$WORK" target/release/relais relais
BIN=$WORK/relais

ORIGIN=127.0.0.1:18081
RELAIS=127.0.0.1:18080
RELAIS_ADMIN=127.0.0.1:18089
NGINX=127.0.0.1:18090
VARNISH=127.0.0.1:18091

wait_port() { for _ in $(seq 1 100); do curl -s -o /dev/null "http://$1/" && return 0; sleep 0.1; done; echo "nothing on $1" >&2; exit 1; }

RELAIS_LOG=warn $BIN demo-origin --listen "$ORIGIN" & PIDS+=($!)
wait_port "$ORIGIN"

RELAIS_LOG=warn $BIN edge --listen "$RELAIS" --origin "http://$ORIGIN" --admin "$RELAIS_ADMIN" & PIDS+=($!)
RELAIS_PID=$!
wait_port "$RELAIS"

mkdir -p "$WORK/nginx-cache" "$WORK/nginx-tmp"
cat > "$WORK/nginx.conf" <<EOF
user root;
worker_processes 2;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  sendfile on;
  tcp_nodelay on;
  keepalive_requests 1000000;
  client_body_temp_path $WORK/nginx-tmp;
  proxy_temp_path $WORK/nginx-tmp;
  proxy_cache_path $WORK/nginx-cache levels=1:2 keys_zone=bench:64m max_size=4g inactive=1h use_temp_path=off;
  upstream origin { server $ORIGIN; keepalive 64; }
  server {
    listen $NGINX;
    location / {
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_cache bench;
      proxy_cache_lock on;
      add_header X-Cache \$upstream_cache_status;
    }
  }
}
EOF
nginx -c "$WORK/nginx.conf"
wait_port "$NGINX"

varnishd -a "$VARNISH" -b "$ORIGIN" -s malloc,1g -n "$WORK/varnish" -P "$WORK/varnish.pid" -p thread_pool_min=50 >/dev/null
wait_port "$VARNISH"

rss_kb() { ps -o rss= -p "$1" 2>/dev/null | awk '{s+=$1} END {print s+0}'; }
varnish_child() { pgrep -P "$(cat "$WORK/varnish.pid")" | head -1 || true; }
nginx_workers() { pgrep -P "$(cat "$WORK/nginx.pid")" | tr '\n' ',' | sed 's/,$//' || true; }

# Each measurement is repeated ROUNDS times, the three servers interleaved, and the median
# is reported: this machine is shared and single runs vary by +-20 %.
ROUNDS=${ROUNDS:-3}
declare -A RPS P99 ALL_RPS ALL_P99
to_ms() { awk '{ v=$1; if (v ~ /us$/) { sub(/us$/,"",v); v/=1000 } else if (v ~ /ms$/) { sub(/ms$/,"",v) } else if (v ~ /s$/) { sub(/s$/,"",v); v*=1000 }; printf "%.2f", v }'; }
median() { tr ' ' '\n' | grep -v '^$' | sort -g | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
run() { # name addr size round
  local name=$1 addr=$2 size=$3 url="http://$2/bytes/$3"
  curl -s -o /dev/null "$url"; curl -s -o /dev/null "$url"; curl -s -o /dev/null "$url"
  local out; out=$(wrk -t1 -c"$CONNS" -d"$DURATION" --latency "$url")
  echo "$out" > "$OUT/wrk-$name-$size-$4.txt"
  ALL_RPS[$name-$size]+=" $(echo "$out" | awk '/Requests\/sec/ {print $2}')"
  ALL_P99[$name-$size]+=" $(echo "$out" | awk '$1=="99%" {print $2}' | to_ms)"
}

read -r -a SIZES <<< "${SIZES:-1024 102400 10485760}"
for size in "${SIZES[@]}"; do
  for round in $(seq 1 "$ROUNDS"); do
    run relais "$RELAIS" "$size" "$round"
    run nginx "$NGINX" "$size" "$round"
    run varnish "$VARNISH" "$size" "$round"
  done
  for name in relais nginx varnish; do
    RPS[$name-$size]=$(echo "${ALL_RPS[$name-$size]}" | median)
    P99[$name-$size]=$(echo "${ALL_P99[$name-$size]}" | median)
  done
done

# Memory per cached object: RSS growth after caching $OBJECTS distinct 1 KiB objects.
fill() { # addr
  seq 1 "$OBJECTS" | sed "s#.*#url = \"http://$1/bytes/1024?o=&\"\noutput = /dev/null#" > "$WORK/curl.cfg"
  curl -s --no-progress-meter --parallel --parallel-max 32 -K "$WORK/curl.cfg" || true
}
r0=$(rss_kb "$RELAIS_PID"); fill "$RELAIS"; r1=$(rss_kb "$RELAIS_PID")
v=$(varnish_child); v0=$(rss_kb "$v"); fill "$VARNISH"; v1=$(rss_kb "$v")
n0=$(rss_kb "$(nginx_workers)"); fill "$NGINX"; n1=$(rss_kb "$(nginx_workers)")
per() { echo "$(( ($2 - $1) * 1024 / OBJECTS ))"; }

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "n/a" }'; }
{
  echo "Run: $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, wrk -t1 -c$CONNS -d$DURATION, keep-alive, cache hits on 127.0.0.1; median of $ROUNDS interleaved rounds (p99 in ms)."
  echo "Versions: relais $(git rev-parse --short HEAD), $(nginx -v 2>&1 | sed 's#.*/##;s#^#nginx #'), $(varnishd -V 2>&1 | head -1 | sed 's/.*(\(varnish-[0-9.]*\).*/\1/')."
  echo
  echo "| object | Relais req/s | nginx req/s | Varnish req/s | Relais/nginx | Relais/Varnish | p99 Relais | p99 nginx | p99 Varnish |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
  for size in "${SIZES[@]}"; do
    label=$size; [ "$size" = 1024 ] && label="1 KiB"; [ "$size" = 102400 ] && label="100 KiB"; [ "$size" = 10485760 ] && label="10 MiB"
    echo "| $label | ${RPS[relais-$size]} | ${RPS[nginx-$size]} | ${RPS[varnish-$size]} | $(ratio "${RPS[relais-$size]}" "${RPS[nginx-$size]}") | $(ratio "${RPS[relais-$size]}" "${RPS[varnish-$size]}") | ${P99[relais-$size]} | ${P99[nginx-$size]} | ${P99[varnish-$size]} |"
  done
  echo
  echo "Per-round ratios (each round runs the three servers back to back, so machine-wide"
  echo "slowdowns cancel out): $(for size in "${SIZES[@]}"; do
    r=(${ALL_RPS[relais-$size]}); n=(${ALL_RPS[nginx-$size]}); v=(${ALL_RPS[varnish-$size]})
    printf '%s B vs nginx' "$size"; for i in "${!r[@]}"; do printf ' %s' "$(ratio "${r[$i]}" "${n[$i]}")"; done
    printf ', vs Varnish'; for i in "${!r[@]}"; do printf ' %s' "$(ratio "${r[$i]}" "${v[$i]}")"; done; printf '; '
  done)"
  echo
  echo "All rounds (req/s): $(for size in "${SIZES[@]}"; do for n in relais nginx varnish; do printf '%s %s:%s; ' "$n" "$size" "${ALL_RPS[$n-$size]}"; done; done)"
  echo
  echo "Memory per cached 1 KiB object (RSS growth over $OBJECTS objects): Relais $(per "$r0" "$r1") B, Varnish $(per "$v0" "$v1") B, nginx workers $(per "$n0" "$n1") B (nginx keeps bodies in files and page cache, keys in a shared zone)."
} | tee "$OUT/summary.md"
