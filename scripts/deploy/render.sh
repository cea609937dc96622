#!/usr/bin/env bash
# make render fn=NAME | fn=platform: the fully rendered manifests on stdout; everything else on stderr.
set -euo pipefail
fn="${1:?usage: render.sh FUNCTION|platform [IMAGE_TAG]}"
root="$(cd "$(dirname "$0")/../.." && pwd)"
zerofn="${ZEROFN_BIN:-$root/${CARGO_TARGET_DIR:-target}/debug/zerofn}"
registry="${REGISTRY:-registry.example.com/zerofn}"
tag="${TAG:-$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo dev)}"
venv="$("$root/scripts/deploy/venv.sh")"
values="$(mktemp -d)"; trap 'rm -rf "$values"' EXIT
if [[ "$fn" == platform ]]; then
  "$zerofn" values --platform --functions-dir "$root/functions" > "$values/generated.json"
  # The gateway's configuration: GATEWAY_CONFIG=FILE, else the example the chart tests use.
  "$venv/bin/python" -c 'import json, sys; print(json.dumps({"gateway": {"image": {"repository": sys.argv[1] + "/zerofn", "tag": sys.argv[2]}, "config": open(sys.argv[3]).read()}}))' \
    "$registry" "$tag" "${GATEWAY_CONFIG:-$root/helm/testdata/gateway.toml}" > "$values/image.json"
  chart="$root/helm/zerofn-platform"
else
  [[ -f "$root/functions/$fn/function.toml" ]] || { echo "render: no function $fn (functions/$fn/function.toml)" >&2; exit 2; }
  "$zerofn" values "$root/functions/$fn" --image "$registry/$fn:$tag" > "$values/generated.json"
  echo '{}' > "$values/image.json"
  chart="$root/helm/zerofn-function"
fi
extra=()
[[ -n "${VALUES:-}" ]] && extra=("$VALUES")   # a JSON/YAML-as-JSON file of overrides (secretEnv, kafka.auth, ...)
"$venv/bin/python" "$root/scripts/deploy/helm_render.py" "$chart" "$values/generated.json" "$values/image.json" "${extra[@]}"
