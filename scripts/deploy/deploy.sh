#!/usr/bin/env bash
# make deploy fn=NAME | make rollback fn=NAME | make deploy-platform GATEWAY_CONFIG=FILE
#
# deploy: check the tools and the cluster first (so a failure changes nothing), then build and push the
# image, generate the values from function.toml, and `helm upgrade --install --atomic --wait` (a failed
# rollout rolls itself back). Every step is printed.
set -euo pipefail
action="${1:?usage: deploy.sh deploy FN | rollback FN | deploy-platform}"
fn="${2:-}"
root="$(cd "$(dirname "$0")/../.." && pwd)"
zerofn="${ZEROFN_BIN:-$root/${CARGO_TARGET_DIR:-target}/debug/zerofn}"
registry="${REGISTRY:-registry.example.com/zerofn}"
tag="${TAG:-$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo dev)}"
namespace="${NAMESPACE:-zerofn}"
step() { echo "==> $*" >&2; }
need() {
  command -v "$1" >/dev/null 2>&1 || { echo "deploy: $1 is not installed: $2" >&2; exit 2; }
}

case "$action" in
  deploy|rollback) [[ -n "$fn" && -f "$root/functions/$fn/function.toml" ]] || { echo "deploy: no function '$fn' (functions/$fn/function.toml); use fn=NAME" >&2; exit 2; } ;;
  deploy-platform)
    # Who may call the gateway: required (the chart refuses to render an open gateway).
    [[ -f "${GATEWAY_CONFIG:-}" ]] || { echo "deploy-platform: GATEWAY_CONFIG=FILE is required: the gateway's credentials and policies (README, \"The gateway's configuration\"; helm/testdata/gateway.toml is an example)" >&2; exit 64; } ;;
  *) echo "deploy: unknown action $action" >&2; exit 2 ;;
esac

step "checking the cluster"
need kubectl "install kubectl (https://kubernetes.io/docs/tasks/tools/) and point KUBECONFIG at the cluster"
if ! out="$(kubectl version --request-timeout=5s -o json 2>&1 >/dev/null)"; then
  context="$(kubectl config current-context 2>/dev/null || echo none)"
  echo "deploy: no Kubernetes cluster reachable (context: $context): ${out##*$'\n'}" >&2
  echo "deploy: nothing was built, pushed or changed" >&2
  exit 3
fi
need helm "install Helm 3.8+ or 4 (https://helm.sh/docs/intro/install/)"

values="$(mktemp -d)"; trap 'rm -rf "$values"' EXIT
case "$action" in
  deploy)
    image="$registry/$fn:$tag"
    if [[ -n "${SKIP_BUILD:-}" ]]; then
      step "using $image as built and pushed earlier (SKIP_BUILD)"
    else
      step "building $image"
      "$root/scripts/deploy/image.sh" "$fn"
      step "pushing $image"
      builder="$("$root/scripts/deploy/image.sh" --builder)"
      "$builder" push "$image"
    fi
    step "values from functions/$fn/function.toml"
    "$zerofn" values "$root/functions/$fn" --image "$image" > "$values/values.json"
    extra=()
    [[ -n "${VALUES:-}" ]] && extra=(-f "$VALUES")
    step "helm upgrade --install --atomic --wait $fn (namespace $namespace)"
    helm upgrade --install "$fn" "$root/helm/zerofn-function" --namespace "$namespace" --create-namespace \
      --atomic --wait --timeout "${TIMEOUT:-5m}" -f "$values/values.json" "${extra[@]}"
    step "deployed $fn at $tag"
    ;;
  rollback)
    step "helm rollback $fn (namespace $namespace)"
    helm rollback "$fn" --namespace "$namespace" --wait --timeout "${TIMEOUT:-5m}"
    ;;
  deploy-platform)
    step "values for the platform (every functions/*/function.toml)"
    "$zerofn" values --platform --functions-dir "$root/functions" > "$values/values.json"
    printf '{"gateway":{"image":{"repository":"%s/zerofn","tag":"%s"}}}' "$registry" "$tag" > "$values/image.json"
    step "helm upgrade --install --atomic --wait zerofn-platform (namespace $namespace)"
    helm upgrade --install zerofn-platform "$root/helm/zerofn-platform" --namespace "$namespace" --create-namespace \
      --atomic --wait --timeout "${TIMEOUT:-5m}" -f "$values/values.json" -f "$values/image.json" \
      --set-file gateway.config="$GATEWAY_CONFIG"
    ;;
esac
