"""The Dockerfile's install steps work, proven without a container engine.

It needs no container engine (tests/deploy/test_pod.py runs the built image itself): it builds
the context the way `docker build` would (only what .dockerignore lets through), replays the build
stage of the Dockerfile (its WORKDIR, COPY, ARG, ENV and RUN lines, the RUN commands verbatim
except that /opt/venv and /src move into a temp dir), and then, as the image's numeric USER, runs
the image's ENTRYPOINT and CMD: `check-config` on the shipped ConfigMap and a short `run` against
`edge-agent simulate` and a real Mosquitto, probing the paths the DaemonSet's probes use.
The image ships no simulators (edge-agent-simulators is test tooling), so `simulate` runs from
the test's own environment, and the ptys it opens are handed to the image's user.
The runtime stage (libusb, tini, the base, the read-only root) is test_pod.py's.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from _deploy_support import DEPLOY, REPO, agent_container, daemonsets, in_ci, render

from edge_agent_simulators.broker import free_port

DOCKERFILE = REPO / "Dockerfile"


# ---- the Dockerfile, read ---------------------------------------------------------------------

def instructions(stage: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of one stage, continuation lines joined, comments dropped."""
    text = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    found: list[tuple[str, str]] = []
    current = None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        word, _, rest = line.strip().partition(" ")
        if word.upper() == "FROM":
            current = rest.split(" AS ")[-1].strip()
            continue
        if current == stage:
            found.append((word.upper(), rest.strip()))
    assert found, f"no stage {stage} in the Dockerfile"
    return found


def ignore_regex(pattern: str) -> re.Pattern[str]:
    """A .dockerignore pattern as a regex: `**/` spans directories, `*` and `?` do not."""
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i:end + 1], end + 1
        else:
            out += {"*": "[^/]*", "?": "[^/]"}.get(pattern[i], re.escape(pattern[i]))
            i += 1
    return re.compile(out + r"\Z")


def dockerignored(context: Path) -> list[Path]:
    """The files `docker build` sends: .dockerignore's patterns, the last match winning."""
    rules = []
    for line in (context / ".dockerignore").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            negate = line.startswith("!")
            rules.append((negate, ignore_regex(line.lstrip("!").rstrip("/"))))
    kept = []
    for path in sorted(context.rglob("*")):
        if not path.is_file() or ".git" in path.relative_to(context).parts:
            continue
        rel = path.relative_to(context).as_posix()
        # A pattern matching a directory applies to everything under it.
        prefixes = [rel.rsplit("/", i)[0] for i in range(rel.count("/"), -1, -1)]
        keep = True
        for negate, regex in rules:
            if any(regex.match(p) for p in prefixes):
                keep = negate
        if keep:
            kept.append(path)
    return kept


def test_dockerignore_sends_only_what_the_build_copies() -> None:
    sent = {p.relative_to(REPO).as_posix() for p in dockerignored(REPO)}
    assert {"requirements.lock", "pyproject.toml", "edge_agent/__init__.py"} <= sent
    assert not [p for p in sent if "__pycache__" in p or p.endswith(".pyc")]
    tops = {p.split("/")[0] for p in sent}
    assert tops <= {"requirements.lock", "pyproject.toml", "README.md",
                    "edge_agent", "drivers"}, tops


# ---- running as the image's user --------------------------------------------------------------

def image_user() -> tuple[int, int]:
    (user,) = [args for word, args in instructions("runtime") if word == "USER"]
    uid, gid = (int(x) for x in user.split(":"))
    return uid, gid


