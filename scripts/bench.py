#!/usr/bin/env python3
"""Measures `blog up` on this machine: every figure of issue #8's table, plus
start to ready, RSS and GET /posts throughput. Prints one JSON object on
stdout and a short human table (and progress) on stderr.

Usage: scripts/bench.py [--bin target/release/blog] [--duration 10]
                        [--bus nats://127.0.0.1:4222] [--postgres postgres://postgres@127.0.0.1:5432/postgres]
                        [--only basics,create,propagation,sequential,burst,reads,replay]
                        [--replay-events 100000] [--burst 5000] [--samples 200] ...

Measures (each runs on a fresh system: new data dir, new NATS stream, new
PostgreSQL databases, all removed afterwards):

  basics       start to ready (empty), RSS (empty / 100 posts x 5 comments / after
               wrk), GET /posts wrk throughput on query and through the gateway
  create       comment creation: wrk, 2 threads x 16 connections, --duration s,
               POST /posts/<id>/comments on the comments port, over 100 posts
  propagation  comment 201 -> decided status visible in query's GET /posts,
               --samples samples, one at a time, query polled back to back
  sequential   comments POSTed one after another on one keep-alive connection
               (wrk -t1 -c1) for --duration s
  burst        --burst comments over 16 keep-alive connections as fast as they
               are taken; then how long after the last 201 until query shows
               them all decided, and the events/s the pipeline sustained
  reads        GET /posts on query (wrk, 1 thread x 4 connections) while a paced
               writer creates --write-rate comments/s, at each of --reads-posts
               posts; plus the same wrk without writes as a baseline
  replay       seed >= --replay-events events in the log, stop (SIGTERM), delete
               query's data only, start again and time until query shows it all;
               then `blog replay query` rebuilds the same log while query runs

  streams      comment creation (wrk) over 1,000 posts: --stream-rounds runs with
               --streams live streams open, each between two runs without;
               query's memory with idle streams and after they close
  live         one post with --live-comments comments and --streams live streams
               open; a comment every 0.5 s for --duration s, each timed from its
               201 to its arrival on an open stream, and the bytes every stream
               read meanwhile

Needs wrk (Debian package `wrk`); with --postgres, psql to drop the bench's
databases. Python 3 standard library only."""

import argparse
import http.client
import itertools
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import zlib

HERE = os.path.dirname(os.path.abspath(__file__))
LUA = os.path.join(HERE, "bench")
MEASURES = ["basics", "create", "propagation", "sequential", "burst", "reads", "replay", "streams", "live"]
# Events in the log per post with k comments: PostCreated, then per comment
# CommentCreated, CommentModerated and CommentUpdated.
REPLAY_COMMENTS_PER_POST = 4
EVENTS_PER_REPLAY_POST = 1 + 3 * REPLAY_COMMENTS_PER_POST

T_START = time.perf_counter()


def log(msg):
    print(f"[{time.perf_counter() - T_START:7.1f}s] {msg}", file=sys.stderr, flush=True)


