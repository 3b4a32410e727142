"""Helpers for the deployment checks: the external tools, rendering, and object lookups.

The checkers (kubectl, kubernetes-validate, checkov, hadolint) are not Python dependencies of the
project; `bash deploy/ci-tools.sh` installs the last three into .venv-tools. A missing tool skips
its tests on a developer machine and fails them under CI=true, so CI cannot go green unchecked.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
OVERLAYS = sorted(p.name for p in (DEPLOY / "overlays").iterdir()
                  if (p / "kustomization.yaml").exists())


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def find_tool(name: str) -> str:
    """Path of a checker: PATH first, then the tools venv; skip locally, fail in CI, if absent."""
    venv = Path(os.environ.get("EDGE_AGENT_TOOLS_VENV", REPO / ".venv-tools"))
    found = shutil.which(name) or shutil.which(name, path=str(venv / "bin"))
    if found:
        return found
    message = f"{name} not found on PATH or in {venv}/bin; run: bash deploy/ci-tools.sh"
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)


def kustomize(path: Path) -> str:
    kubectl = find_tool("kubectl")
    done = subprocess.run([kubectl, "kustomize", str(path)], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, f"kubectl kustomize {path} failed:\n{done.stderr}"
    return done.stdout


def render(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(kustomize(path)) if d]


def daemonsets(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    found = [o for o in objects if o["kind"] == "DaemonSet"]
    assert found, "an overlay without a DaemonSet"
    return found


def agent_container(daemonset: dict[str, Any]) -> dict[str, Any]:
    containers = daemonset["spec"]["template"]["spec"]["containers"]
    return next(c for c in containers if c["name"] == "agent")


def one(objects: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [o for o in objects if o["kind"] == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]
