"""The production overlay: its namespace and identities, NATS JetStream with
a user per service and a PostgreSQL per service with a role per service,
limits that agree, replicas, disruption budgets, and the network policies,
evaluated the way a CNI enforces them."""

import ipaddress
import re
import shutil
import subprocess
from urllib.parse import urlparse

import pytest
import yaml

from conftest import (
    COURSE,
    K8S,
    ROOT,
    NatsVar,
    all_containers,
    binary_size,
    by_kind,
    env_map,
    kubectl,
    nats_conf,
    nats_size,
    nats_subject_matches,
    pod_labels,
    pod_spec,
    quantity_bytes,
    render,
    secret_refs,
    selects,
    workloads,
)

SERVICES = ["posts", "comments", "query", "moderation"]
NAMESPACE = "blog"
STREAM = "BLOG"
# The event types each user may publish (the bridge publishes for course
# services, whichever they are).
PUBLISHES = {
    "posts": ["PostCreated"],
    "comments": ["CommentCreated", "CommentUpdated"],
    "query": [],
    "moderation": ["CommentModerated"],
    "event-bus": [">"],
}
# Every password and where it is read; created outside git (docs/deploy.md).
SECRETS = {
    **{f"postgres-{s}": {"password"} for s in SERVICES},
    **{f"postgres-{s}-superuser": {"password"} for s in SERVICES},
    "nats-users": set(PUBLISHES) | {"admin", "system"},
    "blog-internal-token": {"token"},
}


@pytest.fixture(scope="module")
def docs():
    return render("overlays/production")


def container(docs, kind, name):
    return pod_spec(by_kind(docs, kind)[name])["containers"][0]


def service_env(docs, app):
    return env_map(container(docs, "Deployment", COURSE[app][0]))


# ---------------------------------------------------------- namespace, identities


