"""Fixtures for the deployment checks (helpers live in _deploy_support)."""

from __future__ import annotations

from typing import Any

import pytest
from _deploy_support import DEPLOY, OVERLAYS, render


@pytest.fixture(scope="session")
def rendered() -> dict[str, list[dict[str, Any]]]:
    """Each overlay's objects as `kubectl kustomize` renders them, keyed by overlay name."""
    return {name: render(DEPLOY / "overlays" / name) for name in OVERLAYS}
