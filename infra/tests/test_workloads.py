"""What a cluster would otherwise tell us the hard way: every workload in
every overlay passes the Pod Security Standard "restricted", has probes,
requests and limits, terminates gracefully, is configured through the
environment only, and every reference (Service -> pod port, volume ->
claim, env -> Service) resolves inside the rendered overlay."""

import re
from urllib.parse import urlparse

import pytest

from conftest import (
    COURSE,
    OVERLAYS,
    all_containers,
    blog_help,
    by_kind,
    container_port,
    env_map,
    pod_labels,
    pod_spec,
    render,
    selects,
    workloads,
)

BLOG_IMAGES = set(COURSE)


def is_blog(container):
    return container["image"].rsplit("/", 1)[-1].split(":")[0] in BLOG_IMAGES


def is_dev_client(target, workload):
    return target.endswith("dev") and workload["metadata"]["name"] == "client-depl"


def restricted_violations(spec):
    """The Pod Security Standards, level "restricted" (which includes "baseline"),
    as the admission controller checks them; [] when the pod would be admitted."""
    errors = []
    psc = spec.get("securityContext", {})
    for flag in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(flag):
            errors.append(f"{flag} is set")
    allowed_volumes = {
        "configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected", "secret",
    }
    for v in spec.get("volumes", []):
        kinds = set(v) - {"name"}
        if not kinds <= allowed_volumes:
            errors.append(f"volume {v['name']} of type {kinds - allowed_volumes}")
    if psc.get("sysctls"):
        errors.append("sysctls")
    if psc.get("runAsUser") == 0:
        errors.append("pod runAsUser 0")
    for key in ("seLinuxOptions",):
        if psc.get(key, {}).get("type") not in (None, "", "container_t", "container_init_t", "container_kvm_t"):
            errors.append("pod SELinux type")
    pod_seccomp = psc.get("seccompProfile", {}).get("type")
    if pod_seccomp not in (None, "RuntimeDefault", "Localhost"):
        errors.append(f"pod seccomp {pod_seccomp}")
    for c in all_containers(spec):
        name = c["name"]
        sc = c.get("securityContext", {})
        if sc.get("privileged"):
            errors.append(f"{name}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            errors.append(f"{name}: allowPrivilegeEscalation is not false")
        if not (sc.get("runAsNonRoot") is True or (psc.get("runAsNonRoot") is True and sc.get("runAsNonRoot") is not False)):
            errors.append(f"{name}: runAsNonRoot is not true")
        if sc.get("runAsUser") == 0:
            errors.append(f"{name}: runAsUser 0")
        seccomp = sc.get("seccompProfile", {}).get("type") or pod_seccomp
        if seccomp not in ("RuntimeDefault", "Localhost"):
            errors.append(f"{name}: seccomp profile {seccomp}")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []):
            errors.append(f"{name}: capabilities not all dropped")
        if set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            errors.append(f"{name}: capabilities added {caps['add']}")
        if any(p.get("hostPort") for p in c.get("ports", [])):
            errors.append(f"{name}: hostPort")
        if sc.get("procMount", "Default") != "Default":
            errors.append(f"{name}: procMount")
        if sc.get("appArmorProfile", {}).get("type") == "Unconfined":
            errors.append(f"{name}: AppArmor unconfined")
    return errors


@pytest.mark.parametrize("target", OVERLAYS)
def test_every_pod_passes_the_restricted_pod_security_standard(target):
    for w in workloads(render(target)):
        assert restricted_violations(pod_spec(w)) == [], w["metadata"]["name"]


