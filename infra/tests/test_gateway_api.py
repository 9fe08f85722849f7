"""The opt-in component infra/k8s/components/gateway-api: an HTTPRoute that
routes posts.com like the course's Ingress.

Nothing here knows the Gateway API CRDs (kubernetes-validate has no schema
for them), so:

- the component is in no overlay, and no overlay renders a Gateway API
  object (a cluster without the CRDs must apply every overlay);
- added to an overlay, as docs/deploy.md says, it renders an HTTPRoute of
  gateway.networking.k8s.io/v1 that uses only the fields below, each
  checked against the rules of the v1 schema (standard channel), with core
  path matches only, and backendRefs that name Services of the render on
  their ports: the Ingress's backends, no more, no fewer;
- its rules, applied as the Gateway API specifies (Exact before PathPrefix,
  longer prefixes first, then rule order), route every course request and
  every path a part's router serves to the same Service and port as the
  Ingress's rules, applied as ingress-nginx does; where the two differ, the
  Ingress's backend serves no such path (a 404 behind the Ingress);
- the live stream's rule has the request timeout off;
- the patch docs/deploy.md shows sets the route's Gateway, and in
  production the namespace the docs name for the Gateway's proxy reaches
  every backend through the NetworkPolicies.
"""

import os
import re
import shutil
import subprocess

import pytest
import yaml

from conftest import K8S, OVERLAYS, ROOT, assert_reaches_a_pod, by_kind, container_port, kubectl, pod_labels, render, selects
from test_production import flow_model

COMPONENT = K8S / "components/gateway-api"
COMPONENT_REF = "../../components/gateway-api"
DOC = (ROOT / "docs/deploy.md").read_text()

# The course's requests, with the Service each must reach (the same table as
# test_course_contract.py's, for the Ingress).
COURSE_REQUESTS = {
    "/posts/create": "posts-clusterip-srv",
    "/posts/0190a3b1-7c2e/comments": "comments-srv",
    "/posts": "query-srv",
    "/posts/live": "query-srv",
    "/": "client-srv",
    "/assets/index-abc123.js": "client-srv",
}

# The crates whose routers the cluster's Services serve (`blog serve <part>`):
# a part's own crate, plus what every part or every consumer mounts.
SHARED_CRATES = ["kit", "bus"]
PART_CRATES = {
    "posts-clusterip-srv": "posts",
    "comments-srv": "comments",
    "query-srv": "query",
    "moderation-srv": "moderation",
    "event-bus-srv": "event-bus",
}


# ------------------------------------------------------------ rendering