def free_ports(n):
    """n distinct free ports: the sockets stay bound until all are picked,
    so the kernel cannot hand out the same port twice."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def pct(values, q):
    """The q-th percentile (0..100) of values, nearest rank."""
    if not values:
        return None
    v = sorted(values)
    return v[min(len(v) - 1, max(0, math.ceil(q / 100 * len(v)) - 1))]


def dist(values, digits=2):
    if not values:
        return None
    return {
        "n": len(values),
        "p50": round(pct(values, 50), digits),
        "p90": round(pct(values, 90), digits),
        "p99": round(pct(values, 99), digits),
        "max": round(max(values), digits),
        "mean": round(statistics.fmean(values), digits),
    }


class Http:
    """One keep-alive HTTP/1.1 connection (http.client), reopened after errors."""

    def __init__(self, port, host="127.0.0.1", timeout=60):
        self.host, self.port, self.timeout = host, port, timeout
        self.conn = None

    def request(self, method, path, body=None):
        """(status, body bytes). Raises on connection errors (after closing)."""
        if self.conn is None:
            self.conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        headers = {"content-type": "application/json"} if data is not None else {}
        try:
            self.conn.request(method, path, body=data, headers=headers)
            r = self.conn.getresponse()
            out = r.read()
            if r.will_close:
                self.close()
            return r.status, out
        except Exception:
            self.close()
            raise

    def get(self, path, retries=3):
        for attempt in range(retries + 1):
            try:
                return self.request("GET", path)
            except (OSError, http.client.HTTPException):
                if attempt == retries:
                    raise
                time.sleep(0.05)

    def close(self):
        if self.conn is not None:
            self.conn.close()
            self.conn = None


def status_counts(body):
    """(posts, comments, decided) in a query GET /posts body, counted on the
    bytes (no JSON parse, so polling a large view stays cheap)."""
    if b'"status":"' not in body and b'"status"' in body:  # not compact JSON: parse
        view = json.loads(body)
        cs = [c for p in view.values() for c in p.get("comments", [])]
        return len(view), len(cs), sum(c.get("status") in ("approved", "rejected") for c in cs)
    return (
        body.count(b'"title":'),
        body.count(b'"status":"'),
        body.count(b'"status":"approved"') + body.count(b'"status":"rejected"'),
    )


def comment_status(body, cid):
    """The status of comment cid in a query GET /posts body, or None."""
    i = body.find(b'"id":"' + cid + b'"')
    if i < 0:
        return None
    end = body.find(b"}", i)
    m = re.search(rb'"status"\s*:\s*"([a-z]+)"', body[i:end])
    return m.group(1).decode() if m else None


# --- NATS: a minimal client over a raw socket, for JetStream API requests ---


def nats_request(bus, subject, payload=b"", timeout=10):
    host, port = bus.split("://", 1)[1].rsplit(":", 1)
    inbox = f"_INBOX.bench{os.getpid()}.{time.monotonic_ns()}"
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        buf = b""
        s.sendall(
            b'CONNECT {"verbose":false,"pedantic":false}\r\n'
            + f"SUB {inbox} 1\r\nPUB {subject} {inbox} {len(payload)}\r\n".encode()
            + payload
            + b"\r\n"
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            chunk = s.recv(65536)
            if not chunk:
                break
            buf += chunk
            while b"\r\n" in buf:
                line, rest = buf.split(b"\r\n", 1)
                if line.startswith(b"PING"):
                    s.sendall(b"PONG\r\n")
                    buf = rest
                elif line.startswith(b"MSG "):
                    size = int(line.split()[-1])
                    if len(rest) < size + 2:
                        break  # wait for the payload
                    return json.loads(rest[:size] or b"null")
                elif line.startswith(b"-ERR"):
                    raise RuntimeError(f"NATS: {line.decode()}")
                else:
                    buf = rest  # INFO, +OK, PONG
            else:
                continue
    raise RuntimeError(f"NATS: no answer to {subject}")


# --- the system under test ---


class System:
    count = 0

    def __init__(self, args, label):
        System.count += 1
        self.args, self.label = args, label
        self.tag = f"bench{os.getpid()}x{System.count}"
        self.stream = self.tag.upper()
        self.names = ["gateway", "posts", "comments", "query", "moderation"] + ([] if args.bus else ["event-bus"])
        self.ports = dict(zip(self.names, free_ports(len(self.names))))
        self.data = tempfile.mkdtemp(prefix="blog-bench-")
        self.logfile = os.path.join(args.logs, f"{System.count}-{label}.log")
        self.proc = None
        self.starts = 0

    def url(self, name):
        return f"http://127.0.0.1:{self.ports[name]}"

    def command(self):
        cmd = [self.args.bin, "up", "--data-dir", self.data]
        for n in self.names:
            cmd += [f"--{n}-port", str(self.ports[n])]
        if self.args.bus:
            cmd += ["--bus", self.args.bus, "--nats-stream", self.stream]
        if self.args.postgres:
            cmd += ["--postgres", self.args.postgres, "--postgres-db-prefix", f"{self.tag}_"]
        return cmd

    def start(self, timeout=120):
        """Starts `blog up`; returns seconds from spawn to every part's /readyz 200."""
        self.starts += 1
        env = dict(os.environ, BLOG_LOG=self.args.log_level)
        out = open(self.logfile, "a")
        out.write(f"--- start {self.starts}: {' '.join(self.command())}\n")
        out.flush()
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(self.command(), env=env, stdout=out, stderr=subprocess.STDOUT)
        out.close()
        self.t_spawn = t0
        conns = {n: Http(self.ports[n], timeout=1) for n in self.names}
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"blog exited with {self.proc.returncode} at start; see {self.logfile}")
            ok = True
            for n, c in conns.items():
                try:
                    if c.request("GET", "/readyz")[0] != 200:
                        ok = False
                except (OSError, http.client.HTTPException):
                    ok = False
                if not ok:
                    break
            if ok:
                break
            if time.perf_counter() - t0 > timeout:
                raise RuntimeError(f"not ready after {timeout} s")
            time.sleep(0.002)
        for c in conns.values():
            c.close()
        return time.perf_counter() - t0

    def stop(self, timeout=60):
        """SIGTERM and wait; returns (seconds to exit, exit code)."""
        if self.proc is None or self.proc.poll() is not None:
            return 0.0, self.proc.returncode if self.proc else None
        t0 = time.perf_counter()
        self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            log(f"blog did not exit {timeout} s after SIGTERM: killed")
            self.proc.kill()
            code = self.proc.wait()
        return time.perf_counter() - t0, code

    def rss_mib(self):
        return round(rss_kib(self.proc.pid) / 1024, 1)

    def log_summary(self):
        """Counts of WARN/ERROR lines the server logged, and the first few."""
        try:
            with open(self.logfile, errors="replace") as f:
                lines = f.read().splitlines()
        except OSError:
            return {}
        plain = [re.sub(r"\x1b\[[0-9;]*m", "", line) for line in lines]
        warn = [line for line in plain if " WARN " in line]
        error = [line for line in plain if " ERROR " in line or "panicked" in line]
        out = {"log": self.logfile, "warn_lines": len(warn), "error_lines": len(error)}
        if warn or error:
            out["first"] = (error + warn)[:5]
        return out

    # Deleting one service's data (replay) and everything (cleanup).

    def delete_query_data(self):
        if self.args.postgres:
            drop_database(self.args.postgres, f"{self.tag}_query")
        else:
            for f in os.listdir(self.data):
                if f.startswith("query.db"):
                    os.remove(os.path.join(self.data, f))
        if self.args.bus:
            # The query's durable consumer holds its position in the stream.
            r = nats_request(self.args.bus, f"$JS.API.CONSUMER.DELETE.{self.stream}.query")
            if not r.get("success"):
                raise RuntimeError(f"deleting the query consumer: {r}")

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.data, ignore_errors=True)
        if self.args.bus:
            try:
                nats_request(self.args.bus, f"$JS.API.STREAM.DELETE.{self.stream}")
            except Exception as e:
                log(f"deleting stream {self.stream}: {e}")
        if self.args.postgres:
            for n in ["posts", "comments", "query", "moderation", "event_bus"]:
                drop_database(self.args.postgres, f"{self.tag}_{n}")

    # The log and the pipeline's progress.

    def log_events(self):
        """Events stored in the log (HTTP bus: lastSeq; NATS: the stream's messages)."""
        if self.args.bus:
            return nats_request(self.args.bus, f"$JS.API.STREAM.INFO.{self.stream}")["state"]["messages"]
        subs = json.loads(Http(self.ports["event-bus"]).get("/subscribers")[1])
        if isinstance(subs, dict) and isinstance(subs.get("lastSeq"), int):
            return subs["lastSeq"]
        # No lastSeq: page through the log.
        h, after, n = Http(self.ports["event-bus"]), 0, 0
        while True:
            page = json.loads(h.get(f"/events?after={after}&limit=1000")[1])
            if not page:
                return n
            n += len(page)
            after = page[-1]["seq"]

    def backlog(self):
        """Events not yet delivered and acknowledged, summed over subscribers."""
        if self.args.bus:
            names = nats_request(self.args.bus, f"$JS.API.CONSUMER.NAMES.{self.stream}").get("consumers") or []
            total = 0
            for n in names:
                info = nats_request(self.args.bus, f"$JS.API.CONSUMER.INFO.{self.stream}.{n}")
                total += info.get("num_pending", 0) + info.get("num_ack_pending", 0)
            return total
        subs = json.loads(Http(self.ports["event-bus"]).get("/subscribers")[1])
        subs = subs.get("subscribers", []) if isinstance(subs, dict) else subs
        return sum(s.get("lag", 0) for s in subs if isinstance(s, dict))