def test_the_restricted_check_catches_what_it_should():
    good = {
        "securityContext": {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [
            {"name": "c", "image": "x", "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}}}
        ],
    }
    assert restricted_violations(good) == []
    for breach in (
        {"hostNetwork": True},
        {"volumes": [{"name": "h", "hostPath": {"path": "/"}}]},
        {"securityContext": {"runAsNonRoot": True}},  # no seccomp
    ):
        bad = {**good, **breach}
        assert restricted_violations(bad), breach
    escalating = {**good, "containers": [{"name": "c", "image": "x", "securityContext": {"capabilities": {"drop": ["ALL"]}}}]}
    assert restricted_violations(escalating)


@pytest.mark.parametrize("target", OVERLAYS)
def test_every_workload_is_hardened_beyond_the_standard(target):
    for w in workloads(render(target)):
        name, spec = w["metadata"]["name"], pod_spec(w)
        assert spec.get("automountServiceAccountToken") is False, f"{name}: no API token in a pod that never calls the API"
        psc = spec["securityContext"]
        assert isinstance(psc.get("runAsUser"), int) and psc["runAsUser"] > 0, f"{name}: a numeric non-root uid"
        for c in spec["containers"]:
            read_only = c["securityContext"].get("readOnlyRootFilesystem")
            if is_dev_client(target, w):
                assert read_only is False, "the dev server writes synced sources into its tree"
            else:
                assert read_only is True, f"{name}/{c['name']}: read-only root filesystem"


@pytest.mark.parametrize("target", OVERLAYS)
def test_every_container_has_probes_requests_and_limits(target):
    for w in workloads(render(target)):
        name, spec = w["metadata"]["name"], pod_spec(w)
        for c in spec["containers"]:
            where = f"{name}/{c['name']}"
            for probe in ("readinessProbe", "livenessProbe"):
                assert probe in c, f"{where}: {probe}"
                handler = c[probe].get("httpGet") or c[probe].get("tcpSocket")
                if handler:
                    assert container_port(c, handler["port"]), f"{where}: {probe} port {handler['port']}"
            res = c["resources"]
            for kind in ("cpu", "memory"):
                assert kind in res["requests"] and kind in res["limits"], f"{where}: {kind} request and limit"
                assert quantity(res["requests"][kind]) <= quantity(res["limits"][kind]), f"{where}: {kind}"
            if is_blog(c) and not is_dev_client(target, w):
                # /readyz: storage and bus reachable, so a pod whose database
                # or bus is gone leaves the Service; /healthz: the process
                # answers, so only a hung process is restarted.
                assert c["readinessProbe"]["httpGet"]["path"] == "/readyz", where
                assert c["livenessProbe"]["httpGet"]["path"] == "/healthz", where
                assert c["startupProbe"]["httpGet"]["path"] == "/healthz", where


# How long a service retries its database at start before it exits
# (BLOG_STARTUP_TIMEOUT, in seconds), when the environment does not say.
DEFAULT_STARTUP_TIMEOUT = 120


@pytest.mark.parametrize("target", OVERLAYS)
def test_the_startup_probe_outlasts_the_database_wait(target):
    """A service that cannot reach its database exits after BLOG_STARTUP_TIMEOUT
    and logs why; its startup probe must not kill it first."""
    checked = 0
    for w in workloads(render(target)):
        for c in pod_spec(w)["containers"]:
            env = env_map(c)
            if not is_blog(c) or "BLOG_DATA_DIR" not in env:
                continue  # the client keeps no data
            timeout = int(env.get("BLOG_STARTUP_TIMEOUT") or DEFAULT_STARTUP_TIMEOUT)
            probe = c["startupProbe"]
            budget = probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3)
            assert budget > timeout, f"{w['metadata']['name']}: startup probe {budget} s <= {timeout} s"
            checked += 1
    assert checked >= 5


@pytest.mark.parametrize("target", OVERLAYS)
def test_no_variable_is_set_twice(target):
    """With a name set twice the last wins silently: a patch that appended
    instead of replacing would go unnoticed."""
    for w in workloads(render(target)):
        for c in all_containers(pod_spec(w)):
            names = [e["name"] for e in c.get("env", [])]
            assert len(names) == len(set(names)), f"{w['metadata']['name']}/{c['name']}: {names}"


def quantity(value):
    value = str(value)
    units = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}
    for suffix, factor in sorted(units.items(), key=lambda u: -len(u[0])):
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * factor
    return float(value)