def render_with_component(root, target, extra=None):
    """`target` of the tree at `root`, with the component added to its
    kustomization.yaml (and `extra`'s keys merged in: lists extended)."""
    path = root / target / "kustomization.yaml"
    kustomization = yaml.safe_load(path.read_text())
    ref = os.path.relpath(root / "components/gateway-api", root / target)
    kustomization.setdefault("components", []).append(ref)
    for key, value in (extra or {}).items():
        if key == "components":
            assert value == [ref], value
            continue
        if isinstance(value, list):
            kustomization.setdefault(key, []).extend(value)
        else:
            kustomization[key] = value
    path.write_text(yaml.safe_dump(kustomization, sort_keys=False))
    out = subprocess.run([kubectl(), "kustomize", str(root / target)], check=True, capture_output=True, text=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


@pytest.fixture(scope="module")
def with_component(tmp_path_factory):
    """overlay -> its objects rendered with the component added."""
    rendered = {}
    for target in OVERLAYS:
        # A copy each: an overlay builds on base (and dev on local).
        root = tmp_path_factory.mktemp("k8s") / "k8s"
        shutil.copytree(K8S, root)
        rendered[target] = render_with_component(root, target)
    return rendered


def http_route(docs):
    (route,) = [d for d in docs if d["kind"] == "HTTPRoute"]
    return route


def ingress(docs):
    return by_kind(docs, "Ingress")["ingress-srv"]


# ------------------------------------------------------------ matching


def gateway_backend(route, path, method="GET"):
    """The (Service, port) an HTTPRoute sends a request to, as Gateway API
    specifies HTTPRoute matching: among every matching (rule, match), an
    Exact path first, then the PathPrefix with the most characters, then a
    method match, then the most header and query matches; then the first
    rule in list order. Exact is an exact, case-sensitive comparison;
    PathPrefix compares whole path elements (a trailing `/` of the prefix is
    ignored: /abc matches /abc, /abc/ and /abc/def, not /abcd). A request
    that no rule matches gets no backend (the Gateway's 404)."""
    best = None
    for index, rule in enumerate(route["spec"]["rules"]):
        for match in rule.get("matches") or [{}]:
            p = match.get("path", {"type": "PathPrefix", "value": "/"})
            if p["type"] == "Exact":
                matched = path == p["value"]
            elif p["type"] == "PathPrefix":
                prefix = p["value"].rstrip("/")
                matched = path == prefix or path.startswith(prefix + "/")
            else:
                raise AssertionError(f"not a core path match: {p}")
            if "method" in match and match["method"] != method:
                matched = False
            if not matched:
                continue
            rank = (
                p["type"] == "Exact",
                len(p["value"]) if p["type"] == "PathPrefix" else 0,
                "method" in match,
                len(match.get("headers", [])),
                len(match.get("queryParams", [])),
                -index,
            )
            if best is None or rank > best[0]:
                best = (rank, rule)
    if best is None:
        return None
    (ref,) = best[1]["backendRefs"]
    return ref["name"], ref["port"]


def ingress_backend(ing, path):
    """The (Service, port) ingress-nginx sends a request to with use-regex:
    every path a case-insensitive regex anchored at the start, longest
    first (ties in manifest order)."""
    (rule,) = ing["spec"]["rules"]
    paths = sorted(rule["http"]["paths"], key=lambda p: len(p["path"]), reverse=True)
    for p in paths:
        if re.match(p["path"], path, re.IGNORECASE):
            service = p["backend"]["service"]
            return service["name"], service["port"]["number"]
    return None


def routes_served():
    """{crate: [path patterns]} from the routers' `.route("...")` calls."""
    served = {}
    for crate in [*SHARED_CRATES, *PART_CRATES.values()]:
        for source in sorted((ROOT / "crates" / crate / "src").rglob("*.rs")):
            for path in re.findall(r'\.route\(\s*"(/[^"]*)"', source.read_text()):
                served.setdefault(crate, []).append(path)
    return served


def filled(pattern):
    """A request path for an axum route pattern: `{x}` becomes one segment."""
    return re.sub(r"\{[^}]+\}", "0190a3b1-7c2e-7000-8000-000000000001", pattern)


def serves(service, path):
    """Whether the Service answers `path` with a route of its own (not the
    router's 404). axum matches case-sensitively and exactly, a `{x}`
    being one path segment; the client serves every path (its page for any
    GET that is not a file)."""
    if service == "client-srv":
        return True
    patterns = [p for c in (*SHARED_CRATES, PART_CRATES[service]) for p in routes_served().get(c, [])]
    return any(re.fullmatch(re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(p)), path) for p in patterns)


# ------------------------------------------------------------ the tests


def test_no_overlay_includes_the_gateway_api_component():
    component = yaml.safe_load((COMPONENT / "kustomization.yaml").read_text())
    assert component["apiVersion"] == "kustomize.config.k8s.io/v1alpha1" and component["kind"] == "Component"
    for target in OVERLAYS:
        kustomization = yaml.safe_load((K8S / target / "kustomization.yaml").read_text())
        assert COMPONENT_REF not in kustomization.get("components", []), f"{target}: a cluster without the CRDs must apply it"
        assert not [d for d in render(target) if d["apiVersion"].startswith("gateway.networking.k8s.io/")], target


# The keys this route may use: a subset of HTTPRoute's v1 schema (standard
# channel, v1.2 and newer), as nothing validates a custom resource here and
# the API server would refuse or drop a misspelt key.
ROUTE_KEYS = {
    "route": {"apiVersion", "kind", "metadata", "spec"},
    "spec": {"parentRefs", "hostnames", "rules"},
    "parentRef": {"group", "kind", "namespace", "name", "sectionName", "port"},
    "rule": {"matches", "backendRefs", "timeouts"},
    "match": {"path"},
    "path": {"type", "value"},
    "backendRef": {"name", "port"},
    "timeouts": {"request", "backendRequest"},
}
DNS_SUBDOMAIN = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
# GEP-2257's durations (e.g. 1h, 10s, 500ms, 1h30m).
DURATION = r"([0-9]{1,5}(h|m|s|ms)){1,4}"