def drop_database(server, name):
    r = subprocess.run(["psql", server, "-qc", f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'],
                       capture_output=True, text=True)
    if r.returncode != 0:
        log(f"dropping {name}: {r.stderr.strip()}")


# --- load generators ---


def concurrent(port, items, work, threads=16):
    """Runs work(http, item) for each item on `threads` keep-alive connections
    (port: one port, or a tuple of ports for a tuple of connections per thread).
    Returns (results in item order, errors, perf_counter of the last success)."""
    items = list(items)
    results = [None] * len(items)
    errors = []
    last_ok = [0.0]
    lock = threading.Lock()
    counter = itertools.count()

    def run():
        h = tuple(Http(p) for p in port) if isinstance(port, tuple) else Http(port)
        while True:
            i = next(counter)
            if i >= len(items):
                break
            try:
                results[i] = work(h, items[i])
                t = time.perf_counter()
                with lock:
                    last_ok[0] = max(last_ok[0], t)
            except Exception as e:  # noqa: BLE001 - counted and reported
                with lock:
                    errors.append(f"{type(e).__name__}: {e}")
        for c in h if isinstance(h, tuple) else (h,):
            c.close()

    ts = [threading.Thread(target=run, daemon=True) for _ in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return results, errors, last_ok[0]


def create_post(h, i):
    status, body = h.request("POST", "/posts/create", {"title": f"bench post {i}"})
    if status != 201:
        raise RuntimeError(f"POST /posts/create: {status} {body[:200]!r}")
    return json.loads(body)["id"]


def create_comment(h, post, content):
    """POSTs a comment; returns its id (the answer lists the post's comments, the new one last)."""
    status, body = h.request("POST", f"/posts/{post}/comments", {"content": content})
    if status != 201:
        raise RuntimeError(f"POST comment: {status} {body[:200]!r}")
    return json.loads(body)[-1]["id"]


def seed_posts(sys_, n, threads=16):
    t0 = time.perf_counter()
    ids, errors, _ = concurrent(sys_.ports["posts"], range(n), create_post, threads)
    if errors:
        raise RuntimeError(f"{len(errors)} of {n} posts failed, first: {errors[0]}")
    return ids, time.perf_counter() - t0


def wait_query(sys_, done, timeout, what, interval=0.01):
    """Polls query's GET /posts until done(posts, comments, decided, body);
    returns (perf_counter when seen, polls, last counts)."""
    h = Http(sys_.ports["query"])
    t0 = time.perf_counter()
    polls, last_log = 0, t0
    while True:
        ts = time.perf_counter()
        _, body = h.get("/posts")
        rtt = time.perf_counter() - ts
        polls += 1
        counts = status_counts(body)
        now = time.perf_counter()
        if done(*counts, body):
            h.close()
            return now, polls, counts
        if now - t0 > timeout:
            h.close()
            raise TimeoutError(f"{what}: query still shows {counts} (posts, comments, decided) after {timeout} s")
        if now - last_log > 10:
            log(f"  waiting for {what}: query shows {counts[0]} posts, {counts[1]} comments, {counts[2]} decided")
            last_log = now
        # At least `interval` apart, and idle twice as long as a poll took, so
        # that rendering a large view for the poller stays a small share of
        # query's time while it applies events.
        time.sleep(max(interval, 2 * rtt))


def wrk(args, url, threads, connections, duration, script="get.lua", script_args=()):
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--timeout", "30s",
           "-s", os.path.join(LUA, script), url]
    if script_args:
        cmd += ["--", *script_args]
    out = subprocess.run(cmd, capture_output=True, text=True)
    line = next((l for l in out.stdout.splitlines() if l.startswith("BENCHJSON ")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({out.returncode}): {out.stderr.strip()} {out.stdout[-500:]}")
    r = json.loads(line[len("BENCHJSON "):])
    r["rps"] = round(r["requests"] / r["duration_s"], 1) if r["duration_s"] else 0
    r["threads"], r["connections"] = threads, connections
    return r


def wrk_brief(r):
    lat = r["latency_ms"]
    return {
        "rps": r["rps"], "p50_ms": lat["p50"], "p90_ms": lat["p90"], "p99_ms": lat["p99"], "max_ms": lat["max"],
        "requests": r["requests"], "non_2xx": r["non_2xx_3xx"],
        "socket_errors": sum(r["socket_errors"].values()),
        "connections": r["connections"], "threads": r["threads"], "duration_s": r["duration_s"],
    }


def ids_file(sys_, ids):
    path = os.path.join(sys_.data, "post-ids.txt")
    with open(path, "w") as f:
        f.write("\n".join(ids) + "\n")
    return path


# --- the measures ---


def m_basics(args, s):
    ready = s.start()
    time.sleep(1)
    out = {"start_to_ready_ms": round(ready * 1000, 1), "rss_idle_empty_mib": s.rss_mib()}
    gw = Http(s.ports["gateway"])
    posts = [create_post(gw, i) for i in range(100)]
    t = time.perf_counter()
    for i, p in enumerate(posts):
        for j in range(5):
            create_comment(gw, p, "orange" if j == 0 else f"comment {i}.{j}")
    out["seed_100_posts_500_comments_sequential_gateway_s"] = round(time.perf_counter() - t, 2)
    t_conv, _, _ = wait_query(s, lambda p, c, d, b: p == 100 and d == 500, args.timeout, "100 x 5 decided")
    out["seed_until_all_decided_in_query_s"] = round(t_conv - t, 2)
    time.sleep(2)
    out["rss_idle_100x5_mib"] = s.rss_mib()
    out["get_posts_body_bytes"] = len(Http(s.ports["query"]).get("/posts")[1])
    out["wrk_query_get_posts"] = wrk_brief(wrk(args, f"{s.url('query')}/posts", 2, args.connections, args.duration))
    out["wrk_gateway_get_posts"] = wrk_brief(wrk(args, f"{s.url('gateway')}/posts", 2, args.connections, args.duration))
    out["rss_after_wrk_mib"] = s.rss_mib()
    return out


def m_create(args, s):
    s.start()
    ids, _ = seed_posts(s, 100)
    wait_query(s, lambda p, c, d, b: p == 100, args.timeout, "100 posts")
    r = wrk_brief(wrk(args, s.url("comments"), 2, 16, args.duration, "comments.lua", [ids_file(s, ids)]))
    r["posts"] = 100
    r["rss_after_mib"] = s.rss_mib()
    return r


def m_propagation(args, s):
    s.start()
    ids, _ = seed_posts(s, 10)
    wait_query(s, lambda p, c, d, b: p == 10, args.timeout, "10 posts")
    wc, q = Http(s.ports["comments"]), Http(s.ports["query"])
    lat, rtts, polls_per = [], [], []
    for k in range(args.samples + 10):  # the first 10 warm up, not counted
        cid = create_comment(wc, ids[k % len(ids)], f"latency {k}").encode()
        t0 = time.perf_counter()
        polls = 0
        while True:
            ts = time.perf_counter()
            _, body = q.get("/posts")
            te = time.perf_counter()
            rtts.append(te - ts)
            polls += 1
            if comment_status(body, cid) in ("approved", "rejected"):
                break
            if te - t0 > args.timeout:
                raise TimeoutError(f"comment {cid} not decided in query after {args.timeout} s")
        if k >= 10:
            lat.append((te - t0) * 1000)
            polls_per.append(polls)
    return {
        "ms": dist(lat),
        "samples": len(lat),
        "poll_round_trip_ms": dist([r * 1000 for r in rtts], 3),
        "polls_per_sample_p50": pct(polls_per, 50),
        "note": "from the 201 of POST comment (comments port, keep-alive) to the end of the first GET /posts "
                "(query, keep-alive, polled back to back) that shows it approved; resolution: one poll round trip",
    }


def m_sequential(args, s):
    s.start()
    ids, _ = seed_posts(s, 100)
    wait_query(s, lambda p, c, d, b: p == 100, args.timeout, "100 posts")
    r = wrk_brief(wrk(args, s.url("comments"), 1, 1, args.duration, "comments.lua", [ids_file(s, ids)]))
    return {"writes_per_s": r["rps"], **r}


def m_burst(args, s):
    s.start()
    ids, _ = seed_posts(s, 100)
    wait_query(s, lambda p, c, d, b: p == 100, args.timeout, "100 posts")
    n = args.burst
    items = [(ids[i % len(ids)], f"orange {i}" if i % 10 == 0 else f"burst {i}") for i in range(n)]
    t0 = time.perf_counter()
    res, errors, t_last = concurrent(s.ports["comments"], items, lambda h, it: create_comment(h, *it), 16)
    ok = sum(r is not None for r in res)
    t_first_poll = time.perf_counter()
    seen_at_end = status_counts(Http(s.ports["query"]).get("/posts")[1])
    t_conv, polls, _ = wait_query(s, lambda p, c, d, b: d >= ok, args.timeout, f"{ok} comments decided")
    return {
        "comments": n, "created_201": ok, "failed": len(errors), "first_errors": errors[:3],
        "intake_s": round(t_last - t0, 3),
        "intake_writes_per_s": round(ok / (t_last - t0), 1),
        "decided_in_query_at_last_201": seen_at_end[2],
        "converged_after_last_201_s": round(t_conv - t_last, 3),
        "pipeline_events": 3 * ok,
        "pipeline_events_per_s": round(3 * ok / (t_conv - t0), 1),
        "poll_interval_ms": round((t_conv - t_first_poll) / max(polls, 1) * 1000, 1),
        "note": "16 keep-alive connections; converged = query's GET /posts shows every 201'd comment "
                "approved/rejected; events/s = 3 events per comment / (first POST to converged)",
    }


class PacedWriter:
    """Creates comments at `rate`/s on a pool of keep-alive connections: request k
    is due at t0 + k/rate (open loop). A late worker sends at once, so a writer
    that fell behind (every connection waiting on the server) catches up with
    the schedule when answers come faster; the achieved rate is reported."""

    def __init__(self, port, ids, rate, threads):
        self.port, self.ids, self.rate, self.threads = port, ids, rate, threads
        self.stop_flag = threading.Event()
        self.done = []  # (perf_counter at 201, latency s)
        self.failed = 0
        self.lock = threading.Lock()

    def start(self):
        self.t0 = time.perf_counter()
        self.counter = itertools.count()
        self.ts = [threading.Thread(target=self.run, daemon=True) for _ in range(self.threads)]
        for t in self.ts:
            t.start()

    def run(self):
        h = Http(self.port)
        while not self.stop_flag.is_set():
            k = next(self.counter)
            due = self.t0 + k / self.rate
            wait = due - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            ts = time.perf_counter()
            try:
                create_comment(h, self.ids[k % len(self.ids)], f"paced {k}")
                te = time.perf_counter()
                with self.lock:
                    self.done.append((te, te - ts))
            except Exception:  # noqa: BLE001 - counted
                with self.lock:
                    self.failed += 1
        h.close()

    def stop(self):
        self.stop_flag.set()
        for t in self.ts:
            t.join()

    def window(self, a, b):
        lats = [lat * 1000 for t, lat in self.done if a <= t <= b]
        return {"achieved_writes_per_s": round(len(lats) / (b - a), 1), "write_latency_ms": dist(lats)}


def m_reads_at(args, s, n_posts):
    s.start()
    ids, seed_s = seed_posts(s, n_posts)
    t_seeded = time.perf_counter()
    t_conv, _, _ = wait_query(s, lambda p, c, d, b: p >= n_posts, args.timeout, f"{n_posts} posts", 0.05)
    body = Http(s.ports["query"]).get("/posts")[1]
    out = {
        "posts": n_posts, "seed_posts_s": round(seed_s, 2), "query_has_all_after_seed_s": round(t_conv - t_seeded, 2),
        "get_posts_body_bytes_before": len(body),
    }
    url = f"{s.url('query')}/posts"
    out["baseline_no_writes"] = wrk_brief(wrk(args, url, 1, 4, args.duration))
    w = PacedWriter(s.ports["comments"], ids, args.write_rate, args.writer_connections)
    w.start()
    time.sleep(1)
    a = time.perf_counter()
    r = wrk(args, url, 1, 4, args.duration)
    b = time.perf_counter()
    w.stop()
    out["while_writing"] = wrk_brief(r)
    out["writer"] = {"target_writes_per_s": args.write_rate, **w.window(a, b), "failed": w.failed,
                     "connections": args.writer_connections}
    out["get_posts_body_bytes_after"] = len(Http(s.ports["query"]).get("/posts")[1])
    return out


def m_replay(args, s):
    s.start()
    n_posts = math.ceil(args.replay_events / EVENTS_PER_REPLAY_POST)
    n_comments = n_posts * REPLAY_COMMENTS_PER_POST
    log(f"  seeding {n_posts} posts x {REPLAY_COMMENTS_PER_POST} comments "
        f"(>= {n_posts * EVENTS_PER_REPLAY_POST} events)")

    def seed(conns, i):
        hp, hc = conns
        p = create_post(hp, i)
        for j in range(REPLAY_COMMENTS_PER_POST):
            create_comment(hc, p, "orange" if j == 0 else f"replay {i}.{j}")

    t0 = time.perf_counter()
    _, errors, t_last = concurrent((s.ports["posts"], s.ports["comments"]), range(n_posts), seed, 16)
    if errors:
        raise RuntimeError(f"{len(errors)} of {n_posts} seed flows failed, first: {errors[0]}")
    seed_s = t_last - t0
    log(f"  seeded in {seed_s:.1f} s; waiting for query to converge")
    t_conv, _, _ = wait_query(s, lambda p, c, d, b: p == n_posts and d == n_comments, args.timeout,
                              "the seed decided", 0.2)
    t_quiet = time.perf_counter()
    while s.backlog() > 0:
        if time.perf_counter() - t_quiet > args.timeout:
            raise TimeoutError("the bus still has undelivered events")
        time.sleep(0.2)
    events = s.log_events()
    snapshot = Http(s.ports["query"]).get("/posts")[1]
    stop_s, code = s.stop()
    s.delete_query_data()
    log(f"  {events} events in the log; query's data deleted; restarting")
    ready = s.start()
    target = status_counts(snapshot)
    t_done, polls, _ = wait_query(s, lambda p, c, d, b: (p, c, d) == target, args.timeout, "replay", 0.02)
    replay_s = t_done - s.t_spawn
    final = Http(s.ports["query"]).get("/posts")[1]
    # The same log again, while query runs: `blog replay query`.
    rebuild = subprocess.run([args.bin, "replay", "query", "--json", "--query-url", s.url("query")],
                             capture_output=True, text=True, timeout=args.timeout)
    rebuilt = json.loads(rebuild.stdout) if rebuild.returncode == 0 else {"error": rebuild.stderr.strip()}
    rebuilt["view_identical_after_rebuild"] = Http(s.ports["query"]).get("/posts")[1] == snapshot
    return {
        "online_rebuild": rebuilt,
        "events_in_log": events, "posts": n_posts, "comments": n_comments,
        "seed_s": round(seed_s, 2), "seed_writes_per_s": round((n_posts + n_comments) / seed_s, 1),
        "converged_after_seed_s": round(t_conv - t_last, 2),
        "stop_s": round(stop_s, 2), "exit_code": code,
        "restart_to_ready_s": round(ready, 3),
        "replay_s": round(replay_s, 3),
        "events_per_s": round(events / replay_s, 1),
        "replay_after_ready_s": round(replay_s - ready, 3),
        "view_identical_after_replay": final == snapshot,
        "poll_interval_ms": round((t_done - s.t_spawn - ready) / max(polls, 1) * 1000, 1),
        "note": "replay_s: from spawning `blog up` again (query's data deleted) to the first GET /posts showing "
                "every post and decided comment; events_per_s = events_in_log / replay_s",
    }


# What a browser's EventSource asks for (a server that does not compress
# ignores the encodings).
LIVE_REQUEST = (b"GET /posts/live HTTP/1.1\r\nHost: bench\r\nAccept: text/event-stream\r\n"
                b"Accept-Encoding: gzip, deflate, br\r\n\r\n")


class LiveReaders:
    """Open live streams (GET /posts/live on query), each read to the end
    of what arrives, in one thread: what 2,000 open browser tabs do. The
    bytes are counted as they come over the wire (compressed, if the server
    compresses); snapshots resent are counted only on plain streams."""

    def __init__(self, port, n):
        import selectors
        self.sel = selectors.EpollSelector()
        self.socks = []
        self.bytes = 0
        self.snapshots = 0
        self.stop = threading.Event()
        for _ in range(n):
            sock = socket.create_connection(("127.0.0.1", port))
            sock.sendall(LIVE_REQUEST)
            sock.setblocking(False)
            self.sel.register(sock, selectors.EVENT_READ)
            self.socks.append(sock)
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        # The browsers these streams stand for run elsewhere: here they
        # share the server's cores, so they take only what nothing else
        # wants (SCHED_IDLE; a policy is each thread's own on Linux, and 0
        # names the calling thread), and what is measured is what the
        # server spends on them.
        try:
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
        except (AttributeError, OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        while not self.stop.is_set():
            for key, _ in self.sel.select(timeout=0.2):
                try:
                    data = key.fileobj.recv(1 << 16)
                except BlockingIOError:
                    continue
                self.bytes += len(data)
                # (An event name split across two reads is missed: a rough count.)
                self.snapshots += data.count(b"event: snapshot")

    def close(self):
        self.stop.set()
        self.thread.join()
        for sock in self.socks:
            self.sel.unregister(sock)
            sock.close()


class UpdateProbe:
    """While writes run: one comment every interval_s, timed from its 201 to
    its id arriving on a live stream of its own (what a reader of an open
    page waits for a new comment)."""

    def __init__(self, args, s, post, interval_s=0.5):
        self.args, self.s, self.post, self.interval_s = args, s, post, interval_s
        self.delays, self.missed = [], 0
        self.stop = threading.Event()
        self.sock = socket.create_connection(("127.0.0.1", s.ports["query"]))
        # HTTP/1.0: the body comes as it is, without chunk sizes between
        # the (compressed) bytes.
        self.sock.sendall(LIVE_REQUEST.replace(b"HTTP/1.1", b"HTTP/1.0"))
        self.sock.settimeout(0.2)
        self.seen = b""
        self.head = b""
        self.inflate = None  # set once the answer says gzip
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def read(self):
        try:
            data = self.sock.recv(1 << 20)
        except socket.timeout:
            return
        if self.head is not None:
            self.head += data
            if b"\r\n\r\n" not in self.head:
                return
            head, data = self.head.split(b"\r\n\r\n", 1)
            if b"content-encoding: gzip" in head.lower():
                self.inflate = zlib.decompressobj(16 + zlib.MAX_WBITS)
            self.head = None
        if self.inflate is not None:
            data = self.inflate.decompress(data)
        # Only the tail is kept: an id is found in the bytes after its 201.
        self.seen = (self.seen + data)[-(1 << 22):]

    def run(self):
        h = Http(self.s.ports["comments"])
        n = 0
        while not self.stop.is_set():
            n += 1
            self.seen = b""
            cid = create_comment(h, self.post, f"probe {n}").encode()
            t0 = time.perf_counter()
            while cid not in self.seen:
                if time.perf_counter() - t0 > 30:
                    self.missed += 1
                    break
                self.read()
            else:
                self.delays.append((time.perf_counter() - t0) * 1000)
            self.stop.wait(self.interval_s)
        h.close()

    def close(self):
        self.stop.set()
        self.thread.join()
        self.sock.close()
        return {**(dist(self.delays, 1) or {}), "missed": self.missed}


def settle(readers, quiet_s=1.0, limit_s=120):
    """Waits until the streams have read what they were sent (their
    snapshots): no new bytes for quiet_s."""
    t0 = time.time()
    last, still_since = -1, time.time()
    while time.time() - t0 < limit_s:
        if readers.bytes != last:
            last, still_since = readers.bytes, time.time()
        elif time.time() - still_since >= quiet_s:
            return
        time.sleep(0.1)


def m_streams(args, s):
    s.start()
    # Over 1,000 posts, a post's list (which every comment's 201 carries)
    # grows little over the runs: the runs' writes cost about the same.
    ids, _ = seed_posts(s, 1000)
    wait_query(s, lambda p, c, d, b: p == 1000, args.timeout, "1,000 posts")
    out = {"streams": args.streams, "streams_via": args.streams_via}
    out["rss_before_mib"] = s.rss_mib()
    brief = lambda: wrk_brief(
        wrk(args, s.url("comments"), 2, 16, args.duration, "comments.lua", [ids_file(s, ids)]))
    runs_without, runs_with, changes = [brief()], [], []
    # Memory: the streams open, read their snapshots and sit idle; then
    # close. Nothing is written meanwhile, so what stays is what the
    # streams kept, not data the writes added. One stream first, so that
    # what the first stream builds once (the snapshot, query's rendered
    # posts and page cache) counts before.
    first = LiveReaders(s.ports[args.streams_via], 1)
    settle(first)
    time.sleep(6)  # the allocator is looked at every 5 s
    out["rss_before_streams_mib"] = s.rss_mib()
    readers = LiveReaders(s.ports[args.streams_via], args.streams)
    settle(readers)
    out["rss_streams_open_mib"] = s.rss_mib()
    readers.close()
    time.sleep(15)
    out["rss_after_streams_closed_mib"] = s.rss_mib()
    first.close()
    # Writes with the streams open (once they have their snapshots), each
    # run between two without. Every run adds comments and every comment's
    # 201 carries its post's whole list (the course's contract), so writes
    # grow slower run by run: a run with streams is compared with the mean
    # of the runs just before and after it, at about its own data size, and
    # over several rounds.
    out["bytes_read_by_streams"] = out["bytes_of_changes_read_by_streams"] = 0
    out["snapshots_resent_while_writing"] = 0
    for _ in range(args.stream_rounds):
        readers = LiveReaders(s.ports[args.streams_via], args.streams)
        settle(readers)
        snapshots, snapshot_events = readers.bytes, readers.snapshots
        runs_with.append(brief())
        out["bytes_read_by_streams"] += readers.bytes
        out["bytes_of_changes_read_by_streams"] += readers.bytes - snapshots
        # Snapshots sent again while writing: streams that fell behind.
        out["snapshots_resent_while_writing"] += readers.snapshots - snapshot_events
        readers.close()
        runs_without.append(brief())
        base = (runs_without[-2]["p99_ms"] + runs_without[-1]["p99_ms"]) / 2
        changes.append(round((runs_with[-1]["p99_ms"] - base) / base * 100, 1) if base else None)
    out["runs_without_streams"], out["runs_with_streams"] = runs_without, runs_with
    out["p99_ms_without_streams"] = [r["p99_ms"] for r in runs_without]
    out["p99_ms_with_streams"] = [r["p99_ms"] for r in runs_with]
    out["write_p99_change_pct_by_round"] = changes
    known = [c for c in changes if c is not None]
    out["write_p99_change_pct"] = round(statistics.median(known), 1) if known else None
    time.sleep(15)
    out["rss_after_writes_and_streams_closed_mib"] = s.rss_mib()
    before, after = out["rss_before_streams_mib"], out["rss_after_streams_closed_mib"]
    out["rss_after_close_change_pct"] = round((after - before) / before * 100, 1) if before else None
    return out


def m_live(args, s):
    s.start()
    (post,), _ = seed_posts(s, 1)
    n = args.live_comments
    text = "an earlier comment on a busy post, about as long as a short reply " * 2
    _, errors, _ = concurrent(s.ports["comments"], range(n),
                              lambda h, i: create_comment(h, post, f"{i} {text}"))
    if errors:
        raise RuntimeError(f"{len(errors)} of {n} comments failed, first: {errors[0]}")
    wait_query(s, lambda p, c, d, b: c == n and d == n, args.timeout, f"{n} comments decided")
    readers = LiveReaders(s.ports[args.streams_via], args.streams)
    settle(readers)
    snapshots = readers.bytes
    probe = UpdateProbe(args, s, post)
    time.sleep(args.duration)
    delays = probe.close()
    time.sleep(1)
    changes = readers.bytes - snapshots
    readers.close()
    return {
        "streams": args.streams, "comments_on_the_post": n,
        "snapshot_bytes_per_stream": round(snapshots / args.streams),
        "comment_to_stream_ms": delays,
        "bytes_of_changes_per_stream": round(changes / args.streams),
        "note": "a new comment every 0.5 s on a post with comments_on_the_post comments while "
                "`streams` pages are open; comment_to_stream_ms from its 201 to its id arriving on a stream",
    }


def m_reads(args, make_system):
    out = {}
    for n in args.reads_posts:
        out[str(n)] = run_one(args, f"reads-{n}", lambda s, n=n: m_reads_at(args, s, n), make_system)
    return out


def run_one(args, label, fn, make_system):
    s = make_system(label)
    log(f"{label}: {' '.join(s.command())}")
    try:
        r = fn(s)
    except Exception as e:  # noqa: BLE001 - one failed measure must not lose the others
        log(f"{label} FAILED: {type(e).__name__}: {e}")
        traceback.print_exc(file=sys.stderr)
        r = {"error": f"{type(e).__name__}: {e}"}
    finally:
        s.stop()
        r_log = s.log_summary()
        s.cleanup()
    if r_log.get("warn_lines") or r_log.get("error_lines"):
        log(f"{label}: server logged {r_log['warn_lines']} WARN, {r_log['error_lines']} ERROR lines, e.g.:")
        for line in r_log.get("first", []):
            log(f"    {line[:300]}")
    r["server_log"] = r_log
    return r


def human(results):
    rows = []

    def g(d, *path):
        for p in path:
            if not isinstance(d, dict) or p not in d:
                return None
            d = d[p]
        return d

    def add(name, value):
        if value is not None:
            rows.append((name, value))

    r = results
    add("start to ready (empty)", g(r, "basics", "start_to_ready_ms") and f"{g(r, 'basics', 'start_to_ready_ms')} ms")
    b = g(r, "basics")
    if b and "error" not in b:
        add("RSS idle empty / 100x5 / after wrk",
            f"{b['rss_idle_empty_mib']} / {b['rss_idle_100x5_mib']} / {b['rss_after_wrk_mib']} MiB")
        q, gw = b["wrk_query_get_posts"], b["wrk_gateway_get_posts"]
        add("GET /posts query (100x5)", f"{q['rps']:,.0f} req/s, p99 {q['p99_ms']} ms")
        add("GET /posts gateway", f"{gw['rps']:,.0f} req/s, p99 {gw['p99_ms']} ms")
    c = g(r, "create")
    if c and "error" not in c:
        add("comment creation, 16 conns", f"{c['rps']:,.0f}/s, p50 {c['p50_ms']} p99 {c['p99_ms']} ms, "
                                          f"non-2xx {c['non_2xx']}, socket errors {c['socket_errors']}")
    p = g(r, "propagation")
    if p and "error" not in p:
        m = p["ms"]
        add("propagation 201 -> decided in query",
            f"p50 {m['p50']} p90 {m['p90']} p99 {m['p99']} max {m['max']} ms "
            f"(poll {p['poll_round_trip_ms']['p50']} ms)")
    sq = g(r, "sequential")
    if sq and "error" not in sq:
        add("sequential writes, 1 conn", f"{sq['writes_per_s']:,.0f}/s, p99 {sq['p99_ms']} ms")
    bu = g(r, "burst")
    if bu and "error" not in bu:
        add(f"burst of {bu['comments']}", f"intake {bu['intake_writes_per_s']:,.0f}/s; converged "
                                          f"{bu['converged_after_last_201_s']} s after last 201; "
                                          f"pipeline {bu['pipeline_events_per_s']:,.0f} events/s")
    for n, rd in (g(r, "reads") or {}).items():
        if "error" in rd:
            add(f"reads at {n} posts", "error")
            continue
        add(f"GET /posts p99 at {n} posts", f"{rd['baseline_no_writes']['p99_ms']} ms idle, "
                                            f"{rd['while_writing']['p99_ms']} ms while writing "
                                            f"{rd['writer']['achieved_writes_per_s']:,.0f}/s")
    rp = g(r, "replay")
    if rp and "error" not in rp:
        add(f"replay of {rp['events_in_log']:,} events", f"{rp['events_per_s']:,.0f} events/s "
                                                         f"({rp['replay_s']} s; seeding took {rp['seed_s']} s)")
        ob = rp.get("online_rebuild", {})
        if "eventsPerSecond" in ob:
            add(f"`blog replay query` of {ob['read']:,} events", f"{ob['eventsPerSecond']:,.0f} events/s "
                                                                f"({ob['elapsedMs'] / 1000} s, query serving)")
    st = g(r, "streams")
    if st and "error" not in st:
        add(f"comment creation with {st['streams']:,} live streams open",
            f"p99 without {st['p99_ms_without_streams']} / with {st['p99_ms_with_streams']} ms, "
            f"each with-run against the mean of its neighbours {st['write_p99_change_pct_by_round']} % "
            f"(median {st['write_p99_change_pct']:+} %); idle streams: RSS {st['rss_before_streams_mib']} -> {st['rss_streams_open_mib']} -> "
            f"{st['rss_after_streams_closed_mib']} MiB (before / open / closed, {st['rss_after_close_change_pct']:+} %)")
    lv = g(r, "live")
    if lv and "error" not in lv and lv["comment_to_stream_ms"].get("n"):
        d = lv["comment_to_stream_ms"]
        add(f"a comment to {lv['streams']:,} open pages (post of {lv['comments_on_the_post']})",
            f"p50 {d['p50']} p99 {d['p99']} max {d['max']} ms; {lv['bytes_of_changes_per_stream']:,} bytes "
            f"of changes per page ({lv['snapshot_bytes_per_stream']:,} snapshot)")
    for name, rr in r.items():
        if isinstance(rr, dict) and "error" in rr:
            add(f"{name}", f"ERROR {rr['error'][:100]}")
    width = max((len(a) for a, _ in rows), default=0)
    print("", file=sys.stderr)
    for a, v in rows:
        print(f"  {a:<{width}}  {v}", file=sys.stderr)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", default="target/release/blog")
    ap.add_argument("--duration", type=int, default=10, help="seconds per wrk run and for sequential writes")
    ap.add_argument("--connections", type=int, default=64, help="wrk connections for the GET /posts throughput")
    ap.add_argument("--bus", help="nats://HOST:PORT to run on NATS JetStream")
    ap.add_argument("--postgres", help="postgres://... to keep data in PostgreSQL")
    ap.add_argument("--only", help="comma-separated subset of: " + ",".join(MEASURES))
    ap.add_argument("--samples", type=int, default=200, help="propagation samples")
    ap.add_argument("--burst", type=int, default=5000, help="comments in the burst")
    ap.add_argument("--write-rate", type=int, default=1000, help="comments/s written during the reads measure")
    ap.add_argument("--writer-connections", type=int, default=128,
                    help="keep-alive connections of the paced writer (enough to keep the rate at high latency)")
    ap.add_argument("--reads-posts", default="100,10000", help="post counts for the reads measure")
    ap.add_argument("--replay-events", type=int, default=100_000, help="at least this many events in the replayed log")
    ap.add_argument("--streams", type=int, default=2000, help="live streams open during the streams and live measures")
    ap.add_argument("--streams-via", choices=["query", "gateway"], default="query",
                    help="where the streams and live measures open their streams: on query (as an Ingress "
                         "routes them) or through the gateway (as blog up's page does)")
    ap.add_argument("--stream-rounds", type=int, default=4,
                    help="streams measure: runs with streams open, each between two without")
    ap.add_argument("--live-comments", type=int, default=1000, help="comments on the live measure's post")
    ap.add_argument("--timeout", type=float, default=900, help="seconds to wait for any one convergence")
    ap.add_argument("--logs", help="keep the servers' logs in this directory (default: a temporary one, removed)")
    ap.add_argument("--log-level", default="warn", help="BLOG_LOG for the servers")
    args = ap.parse_args()
    if not shutil.which("wrk"):
        raise SystemExit("wrk not found: apt-get install wrk")
    if args.postgres and not shutil.which("psql"):
        raise SystemExit("psql not found (needed to drop the bench's databases)")
    if not os.access(args.bin, os.X_OK):
        raise SystemExit(f"{args.bin}: not an executable (cargo build --release --bin blog)")
    only = MEASURES if not args.only else [m.strip() for m in args.only.split(",") if m.strip()]
    unknown = set(only) - set(MEASURES)
    if unknown:
        raise SystemExit(f"unknown measures {sorted(unknown)}; choose from {MEASURES}")
    args.reads_posts = [int(x) for x in args.reads_posts.split(",") if x]
    keep_logs = bool(args.logs)
    args.logs = args.logs or tempfile.mkdtemp(prefix="blog-bench-logs-")
    os.makedirs(args.logs, exist_ok=True)

    load_at_start = [round(x, 2) for x in os.getloadavg()]
    if load_at_start[0] > 0.5:
        log(f"note: load average {load_at_start[0]} before starting: other work shares the CPUs")

    def make_system(label):
        return System(args, label)

    fns = {
        "basics": m_basics, "create": m_create, "propagation": m_propagation, "sequential": m_sequential,
        "burst": m_burst, "replay": m_replay, "streams": m_streams, "live": m_live,
    }
    results = {}
    try:
        for m in only:
            if m == "reads":
                results[m] = m_reads(args, make_system)
            else:
                results[m] = run_one(args, m, lambda s, m=m: fns[m](args, s), make_system)
            log(f"{m}: done")
    except KeyboardInterrupt:
        log("interrupted: printing what was measured")
    finally:
        if not keep_logs:
            shutil.rmtree(args.logs, ignore_errors=True)
            for v in list(results.values()) + list((results.get("reads") or {}).values()):
                if isinstance(v, dict) and isinstance(v.get("server_log"), dict):
                    v["server_log"].pop("log", None)
    out = {
        "engines": {"bus": args.bus or "embedded HTTP bus", "storage": "PostgreSQL" if args.postgres else "SQLite"},
        "bin": args.bin,
        "machine": {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
                    "loadavg_at_start": load_at_start},
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "settings": {"duration_s": args.duration, "samples": args.samples, "burst": args.burst,
                     "write_rate": args.write_rate, "reads_posts": args.reads_posts,
                     "replay_events": args.replay_events},
        **results,
    }
    human(results)
    print(json.dumps(out, indent=2))
    failed = [k for k, v in results.items() if isinstance(v, dict) and "error" in v]
    failed += [f"reads-{k}" for k, v in (results.get("reads") or {}).items() if "error" in v]
    if failed:
        log(f"failed measures: {', '.join(failed)}")
        sys.exit(1)


if __name__ == "__main__":
    main()
