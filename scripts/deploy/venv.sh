#!/usr/bin/env bash
# Print the path of a Python 3.12 venv with helm-sdkpy (Helm v4's Go library), kubernetes-validate, PyYAML,
# jsonschema and check-jsonschema (GitHub's workflow schema, vendored in the package), creating it on first use. It lives outside the clone ($ZEROFN_TOOLS, default
# ~/.cache/zerofn) so that every checkout shares it; progress goes to stderr.
set -euo pipefail
tools="${ZEROFN_TOOLS:-$HOME/.cache/zerofn}"
venv="$tools/venv312"
packages=(helm-sdkpy==0.1.32 kubernetes-validate==1.37.0 PyYAML jsonschema check-jsonschema==0.39.0)
if [[ -x "$venv/bin/python" ]] && "$venv/bin/python" -c 'import helm_sdkpy, kubernetes_validate, yaml, jsonschema, check_jsonschema' 2>/dev/null; then
  echo "$venv"; exit 0
fi
python=""
for candidate in "${PYTHON312:-}" "$(command -v python3.12 || true)" "$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"/versions/3.12*/bin/python3; do
  if [[ -n "$candidate" && -x "$candidate" ]] && "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null; then
    python="$candidate"; break
  fi
done
if [[ -z "$python" ]]; then
  echo "deploy tools: Python >= 3.12 is needed (helm-sdkpy requires it): install python3.12, or set PYTHON312=/path/to/python3.12" >&2
  exit 2
fi
echo "deploy tools: creating $venv with $python (${packages[*]})" >&2
mkdir -p "$tools"
"$python" -m venv "$venv" >&2
"$venv/bin/pip" install --quiet --disable-pip-version-check "${packages[@]}" >&2
echo "$venv"
