"""The production overlay: NATS JetStream and a PostgreSQL per service (the
production-engines configuration), replicas, disruption budgets, and the
network policies, evaluated the way a CNI enforces them."""

from urllib.parse import urlparse

import pytest

from conftest import by_kind, env_map, pod_labels, pod_spec, render, selects, workloads

SERVICES = ["posts", "comments", "query", "moderation"]


@pytest.fixture(scope="module")
def docs():
    return render("overlays/production")


def test_nats_is_a_three_server_jetstream_cluster_on_fsynced_files(docs):
    nats = by_kind(docs, "StatefulSet")["nats"]
    assert nats["spec"]["replicas"] == 3
    assert nats["spec"]["serviceName"] == "nats-headless"
    conf = by_kind(docs, "ConfigMap")["nats-config"]["data"]["nats.conf"]
    assert "sync_interval: always" in conf
    assert "store_dir: /data/" in conf
    for i in range(3):
        assert f"nats://nats-{i}.nats-headless:6222" in conf
    (claim,) = nats["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data" and claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    mounts = {m["mountPath"]: m["name"] for m in nats["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]}
    assert mounts["/data"] == "data", "the JetStream store is on the claim"
    headless = by_kind(docs, "Service")["nats-headless"]["spec"]
    assert headless["clusterIP"] == "None" and headless["publishNotReadyAddresses"] is True


def test_every_service_uses_nats_and_its_own_postgres(docs):
    deployments, statefulsets = by_kind(docs, "Deployment"), by_kind(docs, "StatefulSet")
    nats_replicas = statefulsets["nats"]["spec"]["replicas"]
    for app in SERVICES:
        c = deployments[f"{app}-depl"]["spec"]["template"]["spec"]["containers"][0]
        env = env_map(c)
        assert env["BLOG_BUS"] == "nats://nats:4222"
        assert int(env["BLOG_NATS_REPLICAS"]) == nats_replicas
        url = urlparse(env["BLOG_POSTGRES"].replace("$(POSTGRES_PASSWORD)", "secret"))
        assert url.scheme == "postgres" and url.hostname == f"postgres-{app}" and url.port == 5432
        assert "BLOG_DATABASE_URL" not in env, "each service names its own database blog_<service>"
        # The service and its database read the password from the same Secret.
        secret = {e["name"]: e for e in c["env"]}["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]
        db = statefulsets[f"postgres-{app}"]["spec"]["template"]["spec"]["containers"][0]
        db_secret = {e["name"]: e for e in db["env"]}["POSTGRES_PASSWORD"]["valueFrom"]["secretKeyRef"]
        assert secret == db_secret == {"name": f"postgres-{app}", "key": "password"}
        assert env_map(db)["POSTGRES_USER"] == url.username
        assert not any("persistentVolumeClaim" in v for v in pod_spec(deployments[f"{app}-depl"])["volumes"])


def test_no_password_is_committed(docs):
    assert not by_kind(docs, "Secret"), "database passwords are created outside git (docs/deploy.md)"
    for w in workloads(docs):
        for c in pod_spec(w)["containers"]:
            for e in c.get("env", []):
                assert "PASSWORD" not in e["name"] or "valueFrom" in e, f"{w['metadata']['name']}: {e['name']}"


def test_replicas_roll_without_dropping_below_the_count(docs):
    for name, d in by_kind(docs, "Deployment").items():
        assert d["spec"]["replicas"] >= 2, name
        strategy = d["spec"]["strategy"]
        assert strategy["type"] == "RollingUpdate" and strategy["rollingUpdate"]["maxUnavailable"] == 0, name
        spread = pod_spec(d)["topologySpreadConstraints"]
        assert any(selects(t["labelSelector"], pod_labels(d)) for t in spread), name


def test_the_http_bus_the_sqlite_volumes_and_the_node_port_are_gone(docs):
    assert "event-bus-depl" not in by_kind(docs, "Deployment")
    assert not by_kind(docs, "PersistentVolumeClaim")
    assert not [s for s in by_kind(docs, "Service").values() if s["spec"].get("type") in ("NodePort", "LoadBalancer")]


def test_every_replicated_workload_has_a_disruption_budget_that_allows_a_drain(docs):
    pdbs = list(by_kind(docs, "PodDisruptionBudget").values())
    for w in workloads(docs):
        replicas = w["spec"]["replicas"]
        if replicas < 2:
            continue
        (pdb,) = [p for p in pdbs if selects(p["spec"]["selector"], pod_labels(w))]
        spec = pdb["spec"]
        if "minAvailable" in spec:
            assert 1 <= spec["minAvailable"] < replicas, w["metadata"]["name"]
        else:
            assert 1 <= spec["maxUnavailable"] < replicas, w["metadata"]["name"]
    nats = by_kind(docs, "PodDisruptionBudget")["nats-pdb"]["spec"]
    assert nats["maxUnavailable"] == 1, "JetStream keeps its quorum with 2 of 3"


# ---------------------------------------------------------- network policies

APP_NAMESPACE = "blog"  # whichever namespace the overlay is applied to


class Pod:
    def __init__(self, labels, namespace=APP_NAMESPACE, ports=()):
        self.labels, self.namespace, self.ports = labels, namespace, set(ports)


def namespace_labels(namespace):
    return {"kubernetes.io/metadata.name": namespace}


def peer_matches(peer, pod, policy_namespace):
    if "ipBlock" in peer:
        return False  # no policy here opens an address range
    ns_selector, pod_selector = peer.get("namespaceSelector"), peer.get("podSelector")
    if ns_selector is None:
        ns_ok = pod.namespace == policy_namespace
    else:
        ns_ok = ns_selector == {} or selects(ns_selector, namespace_labels(pod.namespace))
    pod_ok = pod_selector is None or pod_selector == {} or selects(pod_selector, pod.labels)
    return ns_ok and pod_ok


def port_matches(rule_ports, port):
    return not rule_ports or any(p.get("port") in (None, port) and p.get("protocol", "TCP") == "TCP" for p in rule_ports)


def allowed(policies, source, destination, port, egress=True):
    """Whether the policies let `source` open a TCP connection to `destination`:port
    (with egress=False: whether the destination's ingress rules alone admit it)."""

    def side(pod, direction, peer, peer_key):
        if pod.namespace != APP_NAMESPACE:
            return True  # no policy of ours there
        selecting = [
            p for p in policies
            if direction in p["spec"].get("policyTypes", ["Ingress"])
            and (p["spec"]["podSelector"] == {} or selects(p["spec"]["podSelector"], pod.labels))
        ]
        if not selecting:
            return True
        for p in selecting:
            for rule in p["spec"].get(direction.lower(), []) or []:
                peers = rule.get(peer_key)
                if (peers is None or any(peer_matches(x, peer, APP_NAMESPACE) for x in peers)) and port_matches(
                    rule.get("ports"), port
                ):
                    return True
        return False

    return (not egress or side(source, "Egress", destination, "to")) and side(destination, "Ingress", source, "from")


@pytest.fixture(scope="module")
def flows(docs):
    policies = list(by_kind(docs, "NetworkPolicy").values())
    pods = {w["metadata"]["name"]: Pod(pod_labels(w)) for w in workloads(docs)}
    pods["ingress-nginx"] = Pod({"app.kubernetes.io/name": "ingress-nginx"}, namespace="ingress-nginx")
    pods["kube-dns"] = Pod({"k8s-app": "kube-dns"}, namespace="kube-system")
    pods["elsewhere"] = Pod({"app": "posts"}, namespace="other")  # same labels, another namespace
    return lambda src, dst, port, egress=True: allowed(policies, pods[src], pods[dst], port, egress)


def test_default_deny_covers_every_pod(docs):
    deny = by_kind(docs, "NetworkPolicy")["default-deny"]["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny and "egress" not in deny


def test_the_ingress_controller_reaches_exactly_the_ingress_backends(flows):
    assert flows("ingress-nginx", "posts-depl", 4000)
    assert flows("ingress-nginx", "comments-depl", 4001)
    assert flows("ingress-nginx", "query-depl", 4002)
    assert flows("ingress-nginx", "client-depl", 3000)
    assert not flows("ingress-nginx", "moderation-depl", 4003)
    assert not flows("ingress-nginx", "nats", 4222)
    for app in SERVICES:
        assert not flows("ingress-nginx", f"postgres-{app}", 5432)
    assert not flows("elsewhere", "posts-depl", 4000), "not from another namespace's pods"


def test_each_database_is_reachable_from_its_own_service_only(flows):
    for db in SERVICES:
        for app in SERVICES:
            assert flows(f"{app}-depl", f"postgres-{db}", 5432) == (app == db), (app, db)
        assert not flows("client-depl", f"postgres-{db}", 5432)
        assert not flows("nats", f"postgres-{db}", 5432)
        assert not flows("elsewhere", f"postgres-{db}", 5432)


def test_the_bus_is_reachable_from_the_services_only(flows):
    for app in SERVICES:
        assert flows(f"{app}-depl", "nats", 4222), app
    assert not flows("client-depl", "nats", 4222)
    assert not flows("elsewhere", "nats", 4222)
    for db in SERVICES:
        assert not flows(f"postgres-{db}", "nats", 4222)
    assert flows("nats", "nats", 6222), "the servers route to each other"
    assert not flows("posts-depl", "nats", 6222), "clients never join the cluster"


def test_services_talk_only_through_the_bus(flows):
    for src in SERVICES + ["client"]:
        for dst, port in (("posts", 4000), ("comments", 4001), ("query", 4002), ("moderation", 4003), ("client", 3000)):
            if src != dst:
                assert not flows(f"{src}-depl", f"{dst}-depl", port), (src, dst)


def test_every_pod_resolves_names(flows, docs):
    for w in workloads(docs):
        assert flows(w["metadata"]["name"], "kube-dns", 53), w["metadata"]["name"]


def test_the_bus_and_the_databases_admit_only_their_clients_on_their_own(flows, docs):
    """Defence in depth: the ingress rules of NATS and of each database hold
    even for a pod whose own egress is open."""
    sources = [w["metadata"]["name"] for w in workloads(docs)]
    for src in sources:
        app = src.removesuffix("-depl")
        assert flows(src, "nats", 4222, egress=False) == (app in SERVICES), src
        for db in SERVICES:
            assert flows(src, f"postgres-{db}", 5432, egress=False) == (app == db), (src, db)
