#!/usr/bin/env bash
# CI's image check (make test-image): build a function's image (notify) or the gateway's with podman/buildah
# (installed with apt when missing), run it read-only as its non-root user, expect 200 from /healthz, and
# report the size.
set -euo pipefail
fn="${1:-notify}"
root="$(cd "$(dirname "$0")/../.." && pwd)"
if ! command -v podman >/dev/null 2>&1 || ! command -v runc >/dev/null 2>&1; then
  echo "==> installing podman, buildah and runc (apt)" >&2
  if [[ $(id -u) -eq 0 ]]; then sudo=""; else sudo="sudo"; fi
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -q podman buildah runc >&2
fi
# Here crun cannot set rlimits and cgroups are hybrid: runc with explicit ulimits works (tooling.md §5).
conf="$(mktemp)"; trap 'rm -f "$conf"' EXIT
cat > "$conf" <<CONF
[containers]
default_ulimits = ["nofile=20000:20000", "nproc=1024:1024"]
[engine]
runtime = "runc"
CONF
export CONTAINERS_CONF="$conf"
export REGISTRY=localhost/zerofn TAG=ci
# CI checks the image's shape and that it runs, on the plain release profile: [profile.image]'s fat LTO with one
# codegen unit added ~27 min to a run from nothing (this 2-core machine), too close to CI's 90. `make image` and
# `make bench` (its size rows) build with [profile.image]. PROFILE=image here checks that profile too.
export PROFILE="${PROFILE:-release}"
image="$("$root/scripts/deploy/image.sh" "$fn")"
port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
name="zerofn-image-check-$$"
echo "==> podman run $image (127.0.0.1:$port, read-only root, non-root user)" >&2
if [[ "$fn" == gateway ]]; then
  internal="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
  podman run -d --rm --name "$name" --network=host --read-only \
    "$image" gateway --insecure-open --listen "127.0.0.1:$port" --internal-listen "127.0.0.1:$internal" \
    --function categorize=http://127.0.0.1:9 >/dev/null
else
  podman run -d --rm --name "$name" --network=host --read-only --tmpfs /tmp \
    -e PORT="$port" -e ZEROFN_BIND_ADDR=127.0.0.1 -e ZEROFN_TRANSPORT=http -e K_SINK=http://127.0.0.1:9/ \
    "$image" >/dev/null
fi
trap 'podman rm -f "$name" >/dev/null 2>&1 || true; rm -f "$conf"' EXIT
for _ in $(seq 1 100); do
  if code="$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$port/healthz")" && [[ "$code" == 200 ]]; then
    user="$(podman inspect --format '{{.Config.User}}' "$image")"
    size="$(podman image inspect --format '{{.Size}}' "$image")"
    echo "ok   $image: /healthz 200, user $user, $((size / 1024)) KiB" >&2
    exit 0
  fi
  sleep 0.1
done
echo "image check: $image did not answer /healthz with 200 in 10 s; its log:" >&2
podman logs "$name" >&2 || true
exit 1
