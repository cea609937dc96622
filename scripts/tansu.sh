#!/usr/bin/env bash
# Print the path of tansu (a Kafka-protocol broker in Rust; its sqlite engine keeps records, offsets and
# groups across restarts), building it once into a cache outside the clone ($ZEROFN_TOOLS, default
# ~/.cache/zerofn): a clean build takes about 23 minutes on 2 cores, so CI and every checkout share it.
# Progress goes to stderr.
set -euo pipefail
tools="${ZEROFN_TOOLS:-$HOME/.cache/zerofn}"
root="$tools/tansu"
version=0.6.0
bin="$root/bin/tansu"
if [[ -x "$bin" && "$(cat "$root/VERSION" 2>/dev/null)" == "$version" ]]; then
  echo "$bin"; exit 0
fi
echo "tansu: building tansu $version with its sqlite engine into $root (about 23 minutes the first time)" >&2
mkdir -p "$root"
cargo install tansu --version "$version" --locked --features dynostore,libsql \
  --root "$root" --target-dir "$root/target" >&2
echo "$version" >"$root/VERSION"
echo "$bin"
