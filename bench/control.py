#!/usr/bin/env python3
"""Control-plane benchmarks, on this machine, loopback only.

    bench/control.py                 # purge propagation with 1 and 4 edges, API with 10 000 sites
    PURGES=300 SITES=10000 bench/control.py

Builds nothing: run `cargo build --release -p relais` first (bench/control.sh does). Starts
`relais control` (SQLite in a temporary directory), a demo origin and N `relais edge --control`
processes, each a separate process; stops every process it started, by PID.

Purge propagation: for each purge, the receipt's per-edge latency (acknowledgement received by
the control plane minus purge committed, in ms) — the slowest edge is "applied everywhere" —
and the client's wall time for POST .../purges?wait_ms=… (commit + fan-out + every ack).
API latency: wall time of common calls with SITES sites in the database.
"""

import hashlib
import hmac
import json
import os
import re
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

BIN = os.environ.get("RELAIS_BIN", "target/release/relais")
PURGES = int(os.environ.get("PURGES", "300"))
SITES = int(os.environ.get("SITES", "10000"))
procs = []


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def call(method, url, token=None, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("content-type", "application/json")
    if token:
        req.add_header("authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            text = r.read().decode()
            return r.status, (json.loads(text) if text.startswith(("{", "[")) else text)
    except urllib.error.HTTPError as e:
        text = e.read().decode()
        return e.code, (json.loads(text) if text.startswith("{") else text)


def totp(secret_b32, step):
    key = __import__("base64").b32decode(secret_b32 + "=" * (-len(secret_b32) % 8))
    h = hmac.new(key, struct.pack(">Q", step), hashlib.sha1).digest()
    o = h[-1] & 15
    return "%06d" % ((struct.unpack(">I", h[o:o + 4])[0] & 0x7FFFFFFF) % 1000000)


def start(args, log=None, **kw):
    err = open(log, "w") if log else subprocess.DEVNULL
    p = subprocess.Popen([BIN] + args, stdout=subprocess.PIPE, stderr=err, text=True, **kw)
    procs.append(p)
    return p


def wait_http(url, timeout=30):
    end = time.time() + timeout
    while time.time() < end:
        try:
            urllib.request.urlopen(url, timeout=1).read()
            return
        except Exception:
            time.sleep(0.05)
    raise SystemExit("not ready: " + url)


def pct(values, p):
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))]


def control_plane(work):
    port = free_port()
    base = "http://127.0.0.1:%d" % port
    p = start(["control", "--listen", "127.0.0.1:%d" % port, "--database-url", "sqlite://%s/control.db" % work])
    line = p.stdout.readline()
    m = re.search(r"administrator (\S+) / password (\S+)", line)
    if not m:
        raise SystemExit("no first-run credentials: " + line)
    email, password = m.group(1), m.group(2)
    wait_http(base + "/healthz")
    _, r = call("POST", base + "/api/v1/auth/login", body={"email": email, "password": password})
    t = r["token"]
    _, s = call("POST", base + "/api/v1/auth/totp/setup", t, {})
    step = int(time.time()) // 30
    call("POST", base + "/api/v1/auth/totp/confirm", t, {"code": totp(s["secret"], step - 1)})
    _, r = call("POST", base + "/api/v1/auth/login", body={"email": email, "password": password, "totp": totp(s["secret"], step)})
    return base, r["token"]


def purge_run(n_edges):
    work = tempfile.mkdtemp(prefix="relais-bench-")
    base, admin = control_plane(work)
    oport = free_port()
    start(["demo-origin", "--listen", "127.0.0.1:%d" % oport])
    _, org = call("POST", base + "/api/v1/orgs", admin, {"slug": "bench", "name": "Bench"})
    _, site = call("POST", base + "/api/v1/orgs/%d/sites" % org["id"], admin,
                   {"name": "bench", "hosts": ["bench.test"], "origin": [{"url": "http://127.0.0.1:%d" % oport}]})
    call("POST", base + "/api/v1/sites/%d/publish" % site["id"], admin, {})
    ports = []
    for i in range(n_edges):
        _, e = call("POST", base + "/api/v1/edges", admin, {"name": "edge%d" % i})
        ports.append(free_port())
        start(["edge", "--control", base, "--control-token", e["token"], "--listen", "127.0.0.1:%d" % ports[-1],
               "--state-dir", "%s/edge%d" % (work, i)])
    end = time.time() + 30
    while time.time() < end:
        _, r = call("GET", base + "/api/v1/edges", admin)
        if len(r["edges"]) == n_edges and all(e["vouched"] for e in r["edges"]):
            break
        time.sleep(0.1)
    else:
        raise SystemExit("edges did not catch up")
    slowest, wall = [], []
    for i in range(PURGES):
        t0 = time.perf_counter()
        _, r = call("POST", base + "/api/v1/sites/%d/purges?wait_ms=5000" % site["id"], admin,
                    {"kind": "url", "values": ["/page/%d" % i]})
        wall.append((time.perf_counter() - t0) * 1000)
        if not r["complete"]:
            raise SystemExit("purge %d incomplete: %s" % (i, r))
        slowest.append(max(e["latency_ms"] for e in r["edges"]))
    # Configuration changes: switch the mode and time until every edge answers accordingly.
    def status(port):
        try:
            req = urllib.request.Request("http://127.0.0.1:%d/" % port, headers={"host": "bench.test"})
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as e:
            return e.code
    config = []
    for i in range(40):
        mode, want = ("maintenance", 503) if i % 2 == 0 else ("active", 200)
        t0 = time.perf_counter()
        call("PUT", base + "/api/v1/sites/%d/mode" % site["id"], admin, {"mode": mode})
        pending = set(ports)
        while pending:
            pending = {p for p in pending if status(p) != want}
            if time.perf_counter() - t0 > 5:
                raise SystemExit("mode change not applied within 5 s")
        config.append((time.perf_counter() - t0) * 1000)
    stop_all()
    return slowest, wall, config


