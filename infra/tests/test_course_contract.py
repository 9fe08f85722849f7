"""The course's compatibility surface (its wire contract) in every overlay: object
names, ports, selectors, and the Ingress, which must be the same rules as
the local gateway's routing table (`blog routes`)."""

import json
import re
import subprocess

import pytest

from conftest import COURSE, COURSE_RULES, OVERLAYS, assert_reaches_a_pod, blog_bin, by_kind, container_port, pod_labels, render


def ingress_rules(docs):
    ingress = by_kind(docs, "Ingress")["ingress-srv"]
    (rule,) = ingress["spec"]["rules"]
    return ingress, rule, [
        {
            "path": p["path"],
            "pathType": p["pathType"],
            "service": p["backend"]["service"]["name"],
            "port": p["backend"]["service"]["port"]["number"],
        }
        for p in rule["http"]["paths"]
    ]


@pytest.mark.parametrize("target", OVERLAYS)
def test_course_names_ports_and_selectors(target):
    docs = render(target)
    deployments, services = by_kind(docs, "Deployment"), by_kind(docs, "Service")
    production = target.endswith("production")
    for app, (depl, srv, port) in COURSE.items():
        d = deployments[depl]
        assert d["spec"]["selector"] == {"matchLabels": {"app": app}}, depl
        assert pod_labels(d)["app"] == app, depl
        (container,) = d["spec"]["template"]["spec"]["containers"]
        assert container["name"] == app
        assert container["image"].rsplit("/", 1)[-1].split(":")[0] == app, "the image is the Dockerfile target of the same name"
        assert container_port(container, "http") == port, f"{depl} listens on the course port"
        s = services[srv]
        assert s["spec"].get("type", "ClusterIP") == "ClusterIP", srv
        assert s["spec"]["selector"] == {"app": app}, srv
        (p,) = s["spec"]["ports"]
        assert p["port"] == port and container_port(container, p["targetPort"]) == port, srv
    if production:
        assert "posts-srv" not in services, "the course's NodePort is for development only"
    else:
        node_port = services["posts-srv"]
        assert node_port["spec"]["type"] == "NodePort"
        assert node_port["spec"]["selector"] == {"app": "posts"}
        (p,) = node_port["spec"]["ports"]
        assert p["port"] == 4000 and p["targetPort"] == 4000


@pytest.mark.parametrize("target", OVERLAYS)
def test_the_ingress_is_the_course_ingress_and_carries_live_streams(target):
    ingress, rule, rules = ingress_rules(render(target))
    assert rules == COURSE_RULES, "exactly the course's rules, longest first"
    assert rule["host"] == "posts.com"
    assert ingress["spec"]["ingressClassName"] == "nginx"
    annotations = ingress["metadata"]["annotations"]
    assert annotations["nginx.ingress.kubernetes.io/use-regex"] == "true"
    # GET /posts/live is text/event-stream: unbuffered, and held open far
    # longer than the 15 s keep-alive comments (nginx's default is 60 s).
    assert annotations["nginx.ingress.kubernetes.io/proxy-buffering"] == "off"
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-send-timeout"]) >= 3600
    # No snippets: ingress-nginx refuses them unless the admin allows them.
    assert not any("snippet" in key for key in annotations)


@pytest.mark.parametrize("target", OVERLAYS)
def test_every_ingress_backend_reaches_a_pod_on_its_port(target):
    docs = render(target)
    services, pods = by_kind(docs, "Service"), [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    _, _, rules = ingress_rules(docs)
    for r in rules:
        assert_reaches_a_pod(services, pods, r["service"], r["port"])


def test_prefix_paths_are_plain_paths():
    """ingress-nginx (1.12+) rejects regex characters in Prefix/Exact paths."""
    for r in COURSE_RULES:
        if r["pathType"] in ("Prefix", "Exact"):
            assert re.fullmatch(r"[A-Za-z0-9/._~-]+", r["path"]), r


def test_the_ingress_regexes_route_the_course_requests_like_ingress_nginx():
    """Longest path first, case-insensitive, anchored at the start only."""

    def route(path):
        for r in sorted(COURSE_RULES, key=lambda r: len(r["path"]), reverse=True):
            if re.match(r["path"], path, re.IGNORECASE):
                return r["service"]
        return None

    assert route("/posts/create") == "posts-clusterip-srv"
    assert route("/posts/0190a3b1-7c2e/comments") == "comments-srv"
    assert route("/posts") == "query-srv"
    assert route("/posts/live") == "query-srv"
    assert route("/") == "client-srv"
    assert route("/assets/index-abc123.js") == "client-srv"


def test_the_gateway_applies_the_ingress_rules():
    """`blog routes` (the local gateway's table) == the rendered Ingress == the course."""
    out = subprocess.run([blog_bin(), "routes"], check=True, capture_output=True, text=True).stdout
    routes = json.loads(out)
    assert routes == COURSE_RULES
    for target in OVERLAYS:
        assert ingress_rules(render(target))[2] == routes, target
