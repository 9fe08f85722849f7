"""The Dockerfile, statically: one parameterised file with a target per image,
pinned bases, a cached dependency layer, a distroless non-root runtime with
an exec-form entrypoint, a build context that holds what the build copies,
and images that agree with the manifests (users, ports, commands)."""

import re
import tomllib
from pathlib import Path

import pytest

from conftest import (
    COURSE,
    ROOT,
    by_kind,
    dockerfile,
    effective,
    effective_env,
    exec_form,
    in_build_context,
    render,
    stage,
    stage_chain,
)

SERVICE_TARGETS = ["posts", "comments", "query", "moderation", "event-bus"]


def instructions(name):
    return stage(name)["instructions"]


def test_every_base_image_is_pinned():
    for s in dockerfile()["stages"]:
        base = s["base"]
        if base in {t["name"] for t in dockerfile()["stages"]}:
            continue
        assert "$" not in base, f"{s['name']}: unresolved {s['raw_base']}"
        name, _, tag = base.rpartition(":") if "@" not in base else (base, "", "digest")
        assert tag and tag != "latest", f"{s['name']}: {base} is not pinned"
        if "@" not in base and "distroless" not in base:
            assert re.search(r"\d+\.\d+\.\d+", tag), f"{s['name']}: {base}: a full version"


def test_the_rust_image_builds_this_workspace():
    workspace = tomllib.loads((ROOT / "Cargo.toml").read_text())["workspace"]["package"]
    rust = re.search(r"rust:(\d+)\.(\d+)\.(\d+)", dockerfile()["args"]["RUST_IMAGE"])
    assert rust, "a rust:X.Y.Z image"
    have = tuple(int(x) for x in rust.groups())
    need = tuple(int(x) for x in workspace["rust-version"].split(".")) + (0,) * (3 - len(workspace["rust-version"].split(".")))
    assert have >= need, f"rust {have} is older than the workspace's rust-version {need}"
    assert workspace["edition"] == "2024" and have >= (1, 85, 0)
    # The builder and the runtime share one Debian release (glibc).
    assert "bookworm" in dockerfile()["args"]["RUST_IMAGE"] and "debian12" in dockerfile()["args"]["RUNTIME_IMAGE"]


def test_the_node_image_satisfies_the_client():
    import json

    engines = json.loads((ROOT / "client/package.json").read_text()).get("engines", {}).get("node", "")
    node = re.search(r"node:(\d+)\.(\d+)\.(\d+)", dockerfile()["args"]["NODE_IMAGE"])
    assert node
    floor = re.search(r">=\s*(\d+)(?:\.(\d+))?", engines)
    if floor:
        assert (int(node.group(1)), int(node.group(2))) >= (int(floor.group(1)), int(floor.group(2) or 0))


def test_a_target_per_image_from_one_runtime():
    names = [s["name"] for s in dockerfile()["stages"]]
    for image in COURSE:
        assert names.count(image) == 1, f"one target named {image}"
        assert stage(image)["base"] == "runtime", f"{image} builds on the shared runtime stage"
    runtime = stage("runtime")
    assert "distroless" in runtime["base"] or "slim" in runtime["base"]


def test_the_dependency_layer_is_cooked_before_the_sources_arrive():
    builder = instructions("builder")
    steps = [(k, rest) for k, rest in builder if k in ("COPY", "RUN")]
    cook = next(i for i, (k, rest) in enumerate(steps) if "cargo chef cook" in rest)
    sources = next(i for i, (k, rest) in enumerate(steps) if k == "COPY" and "crates" in rest)
    build = next(i for i, (k, rest) in enumerate(steps) if "cargo build" in rest)
    assert cook < sources < build
    assert "--release" in steps[cook][1] and "--release" in steps[build][1]
    assert "--locked" in steps[build][1] and "--bin blog" in steps[build][1]
    assert "recipe.json" in steps[0][1], "only the recipe before the cook"
    planner = instructions("planner")
    assert any("cargo chef prepare" in rest for _, rest in planner)
    # The client's sources never enter the Rust stages: a client edit does
    # not rebuild the binary.
    for s in ("planner", "builder"):
        for k, rest in instructions(s):
            if k == "COPY" and "--from" not in rest:
                assert "client" not in rest and not re.search(r"(^|\s)\.\s", rest + " "), f"{s}: {rest}"


def test_the_runtime_is_non_root_with_an_exec_form_entrypoint():
    for image in COURSE:
        user = effective(image, "USER")
        uid, _, gid = user.partition(":")
        assert uid.isdigit() and int(uid) != 0 and (not gid or gid.isdigit()), f"{image}: USER {user}"
        assert exec_form(effective(image, "ENTRYPOINT")) == ["/usr/local/bin/blog", "serve"]
        assert exec_form(effective(image, "CMD")) == [image]
        assert effective_env(image)["BLOG_HOST"] == "0.0.0.0"
    copies = [rest for k, rest in instructions("runtime") if k == "COPY"]
    assert any("--from=builder" in c and "/usr/local/bin/blog" in c for c in copies)
    assert any(re.search(r"--chown=65532:65532 \S+ /data$", c) for c in copies), "/data writable by the user"


