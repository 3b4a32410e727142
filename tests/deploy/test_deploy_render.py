"""Every overlay renders with `kubectl kustomize` and validates strictly against the schemas of
several Kubernetes minor versions (kubernetes-validate, offline, bundled schemas)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from _deploy_support import DEPLOY, OVERLAYS, find_tool, kustomize, render

KUBERNETES_VERSIONS = ["1.29.0", "1.31.0", "1.33.0"]

# Kinds whose schema is a CRD's, not bundled with kubernetes-validate: checked by hand below.
CUSTOM_KINDS = {"PodMonitor"}


def validate(objects: list[dict[str, Any]], tmp_path: Path) -> subprocess.CompletedProcess[str]:
    manifest = tmp_path / "rendered.yaml"
    manifest.write_text(yaml.safe_dump_all(objects))
    command = [find_tool("kubernetes-validate"), "--strict", "--quiet"]
    for version in KUBERNETES_VERSIONS:
        command += ["-k", version]
    return subprocess.run([*command, str(manifest)], capture_output=True, text=True, timeout=300)


def test_there_is_an_overlay_for_each_way_of_reaching_devices() -> None:
    assert set(OVERLAYS) == {"device-plugin", "privileged"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_validates_strictly_on_every_supported_kubernetes_version(
        overlay: str, rendered: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    kinds = {o["kind"] for o in rendered[overlay]}
    assert {"Namespace", "ServiceAccount", "ConfigMap", "DaemonSet"} <= kinds
    done = validate(rendered[overlay], tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    # A kind without a bundled schema only warns; in an overlay that would be an unchecked object.
    assert "WARN" not in done.stdout, done.stdout


def test_strict_validation_rejects_a_misspelled_field(
        rendered: dict[str, list[dict[str, Any]]], tmp_path: Path) -> None:
    """The validator is not a no-op: the same DaemonSet with one typo must fail."""
    broken = next(o for o in rendered["device-plugin"] if o["kind"] == "DaemonSet")
    broken = yaml.safe_load(yaml.safe_dump(broken))
    broken["spec"]["template"]["spec"]["hostNetwrk"] = True
    done = validate([broken], tmp_path)
    assert done.returncode != 0
    assert "hostNetwrk" in done.stdout


def test_podmonitor_component_adds_a_podmonitor_scraping_the_agents_named_port(
        tmp_path: Path) -> None:
    # kustomize refuses absolute paths in a kustomization, so point at the repo relatively.
    overlay = os.path.relpath(DEPLOY / "overlays" / "device-plugin", tmp_path)
    component = os.path.relpath(DEPLOY / "components" / "podmonitor", tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        f"resources: [{overlay}]\ncomponents: [{component}]\n")
    objects = render(tmp_path)
    monitors = [o for o in objects if o["kind"] == "PodMonitor"]
    assert len(monitors) == 1
    monitor = monitors[0]
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    namespace = next(o for o in objects if o["kind"] == "Namespace")["metadata"]["name"]
    assert monitor["metadata"]["namespace"] == namespace
    selector = monitor["spec"]["selector"]["matchLabels"]
    agents = [o for o in objects if o["kind"] == "DaemonSet"]
    for agent in agents:  # it selects every agent's pods, on the port the pods name
        labels = agent["spec"]["template"]["metadata"]["labels"]
        assert selector.items() <= labels.items()
        ports = {p["name"] for c in agent["spec"]["template"]["spec"]["containers"]
                 for p in c.get("ports", [])}
        for endpoint in monitor["spec"]["podMetricsEndpoints"]:
            assert endpoint["port"] in ports
            assert endpoint["path"] == "/metrics"
    # Everything but the CRD-typed PodMonitor still validates strictly.
    rest = [o for o in objects if o["kind"] not in CUSTOM_KINDS]
    done = validate(rest, tmp_path)
    assert done.returncode == 0 and "WARN" not in done.stdout, done.stdout


def test_base_renders_on_its_own_but_is_not_an_overlay() -> None:
    """The base has no device access: it must render (checkov scans it) but is not deployed."""
    assert "base" not in OVERLAYS
    assert "kind: DaemonSet" in kustomize(DEPLOY / "base")
