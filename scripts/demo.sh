#!/usr/bin/env bash
# `make demo`: the finance companion with a month of data. Uses the engine already listening on
# 127.0.0.1:8080 (`make run`) if there is one; otherwise starts one on a fresh state directory for the
# demo and stops it afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
ZEROFN_BIN=${ZEROFN_BIN:-target/debug/zerofn}
gateway=${GATEWAY:-http://127.0.0.1:8080}
if curl -fsS --max-time 2 "$gateway/_zerofn/status" >/dev/null 2>&1; then
  exec "$ZEROFN_BIN" demo --gateway "$gateway"
fi
state=$(mktemp -d)
"$ZEROFN_BIN" dev --listen 127.0.0.1:8080 --state-dir "$state" >"$state/engine.log" 2>&1 &
engine=$!
trap 'kill -TERM $engine 2>/dev/null; wait $engine 2>/dev/null; echo "(engine log: $state/engine.log)"' EXIT
for _ in $(seq 1 100); do curl -fsS "$gateway/_zerofn/status" >/dev/null 2>&1 && break; sleep 0.1; done
"$ZEROFN_BIN" demo --gateway "$gateway"
