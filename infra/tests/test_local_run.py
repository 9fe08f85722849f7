"""The rendered base overlay run on loopback, the way a kubelet would run it
but without containers: each Deployment's process is the image's ENTRYPOINT
and CMD (from the Dockerfile) with exactly the environment of its
manifest (Dockerfile ENV, then the container's env). Only what a cluster
provides is translated: Service names become 127.0.0.1 and a free port, the
pod's volumes become temporary folders, and the image's built client a
stand-in page.

It proves that the manifests and the images configure the real binary into
a working system (the bus's subscribers, the services' bus URL, ports,
probes), that infra/smoke.sh passes through the gateway (which applies the
Ingress rules), and that every process stops on SIGTERM within its grace
period."""

import os
import re
import shutil
import signal
import socket
import subprocess
import time

import pytest

from conftest import ROOT, blog_bin, by_kind, effective, effective_env, exec_form, http_status, render, selects


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Pod:
    def __init__(self, name, argv, env, port, container, log):
        self.name, self.argv, self.env, self.port, self.container, self.log = name, argv, env, port, container, log
        self.process = None

    def start(self):
        self.process = subprocess.Popen(
            self.argv, env=self.env, stdout=self.log.open("w"), stderr=subprocess.STDOUT, cwd=self.log.parent
        )

    def probe_url(self, probe):
        return f"http://127.0.0.1:{self.port}{self.container[probe]['httpGet']['path']}"

    def logs(self):
        return self.log.read_text()[-3000:] if self.log.exists() else ""


def plan(tmp_path, binary):
    """The base overlay's Deployments as local processes (not started)."""
    docs = render("base")
    deployments, services = by_kind(docs, "Deployment"), by_kind(docs, "Service")
    ports = {name: free_port() for name in deployments}

    def service_address(match):
        host, port = match.group(1), int(match.group(2))
        assert host in services, f"no Service {host} in the overlay"
        (entry,) = [p for p in services[host]["spec"]["ports"] if p["port"] == port]
        (backend,) = [n for n, d in deployments.items() if selects(services[host]["spec"]["selector"], d["spec"]["template"]["metadata"]["labels"])]
        return f"http://127.0.0.1:{ports[backend]}"

    client_dir = tmp_path / "client-dist"
    client_dir.mkdir()
    (client_dir / "index.html").write_text('<!doctype html><html><body><div id="root"></div></body></html>\n')

    pods = {}
    for name, d in deployments.items():
        spec = d["spec"]["template"]["spec"]
        (c,) = spec["containers"]
        target = c["image"]
        entrypoint, cmd = exec_form(effective(target, "ENTRYPOINT")), exec_form(effective(target, "CMD"))
        argv = [binary if a == "/usr/local/bin/blog" else a for a in entrypoint + cmd]
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **effective_env(target)}
        env.update({e["name"]: e["value"] for e in c.get("env", [])})
        # What the cluster provides, translated to this machine.
        paths = {"/app/client": str(client_dir)}
        for m in c.get("volumeMounts", []):
            local = tmp_path / name / m["name"]
            local.mkdir(parents=True)
            paths[m["mountPath"]] = str(local)
        for key, value in list(env.items()):
            value = re.sub(r"http://([a-z0-9-]+):(\d+)", service_address, value)
            for mount, local in paths.items():
                if value == mount or value.startswith(mount + "/"):
                    value = local + value[len(mount):]
            env[key] = value
        env["BLOG_HOST"] = "127.0.0.1"
        env["BLOG_PORT"] = str(ports[name])
        env["NO_COLOR"] = "1"
        pods[name] = Pod(name, argv, env, ports[name], c, tmp_path / f"{name}.log")
    return pods


def wait_ready(pods, deadline):
    pending = dict(pods)
    while pending and time.monotonic() < deadline:
        for name, pod in list(pending.items()):
            assert pod.process.poll() is None, f"{name} exited ({pod.process.returncode}):\n{pod.logs()}"
            if http_status(pod.probe_url("readinessProbe")) == 200:
                del pending[name]
        time.sleep(0.1)
    assert not pending, "never ready: " + ", ".join(f"{n}:\n{p.logs()}" for n, p in pending.items())


@pytest.fixture
def running(tmp_path):
    binary = blog_bin()
    pods = plan(tmp_path, binary)
    gateway_port = free_port()
    posts, comments, query, client = (pods[n].port for n in ("posts-depl", "comments-depl", "query-depl", "client-depl"))
    gateway = Pod(
        "gateway",
        [binary, "serve", "gateway"],
        {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "NO_COLOR": "1",
            "BLOG_HOST": "127.0.0.1",
            "BLOG_PORT": str(gateway_port),
            "BLOG_POSTS_URL": f"http://127.0.0.1:{posts}",
            "BLOG_COMMENTS_URL": f"http://127.0.0.1:{comments}",
            "BLOG_QUERY_URL": f"http://127.0.0.1:{query}",
            "BLOG_CLIENT_URL": f"http://127.0.0.1:{client}",
        },
        gateway_port,
        {"readinessProbe": {"httpGet": {"path": "/readyz"}}},
        tmp_path / "gateway.log",
    )
    everything = {**pods, "gateway": gateway}
    try:
        for pod in everything.values():
            pod.start()
        wait_ready(everything, time.monotonic() + 60)
        yield pods, gateway
    finally:
        for pod in everything.values():
            if pod.process and pod.process.poll() is None:
                pod.process.kill()
                pod.process.wait()


def test_the_base_manifests_run_the_course_flow_and_stop_gracefully(running):
    pods, gateway = running
    # Every probe the manifests declare answers 200.
    for name, pod in pods.items():
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            assert http_status(pod.probe_url(probe)) == 200, f"{name} {probe}"

    # The course's flow through the gateway (= the Ingress rules).
    assert shutil.which("curl"), "curl runs infra/smoke.sh"
    smoke = subprocess.run(
        ["bash", str(ROOT / "infra/smoke.sh"), f"http://127.0.0.1:{gateway.port}"],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "SMOKE_TIMEOUT": "30", "SMOKE_LIVE_SECONDS": "2"},
    )
    logs = "\n".join(f"--- {n}\n{p.logs()}" for n, p in pods.items())
    assert smoke.returncode == 0, f"{smoke.stdout}\n{smoke.stderr}\n{logs}"
    assert "smoke: 5 passed, 0 failed" in smoke.stdout

    # SIGTERM (what the kubelet sends after the preStop pause): each process
    # drains and exits, well within what is left of its grace period.
    docs = by_kind(render("base"), "Deployment")
    gateway.process.send_signal(signal.SIGTERM)
    for name, pod in pods.items():
        spec = docs[name]["spec"]["template"]["spec"]
        pause = pod.container["lifecycle"]["preStop"]["sleep"]["seconds"]
        budget = spec["terminationGracePeriodSeconds"] - pause
        pod.process.send_signal(signal.SIGTERM)
        started = time.monotonic()
        try:
            code = pod.process.wait(timeout=budget)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{name} ignored SIGTERM for {budget} s:\n{pod.logs()}")
        assert code == 0, f"{name} exited {code} on SIGTERM:\n{pod.logs()}"
        assert time.monotonic() - started < budget
    assert gateway.process.wait(timeout=25) == 0
