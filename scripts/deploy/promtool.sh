#!/usr/bin/env bash
# Print the path of promtool (Prometheus's rule checker and unit tester), installing Debian's `prometheus`
# package if it is missing. The package's server is never started here (policy-rc.d refuses it).
set -euo pipefail
if command -v promtool >/dev/null 2>&1; then command -v promtool; exit 0; fi
if [ "$(id -u)" -ne 0 ]; then
  echo "promtool: install Debian's prometheus package (apt-get install prometheus) and retry" >&2
  exit 2
fi
echo "promtool: installing Debian's prometheus package (its server is not started)" >&2
policy=/usr/sbin/policy-rc.d
created=""
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' >"$policy"; chmod +x "$policy"; created=1
fi
trap '[ -n "$created" ] && rm -f "$policy"' EXIT
if ! DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null 2>&1; then
  apt-get update -q >/dev/null 2>&1
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends prometheus >/dev/null
fi
command -v promtool
