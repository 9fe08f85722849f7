"""skaffold.yaml without skaffold: its structure (the v4beta fields it uses),
and, for each profile as skaffold would apply it, that the artifacts are the
Dockerfile's targets and exactly the images the deployed manifests use."""

import copy
import re
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, dockerfile, effective, glob_matches, render, workloads

CONFIG = yaml.safe_load((ROOT / "skaffold.yaml").read_text())

# The keys this file may use, per object (a subset of the v4beta schema):
# a misspelt key would otherwise be found only by a user running skaffold.
ALLOWED = {
    "config": {"apiVersion", "kind", "metadata", "build", "manifests", "deploy", "profiles", "portForward"},
    "build": {"local", "artifacts", "tagPolicy"},
    "local": {"push", "useBuildkit", "concurrency", "tryImportMissing", "useDockerCLI"},
    "artifact": {"image", "context", "docker", "sync"},
    "docker": {"dockerfile", "target", "buildArgs", "cacheFrom"},
    "sync": {"manual", "infer"},
    "manual": {"src", "dest", "strip"},
    "manifests": {"kustomize"},
    "kustomize": {"paths"},
    "deploy": {"kubectl"},
    "profile": {"name", "activation", "patches", "build", "manifests", "deploy"},
    "activation": {"command", "env", "kubeContext"},
    "patch": {"op", "path", "value", "from"},
}


def keys_ok(obj, kind):
    extra = set(obj) - ALLOWED[kind]
    assert not extra, f"{kind}: unknown keys {extra}"


def check_structure(config):
    keys_ok(config, "config")
    keys_ok(config.get("build", {}), "build")
    keys_ok(config["build"].get("local", {}), "local")
    for a in config["build"]["artifacts"]:
        keys_ok(a, "artifact")
        keys_ok(a["docker"], "docker")
        if "sync" in a:
            keys_ok(a["sync"], "sync")
            for m in a["sync"].get("manual", []):
                keys_ok(m, "manual")
    keys_ok(config["manifests"], "manifests")
    keys_ok(config["manifests"]["kustomize"], "kustomize")
    keys_ok(config.get("deploy", {}), "deploy")


def pointer(doc, path):
    parts = [p.replace("~1", "/").replace("~0", "~") for p in path.lstrip("/").split("/")]
    for part in parts[:-1]:
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc, parts[-1]


def apply_profile(config, profile):
    """What skaffold does with an active profile: JSON patches, then the
    profile's sections replace the config's."""
    config = copy.deepcopy(config)
    for patch in profile.get("patches", []):
        keys_ok(patch, "patch")
        parent, key = pointer(config, patch["path"])
        if isinstance(parent, list):
            key = int(key)
        if patch["op"] == "replace":
            assert (key in parent) if isinstance(parent, dict) else key < len(parent), patch["path"]
            parent[key] = patch["value"]
        elif patch["op"] == "add":
            if isinstance(parent, list):
                parent.insert(key, patch["value"])
            else:
                parent[key] = patch["value"]
        elif patch["op"] == "remove":
            del parent[key]
        else:
            pytest.fail(f"unexpected patch op {patch['op']}")
    for section in ("build", "manifests", "deploy"):
        if section in profile:
            if section == "build":
                # A profile's build replaces the keys it sets.
                config["build"] = {**config["build"], **profile["build"]}
            else:
                config[section] = profile[section]
    return config


def profile(name):
    (found,) = [p for p in CONFIG["profiles"] if p["name"] == name]
    keys_ok(found, "profile")
    for a in found.get("activation", []):
        keys_ok(a, "activation")
    return found


EFFECTIVE = {
    "default": CONFIG,
    "dev": apply_profile(CONFIG, profile("dev")),
    "production": apply_profile(CONFIG, profile("production")),
}


def test_the_config_is_a_current_skaffold_config():
    assert re.fullmatch(r"skaffold/v4beta(1[3-9]|[2-9]\d)", CONFIG["apiVersion"]), CONFIG["apiVersion"]
    assert CONFIG["kind"] == "Config"
    check_structure(CONFIG)
    assert "kubectl" in CONFIG["deploy"], "the rendered kustomize output is applied with kubectl"


