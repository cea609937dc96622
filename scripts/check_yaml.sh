#!/usr/bin/env bash
# Every YAML file the repository ships parses, and every GitHub workflow validates against GitHub's
# workflow schema (vendored in check-jsonschema: offline). Helm templates are not YAML until rendered;
# the chart test renders and validates them. Run by `make test-deploy`.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=$(scripts/deploy/venv.sh)
mapfile -t files < <(git ls-files -co --exclude-standard '*.yaml' '*.yml' | grep -v '/templates/')
"$venv/bin/python" - "${files[@]}" <<'PY'
import sys, yaml
bad = 0
for path in sys.argv[1:]:
    try:
        with open(path) as f:
            list(yaml.safe_load_all(f))
    except yaml.YAMLError as e:
        bad += 1
        print(f"FAIL {path}: not valid YAML: {e}", file=sys.stderr)
if bad:
    sys.exit(f"{bad} YAML file(s) do not parse")
print(f"ok   {len(sys.argv) - 1} YAML files parse", file=sys.stderr)
PY
mapfile -t workflows < <(git ls-files -co --exclude-standard '.github/workflows/*.yml' '.github/workflows/*.yaml')
if [[ ${#workflows[@]} -gt 0 ]]; then
  "$venv/bin/check-jsonschema" --builtin-schema vendor.github-workflows "${workflows[@]}" >&2
  echo "ok   ${#workflows[@]} workflow(s) valid against GitHub's workflow schema" >&2
fi