def test_a_namespace_that_enforces_the_restricted_standard(docs):
    (ns,) = by_kind(docs, "Namespace").values()
    assert ns["metadata"]["name"] == NAMESPACE
    labels = ns["metadata"]["labels"]
    for mode in ("enforce", "audit", "warn"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted", mode
        assert re.fullmatch(r"v1\.\d+", labels[f"pod-security.kubernetes.io/{mode}-version"]), f"{mode}: a pinned version"
    for d in docs:
        if d["kind"] != "Namespace":
            assert d["metadata"].get("namespace") == NAMESPACE, f"{d['kind']}/{d['metadata']['name']}"


def test_every_workload_runs_as_its_own_service_account_without_a_token(docs):
    accounts = by_kind(docs, "ServiceAccount")
    used = []
    for w in workloads(docs):
        name, spec = w["metadata"]["name"], pod_spec(w)
        account = spec.get("serviceAccountName")
        assert account == pod_labels(w)["app"], f"{name}: its own account, named after its app"
        assert account in accounts, f"{name}: ServiceAccount {account}"
        assert accounts[account]["automountServiceAccountToken"] is False, account
        assert spec["automountServiceAccountToken"] is False, name
        used.append(account)
    assert len(used) == len(set(used)), "no account is shared"
    assert set(accounts) == set(used), "no account left unused"
    assert {"posts", "comments", "query", "moderation", "event-bus", "client", "nats"} <= set(used)
    assert {f"postgres-{s}" for s in SERVICES} <= set(used)
    assert not [d for d in docs if d["kind"] in ("Role", "RoleBinding", "ClusterRole", "ClusterRoleBinding")]


def test_the_images_come_from_the_registry_set_in_the_overlay(docs):
    for w in workloads(docs):
        for c in all_containers(pod_spec(w)):
            repository, _, tag = c["image"].rpartition(":")
            name = repository.rsplit("/", 1)[-1]
            assert tag and re.search(r"\d", tag), f"{w['metadata']['name']}: {c['image']} is pinned"
            if name in COURSE:
                assert repository == f"registry.example.com/blog/{name}", c["image"]
    kustomization = yaml.safe_load((K8S / "overlays/production/kustomization.yaml").read_text())
    images = {i["name"]: i for i in kustomization["images"]}
    assert set(images) == set(COURSE), "one entry per Dockerfile target"
    for name, image in images.items():
        assert image["newName"].endswith(f"/{name}") and image["newTag"], name


# ---------------------------------------------------------- NATS


@pytest.fixture(scope="module")
def conf(docs):
    return nats_conf(by_kind(docs, "ConfigMap")["nats-config"]["data"]["nats.conf"])


def nats_users(conf):
    """{user: (account, user entry)}."""
    users = {}
    for account, body in conf["accounts"].items():
        for user in body.get("users", []):
            assert user["user"] not in users, user["user"]
            users[user["user"]] = (account, user)
    return users


def permits(user, direction, subject):
    """Whether a conf user entry may publish/subscribe `subject`."""
    rules = user.get("permissions", {}).get(direction)
    if rules is None:
        return True
    if isinstance(rules, list):
        rules = {"allow": rules}
    allow, deny = rules.get("allow"), rules.get("deny", [])
    allowed = allow is None or any(nats_subject_matches(p, subject) for p in allow)
    return allowed and not any(nats_subject_matches(p, subject) for p in deny)


def test_nats_is_a_three_server_jetstream_cluster_on_fsynced_files(docs, conf):
    nats = by_kind(docs, "StatefulSet")["nats"]
    assert nats["spec"]["replicas"] == 3
    assert nats["spec"]["serviceName"] == "nats-headless"
    assert conf["jetstream"]["sync_interval"] == "always"
    assert conf["jetstream"]["store_dir"].startswith("/data/")
    assert conf["cluster"]["routes"] == [f"nats://nats-{i}.nats-headless:6222" for i in range(3)]
    assert conf["server_name"] == NatsVar("POD_NAME") and isinstance(conf["server_name"], NatsVar)
    (claim,) = nats["spec"]["volumeClaimTemplates"]
    assert claim["metadata"]["name"] == "data" and claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    mounts = {m["mountPath"]: m["name"] for m in pod_spec(nats)["containers"][0]["volumeMounts"]}
    assert mounts["/data"] == "data", "the JetStream store is on the claim"
    headless = by_kind(docs, "Service")["nats-headless"]["spec"]
    assert headless["clusterIP"] == "None" and headless["publishNotReadyAddresses"] is True


def test_nats_servers_never_share_a_node_and_prefer_separate_zones(docs):
    nats = by_kind(docs, "StatefulSet")["nats"]
    anti = pod_spec(nats)["affinity"]["podAntiAffinity"]
    (required,) = anti["requiredDuringSchedulingIgnoredDuringExecution"]
    assert required["topologyKey"] == "kubernetes.io/hostname"
    assert selects(required["labelSelector"], pod_labels(nats))
    (preferred,) = anti["preferredDuringSchedulingIgnoredDuringExecution"]
    assert preferred["podAffinityTerm"]["topologyKey"] == "topology.kubernetes.io/zone"
    assert selects(preferred["podAffinityTerm"]["labelSelector"], pod_labels(nats))
    assert 1 <= preferred["weight"] <= 100


def test_every_nats_client_authenticates_with_a_password_from_the_secret(docs, conf):
    assert "no_auth_user" not in conf and "authorization" not in conf, "no anonymous access"
    server = container(docs, "StatefulSet", "nats")
    server_env, server_secrets = env_map(server), secret_refs(server)
    users = nats_users(conf)
    assert set(users) == SECRETS["nats-users"]
    for name, (_, user) in users.items():
        password = user["password"]
        assert isinstance(password, NatsVar), f"{name}: the password is read from the environment"
        # Quoted, so that nats-server reads any password as a string (a bare
        # value that looks like a number, a boolean or a comment is not one).
        (raw,) = re.fullmatch(r'"\$\((\w+)\)"', server_env[password]).groups()
        assert server_secrets[raw] == ("nats-users", name), name
    # Each service and the bridge connect as their own user, with the same
    # Secret key the server reads that user's password from.
    for app in PUBLISHES:
        c = container(docs, "Deployment", COURSE[app][0])
        env = env_map(c)
        assert env["BLOG_NATS_USER"] == app
        assert secret_refs(c)["BLOG_NATS_PASSWORD"] == ("nats-users", app), app
        assert users[app][0] == users["admin"][0], "the services' users share the stream's account"
    account = users["posts"][0]
    assert conf["accounts"][account]["jetstream"] == "enabled"
    assert conf["system_account"] == users["system"][0] != account


def what_a_service_sends(app):
    """The subjects a service's JetStream client publishes to, for its own
    stream, its durable consumer and a read of the stream from a sequence."""
    api = "$JS.API"
    return [
        f"{api}.INFO",
        f"{api}.STREAM.INFO.{STREAM}",
        f"{api}.STREAM.UPDATE.{STREAM}",
        f"{api}.STREAM.CREATE.{STREAM}",
        f"{api}.STREAM.MSG.GET.{STREAM}",
        f"{api}.DIRECT.GET.{STREAM}",
        f"{api}.DIRECT.GET.{STREAM}.{STREAM}.events.PostCreated",
        f"{api}.CONSUMER.INFO.{STREAM}.{app}",
        f"{api}.CONSUMER.CREATE.{STREAM}.{app}.{STREAM}.events.>",
        f"{api}.CONSUMER.CREATE.{STREAM}",
        f"{api}.CONSUMER.DURABLE.CREATE.{STREAM}.{app}",
        f"{api}.CONSUMER.MSG.NEXT.{STREAM}.{app}",
        f"{api}.CONSUMER.CREATE.{STREAM}.ordered1",
        f"{api}.CONSUMER.MSG.NEXT.{STREAM}.ordered1",
        f"{api}.CONSUMER.DELETE.{STREAM}.ordered1",
        f"$JS.ACK.{STREAM}.{app}.1.10.10.1700000000000000000.0",
    ]


@pytest.mark.parametrize("app", list(PUBLISHES))
def test_each_nats_user_may_do_what_its_service_does_and_no_more(conf, app):
    (_, user) = nats_users(conf)[app]
    for subject in what_a_service_sends(app):
        assert permits(user, "publish", subject), subject
    for event in ("PostCreated", "CommentCreated", "CommentUpdated", "CommentModerated", "Other"):
        subject = f"{STREAM}.events.{event}"
        mine = PUBLISHES[app] == [">"] or event in PUBLISHES[app]
        assert permits(user, "publish", subject) == mine, subject
    for subject in (
        f"$JS.API.STREAM.DELETE.{STREAM}",
        f"$JS.API.STREAM.PURGE.{STREAM}",
        "$JS.API.STREAM.CREATE.OTHER",
        "$JS.API.STREAM.UPDATE.OTHER",
        "$JS.API.CONSUMER.CREATE.OTHER.x",
        "$JS.API.CONSUMER.MSG.NEXT.OTHER.x",
        "$JS.ACK.OTHER.x.1.1.1.1.0",
        "$SYS.REQ.SERVER.PING",
        "anything.else",
    ):
        assert not permits(user, "publish", subject), subject
    assert permits(user, "subscribe", "_INBOX.abc.def")
    for subject in (f"{STREAM}.events.PostCreated", ">", "$JS.API.INFO"):
        assert not permits(user, "subscribe", subject), subject


def test_operators_have_an_admin_and_a_system_user(conf):
    users = nats_users(conf)
    assert "permissions" not in users["admin"][1], "admin may inspect and repair the stream"
    assert users["system"][0] == conf["system_account"]


def test_sizes_agree_volume_then_server_store_then_stream(docs, conf):
    """The NATS volume > each server's max_file_store > the stream's max bytes
    (the stream keeps a full copy on each of its servers), with headroom."""
    nats = by_kind(docs, "StatefulSet")["nats"]
    (claim,) = nats["spec"]["volumeClaimTemplates"]
    volume = quantity_bytes(claim["spec"]["resources"]["requests"]["storage"])
    store = nats_size(conf["jetstream"]["max_file_store"])
    settings = {app: service_env(docs, app) for app in PUBLISHES}
    (stream,) = {env["BLOG_NATS_MAX_BYTES"] for env in settings.values()}
    (replicas,) = {env["BLOG_NATS_REPLICAS"] for env in settings.values()}
    stream = binary_size(stream)
    assert volume > store > stream, (volume, store, stream)
    assert store <= 0.9 * volume and stream <= 0.9 * store, "room for indexes, snapshots and compaction"
    assert int(replicas) == nats["spec"]["replicas"] == 3
    memory = nats_size(conf["jetstream"]["max_memory_store"])
    limit = quantity_bytes(container(docs, "StatefulSet", "nats")["resources"]["limits"]["memory"])
    assert memory < limit


def test_the_size_parsers_read_the_units_as_their_programs_do():
    assert nats_size("8GiB") == nats_size("8GB") == nats_size("8Gi") == 8 * 2**30
    assert nats_size("8G") == 8 * 10**9 and nats_size("512") == 512
    assert binary_size("8GiB") == 8 * 2**30 and binary_size("512MiB") == 512 * 2**20 and binary_size("1000") == 1000
    assert quantity_bytes("10Gi") == 10 * 2**30 and quantity_bytes("10G") == 10 * 10**9


# ---------------------------------------------------------- services, PostgreSQL


def test_every_service_uses_nats_and_its_own_database_as_its_own_role(docs):
    statefulsets = by_kind(docs, "StatefulSet")
    for app in SERVICES:
        c = container(docs, "Deployment", COURSE[app][0])
        env = env_map(c)
        assert env["BLOG_BUS"] == "nats://nats:4222"
        assert "BLOG_POSTGRES" not in env, "the service's own database URL only"
        url = urlparse(re.sub(r"\$\((\w+)\)", "secret", env["BLOG_DATABASE_URL"]))
        assert url.scheme == "postgres" and url.hostname == f"postgres-{app}" and url.port == 5432
        assert url.username == app and url.path == f"/blog_{app}", "its own role and database"
        (ref,) = re.findall(r"\$\((\w+)\)", env["BLOG_DATABASE_URL"])
        assert secret_refs(c)[ref] == (f"postgres-{app}", "password")
        db = container(docs, "StatefulSet", f"postgres-{app}")
        db_env, db_secrets = env_map(db), secret_refs(db)
        # The database creates that role and database with the same password.
        assert db_env["APP_USER"] == app and db_env["APP_DATABASE"] == f"blog_{app}"
        assert db_secrets["APP_PASSWORD"] == (f"postgres-{app}", "password")
        # The superuser is another user, with another password.
        assert db_env["POSTGRES_USER"] not in SERVICES
        assert db_secrets["POSTGRES_PASSWORD"] == (f"postgres-{app}-superuser", "password")
        mounts = {m["mountPath"]: m for m in db["volumeMounts"]}
        init = mounts["/docker-entrypoint-initdb.d"]
        assert init.get("readOnly") is True
        (volume,) = [v for v in pod_spec(statefulsets[f"postgres-{app}"])["volumes"] if v["name"] == init["name"]]
        assert volume["configMap"]["name"] == "postgres-init"
        assert volume["configMap"]["defaultMode"] & 0o111, "executable: the entrypoint runs it in its own shell"
        assert not any("persistentVolumeClaim" in v for v in pod_spec(by_kind(docs, "Deployment")[COURSE[app][0]])["volumes"])


def test_the_init_script_creates_a_role_that_owns_only_its_database(docs, tmp_path):
    scripts = by_kind(docs, "ConfigMap")["postgres-init"]["data"]
    (name,) = scripts
    assert name.endswith(".sh"), "the image's entrypoint runs *.sh files"
    script = scripts[name]
    assert script.startswith("#!/bin/sh\n")
    path = tmp_path / name
    path.write_text(script)
    subprocess.run(["sh", "-n", str(path)], check=True)
    assert "set -eu" in script and "ON_ERROR_STOP=1" in script
    sql = script.split("<<'SQL'", 1)[1].split("\nSQL\n", 1)[0]
    sql = re.sub(r"--[^\n]*", "", sql)
    assert re.search(r'CREATE ROLE :"app_user" LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION', sql)
    assert "PASSWORD :'app_password'" in sql, "the password as a quoted literal, never spliced into the SQL"
    assert 'CREATE DATABASE :"app_database" OWNER :"app_user"' in sql
    assert 'REVOKE ALL ON DATABASE :"app_database" FROM PUBLIC' in sql
    for var in ("APP_USER", "APP_DATABASE", "APP_PASSWORD"):
        assert f'"${var}"' in script, var
    assert "GRANT" not in sql.upper() and "SUPERUSER " not in sql.replace("NOSUPERUSER", "")


def test_startup_waits_for_the_database_within_the_probe(docs):
    for app in SERVICES:
        c = container(docs, "Deployment", COURSE[app][0])
        timeout = int(env_map(c)["BLOG_STARTUP_TIMEOUT"])
        probe = c["startupProbe"]
        assert probe["periodSeconds"] * probe["failureThreshold"] > timeout, app


def test_no_password_is_committed_and_every_secret_is_documented(docs):
    assert not by_kind(docs, "Secret"), "passwords are created outside git (docs/deploy.md)"
    read = {}
    for w in workloads(docs):
        for c in all_containers(pod_spec(w)):
            secrets = secret_refs(c)
            for e in c.get("env", []):
                if "PASSWORD" in e["name"] and "valueFrom" not in e:
                    # Only references to variables that come from Secrets.
                    refs = re.findall(r"\$\((\w+)\)", e["value"])
                    assert refs and all(r in secrets for r in refs), f"{w['metadata']['name']}: {e['name']}"
                    assert not re.sub(r"\$\(\w+\)", "", e["value"]).strip('"'), f"{w['metadata']['name']}: {e['name']}"
            for secret, key in secrets.values():
                read.setdefault(secret, set()).add(key)
    assert read == SECRETS
    guide = (ROOT / "docs/deploy.md").read_text()
    for secret, keys in SECRETS.items():
        assert f"`{secret}`" in guide, secret
    assert "kubectl create secret generic" in guide and "--namespace blog" in guide


def test_replicas_roll_without_dropping_below_the_count(docs):
    for name, d in by_kind(docs, "Deployment").items():
        if name == "event-bus-depl":
            continue  # the bridge: one replica on its volume (next test)
        assert d["spec"]["replicas"] >= 2, name
        strategy = d["spec"]["strategy"]
        assert strategy["type"] == "RollingUpdate" and strategy["rollingUpdate"]["maxUnavailable"] == 0, name
        spread = pod_spec(d)["topologySpreadConstraints"]
        assert any(selects(t["labelSelector"], pod_labels(d)) for t in spread), name


def test_the_event_bus_is_a_bridge_onto_nats_and_the_other_volumes_are_gone(docs):
    bus = by_kind(docs, "Deployment")["event-bus-depl"]
    assert "event-bus-srv" in by_kind(docs, "Service")
    assert bus["spec"]["replicas"] == 1 and bus["spec"]["strategy"]["type"] == "Recreate"
    env = env_map(pod_spec(bus)["containers"][0])
    assert env["BLOG_BUS"] == "nats://nats:4222"
    assert env["BLOG_SUBSCRIBERS"] == "", "our services consume from JetStream themselves"
    assert env["BLOG_DATA_DIR"] == "/data"
    claims = by_kind(docs, "PersistentVolumeClaim")
    assert set(claims) == {"event-bus-data"}, "its cursors and dead letters; the services are on PostgreSQL"
    (data,) = [v for v in pod_spec(bus)["volumes"] if v["name"] == "data"]
    assert data["persistentVolumeClaim"]["claimName"] == "event-bus-data"
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

INGRESS_NAMESPACE = "ingress-nginx"  # settings.yaml
MONITORING_NAMESPACE = "monitoring"  # settings.yaml
NODE_LOCAL_DNS = "169.254.20.10"


class Pod:
    def __init__(self, labels, namespace=NAMESPACE, ip=None):
        self.labels, self.namespace, self.ip = labels, namespace, ip


def namespace_labels(namespace):
    return {"kubernetes.io/metadata.name": namespace}


def peer_matches(peer, pod, policy_namespace):
    if "ipBlock" in peer:
        block = peer["ipBlock"]
        if pod.ip is None:
            return False  # pod addresses are never in the blocks opened here
        address = ipaddress.ip_address(pod.ip)
        return address in ipaddress.ip_network(block["cidr"]) and not any(
            address in ipaddress.ip_network(e) for e in block.get("except", [])
        )
    ns_selector, pod_selector = peer.get("namespaceSelector"), peer.get("podSelector")
    if ns_selector is None:
        ns_ok = pod.namespace == policy_namespace
    else:
        ns_ok = ns_selector == {} or selects(ns_selector, namespace_labels(pod.namespace))
    pod_ok = pod_selector is None or pod_selector == {} or selects(pod_selector, pod.labels)
    return ns_ok and pod_ok and pod.ip is None


def port_matches(rule_ports, port, protocol):
    return not rule_ports or any(p.get("port") in (None, port) and p.get("protocol", "TCP") == protocol for p in rule_ports)


def allowed(policies, source, destination, port, egress=True, protocol="TCP"):
    """Whether the policies let `source` open a connection to `destination`:port
    (with egress=False: whether the destination's ingress rules alone admit it)."""

    def side(pod, direction, peer, peer_key):
        if pod.namespace != NAMESPACE:
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
                if (peers is None or any(peer_matches(x, peer, NAMESPACE) for x in peers)) and port_matches(
                    rule.get("ports"), port, protocol
                ):
                    return True
        return False

    return (not egress or side(source, "Egress", destination, "to")) and side(destination, "Ingress", source, "from")


def flow_model(docs, ingress_namespace=INGRESS_NAMESPACE, monitoring_namespace=MONITORING_NAMESPACE):
    policies = list(by_kind(docs, "NetworkPolicy").values())
    pods = {w["metadata"]["name"]: Pod(pod_labels(w)) for w in workloads(docs)}
    pods["ingress-controller"] = Pod({"app.kubernetes.io/name": "ingress-nginx"}, namespace=ingress_namespace)
    pods["prometheus"] = Pod({"app.kubernetes.io/name": "prometheus"}, namespace=monitoring_namespace)
    pods["kube-dns"] = Pod({"k8s-app": "kube-dns"}, namespace="kube-system")
    pods["node-local-dns"] = Pod({}, namespace=None, ip=NODE_LOCAL_DNS)
    pods["elsewhere"] = Pod({"app": "posts"}, namespace="other")  # same labels, another namespace
    return lambda src, dst, port, egress=True, protocol="TCP": allowed(
        policies, pods[src], pods[dst], port, egress, protocol
    )


@pytest.fixture(scope="module")
def flows(docs):
    return flow_model(docs)


def test_default_deny_covers_every_pod(docs):
    deny = by_kind(docs, "NetworkPolicy")["default-deny"]["spec"]
    assert deny["podSelector"] == {} and set(deny["policyTypes"]) == {"Ingress", "Egress"}
    assert "ingress" not in deny and "egress" not in deny


def test_the_ingress_controller_reaches_exactly_the_ingress_backends(flows):
    assert flows("ingress-controller", "posts-depl", 4000)
    assert flows("ingress-controller", "comments-depl", 4001)
    assert flows("ingress-controller", "query-depl", 4002)
    assert flows("ingress-controller", "client-depl", 3000)
    assert not flows("ingress-controller", "moderation-depl", 4003)
    assert not flows("ingress-controller", "event-bus-depl", 4005)
    assert not flows("ingress-controller", "nats", 4222)
    for app in SERVICES:
        assert not flows("ingress-controller", f"postgres-{app}", 5432)
    assert not flows("elsewhere", "posts-depl", 4000), "not from another namespace's pods"


def production_with_setting(tmp_path, key, value, new_value):
    """The production overlay rendered with one line of settings.yaml
    changed (`key: value` to `key: new_value`), from a copy of infra/k8s."""
    copy = tmp_path / "k8s"
    shutil.copytree(K8S, copy)
    settings = copy / "overlays/production/settings.yaml"
    text = settings.read_text()
    assert f"{key}: {value}" in text
    settings.write_text(text.replace(f"{key}: {value}", f"{key}: {new_value}"))
    out = subprocess.run([kubectl(), "kustomize", str(copy / "overlays/production")], check=True, capture_output=True, text=True).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def test_the_ingress_controller_namespace_is_set_in_one_place(tmp_path):
    """Change settings.yaml alone: every policy follows, none still names the old namespace."""
    moved = production_with_setting(tmp_path, "ingress-controller-namespace", INGRESS_NAMESPACE, "traefik")
    policies = [d for d in moved if d["kind"] == "NetworkPolicy"]
    assert INGRESS_NAMESPACE not in yaml.safe_dump(policies)
    assert not [d for d in moved if d["kind"] == "ConfigMap" and d["metadata"]["name"] == "production-settings"]
    new, old = flow_model(moved, "traefik"), flow_model(moved, INGRESS_NAMESPACE)
    for depl, port in (("posts-depl", 4000), ("comments-depl", 4001), ("query-depl", 4002), ("client-depl", 3000)):
        assert new("ingress-controller", depl, port) and not old("ingress-controller", depl, port), depl


def metrics_ports(docs):
    """{Deployment: the port Prometheus scrapes}, from the pods' annotations
    (test_monitoring.py checks that each is the container's own port)."""
    ports = {}
    for w in workloads(docs):
        notes = w["spec"]["template"]["metadata"].get("annotations", {})
        if notes.get("prometheus.io/scrape") == "true":
            ports[w["metadata"]["name"]] = int(notes["prometheus.io/port"])
    return ports


def test_prometheus_reaches_every_part_on_its_metrics_port_only(flows, docs):
    ports = metrics_ports(docs)
    assert ports == {depl: port for depl, _, port in COURSE.values()}
    for depl, port in ports.items():
        assert flows("prometheus", depl, port), depl
        assert not flows("elsewhere", depl, port), f"{depl}: not from another namespace's pods"
    assert not flows("prometheus", "nats", 4222) and not flows("prometheus", "nats", 8222)
    for db in SERVICES:
        assert not flows("prometheus", f"postgres-{db}", 5432), db
    assert not flows("ingress-controller", "moderation-depl", 4003), "the scrape rule admits the monitoring namespace only"


def test_the_monitoring_namespace_is_set_in_one_place(tmp_path):
    """Change settings.yaml alone: every policy admits Prometheus from the new
    namespace, none from the old."""
    moved = production_with_setting(tmp_path, "monitoring-namespace", MONITORING_NAMESPACE, "observability")
    policies = [d for d in moved if d["kind"] == "NetworkPolicy"]
    assert MONITORING_NAMESPACE not in yaml.safe_dump(policies)
    new, old = flow_model(moved, monitoring_namespace="observability"), flow_model(moved)
    for depl, port in metrics_ports(moved).items():
        assert new("prometheus", depl, port) and not old("prometheus", depl, port), depl
    for depl, port in (("posts-depl", 4000), ("client-depl", 3000)):
        assert new("ingress-controller", depl, port), "the ingress controller's rules stay as they were"


def test_each_database_is_reachable_from_its_own_service_only(flows):
    for db in SERVICES:
        for app in SERVICES:
            assert flows(f"{app}-depl", f"postgres-{db}", 5432) == (app == db), (app, db)
        for other in ("client-depl", "event-bus-depl", "nats", "elsewhere"):
            assert not flows(other, f"postgres-{db}", 5432), (other, db)


def test_nats_is_reachable_from_the_services_and_the_bridge_only(flows):
    for app in SERVICES:
        assert flows(f"{app}-depl", "nats", 4222), app
    assert flows("event-bus-depl", "nats", 4222)
    assert not flows("client-depl", "nats", 4222)
    assert not flows("elsewhere", "nats", 4222)
    for db in SERVICES:
        assert not flows(f"postgres-{db}", "nats", 4222)
    assert flows("nats", "nats", 6222), "the servers route to each other"
    assert not flows("posts-depl", "nats", 6222), "clients never join the cluster"


def test_the_bridge_speaks_to_the_services_and_nats_only(flows):
    for app, port in (("posts", 4000), ("comments", 4001), ("query", 4002), ("moderation", 4003)):
        assert flows(f"{app}-depl", "event-bus-depl", 4005), f"{app} may publish to the bridge"
        assert flows("event-bus-depl", f"{app}-depl", port), f"the bridge may deliver to {app}"
    for other in ("client-depl", "nats", "elsewhere", "ingress-controller"):
        assert not flows(other, "event-bus-depl", 4005), other
    assert not flows("event-bus-depl", "client-depl", 3000)


def test_services_talk_only_through_the_bus(flows):
    for src in SERVICES + ["client"]:
        for dst, port in (("posts", 4000), ("comments", 4001), ("query", 4002), ("moderation", 4003), ("client", 3000)):
            if src != dst:
                assert not flows(f"{src}-depl", f"{dst}-depl", port), (src, dst)


def test_every_pod_resolves_names_with_or_without_node_local_dns(flows, docs):
    for w in workloads(docs):
        for server in ("kube-dns", "node-local-dns"):
            for protocol in ("UDP", "TCP"):
                assert flows(w["metadata"]["name"], server, 53, protocol=protocol), (w["metadata"]["name"], server, protocol)
        assert not flows(w["metadata"]["name"], "node-local-dns", 80)


def test_the_bus_and_the_databases_admit_only_their_clients_on_their_own(flows, docs):
    """Defence in depth: the ingress rules of NATS and of each database hold
    even for a pod whose own egress is open."""
    sources = [w["metadata"]["name"] for w in workloads(docs)]
    for src in sources:
        app = src.removesuffix("-depl")
        assert flows(src, "nats", 4222, egress=False) == (app in SERVICES + ["event-bus"]), src
        for db in SERVICES:
            assert flows(src, f"postgres-{db}", 5432, egress=False) == (app == db), (src, db)


def test_every_part_demands_the_internal_token_from_the_secret(docs):
    deployments = by_kind(docs, "Deployment")
    for name in ["posts-depl", "comments-depl", "query-depl", "moderation-depl", "event-bus-depl"]:
        env = {e["name"]: e for e in pod_spec(deployments[name])["containers"][0]["env"]}
        token = env.get("BLOG_INTERNAL_TOKEN")
        assert token, f"{name}: internal routes are closed with a token"
        assert token["valueFrom"]["secretKeyRef"] == {"name": "blog-internal-token", "key": "token"}, name
    # The browser-facing parts do not need it.
    for name in ["client-depl"]:
        env = {e["name"] for e in pod_spec(deployments[name])["containers"][0].get("env", [])}
        assert "BLOG_INTERNAL_TOKEN" not in env, name