@pytest.mark.parametrize("name", sorted(EFFECTIVE))
def test_artifacts_are_dockerfile_targets_and_the_manifests_images(name):
    config = EFFECTIVE[name]
    check_structure(config)
    targets = {s["name"] for s in dockerfile()["stages"]}
    artifacts = {a["image"]: a for a in config["build"]["artifacts"]}
    assert len(artifacts) == len(config["build"]["artifacts"]), "one artifact per image"
    for image, a in artifacts.items():
        assert a.get("context", ".") == "."
        assert a["docker"]["dockerfile"] == "Dockerfile"
        assert a["docker"]["target"] in targets, f"{image}: no Dockerfile target {a['docker']['target']}"
        if a["docker"]["target"] not in ("client-dev",):
            assert a["docker"]["target"] == image.rsplit("/", 1)[-1], "each image is the target of its name"
    images = set()
    for path in config["manifests"]["kustomize"]["paths"]:
        assert (ROOT / path / "kustomization.yaml").exists(), path
        target = str(Path(path).relative_to("infra/k8s"))
        for w in workloads(render(target)):
            images |= {c["image"] for c in w["spec"]["template"]["spec"]["containers"]}
    # skaffold replaces a manifest's image whose name, without its tag, is
    # an artifact's; the production overlay's placeholder tag is replaced too.
    built = {repository(i) for i in images if repository(i) in artifacts or repository(i).rsplit("/", 1)[-1] in targets}
    assert set(artifacts) == built, "an artifact for every image of ours the manifests deploy, and no other"
    third_party = {i for i in images if repository(i) not in built}
    assert all(re.search(r":\d+(\.\d+)+", i) for i in third_party), f"pinned third-party images: {third_party}"


def repository(image):
    """An image reference without its tag."""
    return image.rsplit(":", 1)[0] if ":" in image.rsplit("/", 1)[-1] else image


def test_local_builds_are_never_pushed():
    for name in ("default", "dev"):
        assert EFFECTIVE[name]["build"]["local"]["push"] is False, name
    assert EFFECTIVE["production"]["build"]["local"]["push"] is True


def test_the_default_and_dev_deploy_the_local_overlays_and_production_its_own():
    assert EFFECTIVE["default"]["manifests"]["kustomize"]["paths"] == ["infra/k8s/overlays/local"]
    assert EFFECTIVE["dev"]["manifests"]["kustomize"]["paths"] == ["infra/k8s/overlays/dev"]
    assert EFFECTIVE["production"]["manifests"]["kustomize"]["paths"] == ["infra/k8s/overlays/production"]
    assert {"command": "dev"} in profile("dev")["activation"], "`skaffold dev` turns the dev profile on by itself"


def test_dev_syncs_the_client_sources_into_the_dev_server():
    artifacts = {a["image"]: a for a in EFFECTIVE["dev"]["build"]["artifacts"]}
    client = artifacts["client"]
    assert client["docker"]["target"] == "client-dev"
    rules = client["sync"]["manual"]
    workdir = effective("client-dev", "WORKDIR")
    sources = [p.relative_to(ROOT).as_posix() for p in (ROOT / "client").rglob("*") if "node_modules" not in p.parts]
    for rule in rules:
        assert rule["dest"] == workdir, "files land where the dev server runs"
        assert rule["strip"] == "client/"
        matched = [s for s in sources if glob_matches(rule["src"], s)]
        assert matched, f"{rule['src']} matches no file"
    assert any(glob_matches(r["src"], "client/src/App.tsx") for r in rules)
    # Nothing else syncs: every other change rebuilds its image.
    assert [a for a in artifacts.values() if "sync" in a] == [client]
    # And outside `skaffold dev` the client is the built one.
    assert {a["image"]: a for a in CONFIG["build"]["artifacts"]}["client"]["docker"]["target"] == "client"
    assert not any("sync" in a for a in EFFECTIVE["production"]["build"]["artifacts"])


def test_the_dev_patches_address_the_client_artifact():
    for patch in profile("dev")["patches"]:
        index = int(re.match(r"/build/artifacts/(\d+)/", patch["path"]).group(1))
        assert CONFIG["build"]["artifacts"][index]["image"] == "client", patch["path"]


def test_the_production_images_are_the_names_the_production_overlay_deploys():
    import yaml

    kustomization = yaml.safe_load((ROOT / "infra/k8s/overlays/production/kustomization.yaml").read_text())
    names = {i["name"]: i["newName"] for i in kustomization["images"]}
    for patch in profile("production").get("patches", []):
        index = int(re.match(r"/build/artifacts/(\d+)/image$", patch["path"]).group(1))
        assert patch["op"] == "replace" and patch["value"] == names[CONFIG["build"]["artifacts"][index]["image"]]
    assert sorted(a["image"] for a in EFFECTIVE["production"]["build"]["artifacts"]) == sorted(names.values())
    assert sorted(names) == sorted(a["image"] for a in CONFIG["build"]["artifacts"]), "the event bus too: the bridge"
