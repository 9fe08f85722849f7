"""Shared helpers for the static deployment checks.

The manifests are rendered once per overlay (by infra/check.sh into
$BLOG_RENDERED, or here with `kubectl kustomize`), the Dockerfile is parsed
into its stages, and the `blog` binary is found through $BLOG_BIN or
target/debug/blog. In CI ($CI set) a missing binary fails the tests that
need it instead of skipping them: .ci/run builds it first.
"""

import fnmatch
import functools
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "infra" / "k8s"
OVERLAYS = ["base", "overlays/local", "overlays/dev", "overlays/production"]

# The course's services (its wire contract): app label -> Deployment, ClusterIP
# Service, port. The image of each is the Dockerfile target of the same name.
COURSE = {
    "posts": ("posts-depl", "posts-clusterip-srv", 4000),
    "comments": ("comments-depl", "comments-srv", 4001),
    "query": ("query-depl", "query-srv", 4002),
    "moderation": ("moderation-depl", "moderation-srv", 4003),
    "event-bus": ("event-bus-depl", "event-bus-srv", 4005),
    "client": ("client-depl", "client-srv", 3000),
}

# The course's Ingress, written down here
# independently of both the manifests and the gateway's code.
COURSE_RULES = [
    {"path": "/posts/create", "pathType": "Prefix", "service": "posts-clusterip-srv", "port": 4000},
    {"path": "/posts/?(.*)/comments", "pathType": "ImplementationSpecific", "service": "comments-srv", "port": 4001},
    {"path": "/posts", "pathType": "Prefix", "service": "query-srv", "port": 4002},
    {"path": "/?(.*)", "pathType": "ImplementationSpecific", "service": "client-srv", "port": 3000},
]


# ------------------------------------------------------------ manifests


def kubectl():
    found = os.environ.get("KUBECTL") or shutil.which("kubectl")
    if not found:
        pytest.fail("kubectl is needed to render the overlays (infra/check.sh installs it)")
    return found


@functools.cache
def _rendered_text(target):
    rendered = os.environ.get("BLOG_RENDERED")
    if rendered:
        path = Path(rendered) / (target.replace("/", "-") + ".yaml")
        if path.exists():
            return path.read_text()
    return subprocess.run(
        [kubectl(), "kustomize", str(K8S / target)], check=True, capture_output=True, text=True
    ).stdout


def render(target):
    """Every object the overlay renders (fresh copies: tests may mutate them)."""
    return [doc for doc in yaml.safe_load_all(_rendered_text(target)) if doc]


