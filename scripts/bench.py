#!/usr/bin/env python3
"""Measures `blog up` (release build) on this machine and prints figures:
start to ready, idle RSS, GET /posts throughput (wrk) on query with 100 posts x
5 comments, and comment propagation latency (POST comment -> status in query).

Usage: scripts/bench.py [--bin target/release/blog] [--duration 10]
                        [--bus nats://127.0.0.1:4222] [--postgres postgres://127.0.0.1:5432/postgres]
Needs wrk (Debian package `wrk`); with --postgres, psql to drop the bench's databases."""

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import time
import urllib.request


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(url, body=None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"content-type": "application/json"} if data else {})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read() or b"null")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", default="target/release/blog")
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--bus", help="nats://HOST:PORT to run on NATS JetStream")
    ap.add_argument("--postgres", help="postgres://... to keep data in PostgreSQL")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk not found: apt-get install wrk")

    names = ["gateway", "posts", "comments", "query", "moderation"] + ([] if args.bus else ["event-bus"])
    ports = {n: free_port() for n in names}
    data = tempfile.mkdtemp()
    cmd = [args.bin, "up", "--data-dir", data]
    for n in names:
        cmd += [f"--{n}-port", str(ports[n])]
    tag = f"bench{os.getpid()}"
    if args.bus:
        cmd += ["--bus", args.bus, "--nats-stream", tag.upper()]
    if args.postgres:
        cmd += ["--postgres", args.postgres, "--postgres-db-prefix", f"{tag}_"]
    env = dict(os.environ, BLOG_LOG="warn")
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env)
    gw = f"http://127.0.0.1:{ports['gateway']}"
    query = f"http://127.0.0.1:{ports['query']}"
    while True:
        try:
            ok = all(
                urllib.request.urlopen(f"http://127.0.0.1:{ports[n]}/readyz", timeout=1).status == 200 for n in names
            )
            if ok:
                break
        except Exception:
            pass
        time.sleep(0.005)
    ready_ms = (time.perf_counter() - t0) * 1000
    try:
        time.sleep(1)
        rss_start = rss_kib(proc.pid)

        # Seed 100 posts x 5 comments, then wait until query shows them all decided.
        posts = [request(f"{gw}/posts/create", {"title": f"post {i}"})["id"] for i in range(100)]
        t_seed = time.perf_counter()
        for i, p in enumerate(posts):
            for j in range(5):
                request(f"{gw}/posts/{p}/comments", {"content": "orange" if j == 0 else f"comment {i}.{j}"})
        seed_s = time.perf_counter() - t_seed
        while True:
            view = request(f"{query}/posts")
            if len(view) == 100 and all(
                len(v["comments"]) == 5 and all(c["status"] != "pending" for c in v["comments"]) for v in view.values()
            ):
                break
            time.sleep(0.05)
        converge_s = time.perf_counter() - t_seed
        time.sleep(2)
        rss_idle = rss_kib(proc.pid)
        body_bytes = len(urllib.request.urlopen(f"{query}/posts").read())

        # Propagation latency: one comment at a time, until query shows it decided.
        lat = []
        for k in range(50):
            p = posts[k]
            t = time.perf_counter()
            cid = request(f"{gw}/posts/{p}/comments", {"content": f"latency {k}"})[-1]["id"]
            while True:
                c = [c for c in request(f"{query}/posts")[p]["comments"] if c["id"] == cid]
                if c and c[0]["status"] == "approved":
                    break
            lat.append((time.perf_counter() - t) * 1000)

        def wrk(url):
            out = subprocess.run(
                ["wrk", "-t2", f"-c{args.connections}", f"-d{args.duration}s", "--latency", url],
                capture_output=True, text=True, check=True,
            ).stdout
            rps = float(next(l for l in out.splitlines() if l.startswith("Requests/sec")).split()[1])
            p99 = next((l.split()[1] for l in out.splitlines() if l.strip().startswith("99%")), "?")
            return rps, p99

        rps_q, p99_q = wrk(f"{query}/posts")
        rps_g, p99_g = wrk(f"{gw}/posts")

        # Comment-create rate: wrk POSTs comments to random posts of the 100
        # on the comments port (each answer lists the post's comments).
        script = os.path.join(data, "post.lua")
        with open(script, "w") as f:
            f.write("local ids = {" + ",".join(f'"{p}"' for p in posts) + "}\n")
            f.write('wrk.method = "POST"\nwrk.body = \'{"content":"load"}\'\nwrk.headers["Content-Type"] = "application/json"\n')
            f.write('request = function() return wrk.format(nil, "/posts/" .. ids[math.random(#ids)] .. "/comments") end\n')
        out = subprocess.run(
            ["wrk", "-t2", "-c16", f"-d{args.duration}s", "--latency", "-s", script,
             f"http://127.0.0.1:{ports['comments']}"],
            capture_output=True, text=True, check=True,
        ).stdout
        rps_c = float(next(l for l in out.splitlines() if l.startswith("Requests/sec")).split()[1])
        p99_c = next((l.split()[1] for l in out.splitlines() if l.strip().startswith("99%")), "?")
        non2xx = next((l.split()[-1] for l in out.splitlines() if "Non-2xx" in l), "0")
        rss_load = rss_kib(proc.pid)
        lat.sort()
        print(json.dumps({
            "start_to_ready_ms": round(ready_ms, 1),
            "rss_idle_empty_mib": round(rss_start / 1024, 1),
            "rss_idle_seeded_mib": round(rss_idle / 1024, 1),
            "rss_after_load_mib": round(rss_load / 1024, 1),
            "seed_600_writes_s": round(seed_s, 2),
            "seed_until_all_moderated_in_query_s": round(converge_s, 2),
            "comment_propagation_ms": {"median": round(statistics.median(lat), 1), "p90": round(lat[int(len(lat) * 0.9)], 1), "max": round(lat[-1], 1)},
            "get_posts_body_bytes": body_bytes,
            "wrk_query_get_posts": {"rps": rps_q, "p99": p99_q, "connections": args.connections, "duration_s": args.duration},
            "wrk_gateway_get_posts": {"rps": rps_g, "p99": p99_g},
            "wrk_comment_create": {"rps": rps_c, "p99": p99_c, "connections": 16, "non_2xx": non2xx},
            "engines": {"bus": args.bus or "embedded HTTP bus", "storage": "PostgreSQL" if args.postgres else "SQLite"},
        }, indent=2))
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=30)
        shutil.rmtree(data, ignore_errors=True)
        if args.bus:
            # The bench's stream: delete it through the JetStream API.
            host, port = args.bus.split("://", 1)[1].rsplit(":", 1)
            with socket.create_connection((host, int(port)), timeout=5) as s:
                s.recv(4096)
                s.sendall(f"CONNECT {{}}\r\nPUB $JS.API.STREAM.DELETE.{tag.upper()} 0\r\n\r\nPING\r\n".encode())
                s.recv(4096)
        if args.postgres:
            for n in ["posts", "comments", "query", "moderation", "event_bus"]:
                subprocess.run(["psql", args.postgres, "-qc", f'DROP DATABASE IF EXISTS "{tag}_{n}" WITH (FORCE)'],
                               capture_output=True)


if __name__ == "__main__":
    main()
