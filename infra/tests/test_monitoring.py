"""Monitoring: every part's GET /metrics is scraped, and the dashboard reads
only what the parts export.

- the pods' prometheus.io/* annotations in every overlay: every blog
  container's pod, on its own http port, at /metrics (the dev overlay's
  Vite client opts out), and no other pod;
- the opt-in component infra/k8s/components/monitoring: included by no
  overlay (its kind needs the Prometheus Operator's CRDs); added to one, it
  renders a PodMonitor of the keys the CRD knows, whose endpoint selects
  exactly the annotated pods on the annotated port;
- infra/grafana/blog-dashboard.json: valid, a Prometheus datasource
  variable and the `service` variable, unique panel ids on a grid without
  overlaps, and every PromQL expression naming only the metric families
  (and their labels) the parts export, listed below independently of the
  code.

(The production NetworkPolicies that admit the scraper are checked with
the others in test_production.py.)"""

import json
import re
import shutil
import subprocess

import pytest
import yaml

from conftest import (
    COURSE,
    K8S,
    OVERLAYS,
    ROOT,
    by_kind,
    container_port,
    env_map,
    kubectl,
    pod_labels,
    pod_spec,
    render,
    selects,
    workloads,
)

DASHBOARD_PATH = ROOT / "infra/grafana/blog-dashboard.json"
COMPONENT = K8S / "components/monitoring"
ANNOTATIONS = ("prometheus.io/scrape", "prometheus.io/port", "prometheus.io/path")

# The families every part exports (the `service` label names the part):
# family -> (type, labels).
FAMILIES = {
    "blog_http_requests_total": ("counter", {"service", "method", "route", "status"}),
    "blog_http_request_duration_seconds": ("histogram", {"service", "method", "route"}),
    "blog_events_published_total": ("counter", {"service", "type"}),
    "blog_events_consumed_total": ("counter", {"service", "type", "outcome"}),
    "blog_events_redelivered_total": ("counter", {"service"}),
    "blog_events_dead_lettered_total": ("counter", {"service"}),
    "blog_outbox_depth": ("gauge", {"service"}),
    "blog_bus_last_seq": ("gauge", {"service"}),
    "blog_bus_subscriber_lag": ("gauge", {"service", "subscriber"}),
    "blog_nats_consumer_pending": ("gauge", {"service"}),
    "blog_event_pipeline_seconds": ("histogram", {"service", "type"}),
    "blog_live_streams": ("gauge", {"service"}),
    "blog_db_connections": ("gauge", {"service", "state"}),
    "blog_db_connections_max": ("gauge", {"service"}),
}


def series_names():
    """{series name in a query: (family, the labels it carries)}: a histogram
    is read through its _bucket (with `le`), _sum and _count series."""
    names = {}
    for family, (kind, labels) in FAMILIES.items():
        if kind == "histogram":
            names[f"{family}_bucket"] = (family, labels | {"le"})
            names[f"{family}_sum"] = (family, labels)
            names[f"{family}_count"] = (family, labels)
        else:
            names[family] = (family, labels)
    return names


# ------------------------------------------------------------ PromQL

