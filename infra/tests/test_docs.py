"""docs/deploy.md names only things that exist: its paths, overlays,
Deployments, Dockerfile targets and images; and it covers what the issue
asks (Docker Desktop, minikube, kind, ingress-nginx, the hosts entry,
skaffold dev, kubectl apply -k, kubectl rollout restart), and that its
Monitoring section names the manifests' annotations, settings and
PodMonitor and the dashboard's panels as they are."""

import json
import re
import subprocess

import yaml

from conftest import COURSE, ROOT, by_kind, dockerfile, render

DOC = (ROOT / "docs/deploy.md").read_text()


def test_the_guide_covers_the_course_steps():
    for needle in (
        "Docker Desktop",
        "minikube",
        "kind create cluster",
        "ingress-nginx",
        "127.0.0.1 posts.com",
        "skaffold dev",
        "kubectl apply -k infra/k8s/overlays/local",
        "kubectl rollout restart deployment posts-depl",
    ):
        assert needle in DOC, needle


def test_every_path_the_guide_names_exists():
    paths = set(re.findall(r"(?<![\w/.])((?:infra|docs|client|crates)/[\w./-]*\w)", DOC))
    assert paths
    for path in paths:
        assert (ROOT / path).exists() or (ROOT / "docs" / path).exists(), path


def test_every_overlay_the_guide_applies_renders():
    for path in set(re.findall(r"kubectl (?:apply|delete) -k ([\w/.-]*\w)", DOC)):
        assert (ROOT / path / "kustomization.yaml").exists(), path


def test_every_deployment_and_target_the_guide_names_exists():
    deployments = set(by_kind(render("base"), "Deployment"))
    for name in re.findall(r"rollout (?:restart|status) deployment ([\w-]+)", DOC):
        assert name in deployments, name
    targets = {s["name"] for s in dockerfile()["stages"]}
    for target in re.findall(r"docker build --target (\S+)", DOC):
        assert target == '"$target"' or target in targets, target
    for loop in re.findall(r"for target in ([\w -]+); do", DOC):
        assert loop.split() == list(COURSE), "the loop builds every image"
    for images in re.findall(r"kind load docker-image ([\w -]+?) --name", DOC):
        assert set(images.split()) <= set(COURSE), images


def test_the_kind_cluster_maps_the_ingress_ports():
    config = yaml.safe_load((ROOT / "infra/kind/cluster.yaml").read_text())
    assert config["kind"] == "Cluster" and config["apiVersion"] == "kind.x-k8s.io/v1alpha4"
    assert f"--name {config['name']}" in DOC
    (node,) = config["nodes"]
    assert node["role"] == "control-plane"
    assert node["labels"] == {"ingress-ready": "true"}, "ingress-nginx's kind manifest runs on this label"
    assert {(m["containerPort"], m["hostPort"]) for m in node["extraPortMappings"]} == {(80, 80), (443, 443)}


def test_the_smoke_script_is_valid_bash_and_counts_its_checks():
    script = (ROOT / "infra/smoke.sh").read_text()
    subprocess.run(["bash", "-n", str(ROOT / "infra/smoke.sh")], check=True)
    assert len(re.findall(r'^ok "', script, re.MULTILINE)) == 5
    assert "smoke: 5 passed, 0 failed" in DOC


def test_the_monitoring_section_names_what_the_manifests_and_the_dashboard_have():
    section = DOC.split("## 8. Monitoring\n", 1)[1].split("\n## ", 1)[0]
    flat = " ".join(section.split())
    for needle in ('prometheus.io/scrape: "true"', "prometheus.io/path: /metrics", "infra/grafana/blog-dashboard.json"):
        assert needle in section, needle
    assert "components:\n  - ../../components/monitoring" in section, "the opt-in, as an overlay writes it"
    assert (ROOT / "infra/k8s/overlays/production/../../components/monitoring/kustomization.yaml").exists(), "relative to an overlay"
    settings = yaml.safe_load((ROOT / "infra/k8s/overlays/production/settings.yaml").read_text())["data"]
    assert f"`monitoring-namespace: {settings['monitoring-namespace']}`" in flat
    monitor = yaml.safe_load((ROOT / "infra/k8s/components/monitoring/pod-monitor.yaml").read_text())
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert f"PodMonitor `{monitor['metadata']['name']}`" in flat
    assert f"port named `{endpoint['port']}`" in flat and f"`{endpoint['path']}`" in flat
    assert f"every {endpoint['interval'].removesuffix('s')} s" in flat
    ports = re.search(r"its container port: ([\d, ]+)", section).group(1)
    assert [int(p) for p in ports.split(", ")] == [port for _, _, port in COURSE.values()]
    dashboard = json.loads((ROOT / "infra/grafana/blog-dashboard.json").read_text())
    titles = {p["title"] for p in dashboard["panels"]}
    for title in ("Created → applied, p50 and p99, by consuming service", "Dead-lettered in the time range"):
        assert f"**{title}**" in section and title in titles, title
