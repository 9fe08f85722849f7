"""Checks of the rendered manifests, the Dockerfile and skaffold.yaml that a
Kubernetes user would otherwise find out on a cluster."""

import json
import os
import re
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
OVERLAYS = ["base", "overlays/local", "overlays/production"]
SERVICES = {
    # app: (deployment, clusterip service, port)
    "posts": ("posts-depl", "posts-clusterip-srv", 4000),
    "comments": ("comments-depl", "comments-srv", 4001),
    "query": ("query-depl", "query-srv", 4002),
    "moderation": ("moderation-depl", "moderation-srv", 4003),
    "event-bus": ("event-bus-depl", "event-bus-srv", 4005),
    "client": ("client-depl", "client-srv", 3000),
}


def render(target):
    rendered = os.environ.get("BLOG_RENDERED")
    if rendered:
        path = Path(rendered) / (target.replace("/", "-") + ".yaml")
        text = path.read_text()
    else:
        text = subprocess.run(
            ["kubectl", "kustomize", str(ROOT / "infra/k8s" / target)], check=True, capture_output=True, text=True
        ).stdout
    return [doc for doc in yaml.safe_load_all(text) if doc]


def by_kind(docs, kind):
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def workloads(docs):
    return [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]


@pytest.mark.parametrize("target", OVERLAYS)
def test_course_names_ports_and_selectors(target):
    docs = render(target)
    deployments = by_kind(docs, "Deployment")
    services = by_kind(docs, "Service")
    production = target.endswith("production")
    for app, (depl, srv, port) in SERVICES.items():
        if production and app == "event-bus":
            assert depl not in deployments and srv not in services, "production runs on NATS, not the HTTP bus"
            continue
        d = deployments[depl]
        assert d["spec"]["selector"]["matchLabels"] == {"app": app}
        assert d["spec"]["template"]["metadata"]["labels"]["app"] == app
        container = d["spec"]["template"]["spec"]["containers"][0]
        assert container["image"].split(":")[0].endswith(app)
        assert any(p["containerPort"] == port for p in container["ports"])
        s = services[srv]
        assert s["spec"].get("type", "ClusterIP") == "ClusterIP"
        assert s["spec"]["selector"] == {"app": app}
        assert s["spec"]["ports"][0]["port"] == port
    node_port = services["posts-srv"]
    assert node_port["spec"]["type"] == "NodePort"
    assert node_port["spec"]["selector"] == {"app": "posts"}
    assert node_port["spec"]["ports"][0]["port"] == 4000


