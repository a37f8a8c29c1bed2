#!/usr/bin/env bash
# Run the deploy/ tests: admission-policy CEL against sample pods, every manifest
# against the Kubernetes schemas, the PrometheusRule's PromQL, the cloak-kbs examples.
# Creates (or reuses) a venv at .work/venv-deploy; extra arguments go to pytest.
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
venv="$repo/.work/venv-deploy"
req="$repo/deploy/tests/requirements.txt"
stamp="$venv/.requirements.sha256"

if [[ ! -x "$venv/bin/python" ]]; then
    python3 -m venv "$venv"
fi
# Reinstall only when requirements.txt changed, so repeated runs stay offline and fast.
want="$(sha256sum "$req" | cut -d' ' -f1)"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
    "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
    echo "$want" > "$stamp"
fi
cd "$repo"
exec "$venv/bin/python" -m pytest -q deploy/tests "$@"