@pytest.mark.parametrize("target", OVERLAYS)
def test_graceful_termination(target):
    for w in workloads(render(target)):
        name, spec = w["metadata"]["name"], pod_spec(w)
        grace = spec.get("terminationGracePeriodSeconds", 30)
        for c in spec["containers"]:
            if not is_blog(c):
                continue
            sleep = c["lifecycle"]["preStop"]["sleep"]["seconds"]
            assert 1 <= sleep <= 15, f"{name}: a short pause while endpoints are removed"
            assert grace >= sleep + 20, f"{name}: time to drain after the pause"


@pytest.mark.parametrize("target", OVERLAYS)
def test_the_blog_containers_are_configured_through_the_environment_only(target):
    for w in workloads(render(target)):
        for c in pod_spec(w)["containers"]:
            if not is_blog(c):
                continue
            where = w["metadata"]["name"]
            assert "command" not in c and "args" not in c, f"{where}: the image's ENTRYPOINT and CMD"
            if is_dev_client(target, w):
                continue
            env = env_map(c)
            assert env["BLOG_HOST"] == "0.0.0.0", where
            assert int(env["BLOG_PORT"]) == container_port(c, "http"), f"{where}: BLOG_PORT is the http port"
            if c["name"] != "client":
                assert env["BLOG_DATA_DIR"] == "/data", where


@pytest.mark.parametrize("target", OVERLAYS)
def test_env_references_are_defined_before_use(target):
    """Kubernetes expands $(VAR) only from variables defined earlier in the list."""
    for w in workloads(render(target)):
        for c in pod_spec(w)["containers"]:
            seen = set()
            for e in c.get("env", []):
                for ref in re.findall(r"\$\((\w+)\)", e.get("value", "")):
                    assert ref in seen, f"{w['metadata']['name']}: {e['name']} uses $({ref}) before it is defined"
                seen.add(e["name"])


@pytest.mark.parametrize("target", OVERLAYS)
def test_urls_in_the_environment_name_services_of_the_overlay(target):
    docs = render(target)
    services = by_kind(docs, "Service")
    for w in workloads(docs):
        for c in pod_spec(w)["containers"]:
            for name, value in env_map(c).items():
                if not name.startswith("BLOG_") or not value or "://" not in value:
                    continue
                for url in value.split(","):
                    parsed = urlparse(url.replace("$(", "").replace(")", ""))
                    if parsed.hostname in ("posts.com",):
                        continue  # CORS origins: the public host
                    assert parsed.hostname in services, f"{w['metadata']['name']}: {name} names {parsed.hostname}"
                    ports = [p["port"] for p in services[parsed.hostname]["spec"]["ports"]]
                    assert parsed.port in ports, f"{w['metadata']['name']}: {name} port {parsed.port} not in {ports}"


@pytest.mark.parametrize("target", OVERLAYS)
def test_services_select_pods_that_have_their_target_ports(target):
    docs = render(target)
    pods = [w for w in workloads(docs)]
    for s in by_kind(docs, "Service").values():
        backends = [w for w in pods if selects(s["spec"].get("selector"), pod_labels(w))]
        assert backends, f"Service {s['metadata']['name']} selects no pod"
        for p in s["spec"]["ports"]:
            for w in backends:
                assert any(container_port(c, p["targetPort"]) for c in pod_spec(w)["containers"]), (
                    f"{s['metadata']['name']}: {w['metadata']['name']} has no port {p['targetPort']}"
                )


@pytest.mark.parametrize("target", OVERLAYS)
def test_volumes_and_claims_resolve(target):
    docs = render(target)
    claims = by_kind(docs, "PersistentVolumeClaim")
    config_maps = by_kind(docs, "ConfigMap")
    for w in workloads(docs):
        spec, name = pod_spec(w), w["metadata"]["name"]
        declared = {v["name"] for v in spec.get("volumes", [])}
        declared |= {t["metadata"]["name"] for t in w["spec"].get("volumeClaimTemplates", [])}
        rwo = False
        for v in spec.get("volumes", []):
            if "persistentVolumeClaim" in v:
                claim = claims[v["persistentVolumeClaim"]["claimName"]]
                rwo = rwo or "ReadWriteOnce" in claim["spec"]["accessModes"]
            if "configMap" in v:
                assert v["configMap"]["name"] in config_maps, f"{name}: ConfigMap {v['configMap']['name']}"
        for c in spec["containers"]:
            for m in c.get("volumeMounts", []):
                assert m["name"] in declared, f"{name}: mount {m['name']}"
        if rwo and w["kind"] == "Deployment":
            # A ReadWriteOnce claim (SQLite) takes one pod, and the old pod
            # must let go of it before the new one starts.
            assert w["spec"]["replicas"] == 1, name
            assert w["spec"]["strategy"]["type"] == "Recreate", name