def duration_ms(value):
    units = {"h": 3_600_000, "m": 60_000, "s": 1000, "ms": 1}
    return sum(int(n) * units[u] for n, u in re.findall(r"([0-9]+)(ms|h|m|s)", value))


def check_path(p):
    """HTTPPathMatch in v1: Exact or PathPrefix (core; RegularExpression is
    implementation-specific), an absolute path of at most 1024 characters,
    no `//`, `/./`, `/../`, encoded `/` or `#`, not ending in `/.` or `/..`."""
    assert set(p) <= ROUTE_KEYS["path"], p
    assert p["type"] in ("Exact", "PathPrefix"), f"not a core path match: {p}"
    value = p["value"]
    assert value.startswith("/") and len(value) <= 1024, p
    assert re.fullmatch(r"(?:[-A-Za-z0-9/._~!$&'()*+,;=:@]|%[0-9a-fA-F]{2})+", value), p
    for bad in ("//", "/./", "/../", "%2f", "%2F", "#"):
        assert bad not in value, p
    assert not value.endswith("/.") and not value.endswith("/.."), p


@pytest.mark.parametrize("target", OVERLAYS)
def test_the_component_renders_a_gateway_api_v1_http_route(with_component, target):
    docs = with_component[target]
    route = http_route(docs)
    assert route["apiVersion"] == "gateway.networking.k8s.io/v1"
    assert set(route) <= ROUTE_KEYS["route"] and set(route["spec"]) <= ROUTE_KEYS["spec"]
    meta = route["metadata"]
    assert re.fullmatch(DNS_SUBDOMAIN, meta["name"]) and len(meta["name"]) <= 253
    assert meta["labels"]["app.kubernetes.io/part-of"] == "blog"
    # The route and the Services it names share a namespace: no ReferenceGrant.
    namespaces = {d["metadata"].get("namespace") for d in docs if d["kind"] == "Service"}
    assert namespaces == {meta.get("namespace")}, target

    parents = route["spec"]["parentRefs"]
    assert 1 <= len(parents) <= 32
    for ref in parents:
        assert set(ref) <= ROUTE_KEYS["parentRef"], ref
        assert ref.get("group", "gateway.networking.k8s.io") == "gateway.networking.k8s.io"
        assert ref.get("kind", "Gateway") == "Gateway"
        assert re.fullmatch(DNS_SUBDOMAIN, ref["name"]) and len(ref["name"]) <= 253, ref
        assert "namespace" not in ref or re.fullmatch(DNS_LABEL, ref["namespace"]), ref

    (rule,) = ingress(docs)["spec"]["rules"]
    assert route["spec"]["hostnames"] == [rule["host"]], "the Ingress's host"

    rules = route["spec"]["rules"]
    assert 1 <= len(rules) <= 16
    for r in rules:
        assert set(r) <= ROUTE_KEYS["rule"], r
        assert 1 <= len(r["matches"]) <= 8, r
        for match in r["matches"]:
            assert set(match) <= ROUTE_KEYS["match"], match
            check_path(match["path"])
        (ref,) = r["backendRefs"]
        assert set(ref) <= ROUTE_KEYS["backendRef"], "a Service in the route's namespace, by name and port"
        assert isinstance(ref["port"], int) and 1 <= ref["port"] <= 65535, ref
        timeouts = r.get("timeouts", {})
        assert set(timeouts) <= ROUTE_KEYS["timeouts"], timeouts
        for value in timeouts.values():
            assert re.fullmatch(DURATION, value), value
        if "request" in timeouts and "backendRequest" in timeouts and duration_ms(timeouts["request"]):
            assert duration_ms(timeouts["backendRequest"]) <= duration_ms(timeouts["request"]), timeouts
    # Every rule can win for some path: no two rules share a match.
    keys = [(m["path"]["type"], m["path"]["value"].rstrip("/") or "/") for r in rules for m in r["matches"]]
    assert len(keys) == len(set(keys)), keys


