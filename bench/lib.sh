# Helpers shared by the benchmark scripts (sourced, not run).

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