def by_kind(docs, kind):
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def workloads(docs):
    return [d for d in docs if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob")]


def pod_spec(workload):
    if workload["kind"] == "CronJob":
        return workload["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    return workload["spec"]["template"]["spec"]


def pod_labels(workload):
    return workload["spec"]["template"]["metadata"].get("labels", {})


def all_containers(spec):
    return spec.get("initContainers", []) + spec["containers"] + spec.get("ephemeralContainers", [])


def selects(selector, labels):
    """A LabelSelector (matchLabels + matchExpressions), or a plain map (Service)."""
    if selector is None:
        return False
    if "matchLabels" not in selector and "matchExpressions" not in selector:
        match_labels, expressions = selector, []
    else:
        match_labels, expressions = selector.get("matchLabels") or {}, selector.get("matchExpressions") or []
    if any(labels.get(k) != v for k, v in match_labels.items()):
        return False
    for e in expressions:
        key, op, values = e["key"], e["operator"], e.get("values", [])
        if op == "In" and labels.get(key) not in values:
            return False
        if op == "NotIn" and labels.get(key) in values:
            return False
        if op == "Exists" and key not in labels:
            return False
        if op == "DoesNotExist" and key in labels:
            return False
    return True


def container_port(container, port):
    """The containerPort a Service targetPort or a probe port names, or None."""
    for p in container.get("ports", []):
        if port == p.get("name") or port == p["containerPort"]:
            return p["containerPort"]
    return None



def assert_reaches_a_pod(services, workloads_, name, port):
    """Service `name` selects at least one workload, and every workload it
    selects has a container with the Service port's target port."""
    (service_port,) = [p for p in services[name]["spec"]["ports"] if p["port"] == port]
    backends = [w for w in workloads_ if selects(services[name]["spec"]["selector"], pod_labels(w))]
    assert backends, f"{name} selects no pod"
    for w in backends:
        assert any(
            container_port(c, service_port["targetPort"]) for c in w["spec"]["template"]["spec"]["containers"]
        ), f"{w['metadata']['name']} has no port {service_port['targetPort']}"


def http_status(url, timeout=2):
    """The status of GET `url`, or None when nothing answers."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None


def env_map(container):
    return {e["name"]: e.get("value") for e in container.get("env", [])}


# ------------------------------------------------------------ Dockerfile


def _logical_lines(text):
    line = ""
    for raw in text.splitlines():
        stripped = raw.strip()
        if not line and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#") and line:
            continue  # a comment inside a continued instruction
        if stripped.endswith("\\"):
            line += stripped[:-1] + " "
            continue
        line += stripped
        yield line
        line = ""
    if line:
        yield line


@functools.cache
def dockerfile():
    """The Dockerfile as {"args": {ARG: default}, "stages": [{name, base, instructions}]}.

    Instructions are (KEYWORD, rest) pairs, in order; JSON-form arguments are
    left as text for the tests to parse.
    """
    args, stages = {}, []
    for line in _logical_lines((ROOT / "Dockerfile").read_text()):
        keyword, _, rest = line.partition(" ")
        keyword, rest = keyword.upper(), rest.strip()
        if keyword == "FROM":
            m = re.fullmatch(r"(?:--platform=\S+\s+)?(\S+)(?:\s+AS\s+(\S+))?", rest, re.IGNORECASE)
            base = re.sub(r"\$\{(\w+)\}|\$(\w+)", lambda v: args.get(v.group(1) or v.group(2), v.group(0)), m.group(1))
            stages.append({"name": m.group(2), "base": base, "raw_base": m.group(1), "instructions": []})
        elif keyword == "ARG" and not stages:
            name, _, default = rest.partition("=")
            args[name] = default
        elif stages:
            stages[-1]["instructions"].append((keyword, rest))
    return {"args": args, "stages": stages}


def stage(name):
    for s in dockerfile()["stages"]:
        if s["name"] == name:
            return s
    raise KeyError(f"no Dockerfile stage {name!r}")


def stage_chain(name):
    """The stage and the stages it is built FROM, nearest first."""
    chain, current = [], stage(name)
    while True:
        chain.append(current)
        names = [s["name"] for s in dockerfile()["stages"]]
        if current["base"] not in names:
            return chain
        current = stage(current["base"])


def effective(name, keyword):
    """The last ENTRYPOINT/CMD/USER/WORKDIR of a target, through its parents."""
    for s in stage_chain(name):
        found = [rest for k, rest in s["instructions"] if k == keyword]
        if found:
            return found[-1]
    return None


def effective_env(name):
    env = {}
    for s in reversed(stage_chain(name)):
        for k, rest in s["instructions"]:
            if k == "ENV":
                for key, value in re.findall(r'(\w+)=("[^"]*"|\S+)', rest):
                    env[key] = value.strip('"')
    return env


def exec_form(rest):
    value = json.loads(rest)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), rest
    return value


# ------------------------------------------------------------ .dockerignore


@functools.cache
def _dockerignore_rules():
    rules = []
    for line in (ROOT / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        negate = line.startswith("!")
        pattern = line[1:] if negate else line
        rules.append((negate, pattern.strip("/")))
    return rules


def _pattern_matches(pattern, path):
    """Docker's matching: a pattern matches a path or any of its parents; ** spans folders."""
    regex = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            regex += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            regex += ".*"
            i += 2
        elif pattern[i] == "*":
            regex += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            regex += "[^/]"
            i += 1
        else:
            regex += re.escape(pattern[i])
            i += 1
    parts = path.split("/")
    return any(re.fullmatch(regex, "/".join(parts[:n])) for n in range(1, len(parts) + 1))


def in_build_context(path):
    """Whether `path` (relative to the root) is sent to the builder."""
    included = True
    for negate, pattern in _dockerignore_rules():
        if _pattern_matches(pattern, path):
            included = negate
    return included


def glob_matches(pattern, path):
    return fnmatch.fnmatch(path, pattern)


# ------------------------------------------------------------ the binary


def in_ci():
    return bool(os.environ.get("CI"))


def blog_bin(required=True):
    """The `blog` binary, or a skip outside CI / a failure in CI when it is missing."""
    binary = Path(os.environ.get("BLOG_BIN", str(ROOT / "target/debug/blog")))
    if binary.exists():
        return str(binary)
    message = f"{binary} is missing: build it first (cargo build --bin blog) or set BLOG_BIN"
    if in_ci() or required == "always":
        pytest.fail(message)
    pytest.skip(message)


@functools.cache
def blog_help(*args):
    return subprocess.run([blog_bin(), *args, "--help"], check=True, capture_output=True, text=True).stdout


# ------------------------------------------------------------ NATS and sizes


class NatsVar(str):
    """An unquoted `$NAME` in a nats-server config: a variable that the server
    resolves from the config or, failing that, from its environment."""


def nats_conf(text):
    """nats-server's configuration format, the subset a config file here uses:
    maps ({}), arrays ([]), `key: value`, `key = value` and `key value`,
    quoted and bare strings, `#` and `//` comments. Bare `$NAME` values come
    back as NatsVar("NAME"); every other scalar as the string it reads."""
    pos = 0
    n = len(text)

    def skip(separators=""):
        nonlocal pos
        while pos < n:
            c = text[pos]
            if c.isspace() or c in separators:
                pos += 1
            elif c == "#" or text.startswith("//", pos):
                while pos < n and text[pos] != "\n":
                    pos += 1
            else:
                return

    def quoted():
        nonlocal pos
        quote = text[pos]
        end = text.index(quote, pos + 1)
        value = text[pos + 1 : end]
        pos = end + 1
        return value

    def bare(stops):
        nonlocal pos
        start = pos
        while pos < n and not text[pos].isspace() and text[pos] not in stops:
            pos += 1
        return text[start:pos]

    def value():
        nonlocal pos
        c = text[pos]
        if c == "{":
            pos += 1
            return mapping("}")
        if c == "[":
            pos += 1
            items = []
            while True:
                skip(",;")
                if text[pos] == "]":
                    pos += 1
                    return items
                items.append(value())
        if c in "\"'":
            return quoted()
        word = bare(",;}]")
        return NatsVar(word[1:]) if word.startswith("$") else word

    def mapping(close):
        nonlocal pos
        result = {}
        while True:
            skip(",;")
            if pos >= n:
                assert close is None, "unterminated map"
                return result
            if close and text[pos] == close:
                pos += 1
                return result
            key = quoted() if text[pos] in "\"'" else bare(":={")
            while pos < n and text[pos] in " \t":
                pos += 1
            if text[pos] in ":=":
                pos += 1
            skip()
            assert key not in result, f"{key} given twice"
            result[key] = value()

    return mapping(None)


def nats_subject_matches(pattern, subject):
    """Whether a NATS subject pattern (`*` one token, `>` the rest) covers a subject."""
    p, s = pattern.split("."), subject.split(".")
    for i, token in enumerate(p):
        if token == ">":
            return len(s) > i
        if i >= len(s) or (token != "*" and token != s[i]):
            return False
    return len(p) == len(s)


def nats_size(value):
    """A size in nats-server's config: a bare k, m, g, t is a power of 1000;
    kb, ki, kib (and the m, g, t forms) are powers of 1024, in any case."""
    m = re.fullmatch(r"(\d+)\s*([a-zA-Z]*)", str(value).strip())
    assert m, f"not a size: {value!r}"
    number, suffix = int(m.group(1)), m.group(2).lower()
    powers = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4}
    if suffix in powers:
        return number * 1000 ** powers[suffix]
    if suffix[:1] in "kmgt" and suffix[1:] in ("b", "i", "ib"):
        return number * 1024 ** powers[suffix[0]]
    raise AssertionError(f"unknown size unit in {value!r}")


def binary_size(value):
    """A size as the blog reads BLOG_NATS_MAX_BYTES: bytes, or KiB, MiB, GiB, TiB."""
    m = re.fullmatch(r"(\d+)(KiB|MiB|GiB|TiB)?", str(value).strip())
    assert m, f"not a size the blog reads: {value!r}"
    return int(m.group(1)) * 1024 ** (["KiB", "MiB", "GiB", "TiB"].index(m.group(2)) + 1 if m.group(2) else 0)


def quantity_bytes(value):
    """A Kubernetes quantity of bytes (10Gi, 512Mi, 1G, 1000)."""
    m = re.fullmatch(r"(\d+)(Ki|Mi|Gi|Ti|k|M|G|T)?", str(value))
    assert m, f"not a byte quantity: {value!r}"
    factors = {None: 1, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}
    return int(m.group(1)) * factors[m.group(2)]


def secret_refs(container):
    """{env name: (Secret, key)} for the variables a container reads from Secrets."""
    return {
        e["name"]: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for e in container.get("env", [])
        if "secretKeyRef" in e.get("valueFrom", {})
    }