def api_run():
    work = tempfile.mkdtemp(prefix="relais-bench-")
    base, admin = control_plane(work)
    _, org = call("POST", base + "/api/v1/orgs", admin, {"slug": "big", "name": "Big"})
    t0 = time.time()
    ids = []
    for i in range(SITES):
        _, s = call("POST", base + "/api/v1/orgs/%d/sites" % org["id"], admin,
                    {"name": "s%05d" % i, "hosts": ["s%05d.test" % i], "origin": [{"url": "http://127.0.0.1:9"}]})
        ids.append(s["id"])
    create_s = time.time() - t0
    results = {}

    def measure(name, fn, n=200):
        times = []
        for k in range(n):
            t = time.perf_counter()
            status = fn(k)
            times.append((time.perf_counter() - t) * 1000)
            if status >= 400:
                raise SystemExit("%s failed: %s" % (name, status))
        results[name] = (pct(times, 50), pct(times, 99))

    mid = ids[len(ids) // 2]
    measure("GET /orgs/{id}/sites (page of 100)", lambda k: call("GET", base + "/api/v1/orgs/%d/sites?limit=100&after=%d" % (org["id"], ids[(k * 37) % (len(ids) - 100)]), admin)[0])
    measure("GET /sites/{id}", lambda k: call("GET", base + "/api/v1/sites/%d" % ids[(k * 7919) % len(ids)], admin)[0])
    measure("GET /sites/{id}/explain", lambda k: call("GET", base + "/api/v1/sites/%d/explain?url=/a/b.html" % mid, admin)[0])
    measure("PUT /sites/{id}/draft", lambda k: call("PUT", base + "/api/v1/sites/%d/draft" % mid, admin,
                                                   {"hosts": ["s-mid.test"], "origin": [{"url": "http://127.0.0.1:9"}], "grace": "%ds" % (k + 1)})[0])
    measure("POST /sites/{id}/purges (no edge)", lambda k: call("POST", base + "/api/v1/sites/%d/purges" % mid, admin, {"kind": "url", "values": ["/x%d" % k]})[0])
    # One edge joins: time to load the whole snapshot, then mode switches on one site.
    call("PUT", base + "/api/v1/sites/%d/draft" % mid, admin, {"hosts": ["s-mid.test"], "origin": [{"url": "http://127.0.0.1:9"}]})
    call("POST", base + "/api/v1/sites/%d/publish" % mid, admin, {})
    _, e = call("POST", base + "/api/v1/edges", admin, {"name": "big-edge"})
    port = free_port()
    t0 = time.perf_counter()
    start(["edge", "--control", base, "--control-token", e["token"], "--listen", "127.0.0.1:%d" % port,
           "--state-dir", "%s/edge" % work], log=os.environ.get("EDGE_LOG"))
    while True:
        _, r = call("GET", base + "/api/v1/edges", admin)
        if r["edges"] and r["edges"][0]["vouched"] and r["edges"][0]["config_error"] is None and r["edges"][0]["config_seq"] > 0:
            break
        if time.perf_counter() - t0 > 120:
            raise SystemExit("edge did not load the snapshot")
        time.sleep(0.02)
    join_s = time.perf_counter() - t0

    def status():
        try:
            req = urllib.request.Request("http://127.0.0.1:%d/" % port, headers={"host": "s-mid.test"})
            with urllib.request.urlopen(req, timeout=5) as r:
                return r.status
        except urllib.error.HTTPError as err:
            return err.code
        except Exception:
            return 0
    switches = []
    for i in range(10):
        mode, want = ("maintenance", 503) if i % 2 == 0 else ("disabled", 404)
        t = time.perf_counter()
        call("PUT", base + "/api/v1/sites/%d/mode" % mid, admin, {"mode": mode})
        while status() != want:
            if time.perf_counter() - t > 10:
                raise SystemExit("mode switch not applied within 10 s")
        switches.append((time.perf_counter() - t) * 1000)
    results["edge joins: snapshot of all sites applied"] = (join_s * 1000, join_s * 1000)
    results["mode switch served by the edge"] = (pct(switches, 50), pct(switches, 99))
    stop_all()
    return create_s, results


def stop_all():
    while procs:
        p = procs.pop()
        p.terminate()
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()


def main():
    try:
        print("## Purge propagation (%d purges each, receipt per edge)\n" % PURGES)
        print("| Edges | applied on every edge p50 | p99 | max | API call incl. wait p50 | p99 | mode switch served by every edge p50 | p99 |")
        print("|---|---|---|---|---|---|---|---|")
        for n in (1, 4):
            slowest, wall, config = purge_run(n)
            print("| %d | %d ms | %d ms | %d ms | %.1f ms | %.1f ms | %.1f ms | %.1f ms |" % (
                n, pct(slowest, 50), pct(slowest, 99), max(slowest), pct(wall, 50), pct(wall, 99),
                pct(config, 50), pct(config, 99)))
            sys.stdout.flush()
        sys.stdout.flush()
        create_s, results = api_run()
        print("\n## API latency with %d sites (SQLite, %.0f s to create them through the API)\n" % (SITES, create_s))
        print("| Call | p50 | p99 |\n|---|---|---|")
        for k, (p50, p99) in results.items():
            print("| %s | %.1f ms | %.1f ms |" % (k, p50, p99))
    finally:
        stop_all()


if __name__ == "__main__":
    main()
