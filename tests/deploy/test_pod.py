"""The built image, run as the rendered DaemonSet's pod.

The pod template comes from `kubectl kustomize` of each overlay and is turned into the podman
command the kubelet's runtime would amount to: the downward-API env resolved, the ConfigMap and
the Secret written as files and mounted read-only (Secret files group-owned by fsGroup, mode
from defaultMode), the hostPath buffer directory, the memory emptyDir at /tmp, the host network,
the CPU and memory limits, and exactly the template's securityContext (uid, groups, read-only
root, capabilities, seccomp, no privilege escalation or privileged). A field the translation does
not know fails the test, so the template cannot outgrow what is checked here.

The node is this machine: its name is NODE, its address (status.hostIP) 127.0.0.2, a loopback
address other than 127.0.0.1, so the test also sees that the agent listens on the node's address
only. The device is a Modbus RTU simulator on a pty, run on the host side (the simulators are not
in the image), given the edge-devices group and mode of deploy/host's udev rule. The device-plugin
overlay's grant is made as a device plugin's is, a device-cgroup rule and the node at the
container path; the node is a bind mount of the pty, because a pty opens only through its devpts
inode (a mknod'ed copy answers EIO). The privileged overlay sees it in the host's /dev.

Image: `deploy/build-image.sh` builds localhost/edge-agent:<version> (env EDGE_AGENT_IMAGE names
another). Without podman, root or the image, the test skips; under CI=true it fails.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from _deploy_support import DEPLOY, OVERLAYS, REPO, agent_container, daemonsets, in_ci, render

from edge_agent_simulators.broker import Mosquitto, free_port, wait_for_port
from tests.certs import Pki, make_pki
from tests.helpers import SimulatorThread, Subscriber, wait_until

pytestmark = pytest.mark.timeout(300)

VERSION = re.search(r'^version = "(.+)"$', (REPO / "pyproject.toml").read_text(), re.M).group(1)
IMAGE = os.environ.get("EDGE_AGENT_IMAGE") or f"localhost/edge-agent:{VERSION}"
CONTAINERS_CONF = REPO / "deploy/image/containers.conf"
NODE = "edge-node-7"
HOST_IP = "127.0.0.2"
PASSWORD = "pod-test-password"
SERIAL_RESOURCE = "squat.ai/serial"
DEVICE_IN_CONTAINER = "/dev/ttyUSB0"  # where the generic device plugin puts an adapter


def unavailable(message: str) -> None:
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)


def podman(*args: str, timeout: float = 120, check: bool = True
           ) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "CONTAINERS_CONF": os.environ.get("CONTAINERS_CONF",
                                                         str(CONTAINERS_CONF))}
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout,
                          env=env)
    if check:
        assert done.returncode == 0, f"podman {' '.join(args)}:\n{done.stdout}{done.stderr}"
    return done


@pytest.fixture(scope="module")
def image() -> str:
    if shutil.which("podman") is None:
        unavailable("podman is not installed: deploy/build-image.sh installs it and builds")
    if os.geteuid() != 0:
        unavailable("the pod test needs root (rootful podman: device cgroup, fsGroup ownership)")
    if podman("image", "exists", IMAGE, check=False).returncode != 0:
        unavailable(f"image {IMAGE} not built: run deploy/build-image.sh")
    return IMAGE


# ---- the node: what the kubelet and the device plugin would provide ----------------------------

@dataclass
class Node:
    """Stand-ins for what a node provides to a pod, on this machine."""

    work: Path
    configmaps: dict[str, dict[str, str]]
    secrets: dict[str, dict[str, bytes]]
    host_paths: dict[str, Path]  # hostPath.path -> the directory standing in for it
    devices: dict[str, list[tuple[str, str]]]  # extended resource -> (host node, container path)

    def volume_dir(self, kind: str, name: str, files: dict[str, bytes], mode: int,
                   group: int | None) -> Path:
        """A ConfigMap or Secret volume as the kubelet writes it: one file per key."""
        folder = self.work / f"{kind}-{name}"
        folder.mkdir(parents=True, exist_ok=True)
        folder.chmod(0o755)
        for key, data in files.items():
            path = folder / key
            path.write_bytes(data)
            os.chown(path, 0, group if group is not None else 0)
            path.chmod(mode)
        return folder


def env_of(container: dict[str, Any], node_name: str, host_ip: str) -> dict[str, str]:
    """The container's env as the kubelet resolves it: fieldRefs, then $(VAR) references."""
    fields = {"spec.nodeName": node_name, "status.hostIP": host_ip}
    env: dict[str, str] = {}
    for item in container.get("env", []):
        if "valueFrom" in item:
            env[item["name"]] = fields[item["valueFrom"]["fieldRef"]["fieldPath"]]
        else:
            env[item["name"]] = re.sub(r"\$\((\w+)\)", lambda m: env.get(m[1], m[0]),
                                       item["value"])
    return env


