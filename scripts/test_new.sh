#!/usr/bin/env bash
# `make new` end to end, for each kind: the crate it writes builds and passes its own tests, renders
# as a chart, and runs in the engine (the HTTP one answers through the gateway, the event one handles
# an event). The crates and the Cargo.lock change are removed afterwards, whatever happens.
set -euo pipefail
cd "$(dirname "$0")/.."
ZEROFN_BIN=${ZEROFN_BIN:-target/debug/zerofn}
names=(zz-new-event zz-new-http)
lock=$(mktemp)
state=$(mktemp -d)
cp Cargo.lock "$lock"
engine=
cleanup() {
  [ -n "$engine" ] && kill -TERM "$engine" 2>/dev/null && wait "$engine" 2>/dev/null || true
  for n in "${names[@]}"; do rm -rf "functions/$n"; done
  cp "$lock" Cargo.lock
  rm -rf "$lock" "$state"
}
trap cleanup EXIT

for n in "${names[@]}"; do
  [ -e "functions/$n" ] && { echo "functions/$n exists: remove it first" >&2; exit 1; }
done
make -s new fn=zz-new-event kind=event
make -s new fn=zz-new-http kind=http
cargo build --offline -q -p zz-new-event -p zz-new-http
cargo clippy --offline -q -p zz-new-event -p zz-new-http --all-targets -- -D warnings
cargo test --offline -q -p zz-new-event -p zz-new-http 2>&1 | grep -E '^test result' | sed 's/^/  /'
for n in "${names[@]}"; do
  "$ZEROFN_BIN" values "functions/$n" >/dev/null
done
echo "ok   both kinds build clippy-clean, pass their tests and render their chart values"

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
base="http://127.0.0.1:$port"
"$ZEROFN_BIN" dev --fn functions/zz-new-event --fn functions/zz-new-http --listen "127.0.0.1:$port" \
  --state-dir "$state" >"$state/engine.log" 2>&1 &
engine=$!
for _ in $(seq 1 100); do curl -fsS "$base/_zerofn/status" >/dev/null 2>&1 && break; sleep 0.1; done
greeting=$(curl -fsS --max-time 30 "$base/fn/zz-new-http/hello?name=Ada")
[ "$greeting" = '{"greeting":"Hello, Ada!"}' ] || { echo "FAIL zz-new-http answered $greeting" >&2; exit 1; }
data=$(cat contracts/events/todo.task.created/valid/minimal.json)
curl -fsS --max-time 10 -o /dev/null "$base/events" -H 'content-type: application/json' \
  -H 'ce-specversion: 1.0' -H 'ce-id: new-1' -H 'ce-source: /test-new' -H 'ce-type: todo.task.created' -d "$data"
for _ in $(seq 1 300); do
  processed=$(curl -fsS "$base/_zerofn/status" | python3 -c '
import json, sys
print(next(f["processed"] for f in json.load(sys.stdin)["functions"] if f["name"] == "zz-new-event"))')
  [ "$processed" -ge 1 ] && break
  sleep 0.1
done
[ "$processed" -ge 1 ] || { echo "FAIL zz-new-event never handled its event" >&2; tail -20 "$state/engine.log" >&2; exit 1; }
echo "ok   in the engine: zz-new-http answered through the gateway, zz-new-event handled an event"