def test_base_runs_the_course_topology():
    docs = render("base")
    deployments = by_kind(docs, "Deployment")
    bus = env_map(deployments["event-bus-depl"]["spec"]["template"]["spec"]["containers"][0])
    assert bus["BLOG_SUBSCRIBERS"].split(",") == [
        "http://posts-clusterip-srv:4000/events",
        "http://comments-srv:4001/events",
        "http://query-srv:4002/events",
        "http://moderation-srv:4003/events",
    ]
    for app in ("posts", "comments", "query", "moderation"):
        env = env_map(deployments[f"{app}-depl"]["spec"]["template"]["spec"]["containers"][0])
        assert env["BLOG_BUS"] == "http://event-bus-srv:4005", app
        assert "BLOG_POSTGRES" not in env, "the base keeps SQLite on a volume"
    for app in ("posts", "comments", "query", "moderation", "event-bus"):
        claim = by_kind(docs, "PersistentVolumeClaim")[f"{app}-data"]
        assert claim["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert all(d["spec"]["replicas"] == 1 for d in deployments.values())


def test_local_overlays_never_pull():
    for target in ("overlays/local", "overlays/dev"):
        for d in by_kind(render(target), "Deployment").values():
            for c in d["spec"]["template"]["spec"]["containers"]:
                assert c["imagePullPolicy"] == "Never", f"{target}: {d['metadata']['name']}"


def test_local_overlay_is_the_base_with_local_images():
    base, local = render("base"), render("overlays/local")
    for d in local:
        if d["kind"] == "Deployment":
            for c in d["spec"]["template"]["spec"]["containers"]:
                del c["imagePullPolicy"]
    assert local == base


def test_dev_overlay_differs_from_local_in_the_client_only():
    local, dev = by_kind(render("overlays/local"), "Deployment"), by_kind(render("overlays/dev"), "Deployment")
    assert set(local) == set(dev)
    for name in local:
        if name != "client-depl":
            assert local[name] == dev[name], name


@pytest.mark.parametrize("target", OVERLAYS)
def test_every_blog_variable_is_one_the_binary_reads(target):
    """A misspelt BLOG_* variable is silently ignored by the binary: catch it here."""
    # `[env: NAME=value]`, or `[env: NAME]` for a variable whose value help hides.
    known = set(re.findall(r"\[env: (BLOG_\w+)[=\]]", blog_help("serve")))
    known |= {"BLOG_LOG"}  # the log filter, read before the arguments
    for w in workloads(render(target)):
        for c in pod_spec(w)["containers"]:
            if is_blog(c):
                unknown = {n for n in env_map(c) if n.startswith("BLOG_")} - known
                assert not unknown, f"{w['metadata']['name']}: {unknown}"


@pytest.mark.parametrize("target", OVERLAYS)
def test_every_object_is_labelled_part_of_the_blog_and_selectors_stay_the_course_s(target):
    """`kubectl get all -l app.kubernetes.io/part-of=blog` lists everything;
    selectors stay `app: <name>` (a selector is immutable once applied)."""
    for d in render(target):
        assert d["metadata"]["labels"]["app.kubernetes.io/part-of"] == "blog", f"{d['kind']}/{d['metadata']['name']}"
        if d["kind"] in ("Deployment", "StatefulSet"):
            assert set(d["spec"]["selector"]["matchLabels"]) == {"app"}, d["metadata"]["name"]
        if d["kind"] == "Service" and d["spec"].get("selector"):
            assert set(d["spec"]["selector"]) == {"app"}, d["metadata"]["name"]