POD_SECURITY = {"runAsNonRoot", "runAsUser", "runAsGroup", "fsGroup", "fsGroupChangePolicy",
                "seccompProfile", "supplementalGroups"}
CONTAINER_SECURITY = {"allowPrivilegeEscalation", "readOnlyRootFilesystem", "capabilities",
                      "privileged"}
CONTAINER_KEYS = {"name", "image", "imagePullPolicy", "args", "env", "ports", "startupProbe",
                  "livenessProbe", "readinessProbe", "resources", "securityContext",
                  "volumeMounts", "terminationMessagePath"}


def security_args(pod: dict[str, Any], container: dict[str, Any]) -> list[str]:
    pod_sc, sc = pod["securityContext"], container["securityContext"]
    assert set(pod_sc) <= POD_SECURITY, f"teach the test: {set(pod_sc) - POD_SECURITY}"
    assert set(sc) <= CONTAINER_SECURITY, f"teach the test: {set(sc) - CONTAINER_SECURITY}"
    uid, gid = pod_sc["runAsUser"], pod_sc["runAsGroup"]
    if pod_sc.get("runAsNonRoot"):
        assert uid != 0, "runAsNonRoot with uid 0: the kubelet would refuse to start it"
    args = ["--user", f"{uid}:{gid}"]
    # The kubelet adds fsGroup and supplementalGroups to the process's groups.
    for group in [pod_sc.get("fsGroup"), *pod_sc.get("supplementalGroups", [])]:
        if group is not None:
            args += ["--group-add", str(group)]
    if sc.get("readOnlyRootFilesystem"):
        args += ["--read-only", "--read-only-tmpfs=false"]  # no tmpfs the kubelet would not add
    if sc.get("privileged"):
        args.append("--privileged")
    else:  # privileged gets every capability: the runtime ignores drop and add then
        for cap in sc["capabilities"].get("drop", []):
            args += ["--cap-drop", cap.lower()]
        for cap in sc["capabilities"].get("add", []):
            args += ["--cap-add", cap]
    if sc.get("allowPrivilegeEscalation") is False:
        args += ["--security-opt", "no-new-privileges"]
    seccomp = pod_sc["seccompProfile"]["type"]
    assert seccomp in {"RuntimeDefault", "Unconfined"}, seccomp
    if seccomp == "Unconfined":
        args += ["--security-opt", "seccomp=unconfined"]
    # RuntimeDefault: podman's default profile applies (privileged drops it, as in the kubelet).
    return args


def quantity_cpus(value: str) -> str:
    return str(float(value[:-1]) / 1000 if value.endswith("m") else float(value))


