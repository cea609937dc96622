#!/usr/bin/env bash
# make image fn=NAME: a static binary (+crt-static) in a FROM-scratch image, built with podman, buildah or
# docker (whichever works here). Prints the image name and size. `image.sh --builder` prints the builder.
# fn=gateway builds the `zerofn` CLI's image (REGISTRY/zerofn:TAG), which the platform chart runs.
set -euo pipefail
root="$(cd "$(dirname "$0")/../.." && pwd)"
builder() {
  for b in podman buildah docker; do
    if command -v "$b" >/dev/null 2>&1; then
      if [[ "$b" == docker ]] && ! docker info >/dev/null 2>&1; then continue; fi   # a CLI without an engine
      echo "$b"; return 0
    fi
  done
  echo "image: no container builder: install podman or buildah (apt-get install podman buildah runc), or docker with a running engine" >&2
  return 2
}
if [[ "${1:-}" == --builder ]]; then builder; exit; fi
fn="${1:?usage: image.sh FUNCTION | --builder}"
[[ "$fn" == gateway || -f "$root/functions/$fn/function.toml" ]] || { echo "image: no function $fn (functions/$fn/function.toml), nor gateway" >&2; exit 2; }
b="$(builder)"
registry="${REGISTRY:-registry.example.com/zerofn}"
tag="${TAG:-$(git -C "$root" rev-parse --short HEAD 2>/dev/null || echo dev)}"
profile="${PROFILE:-image}"   # Cargo.toml [profile.image]: fat LTO, one codegen unit, line tables split off
target="x86_64-unknown-linux-gnu"
targetdir="${CARGO_TARGET_DIR:-$root/target}"
package="$fn"; [[ "$fn" == gateway ]] && package=zerofn-cli
echo "==> cargo build --profile $profile --target $target -p $package (static)" >&2
# Static PIE (ASLR kept) with its relative relocations packed (DT_RELR, binutils >= 2.38, glibc >= 2.36):
# 0.7 MiB of .rela.dyn in notify's binary becomes a few KiB.
RUSTFLAGS="-C target-feature=+crt-static -C link-arg=-Wl,-z,pack-relative-relocs" cargo build --locked --profile "$profile" --target "$target" -p "$package" \
  --manifest-path "$root/Cargo.toml" >&2
dir="$profile"; [[ "$profile" == dev ]] && dir=debug
context="$(mktemp -d)"; trap 'rm -rf "$context"' EXIT
# The debug info and the symbol table go into a file kept next to the image (target/images/NAME-TAG.debug); the
# binary keeps a debuglink to it, so gdb and addr2line -f turn a production backtrace's addresses into names and
# lines.
split() {
  local bin="$1" out="$2" debug="$targetdir/images/$3.debug"
  mkdir -p "$targetdir/images"
  if command -v objcopy >/dev/null 2>&1; then
    objcopy --only-keep-debug "$bin" "$debug"
    objcopy --strip-all --add-gnu-debuglink="$debug" "$bin" "$out"
    echo "==> debug info: $debug" >&2
  else
    cp "$bin" "$out"
  fi
}
if [[ "$fn" == gateway ]]; then
  split "$targetdir/$target/$dir/zerofn" "$context/zerofn" "zerofn-$tag"
  containerfile="$root/scripts/deploy/Containerfile.gateway"
  name=zerofn
else
  split "$targetdir/$target/$dir/$fn" "$context/function" "$fn-$tag"
  cp "$root/functions/$fn/function.toml" "$context/function.toml"
  containerfile="$root/scripts/deploy/Containerfile"
  name="$fn"
fi
ca="${CA_BUNDLE:-/etc/ssl/certs/ca-certificates.crt}"
[[ -f "$ca" ]] || { echo "image: no CA bundle at $ca (install ca-certificates, or set CA_BUNDLE)" >&2; exit 2; }
cp "$ca" "$context/ca-certificates.crt"
image="$registry/$name:$tag"
echo "==> $b build $image" >&2
case "$b" in
  podman|docker) "$b" build --quiet --network=none --build-arg "FUNCTION=$fn" --build-arg "REVISION=$tag" \
                   -t "$image" -f "$containerfile" "$context" >&2 ;;
  buildah) buildah bud --quiet --network=none --build-arg "FUNCTION=$fn" --build-arg "REVISION=$tag" \
             -t "$image" -f "$containerfile" "$context" >&2 ;;
esac
size="$("$b" image inspect --format '{{.Size}}' "$image" 2>/dev/null || "$b" inspect --format '{{.Size}}' "$image")"
echo "image $image: $((size / 1024)) KiB" >&2
echo "$image"