_STRING = r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`'
_SELECTOR = re.compile(r"([a-zA-Z_:][\w:]*)?\s*\{((?:[^}\"'`]|" + _STRING + r")*)\}")
_MATCHER = re.compile(r"([a-zA-Z_]\w*)\s*(=~|!~|!=|=)\s*(" + _STRING + r")")
_GROUPING = re.compile(r"\b(by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_TOKEN = re.compile(r"\d+(?:\.\d+)?(?:[eE][+-]?\d+)?[a-zA-Z]*|([a-zA-Z_:][\w:]*)(\s*\()?")
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "group_left", "group_right", "inf", "nan"}


def promql(expr):
    """What a PromQL expression reads: ([(series name, {label: (op, value)})],
    {labels of its by/without/on/ignoring/group_* clauses}). Functions and
    keywords are not series; a selector without a name comes back as ""."""
    selectors, grouping = [], set()

    def selector(m):
        matchers = {label: (op, value[1:-1]) for label, op, value in _MATCHER.findall(m.group(2))}
        selectors.append((m.group(1) or "", matchers))
        return " __selector__ "

    rest = _SELECTOR.sub(selector, expr)
    rest = re.sub(_STRING, " ", rest)
    rest = re.sub(r"\[[^\]]*\]", " ", rest)  # ranges and subqueries
    rest = re.sub(r"\$\{?\w+\}?", " ", rest)  # Grafana variables
    for m in _GROUPING.finditer(rest):
        grouping |= {label.strip() for label in m.group(2).split(",") if label.strip()}
    rest = _GROUPING.sub(" ", rest)
    for m in _TOKEN.finditer(rest):
        name, call = m.group(1), m.group(2)
        if not name or call or name.lower() in _KEYWORDS:
            continue  # a number, a function or a keyword
        if name == "__selector__":
            continue
        selectors.append((name, {}))
    return selectors, grouping


def test_the_promql_reader_finds_series_labels_and_groupings():
    selectors, grouping = promql(
        'histogram_quantile(0.99, sum by (service, le) (rate(blog_x_bucket{service=~"$service", route!~"/a|/b"}[$__rate_interval])))'
        " / on (service) group_left sum without (pod) (up offset 5m) * 1e3 or vector(0)"
    )
    assert selectors == [
        ("blog_x_bucket", {"service": ("=~", "$service"), "route": ("!~", "/a|/b")}),
        ("up", {}),
    ]
    assert grouping == {"service", "le", "pod"}
    assert promql('{__name__="blog_x"}')[0] == [("", {"__name__": ("=", "blog_x")})]
    assert promql('count(label_replace(blog_y, "a", "$1", "b", "(.*)"))')[0] == [("blog_y", {})]
    assert promql("sum(rate(blog_z[5m:1m]))")[0] == [("blog_z", {})]


# ------------------------------------------------------------ the dashboard


@pytest.fixture(scope="module")
def dashboard():
    return json.loads(DASHBOARD_PATH.read_text())


def all_panels(dashboard):
    """Every panel, the rows' own panels (a collapsed row holds them) included."""
    for panel in dashboard["panels"]:
        yield panel
        yield from panel.get("panels", [])


def queries(dashboard):
    """(panel, target) for every query of every panel."""
    for panel in all_panels(dashboard):
        for target in panel.get("targets", []):
            yield panel, target


DATASOURCE = {"type": "prometheus", "uid": "${datasource}"}


def test_the_dashboard_is_a_current_grafana_dashboard(dashboard):
    assert 36 <= dashboard["schemaVersion"] <= 41, "Grafana 9.4 to 11"
    assert dashboard["uid"] and dashboard["title"]
    assert dashboard["id"] is None, "an import creates its own id"
    assert "__inputs" not in dashboard, "the datasource is a variable, not an import-time input"


def test_the_dashboard_variables_are_the_datasource_and_the_service(dashboard):
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert list(variables) == ["datasource", "service"]
    source = variables["datasource"]
    assert source["type"] == "datasource" and source["query"] == "prometheus"
    service = variables["service"]
    assert service["type"] == "query" and service["datasource"] == DATASOURCE
    assert service["definition"] == "label_values(blog_http_requests_total, service)"
    assert service["query"]["query"] == service["definition"]
    assert service["multi"] and service["includeAll"], "one part, several or all"


def test_panel_ids_are_unique_and_the_grid_has_no_overlaps(dashboard):
    panels = list(all_panels(dashboard))
    ids = [p["id"] for p in panels]
    assert all(isinstance(i, int) and i > 0 for i in ids)
    assert len(ids) == len(set(ids)), "stable, unique panel ids"
    taken = {}
    for p in panels:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= 24, p["title"]
        assert g["h"] > 0 and g["y"] >= 0, p["title"]
        if p["type"] == "row":
            assert (g["x"], g["w"], g["h"]) == (0, 24, 1), p["title"]
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                assert (x, y) not in taken, f"{p['title']} overlaps {taken[(x, y)]}"
                taken[(x, y)] = p["title"]


def test_every_panel_reads_the_selected_datasource(dashboard):
    for p in all_panels(dashboard):
        if p["type"] == "row":
            assert not p.get("targets"), p["title"]
            continue
        assert p["title"] and p.get("description"), p["id"]
        assert p["datasource"] == DATASOURCE, p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert p["targets"] and len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["datasource"] == DATASOURCE, p["title"]
            assert t["expr"].strip(), p["title"]


def test_every_query_names_only_exported_families_and_their_labels(dashboard):
    known = series_names()
    for panel, target in queries(dashboard):
        where = f"{panel['title']} ({target['refId']}): {target['expr']}"
        selectors, grouping = promql(target["expr"])
        assert selectors, where
        labels = set()
        for name, matchers in selectors:
            assert name in known, f"{where}: {name or 'a selector without a name'} is not an exported series"
            family, carried = known[name]
            assert set(matchers) <= carried, f"{where}: {set(matchers) - carried} not labels of {family}"
            # The service variable applies to every series.
            assert matchers.get("service") == ("=~", "$service"), f"{where}: {name} not filtered by $service"
            labels |= carried
        assert grouping <= labels, f"{where}: grouped by {grouping - labels}"
        if "histogram_quantile" in target["expr"]:
            assert "le" in grouping and all(n.endswith("_bucket") for n, _ in selectors), where
        for legend_label in re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")):
            assert legend_label in grouping, f"{where}: the legend names {legend_label}, which the query drops"


def test_every_family_is_on_the_dashboard(dashboard):
    read, known = set(), series_names()
    for _, target in queries(dashboard):
        read |= {known.get(name, (name,))[0] for name, _ in promql(target["expr"])[0]}
    assert read == set(FAMILIES)


def test_the_headline_is_created_to_applied_p50_and_p99_per_consuming_service(dashboard):
    (headline,) = [p for p in all_panels(dashboard) if p["title"].startswith("Created → applied, p50 and p99")]
    exprs = [t["expr"] for t in headline["targets"]]
    for quantile in ("0.50", "0.99"):
        (expr,) = [e for e in exprs if e.startswith(f"histogram_quantile({quantile},")]
        selectors, grouping = promql(expr)
        assert [name for name, _ in selectors] == ["blog_event_pipeline_seconds_bucket"]
        assert grouping == {"service", "le"}
    assert headline["fieldConfig"]["defaults"]["unit"] == "s"
    rows = sorted(p["gridPos"]["y"] for p in dashboard["panels"] if p["type"] == "row")
    assert rows[1] < headline["gridPos"]["y"] < rows[2], "the first row under the overview"


def test_the_latency_panels_read_p50_p95_and_p99_of_the_request_histogram(dashboard):
    quantiles = set()
    for _, target in queries(dashboard):
        m = re.match(r"histogram_quantile\((0\.\d+), .*blog_http_request_duration_seconds_bucket", target["expr"])
        if m:
            quantiles.add(m.group(1))
    assert {"0.50", "0.95", "0.99"} <= quantiles


# ------------------------------------------------------------ annotations


def blog_container(workload):
    for c in pod_spec(workload)["containers"]:
        if c["image"].rsplit("/", 1)[-1].split(":")[0] in COURSE:
            return c
    return None


def annotations(workload):
    return workload["spec"]["template"]["metadata"].get("annotations", {})


def serves_metrics(target, workload):
    """The dev overlay's client is Vite's dev server: no /metrics there."""
    return not (target.endswith("dev") and workload["metadata"]["name"] == "client-depl")


@pytest.mark.parametrize("target", OVERLAYS)
def test_every_part_is_annotated_for_scraping_on_its_own_port(target):
    annotated = []
    for w in workloads(render(target)):
        name, c, notes = w["metadata"]["name"], blog_container(w), annotations(w)
        if c is None:
            # NATS and PostgreSQL export no /metrics of the blog's.
            assert notes.get("prometheus.io/scrape") != "true", name
            continue
        assert set(ANNOTATIONS) <= set(notes), f"{name}: {notes}"
        assert notes["prometheus.io/scrape"] == ("true" if serves_metrics(target, w) else "false"), name
        port = container_port(c, "http")
        assert notes["prometheus.io/port"] == str(port), f"{name}: the port the container listens on"
        assert int(env_map(c)["BLOG_PORT"]) == port, name
        assert notes["prometheus.io/path"] == "/metrics", name
        annotated.append(pod_labels(w)["app"])
    assert sorted(annotated) == sorted(COURSE), "every part of the blog"


# ------------------------------------------------------------ the component


def test_no_overlay_includes_the_monitoring_component():
    component = yaml.safe_load((COMPONENT / "kustomization.yaml").read_text())
    assert component["apiVersion"] == "kustomize.config.k8s.io/v1alpha1" and component["kind"] == "Component"
    for target in OVERLAYS:
        kustomization = yaml.safe_load((K8S / target / "kustomization.yaml").read_text())
        assert "components" not in kustomization, f"{target}: a cluster without the operator's CRDs must apply it"
        assert not [d for d in render(target) if d["apiVersion"].startswith("monitoring.coreos.com/")], target


@pytest.fixture(scope="module")
def with_component(tmp_path_factory):
    """overlay -> its objects rendered with the component added, as
    docs/deploy.md says (`components:` in the overlay's kustomization.yaml)."""
    rendered = {}
    for target in ("overlays/local", "overlays/dev", "overlays/production"):
        # A copy each: dev builds on local, which keeps its own as it is.
        copy_root = tmp_path_factory.mktemp("k8s") / "k8s"
        shutil.copytree(K8S, copy_root)
        path = copy_root / target / "kustomization.yaml"
        kustomization = yaml.safe_load(path.read_text())
        kustomization["components"] = ["../../components/monitoring"]
        path.write_text(yaml.safe_dump(kustomization, sort_keys=False))
        out = subprocess.run(
            [kubectl(), "kustomize", str(copy_root / target)], check=True, capture_output=True, text=True
        ).stdout
        rendered[target] = [d for d in yaml.safe_load_all(out) if d]
    return rendered


# The PodMonitor keys this component may use (a subset of the CRD's schema,
# monitoring.coreos.com/v1): nothing validates a custom resource here, and a
# misspelt key would be pruned by the API server without a word.
POD_MONITOR_KEYS = {
    "spec": {"selector", "namespaceSelector", "podMetricsEndpoints", "jobLabel", "podTargetLabels", "sampleLimit"},
    "endpoint": {"port", "path", "scheme", "interval", "scrapeTimeout", "honorLabels", "relabelings", "metricRelabelings"},
    "relabeling": {"sourceLabels", "separator", "regex", "targetLabel", "replacement", "action"},
}


def meta_labels(workload):
    """The __meta_kubernetes_pod_annotation_* labels Prometheus gives a pod's targets."""
    return {
        "__meta_kubernetes_pod_annotation_" + re.sub(r"[^a-zA-Z0-9_]", "_", key): value
        for key, value in annotations(workload).items()
    }


def kept(relabelings, labels):
    """Whether a target survives the keep/drop relabelings (the only actions used here)."""
    for r in relabelings:
        value = r.get("separator", ";").join(labels.get(s, "") for s in r["sourceLabels"])
        matches = re.fullmatch(r.get("regex", "(.*)"), value) is not None
        if (r["action"] == "keep" and not matches) or (r["action"] == "drop" and matches):
            return False
        assert r["action"] in ("keep", "drop"), r
    return True


@pytest.mark.parametrize("target", ["overlays/local", "overlays/dev", "overlays/production"])
def test_the_component_adds_a_pod_monitor_and_nothing_else(with_component, target):
    plain, added = render(target), with_component[target]
    monitors = [d for d in added if d["apiVersion"].startswith("monitoring.coreos.com/")]
    assert [(d["apiVersion"], d["kind"]) for d in monitors] == [("monitoring.coreos.com/v1", "PodMonitor")], (
        "a PodMonitor: a ServiceMonitor's targets get a `service` label that pushes the metrics' own aside"
    )
    assert [d for d in added if d not in monitors] == plain
    (monitor,) = monitors
    assert monitor["metadata"]["labels"]["app.kubernetes.io/part-of"] == "blog"
    namespaces = {d["metadata"].get("namespace") for d in plain if d["kind"] != "Namespace"}
    assert namespaces == {monitor["metadata"].get("namespace")}, "with the pods it selects"


@pytest.mark.parametrize("target", ["overlays/local", "overlays/dev", "overlays/production"])
def test_the_pod_monitor_scrapes_exactly_the_annotated_pods_on_their_ports(with_component, target):
    docs = with_component[target]
    (monitor,) = by_kind(docs, "PodMonitor").values()
    spec = monitor["spec"]
    assert set(spec) <= POD_MONITOR_KEYS["spec"], set(spec) - POD_MONITOR_KEYS["spec"]
    assert "namespaceSelector" not in spec, "its own namespace: the blog's"
    (endpoint,) = spec["podMetricsEndpoints"]
    assert set(endpoint) <= POD_MONITOR_KEYS["endpoint"], set(endpoint) - POD_MONITOR_KEYS["endpoint"]
    relabelings = endpoint.get("relabelings", [])
    for r in relabelings:
        assert set(r) <= POD_MONITOR_KEYS["relabeling"], r
        assert r.get("targetLabel") != "service", "the metrics' own `service` label stays"
    assert isinstance(endpoint["port"], str), "a port name: each pod's own number"
    scraped = {}
    for w in workloads(docs):
        if not selects(spec["selector"], pod_labels(w)) or not kept(relabelings, meta_labels(w)):
            continue
        notes = annotations(w)
        assert notes.get("prometheus.io/scrape") == "true", w["metadata"]["name"]
        ports = [container_port(c, endpoint["port"]) for c in pod_spec(w)["containers"]]
        assert [p for p in ports if p] == [int(notes["prometheus.io/port"])], w["metadata"]["name"]
        assert endpoint["path"] == notes["prometheus.io/path"], w["metadata"]["name"]
        scraped[pod_labels(w)["app"]] = int(notes["prometheus.io/port"])
    annotated = {
        pod_labels(w)["app"]: int(annotations(w)["prometheus.io/port"])
        for w in workloads(docs)
        if annotations(w).get("prometheus.io/scrape") == "true"
    }
    assert scraped == annotated
    expected = {app: port for app, (_, _, port) in COURSE.items()}
    if target.endswith("dev"):
        del expected["client"]  # Vite
    assert scraped == expected
