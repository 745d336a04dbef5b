# Helpers shared by the benchmark scripts (sourced, not run).

# Copies binaries into a benchmark's work directory, all at the same moment:
#   fresh_copies DIR SRC NAME [SRC NAME ...]
# Benchmarks run such copies, never target/release nor an older copy: the state of a binary's
# file in the page cache changes its speed by several per cent (a build just written to
# target/release beat an older copy by ~5 % whichever of the two was the newer code; two builds
# copied together gave the same ratio with their places swapped, BENCHMARKS.md), so comparing
# files of different histories measured the files.
fresh_copies() {
  local dir=$1
  shift
  while [ $# -ge 2 ]; do cp "$1" "$dir/$2"; shift 2; done
}

# A free TCP port on loopback.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

# Writes the configuration of a benchmark edge: one site for every host, one origin.
#   edge_config FILE EDGE_PORT ORIGIN_PORT [EXTRA_EDGE_SETTINGS]
edge_config() {
  cat > "$1" <<TOML
version = 1
[edge]
listen = ["127.0.0.1:$2"]
${4:-}
[[site]]
name = "bench"
hosts = ["*"]
[[site.origin]]
url = "http://127.0.0.1:$3"
TOML
}