def quantity_bytes(value: str) -> str:
    units = {"Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30}
    return str(int(float(value[:-2]) * units[value[-2:]]) if value[-2:] in units else int(value))


def pod_command(ds: dict[str, Any], node: Node, name: str, image: str) -> list[str]:
    """`podman run` arguments for the DaemonSet's agent container on this node."""
    pod = ds["spec"]["template"]["spec"]
    container = agent_container(ds)
    assert set(container) <= CONTAINER_KEYS, f"teach the test: {set(container) - CONTAINER_KEYS}"
    assert pod["hostNetwork"] is True
    # The kubelet ignores the image's HEALTHCHECK (it runs the probes): so does this pod.
    args = ["run", "--detach", "--name", name, "--no-healthcheck", "--network", "host",
            "--pull", "never", *security_args(pod, container)]
    limits = container["resources"].get("limits", {})
    if "cpu" in limits:
        args += ["--cpus", quantity_cpus(limits["cpu"])]
    if "memory" in limits:
        args += ["--memory", quantity_bytes(limits["memory"])]
    for resource, count in limits.items():
        if "/" in resource:  # an extended resource: the device plugin grants that many devices
            granted = node.devices.get(resource, [])[:int(count)]
            assert len(granted) == int(count), f"this node has no {count} x {resource}"
            for host_node, container_path in granted:
                device = os.stat(host_node).st_rdev
                args += ["--device-cgroup-rule",
                         f"c {os.major(device)}:{os.minor(device)} rwm",
                         "--volume", f"{host_node}:{container_path}"]
    for key, value in env_of(container, NODE, HOST_IP).items():
        args += ["--env", f"{key}={value}"]

    volumes = {v["name"]: v for v in pod["volumes"]}
    fs_group = pod["securityContext"].get("fsGroup")
    for mount in container["volumeMounts"]:
        volume = volumes[mount["name"]]
        target = mount["mountPath"]
        options = "ro" if mount.get("readOnly") else "rw"
        if "configMap" in volume:
            files = {k: v.encode() for k, v in node.configmaps[volume["configMap"]["name"]].items()}
            source = node.volume_dir("configmap", mount["name"], files,
                                     volume["configMap"].get("defaultMode", 0o644), fs_group)
            args += ["--volume", f"{source}:{target}:ro"]  # the kubelet mounts these read-only
        elif "secret" in volume:
            source = node.volume_dir("secret", mount["name"],
                                     node.secrets[volume["secret"]["secretName"]],
                                     volume["secret"].get("defaultMode", 0o644), fs_group)
            args += ["--volume", f"{source}:{target}:ro"]
        elif "hostPath" in volume:
            path, kind = volume["hostPath"]["path"], volume["hostPath"].get("type", "")
            source = node.host_paths.get(path, Path(path))
            if kind == "DirectoryOrCreate" and not source.exists():
                source = node.work / f"created{path.replace('/', '-')}"
                source.mkdir(parents=True, exist_ok=True)
            assert source.is_dir(), f"hostPath {path} ({kind}): the pod would not start"
            args += ["--volume", f"{source}:{target}:{options}"]
        elif "emptyDir" in volume:
            empty = volume["emptyDir"]
            assert empty.get("medium") == "Memory", "teach the test a disk emptyDir"
            size = quantity_bytes(empty["sizeLimit"])
            args += ["--mount", f"type=tmpfs,destination={target},tmpfs-size={size},"
                                "tmpfs-mode=1777"]
        else:
            pytest.fail(f"the test cannot mount volume {volume}")
    assert container["imagePullPolicy"] in {"IfNotPresent", "Never"}
    podman("tag", image, container["image"])  # present under the template's name: no pull
    return [*args, container["image"], *container.get("args", [])]


# ---- the broker: mutual TLS and a password, as the ConfigMap's mqtt section asks -------------

@dataclass
class Broker:
    pki: Pki
    folder: Path
    port: int = field(default_factory=free_port)
    plain: int = field(default_factory=free_port)  # the test's subscriber, anonymous
    mosquitto: Mosquitto | None = None

    def start(self, username: str) -> Broker:
        passwords = self.folder / "passwords"
        if not passwords.exists():
            passwords.write_text("")
            subprocess.run(["mosquitto_passwd", "-b", str(passwords), username, PASSWORD],
                           check=True, capture_output=True)
        broker = Mosquitto(port=self.port)
        lines = ["per_listener_settings true", "persistence false", "log_dest none",
                 f"listener {self.port} 127.0.0.1", f"cafile {self.pki.ca}",
                 f"certfile {self.pki.server_cert}", f"keyfile {self.pki.server_key}",
                 "require_certificate true", f"password_file {passwords}",
                 "allow_anonymous false", f"listener {self.plain} 127.0.0.1",
                 "allow_anonymous true"]
        if os.geteuid() == 0:
            lines.insert(0, "user root")  # else it drops to a user that cannot read tmp files
        broker.conf.write_text("\n".join(lines) + "\n")
        self.mosquitto = broker.start()
        wait_for_port(self.plain)
        return self

    def stop(self) -> None:
        if self.mosquitto:
            self.mosquitto.stop()


# ---- the pod's life ------------------------------------------------------------------------------

def http_status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code
    except OSError:
        return 0


def port_free(host: str, port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def metric(name: str) -> float:
    try:
        with urllib.request.urlopen(f"http://{HOST_IP}:7070/metrics", timeout=2) as response:
            text = response.read().decode()
    except OSError:
        return -1
    values = [float(line.split()[-1]) for line in text.splitlines()
              if line.startswith(name + " ") or line.startswith(name + "{")]
    return sum(values) if values else -1


class Pod:
    """One container of the DaemonSet's pod, started and stopped as the kubelet would."""

    def __init__(self, command: list[str], name: str, grace: int) -> None:
        self.name, self.grace = name, grace
        podman("rm", "--force", "--ignore", name)
        podman(*command)

    def logs(self) -> str:
        done = podman("logs", self.name, check=False)
        return done.stdout + done.stderr

    def state(self) -> dict[str, Any]:
        return json.loads(podman("inspect", "--format", "{{json .State}}", self.name).stdout)

    def wait_healthy(self) -> None:
        def up() -> bool:
            assert self.state()["Running"], f"the pod exited:\n{self.logs()}"
            return http_status(f"http://{HOST_IP}:7070/healthz") == 200
        wait_until(up, 90, "/healthz on the node's address", interval=0.2)

    def terminate(self) -> int:
        """SIGTERM, then SIGKILL after the grace period, as the kubelet stops a pod."""
        podman("stop", "--time", str(self.grace), self.name, timeout=self.grace + 30)
        return self.state()["ExitCode"]

    def crash(self) -> None:
        podman("kill", "--signal", "KILL", self.name)
        podman("wait", self.name, check=False)

    def remove(self) -> None:
        podman("rm", "--force", "--ignore", self.name, check=False)


def healthcheck(image: str, pod: Pod) -> subprocess.CompletedProcess[str]:
    """The image's HEALTHCHECK command, run in the pod (podman's timer needs systemd)."""
    config = json.loads(podman("image", "inspect", "--format", "{{json .Config.Healthcheck}}",
                               image).stdout)
    assert config and config["Test"][0] == "CMD", f"no HEALTHCHECK in the image: {config}"
    return podman("exec", pod.name, *config["Test"][1:], check=False)


def serial_daemonset(overlay: str) -> dict[str, Any]:
    """The overlay's DaemonSet for nodes with a serial adapter."""
    for ds in daemonsets(render(DEPLOY / "overlays" / overlay)):
        container = agent_container(ds)
        if (SERIAL_RESOURCE in container["resources"].get("limits", {})
                or container["securityContext"].get("privileged")):
            return ds
    pytest.fail(f"overlay {overlay} has no DaemonSet that reaches serial adapters")


@pytest.fixture
def meter() -> Iterator[SimulatorThread]:
    sims = SimulatorThread({"devices": [{
        "name": "meter-1", "kind": "modbus-rtu", "interval": 0.5,
        "units": [{"unit": 1, "registers": [
            {"name": "energy", "table": "input", "address": 0, "type": "uint32",
             "unit": "kW.h", "value": {"counter": {"start": 1000, "rate": 2}}}]}]}]})
    pty = Path(sims.by_name("meter-1").where)
    os.chown(pty, 0, 10070)  # deploy/host/99-edge-agent.rules: GROUP="edge-devices", 0660
    pty.chmod(0o660)
    yield sims
    sims.close()


@pytest.fixture
def node_dir() -> Iterator[Path]:
    folder = Path(tempfile.mkdtemp(prefix="edge-agent-pod-"))
    folder.chmod(0o755)
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_image_holds_no_build_tools_and_runs_as_its_numeric_user(image: str) -> None:
    done = podman("run", "--rm", "--no-healthcheck", "--network", "none", "--entrypoint",
                  "/bin/sh", image, "-c",
                  "id -u; for t in gcc cc c++ make ld as pip pip3; do command -v $t; done;"
                  " find /usr/include -name '*.h' | head -3;"
                  " ls /opt/venv/bin/pip 2>/dev/null; true")
    lines = done.stdout.split()
    assert lines[0] == "10001", done.stdout
    assert lines[1:] == [], f"build tools in the image: {lines[1:]}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_daemonset_pod_runs_the_agent_and_keeps_buffered_readings_across_a_restart(
        overlay: str, image: str, meter: SimulatorThread, node_dir: Path) -> None:
    if not port_free(HOST_IP, 7070) or not port_free("127.0.0.1", 7070):
        unavailable("port 7070 is in use on this machine: the pod needs its host port")
    ds = serial_daemonset(overlay)
    objects = render(DEPLOY / "overlays" / overlay)
    configmap = next(o for o in objects if o["kind"] == "ConfigMap")
    config = yaml.safe_load(configmap["data"]["config.yaml"])

    pki = make_pki(node_dir / "pki")
    broker = Broker(pki, node_dir).start(config["mqtt"]["username"])
    try:
        # The site's ConfigMap, with this machine's broker and device; everything else as shipped.
        pty = meter.by_name("meter-1").where
        device = {**meter.by_name("meter-1").device_config,
                  "port": DEVICE_IN_CONTAINER if overlay != "privileged" else pty}
        config["mqtt"]["url"] = f"mqtts://127.0.0.1:{broker.port}"
        config["devices"] = [device]
        secret_dir = Path(config["mqtt"]["password_file"]).parent
        secret = {Path(config["mqtt"]["password_file"]).name: PASSWORD.encode() + b"\n"}
        for key, source in (("ca_file", pki.ca), ("cert_file", pki.client_cert),
                            ("key_file", pki.client_key)):
            path = Path(config["mqtt"]["tls"][key])
            assert path.parent == secret_dir
            secret[path.name] = source.read_bytes()
        buffer_dir = node_dir / "var-lib-edge-agent"  # deploy/host's tmpfiles.d entry
        buffer_dir.mkdir()
        os.chown(buffer_dir, 10001, 10001)
        buffer_dir.chmod(0o750)
        node = Node(node_dir, {configmap["metadata"]["name"]: {
                        "config.yaml": yaml.safe_dump(config)}},
                    {"edge-agent-mqtt": secret}, {"/var/lib/edge-agent": buffer_dir},
                    {SERIAL_RESOURCE: [(pty, DEVICE_IN_CONTAINER)]})
        name = f"edge-agent-pod-test-{overlay}"
        command = pod_command(ds, node, name, image)
        grace = ds["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
        telemetry = f"{NODE}/meter-1/telemetry"

        # 1. The pod starts: telemetry under the node's name, probes and HEALTHCHECK answer.
        subscriber = Subscriber(broker.plain, "edge/#")
        pod = Pod(command, name, grace)
        try:
            pod.wait_healthy()
            wait_until(lambda: http_status(f"http://{HOST_IP}:7070/readyz") == 200, 60,
                       "/readyz", interval=0.2)
            first = subscriber.wait_for(telemetry, 2, timeout=60)
            assert first[0]["node"] == NODE and first[0]["readings"][0]["metric"] == "energy"
            assert http_status("http://127.0.0.1:7070/healthz") == 0, "not on the node's address"
            check = healthcheck(image, pod)
            assert check.returncode == 0, check.stdout + check.stderr

            # 2. Broker outage: readiness drops, readings go to the buffer on the hostPath.
            outage_ms = time.time() * 1000
            broker.stop()
            # Counted once the broker is gone: a message published just before the stop may
            # still have reached this subscriber (and been acknowledged, so never replayed).
            seen_before = max(m["seq"] for m in subscriber.json_on(telemetry))
            wait_until(lambda: http_status(f"http://{HOST_IP}:7070/readyz") == 503, 30,
                       "/readyz 503 while the broker is down", interval=0.2)
            wait_until(lambda: metric("edge_agent_buffer_messages") >= 5, 30,
                       "5 messages in the buffer")

            # 3. The container dies (SIGKILL: no flush) and the kubelet starts a new one.
            pod.crash()
            crash_ms = time.time() * 1000
        except BaseException:
            print(pod.logs())
            raise
        finally:
            pod_logs = pod.logs()
            subscriber.close()
            pod.remove()
        assert (buffer_dir / Path(config["buffer"]["path"]).name).stat().st_uid == 10001

        broker.start(config["mqtt"]["username"])
        subscriber = Subscriber(broker.plain, "edge/#")
        pod = Pod(command, name, grace)
        try:
            pod.wait_healthy()
            # What the first container read during the outage arrives now, in order, no gap.
            replayed = subscriber.wait_for(
                telemetry, 3, timeout=60,
                where=lambda m: all(outage_ms < r["ts"] < crash_ms for r in m["readings"]))
            seqs = [m["seq"] for m in subscriber.json_on(telemetry)]
            assert seqs[0] <= seen_before + 1 and seqs == list(range(seqs[0], seqs[-1] + 1)), seqs
            assert [m["seq"] for m in replayed] == sorted(m["seq"] for m in replayed)

            # 4. SIGTERM: offline status, exit 0 before the grace period ends.
            assert pod.terminate() == 0, pod.logs()
            subscriber.wait_for(f"edge/{NODE}/status", where=lambda m: m["state"] == "offline")
        except BaseException:
            print(pod_logs, pod.logs(), sep="\n---- restarted ----\n")
            raise
        finally:
            subscriber.close()
            pod.remove()
    finally:
        broker.stop()

