#!/usr/bin/env bash
# make bench: the size of notify's image and the gateway's (scripts/deploy/image.sh, the profile images are
# built with), printed as bench rows (tests/src/report.rs) beside their sizes before #16. Without a container
# builder it prints nothing (and says so on stderr).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
declare -A before=([notify]=25660 [gateway]=37942)   # KiB, make image at b3843dd
for fn in notify gateway; do
  if kib=$("$root/scripts/deploy/image.sh" "$fn" 2>&1 >/dev/null | sed -n 's/^image .*: \([0-9]*\) KiB$/\1/p') && [ -n "$kib" ]; then
    what="image size of $fn (FROM scratch: static binary, CA bundle)"
  else
    echo "image-size: no image built for $fn (no container builder?): no row" >&2
    continue
  fi
  printf '{"section":"footprint","what":"%s","value":%s,"unit":"MiB","better":"lower","against":{"what":"the same before #16 (target < 15 MiB)","value":%s}}\n' \
    "$what" "$(awk "BEGIN{printf \"%.2f\", $kib/1024}")" "$(awk "BEGIN{printf \"%.2f\", ${before[$fn]}/1024}")"
done