@pytest.mark.parametrize("target", OVERLAYS)
def test_the_route_reaches_the_ingress_backends_on_their_ports(with_component, target):
    docs = with_component[target]
    services = by_kind(docs, "Service")
    pods = [d for d in docs if d["kind"] in ("Deployment", "StatefulSet")]
    refs = {(r["backendRefs"][0]["name"], r["backendRefs"][0]["port"]) for r in http_route(docs)["spec"]["rules"]}
    (rule,) = ingress(docs)["spec"]["rules"]
    ingress_refs = {(p["backend"]["service"]["name"], p["backend"]["service"]["port"]["number"]) for p in rule["http"]["paths"]}
    assert refs == ingress_refs, "the Ingress's Services and ports, no more, no fewer"
    for name, port in refs:
        assert_reaches_a_pod(services, pods, name, port)


def test_the_route_is_the_same_in_every_overlay(with_component):
    specs = {target: http_route(docs)["spec"] for target, docs in with_component.items()}
    assert all(spec == specs["base"] for spec in specs.values())


def test_the_matching_follows_the_gateway_api_rules():
    """The matcher itself, on a route made for it."""
    route = {
        "spec": {
            "rules": [
                {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "backendRefs": [{"name": "root", "port": 1}]},
                {"matches": [{"path": {"type": "PathPrefix", "value": "/a/"}}], "backendRefs": [{"name": "a", "port": 1}]},
                {"matches": [{"path": {"type": "PathPrefix", "value": "/a/b"}}], "backendRefs": [{"name": "ab", "port": 1}]},
                {"matches": [{"path": {"type": "Exact", "value": "/a"}}], "backendRefs": [{"name": "exact", "port": 1}]},
            ]
        }
    }
    go = lambda path: gateway_backend(route, path)[0]  # noqa: E731
    assert go("/a") == "exact", "Exact before any prefix"
    assert go("/a/") == "a" and go("/a/x") == "a"
    assert go("/a/b") == "ab" and go("/a/b/c") == "ab", "the longest prefix"
    assert go("/a/bc") == "a", "prefixes end at a /"
    assert go("/ab") == "root" and go("/A") == "root", "case-sensitive, element by element"


@pytest.fixture(scope="module")
def route_and_ingress(with_component):
    docs = with_component["overlays/production"]
    return http_route(docs), ingress(docs)


def test_the_route_sends_the_course_requests_where_the_ingress_does(route_and_ingress):
    route, ing = route_and_ingress
    for path, service in COURSE_REQUESTS.items():
        assert ingress_backend(ing, path)[0] == service, path
        assert gateway_backend(route, path) == ingress_backend(ing, path), path


def test_every_path_a_part_serves_is_routed_where_the_ingress_routes_it(route_and_ingress):
    route, ing = route_and_ingress
    served = routes_served()
    assert "/posts/{id}/comments" in served["comments"] and "/posts/live" in served["query"], "the routers were read"
    paths = {filled(p) for patterns in served.values() for p in patterns}
    for path in sorted(paths):
        assert gateway_backend(route, path) == ingress_backend(ing, path), path


def corner_paths():
    """Paths around the rules' edges: each course path, in another case,
    with a trailing /, with more after it, run on, or with /comments."""
    bases = [*COURSE_REQUESTS, "/posts/", "/posts/comments", "/posts/a/b/comments", "/posts/create/comments",
             "/Posts/create", "/postsx", "/postsx/comments", "/x/posts", "/posts/live/comments", "/index.html", "/healthz", "/metrics"]
    paths = set()
    for base in bases:
        for path in (base, base.upper(), base.title(), base + "/", base + "x", base.rstrip("/") + "/comments",
                     base.rstrip("/") + "/x"):
            paths.add(path)
    return sorted(paths)