@pytest.mark.parametrize("target", OVERLAYS)
def test_every_workload_has_probes_limits_and_a_restricted_security_context(target):
    for w in workloads(render(target)):
        name = w["metadata"]["name"]
        pod = w["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True, name
        assert pod["securityContext"]["seccompProfile"]["type"] == "RuntimeDefault", name
        assert pod.get("automountServiceAccountToken") is False, name
        assert pod.get("terminationGracePeriodSeconds", 0) >= 30, name
        for c in pod["containers"]:
            assert "readinessProbe" in c and "livenessProbe" in c, name
            res = c["resources"]
            assert {"cpu", "memory"} <= set(res["requests"]) and {"cpu", "memory"} <= set(res["limits"]), name
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, name
            assert sc["capabilities"]["drop"] == ["ALL"], name
            dev_client = target.endswith("local") and name == "client-depl"
            assert sc["readOnlyRootFilesystem"] is (not dev_client), name
            # Configuration only through the environment: no config files, no args but the command.
            if w["kind"] == "Deployment":
                assert "args" not in c and "command" not in c, name
        if w["kind"] == "Deployment" and name != "client-depl":
            probe = pod["containers"][0]
            assert probe["readinessProbe"]["httpGet"]["path"] == "/readyz", name
            assert probe["livenessProbe"]["httpGet"]["path"] == "/healthz", name


def blog_routes():
    binary = os.environ.get("BLOG_BIN", str(ROOT / "target/debug/blog"))
    assert Path(binary).exists(), f"{binary} is missing: build it first (cargo build --bin blog)"
    out = subprocess.run([binary, "routes"], check=True, capture_output=True, text=True).stdout
    return json.loads(out)


# The course's Ingress (CONTRACT.md), as a fixture independent of both.
COURSE_RULES = [
    {"path": "/posts/create", "pathType": "Prefix", "service": "posts-clusterip-srv", "port": 4000},
    {"path": "/posts/?(.*)/comments", "pathType": "ImplementationSpecific", "service": "comments-srv", "port": 4001},
    {"path": "/posts", "pathType": "Prefix", "service": "query-srv", "port": 4002},
    {"path": "/?(.*)", "pathType": "ImplementationSpecific", "service": "client-srv", "port": 3000},
]


@pytest.mark.parametrize("target", OVERLAYS)
def test_the_ingress_and_the_gateway_apply_the_same_rules(target):
    ingress = by_kind(render(target), "Ingress")["ingress-srv"]
    meta = ingress["metadata"]["annotations"]
    assert meta["nginx.ingress.kubernetes.io/use-regex"] == "true"
    assert meta["nginx.ingress.kubernetes.io/proxy-buffering"] == "off", "live updates are a stream"
    assert int(meta["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 600
    assert ingress["spec"]["ingressClassName"] == "nginx"
    (rule,) = ingress["spec"]["rules"]
    assert rule["host"] == "posts.com"
    rules = [
        {
            "path": p["path"],
            "pathType": p["pathType"],
            "service": p["backend"]["service"]["name"],
            "port": p["backend"]["service"]["port"]["number"],
        }
        for p in rule["http"]["paths"]
    ]
    assert rules == COURSE_RULES
    assert blog_routes() == rules


def test_production_runs_nats_and_a_postgres_per_service_with_replicas_and_policies():
    docs = render("overlays/production")
    sts = by_kind(docs, "StatefulSet")
    assert sts["nats"]["spec"]["replicas"] == 3
    conf = by_kind(docs, "ConfigMap")["nats-config"]["data"]["nats.conf"]
    assert "sync_interval: always" in conf and "store_dir" in conf
    for app in ["posts", "comments", "query", "moderation"]:
        assert f"postgres-{app}" in sts
        d = by_kind(docs, "Deployment")[f"{app}-depl"]
        assert d["spec"]["replicas"] >= 2
        env = {e["name"]: e.get("value") for e in d["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["BLOG_BUS"] == "nats://nats:4222"
        assert env["BLOG_NATS_REPLICAS"] == "3"
        assert f"@postgres-{app}:5432/" in env["BLOG_POSTGRES"]
        assert not any("persistentVolumeClaim" in v for v in d["spec"]["template"]["spec"]["volumes"])
    assert by_kind(docs, "Deployment")["client-depl"]["spec"]["replicas"] >= 2
    pdbs = {p["spec"]["selector"]["matchLabels"]["app"] for p in by_kind(docs, "PodDisruptionBudget").values()}
    assert pdbs >= {"posts", "comments", "query", "moderation", "client", "nats"}
    policies = by_kind(docs, "NetworkPolicy")
    deny = policies["default-deny"]["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    for app in ["posts", "comments", "query", "moderation"]:
        ingress = policies[f"postgres-{app}"]["spec"]["ingress"]
        assert ingress == [{"from": [{"podSelector": {"matchLabels": {"app": app}}}], "ports": [{"protocol": "TCP", "port": 5432}]}]
    nats_from = policies["nats"]["spec"]["ingress"][0]["from"][0]["podSelector"]["matchExpressions"][0]["values"]
    assert sorted(nats_from) == ["comments", "moderation", "posts", "query"]
    assert not any(d["kind"] == "PersistentVolumeClaim" for d in docs)


def test_local_overlay_never_pulls():
    for d in by_kind(render("overlays/local"), "Deployment").values():
        assert d["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] == "Never"


def dockerfile_targets():
    text = (ROOT / "Dockerfile").read_text()
    return re.findall(r"^FROM\s+\S+\s+AS\s+(\S+)", text, re.MULTILINE | re.IGNORECASE)


def test_dockerfile_is_multi_stage_non_root_and_exec_form():
    text = (ROOT / "Dockerfile").read_text()
    targets = dockerfile_targets()
    for app in SERVICES:
        assert app in targets, f"a target per image: {app}"
    assert "cargo chef cook" in text, "a cached dependency layer"
    assert re.search(r"^USER 65532:65532$", text, re.MULTILINE)
    assert re.search(r'^ENTRYPOINT \["/usr/local/bin/blog", "serve"\]$', text, re.MULTILINE)
    for image in re.findall(r"^ARG \w+_IMAGE=(\S+)$", text, re.MULTILINE):
        assert ":" in image and not image.endswith(":latest"), f"pinned base: {image}"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert "target/" in ignored and "**/node_modules/" in ignored


def test_skaffold_builds_every_image_locally_from_the_dockerfile():
    config = yaml.safe_load((ROOT / "skaffold.yaml").read_text())
    assert re.fullmatch(r"skaffold/v4beta\d+", config["apiVersion"])
    assert config["build"]["local"]["push"] is False
    artifacts = {a["image"]: a for a in config["build"]["artifacts"]}
    images = set()
    for d in workloads(render("overlays/local")):
        images |= {c["image"] for c in d["spec"]["template"]["spec"]["containers"]}
    assert set(artifacts) == images, "an artifact for every image the manifests use, and no other"
    targets = dockerfile_targets()
    for image, artifact in artifacts.items():
        assert artifact["docker"]["dockerfile"] == "Dockerfile"
        assert artifact["docker"]["target"] in targets
    assert artifacts["client"]["sync"]["manual"], "file sync for the client in dev"
    for path in config["manifests"]["kustomize"]["paths"]:
        assert (ROOT / path / "kustomization.yaml").exists()
    (production,) = [p for p in config["profiles"] if p["name"] == "production"]
    for path in production["manifests"]["kustomize"]["paths"]:
        assert (ROOT / path / "kustomization.yaml").exists()