def as_user(command: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return command  # already not root
    setpriv = shutil.which("setpriv")
    if not setpriv:
        if in_ci():
            pytest.fail("setpriv (util-linux) is needed to drop to the image's uid")
        pytest.skip("setpriv (util-linux) is needed to drop to the image's uid")
    uid, gid = image_user()
    return [setpriv, f"--reuid={uid}", f"--regid={gid}", "--clear-groups", "--", *command]


def python_for_the_image_user() -> str:
    """A Python 3.11 (the image's minor) that the image's uid can execute.

    The test's own interpreter may live under a home directory that uid cannot enter."""
    for candidate in (sys.executable, "/usr/bin/python3.11", shutil.which("python3.11")):
        if not candidate:
            continue
        done = subprocess.run(as_user([candidate, "-c", "import sys, venv, ensurepip;"
                                       "print(sys.version_info[:2] == (3, 11))"]),
                              capture_output=True, text=True)
        if done.returncode == 0 and done.stdout.strip() == "True":
            return candidate
    pytest.fail("no Python 3.11 with venv that a non-root user can run")


# ---- the build --------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def image_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="edge-agent-image-"))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def venv(image_root: Path) -> Path:
    """Replays the Dockerfile's build stage into image_root; returns the venv's path."""
    context = image_root / "context"
    for path in dockerignored(REPO):
        target = context / path.relative_to(REPO)
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, target)
    assert not (context / "tests").exists() and not (context / ".venv").exists()

    python = python_for_the_image_user()

    def mapped(text: str) -> str:
        text = text.replace("/opt/venv", str(image_root / "opt/venv"))
        return re.sub(r"(^|&& )python -m venv", rf"\g<1>{python} -m venv", text)

    workdir = image_root
    env = {"PATH": os.environ["PATH"], "HOME": str(image_root)}
    for word, args in instructions("build"):
        if word == "WORKDIR":
            workdir = image_root / args.lstrip("/")
            workdir.mkdir(parents=True, exist_ok=True)
        elif word == "ARG":  # a build argument without a value here leaves pip as on the host
            key, _, value = args.partition("=")
            if value:
                env[key] = value
        elif word == "ENV":
            for assignment in shlex.split(args):
                key, _, value = assignment.partition("=")
                env[key] = value
        elif word == "COPY":
            *sources, dest = shlex.split(args)
            for source in sources:
                src, dst = context / source, workdir / dest
                if src.is_dir():
                    shutil.copytree(src, dst, dirs_exist_ok=True)
                else:
                    dst = dst / src.name if dest.endswith("/") else dst
                    dst.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(src, dst)
        elif word == "RUN":
            done = subprocess.run(["/bin/sh", "-c", mapped(args)], cwd=workdir, env=env,
                                  capture_output=True, text=True, timeout=900)
            assert done.returncode == 0, f"RUN {args}\n{done.stdout[-2000:]}{done.stderr[-4000:]}"
        else:
            pytest.fail(f"the test cannot replay {word}; teach it, or keep the build stage simple")
    venv = image_root / "opt/venv"
    for path in [image_root, *image_root.rglob("*")]:  # world-readable, as in an image layer
        if not path.is_symlink():
            path.chmod(path.stat().st_mode | 0o444 | (0o111 if path.is_dir() else 0))
    return venv


def entrypoint(venv: Path) -> list[str]:
    """The image's ENTRYPOINT without tini (PID 1 here is the test), venv path mapped."""
    (raw,) = [args for word, args in instructions("runtime") if word == "ENTRYPOINT"]
    command = json.loads(raw)
    assert command[:2] == ["/usr/bin/tini", "--"]
    return [c.replace("/opt/venv", str(venv)) for c in command[2:]]


def default_command() -> list[str]:
    (raw,) = [args for word, args in instructions("runtime") if word == "CMD"]
    return json.loads(raw)


def runtime_env(image_root: Path) -> dict[str, str]:
    return {"PATH": "/usr/bin:/bin", "HOME": str(image_root), "PYTHONUNBUFFERED": "1",
            "NODE_NAME": "edge-node-7"}


# ---- the tests --------------------------------------------------------------------------------

# pip fetches the locked dependencies once for the module; allow for a slow registry.
pytestmark = pytest.mark.timeout(900)


def test_build_stage_installs_a_working_console_script(venv: Path, image_root: Path) -> None:
    assert (venv / "bin/edge-agent").exists()
    site = next((venv / "lib").glob("python3*/site-packages"))
    installed = {p.name.split("-")[0] for p in site.glob("edge_agent*.dist-info")}
    assert installed == {"edge_agent", "edge_agent_drivers"}, "no test tooling in the image"
    assert not (venv / "bin/pip").exists(), "the build stage removes pip from the shipped venv"
    done = subprocess.run(as_user([*entrypoint(venv), "--version"]), capture_output=True,
                          text=True, timeout=60, env=runtime_env(image_root))
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("edge-agent ")


def test_installed_agent_accepts_the_shipped_configmap(venv: Path, image_root: Path) -> None:
    objects = render(DEPLOY / "overlays" / "device-plugin")
    configmap = next(o for o in objects if o["kind"] == "ConfigMap")
    config = image_root / "configmap"  # the keys as files, as the pod's volume has them
    config.mkdir(mode=0o755)
    for key, text in configmap["data"].items():
        (config / key).write_text(text)
        (config / key).chmod(0o644)
    done = subprocess.run(as_user([*entrypoint(venv), "check-config", str(config)]),
                          capture_output=True, text=True, timeout=60, env=runtime_env(image_root))
    assert done.returncode == 0, done.stdout + done.stderr


