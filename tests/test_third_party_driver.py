"""A third-party driver, installed through pip and found through the entry point, end to end.

The example package (examples/edge-agent-example-driver) is pip-installed with `--target`
into a temporary directory that the agent subprocess gets on PYTHONPATH. That is discovered
by importlib.metadata exactly like site-packages, and it leaves the project's venv untouched
(a throwaway venv with --system-site-packages would see the base interpreter's packages, not
the project venv's, so edge-agent itself would be missing). The build runs offline:
`--no-build-isolation` uses the setuptools already installed.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.helpers import REPO, run_cli

EXAMPLE = REPO / "examples" / "edge-agent-example-driver"


@pytest.fixture(scope="module")
def example_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("third-party")
    source = root / "src"  # a copy: building writes egg-info next to the sources
    shutil.copytree(EXAMPLE, source, ignore=shutil.ignore_patterns("*.egg-info", "build"))
    site = root / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps",
                    "--no-build-isolation", "--no-index", "--target", str(site), str(source)],
                   check=True, capture_output=True, timeout=120)
    return site


def with_path(*dirs: Path) -> dict[str, str]:
    path = os.pathsep.join([*map(str, dirs), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {"PYTHONPATH": path}


def counter(name: str = "counter-1", **keys) -> dict:
    return {"name": name, "driver": "example-counter", "start": 100, "step": 5,
            "unit": "{count}", "interval": 0.1, **keys}


def test_the_driver_exists_only_once_its_package_is_installed(example_site, tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"devices": [counter()]}))
    before = run_cli("check-config", str(path))
    assert before.returncode == 2
    assert "devices[0].driver: 'example-counter' is not one of" in before.stderr

    after = run_cli("check-config", str(path), env=with_path(example_site))
    assert after.returncode == 0, after.stderr
    # the driver's own config model validates its keys, with the usual error paths
    path.write_text(yaml.safe_dump({"devices": [counter(step=0, colour="red")]}))
    bad = run_cli("check-config", str(path), env=with_path(example_site))
    assert bad.returncode == 2
    assert "devices[0].step: Input should be greater than or equal to 1" in bad.stderr
    assert "devices[0].colour: unknown key" in bad.stderr


def test_installed_example_driver_runs_end_to_end(example_site, mosquitto, subscriber,
                                                  start_agent):
    agent = start_agent({"node": "n4", "mqtt": {"url": mosquitto.url},
                         "http": {"enabled": False}, "devices": [counter()]},
                        env=with_path(example_site))
    messages = subscriber.wait_for("n4/counter-1/telemetry", count=3)
    assert [m["readings"][0]["value"] for m in messages[:3]] == [100, 105, 110]
    assert messages[0]["readings"][0]["unit"] == "{count}"
    assert [m["seq"] for m in messages[:3]] == [1, 2, 3]
    assert agent.stop() == 0


def write_broken_distribution(site: Path) -> None:
    """An installed distribution whose driver module fails to import (a missing dependency)."""
    info = site / "broken_driver-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-driver\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(
        "[edge_agent.drivers]\nbroken = broken_driver_mod:Driver\n")
    (site / "broken_driver_mod.py").write_text("import a_module_that_is_not_installed\n")


def test_a_driver_that_fails_to_import_disables_only_its_devices(
        example_site, mosquitto, subscriber, start_agent, tmp_path):
    broken_site = tmp_path / "broken"
    write_broken_distribution(broken_site)
    agent = start_agent({"node": "n5", "mqtt": {"url": mosquitto.url},
                         "http": {"enabled": False},
                         "devices": [{"name": "bad-1", "driver": "broken"}, counter()]},
                        env=with_path(example_site, broken_site))

    status = subscriber.wait_for("n5/bad-1/status", where=lambda m: m["state"] == "error")[0]
    assert "driver 'broken' failed to import" in status["error"]
    assert "a_module_that_is_not_installed" in status["error"]
    # the other device and the agent carry on
    subscriber.wait_for("n5/counter-1/telemetry", count=3)
    subscriber.wait_for("n5/status", where=lambda m: m["state"] == "online")
    assert agent.process.poll() is None
    assert agent.stop() == 0