def test_where_the_route_and_the_ingress_differ_the_ingress_answers_404(route_and_ingress):
    route, ing = route_and_ingress
    differ = []
    for path in corner_paths():
        through_ingress, through_route = ingress_backend(ing, path), gateway_backend(route, path)
        assert through_route is not None, f"{path}: the route has a catch-all, as the Ingress does"
        if through_route != through_ingress:
            differ.append(path)
            assert not serves(through_ingress[0], path), f"{path}: {through_ingress[0]} serves it, the route sends it to {through_route[0]}"
            # Behind the route: another 404, or the client's page.
            assert through_route[0] == "client-srv" or not serves(through_route[0], path), path
    # The differences the comment in http-route.yaml names.
    for path in ("/POSTS", "/Posts/create", "/postsx", "/postsx/comments", "/posts/", "/posts/createx", "/posts/create/"):
        assert path in differ, path
    for path in ("/posts/create/comments", "/posts/a/b/comments"):
        assert path not in differ, path


def test_the_live_stream_has_no_request_timeout(route_and_ingress):
    route, ing = route_and_ingress
    annotations = ing["metadata"]["annotations"]
    assert int(annotations["nginx.ingress.kubernetes.io/proxy-read-timeout"]) >= 3600
    (live,) = [
        r for r in route["spec"]["rules"]
        if any(m["path"] == {"type": "Exact", "value": "/posts/live"} for m in r["matches"])
    ]
    assert live["timeouts"] == {"request": "0s"}, "zero turns the timeout off; unset, Envoy's default ends a response at 15 s"
    # Only the stream: every other request keeps the implementation's default.
    assert [r for r in route["spec"]["rules"] if "timeouts" in r] == [live]


def docs_section():
    return DOC.split("### Gateway API (optional)\n", 1)[1].split("\n## ", 1)[0].split("\n### ", 1)[0]


def test_the_documented_patch_points_the_route_at_your_gateway(tmp_path):
    section = docs_section()
    blocks = [yaml.safe_load(b) for b in re.findall(r"```yaml\n(.*?)```", section, re.DOTALL)]
    (opt_in,) = [b for b in blocks if "components" in b]
    assert opt_in["components"] == [COMPONENT_REF], "as an overlay writes it"
    (patch,) = opt_in["patches"]
    (op,) = yaml.safe_load(patch["patch"])
    root = tmp_path / "k8s"
    shutil.copytree(K8S, root)
    docs = render_with_component(root, "overlays/production", opt_in)
    route = http_route(docs)
    assert route["spec"]["parentRefs"] == [op["value"]]
    assert route["metadata"]["namespace"] == "blog"
    # The default it replaces is the one the docs name.
    default = yaml.safe_load((COMPONENT / "http-route.yaml").read_text())["spec"]["parentRefs"]
    assert default == [{"name": "blog-gateway"}]
    assert "`blog-gateway`" in section


def test_in_production_the_gateway_namespace_reaches_every_backend(tmp_path):
    """docs/deploy.md: set ingress-controller-namespace in settings.yaml to
    the namespace of the Gateway's proxy pods; the policies then admit it,
    and no longer ingress-nginx's, to every backend the route names, on the
    port the Service sends to."""
    section = " ".join(docs_section().split())
    assert "`ingress-controller-namespace` in `settings.yaml`" in section
    root = tmp_path / "k8s"
    shutil.copytree(K8S, root)
    settings = root / "overlays/production/settings.yaml"
    text = settings.read_text()
    assert "ingress-controller-namespace: ingress-nginx" in text
    settings.write_text(text.replace("ingress-controller-namespace: ingress-nginx", "ingress-controller-namespace: gateways"))
    docs = render_with_component(root, "overlays/production")
    flows, before = flow_model(docs, ingress_namespace="gateways"), flow_model(docs, ingress_namespace="ingress-nginx")
    services = by_kind(docs, "Service")
    deployments = by_kind(docs, "Deployment")
    for r in http_route(docs)["spec"]["rules"]:
        ref = r["backendRefs"][0]
        service = services[ref["name"]]
        (port,) = [p for p in service["spec"]["ports"] if p["port"] == ref["port"]]
        (depl,) = [n for n, d in deployments.items() if selects(service["spec"]["selector"], pod_labels(d))]
        (container,) = deployments[depl]["spec"]["template"]["spec"]["containers"]
        target_port = container_port(container, port["targetPort"])
        assert flows("ingress-controller", depl, target_port), depl
        assert not before("ingress-controller", depl, target_port), depl