def read_simulator_config(process: subprocess.Popen[str], timeout: float = 20) -> dict[str, Any]:
    """`edge-agent simulate` prints comment lines, then the agent config and a blank line."""
    text: list[str] = []
    reader = threading.Thread(target=lambda: text.extend(iter(process.stdout.readline, "")),
                              daemon=True)
    reader.start()
    deadline = time.monotonic() + timeout
    marker = "# agent config for these devices:\n"
    while time.monotonic() < deadline:
        joined = "".join(text)
        if marker in joined and joined.split(marker, 1)[1].endswith("\n\n"):
            return yaml.safe_load(joined.split(marker, 1)[1])
        assert process.poll() is None, f"simulate exited: {joined}"
        time.sleep(0.05)
    pytest.fail(f"simulate printed no config in {timeout}s: {''.join(text)}")


def http_get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, response.read().decode()
    except OSError:
        return 0, ""


def test_installed_agent_runs_against_a_simulator_as_the_image_user(
        venv: Path, image_root: Path, mosquitto: Any, subscriber: Any) -> None:
    env = runtime_env(image_root)
    simulate = subprocess.Popen(
        [sys.executable, "-m", "edge_agent", "simulate", "--broker", mosquitto.url],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    agent = None
    try:
        config = read_simulator_config(simulate)
        for device in config["devices"]:  # the simulator's ptys, opened by the image's user
            if os.geteuid() == 0 and str(device.get("port", "")).startswith("/dev/"):
                os.chown(device["port"], image_user()[0], -1)
            if "dbc" in device:  # a file in the checkout, which that user may not enter
                copy = image_root / Path(device["dbc"]).name
                shutil.copyfile(device["dbc"], copy)
                copy.chmod(0o644)
                device["dbc"] = str(copy)
        data = image_root / "var-lib-edge-agent"  # the hostPath, owned by the image's uid
        data.mkdir(exist_ok=True)
        if os.geteuid() == 0:
            os.chown(data, *image_user())
        port = free_port()
        config["buffer"] = {"path": str(data / "buffer.sqlite3")}
        config["http"] = {"listen": f"127.0.0.1:{port}"}
        config["shutdown_grace"] = 5
        path = image_root / "agent.yaml"
        path.write_text(yaml.safe_dump(config))
        path.chmod(0o644)

        command = default_command()
        assert command[:2] == ["run", "-c"]
        log = (image_root / "agent.log").open("w")
        agent = subprocess.Popen(as_user([*entrypoint(venv), *command[:2], str(path)]),
                                 stdout=log, stderr=subprocess.STDOUT, env=env)

        # The DaemonSet's probes and scrape path, asked of the installed agent.
        (ds, *_) = daemonsets(render(DEPLOY / "overlays" / "device-plugin"))
        container = agent_container(ds)
        paths = {container[p]["httpGet"]["path"]
                 for p in ("startupProbe", "livenessProbe", "readinessProbe")}
        paths.add(ds["spec"]["template"]["metadata"]["annotations"]["prometheus.io/path"])
        deadline = time.monotonic() + 30
        pending = set(paths)
        while pending and time.monotonic() < deadline:
            assert agent.poll() is None, (image_root / "agent.log").read_text()
            pending = {p for p in pending if http_get(f"http://127.0.0.1:{port}{p}")[0] != 200}
            time.sleep(0.1)
        log_text = (image_root / "agent.log").read_text()
        assert not pending, f"not answering 200: {pending}\n{log_text}"
        assert "edge_agent_" in http_get(f"http://127.0.0.1:{port}/metrics")[1]

        device = config["devices"][0]["name"]
        (message, *_) = subscriber.wait_for(f"edge-node-7/{device}/telemetry", timeout=20)
        assert message["node"] == "edge-node-7" and message["readings"]

        agent.send_signal(signal.SIGTERM)
        assert agent.wait(timeout=20) == 0, (image_root / "agent.log").read_text()
        assert (data / "buffer.sqlite3").stat().st_uid == image_user()[0]
    finally:
        for process in (agent, simulate):
            if process and process.poll() is None:
                process.kill()
                process.wait()