def test_each_image_exposes_the_port_its_manifest_uses():
    deployments = by_kind(render("base"), "Deployment")
    for image, (depl, _, port) in COURSE.items():
        exposed = [int(rest.split("/")[0]) for k, rest in instructions(image) if k == "EXPOSE"]
        assert exposed == [port], image
        c = deployments[depl]["spec"]["template"]["spec"]["containers"][0]
        assert int({e["name"]: e["value"] for e in c["env"]}["BLOG_PORT"]) == port


def test_the_image_user_is_the_user_the_manifests_run_as():
    for target, overlay in (("base", None), ("overlays/dev", "client-depl")):
        for name, d in by_kind(render(target), "Deployment").items():
            if overlay and name != overlay:
                continue
            image = d["spec"]["template"]["spec"]["containers"][0]["image"]
            dockerfile_target = "client-dev" if overlay else image
            uid = int(effective(dockerfile_target, "USER").split(":")[0])
            assert d["spec"]["template"]["spec"]["securityContext"]["runAsUser"] == uid, f"{target}: {name}"


def test_the_client_image_serves_the_built_client():
    client = instructions("client")
    assert any(k == "COPY" and "--from=client-build" in rest and "/client/dist /app/client" in rest for k, rest in client)
    assert effective_env("client")["BLOG_CLIENT_DIR"] == "/app/client"
    build = instructions("client-build")
    assert any(k == "RUN" and "npm run build" in rest for k, rest in build)
    deps = instructions("client-deps")
    assert any(k == "RUN" and rest.startswith("npm ci") for k, rest in deps), "npm ci, from the lock file"


def test_the_dev_client_runs_vite_where_skaffold_syncs():
    assert effective("client-dev", "WORKDIR") == "/client"
    cmd = exec_form(effective("client-dev", "CMD"))
    assert cmd[:3] == ["npm", "run", "dev"] and "0.0.0.0" in cmd and "3000" in cmd
    assert int(effective("client-dev", "USER").split(":")[0]) != 0


def repo_files():
    ignored_dirs = {".git", "target", "node_modules", "dist", "__pycache__", ".pytest_cache", "data"}
    for path in ROOT.rglob("*"):
        rel = path.relative_to(ROOT)
        if any(part in ignored_dirs for part in rel.parts[:-1]) or not path.is_file():
            continue
        yield rel.as_posix()


def test_the_build_context_holds_what_the_build_copies_and_nothing_else():
    copied = []
    for s in dockerfile()["stages"]:
        for k, rest in s["instructions"]:
            if k in ("COPY", "ADD") and "--from" not in rest:
                words = [w for w in rest.split() if not w.startswith("--")]
                copied += words[:-1]
    assert copied, "the Dockerfile copies sources"
    for source in copied:
        source = source.rstrip("/")
        assert (ROOT / source).exists(), f"COPY {source}: no such path"
        assert in_build_context(source), f"COPY {source}: excluded by .dockerignore"
    # What the builds need is in; what would bloat or leak is out.
    for path in ("Cargo.toml", "Cargo.lock", "crates/blog/Cargo.toml", "client/package-lock.json", "client/index.html"):
        assert in_build_context(path), path
    for path in repo_files():
        if path.startswith("crates/") or path.startswith("client/src/"):
            assert in_build_context(path), f"{path} is missing from the build context"
    for path in (
        "target/debug/blog",
        "crates/blog/target/x",
        "client/node_modules/react/index.js",
        "client/dist/index.html",
        ".git/HEAD",
        "data/posts.db",
        "crates/posts/posts.db-wal",
        "infra/k8s/base/posts.yaml",
        "docs/deploy.md",
        "README.md",
        "Dockerfile",
        ".ci/run",
    ):
        assert not in_build_context(path), f"{path} should not be sent to the builder"


def test_the_dockerignore_matcher_follows_docker():
    from conftest import _pattern_matches

    assert _pattern_matches("**/node_modules", "client/node_modules/x/y.js")
    assert _pattern_matches("**/node_modules", "node_modules/x")
    assert _pattern_matches("*", "anything/below")
    assert not _pattern_matches("client/dist", "client/src/dist.ts")
    assert _pattern_matches("crates", "crates/blog/src/main.rs")


@pytest.mark.parametrize("stage_name", ["builder", "runtime", "client"])
def test_stage_chains_resolve(stage_name):
    chain = stage_chain(stage_name)
    assert chain[-1]["base"] not in {s["name"] for s in dockerfile()["stages"]}
    assert Path(ROOT / "Dockerfile").exists()
