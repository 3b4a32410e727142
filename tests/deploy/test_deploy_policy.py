"""Policy on the rendered objects: what docs/deploy.md promises about the DaemonSet holds in
every overlay, and the pieces that must agree with each other (image, manifests, host files,
the agent's config) do."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from _deploy_support import DEPLOY, OVERLAYS, REPO, agent_container, daemonsets, one

Objects = dict[str, list[dict[str, Any]]]
AGENT_PORT = 7070


def all_daemonsets(rendered: Objects) -> list[tuple[str, dict[str, Any]]]:
    return [(name, ds) for name in OVERLAYS for ds in daemonsets(rendered[name])]


def pod(ds: dict[str, Any]) -> dict[str, Any]:
    return ds["spec"]["template"]["spec"]


def agent_config(objects: list[dict[str, Any]]) -> dict[str, Any]:
    """The shared part of the fleet config (config.yaml)."""
    return yaml.safe_load(one(objects, "ConfigMap")["data"]["config.yaml"])


def configmap_files(objects: list[dict[str, Any]]) -> dict[str, str]:
    return one(objects, "ConfigMap")["data"]


def mount_of(ds: dict[str, Any], volume: str) -> str:
    mounts = agent_container(ds)["volumeMounts"]
    return next(m["mountPath"] for m in mounts if m["name"] == volume)


def volume(ds: dict[str, Any], name: str) -> dict[str, Any]:
    return next(v for v in pod(ds)["volumes"] if v["name"] == name)


def cpu_millis(value: str) -> float:
    return float(value[:-1]) if value.endswith("m") else float(value) * 1000


def mebibytes(value: str) -> float:
    units = {"Mi": 1, "Gi": 1024, "Ki": 1 / 1024}
    return float(value[:-2]) * units[value[-2:]]


def test_host_network_pods_resolve_cluster_names(rendered: Objects) -> None:
    for _, ds in all_daemonsets(rendered):
        assert pod(ds)["hostNetwork"] is True
        assert pod(ds)["dnsPolicy"] == "ClusterFirstWithHostNet"


def test_sys_rawio_is_the_only_capability_and_all_others_are_dropped(rendered: Objects) -> None:
    for name, ds in all_daemonsets(rendered):
        for container in pod(ds)["containers"] + pod(ds).get("initContainers", []):
            caps = container["securityContext"]["capabilities"]
            assert caps["add"] == ["SYS_RAWIO"], name
            assert caps["drop"] == ["ALL"], name


def test_pod_runs_as_a_numeric_non_root_user_on_a_read_only_root(rendered: Objects) -> None:
    for _, ds in all_daemonsets(rendered):
        context = pod(ds)["securityContext"]
        assert context["runAsNonRoot"] is True
        assert isinstance(context["runAsUser"], int) and context["runAsUser"] >= 10000
        assert context["seccompProfile"] == {"type": "RuntimeDefault"}
        container = agent_container(ds)["securityContext"]
        assert container["readOnlyRootFilesystem"] is True
        assert volume(ds, "tmp")["emptyDir"] is not None
        assert mount_of(ds, "tmp") == "/tmp"


def test_only_the_privileged_overlay_is_privileged(rendered: Objects) -> None:
    for name, ds in all_daemonsets(rendered):
        privileged = agent_container(ds)["securityContext"].get("privileged", False)
        assert privileged is (name == "privileged"), name
        if not privileged:
            assert agent_container(ds)["securityContext"]["allowPrivilegeEscalation"] is False


def test_node_identity_comes_from_the_downward_api(rendered: Objects) -> None:
    for _, ds in all_daemonsets(rendered):
        env = {e["name"]: e for e in agent_container(ds)["env"]}
        assert env["NODE_NAME"]["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"
        assert env["HOST_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.hostIP"
        # HOST_IP must be declared before the variable that expands it.
        names = [e["name"] for e in agent_container(ds)["env"]]
        assert names.index("HOST_IP") < names.index("EDGE_AGENT_HTTP__LISTEN")
        assert env["EDGE_AGENT_HTTP__LISTEN"]["value"] == f"$(HOST_IP):{AGENT_PORT}"


def test_namespace_carries_pinned_pod_security_labels(rendered: Objects) -> None:
    for name in OVERLAYS:
        namespace = one(rendered[name], "Namespace")
        labels = namespace["metadata"]["labels"]
        prefix = "pod-security.kubernetes.io/"
        assert labels[prefix + "enforce"] == "privileged"
        for mode in ("enforce", "warn", "audit"):
            assert labels[prefix + mode] in {"privileged", "baseline", "restricted"}
            assert re.fullmatch(r"v1\.\d+", labels[prefix + mode + "-version"]), mode
        for obj in rendered[name]:
            if obj["kind"] != "Namespace":
                assert obj["metadata"]["namespace"] == namespace["metadata"]["name"]


def test_rollout_replaces_one_node_at_a_time_without_surge(rendered: Objects) -> None:
    for _, ds in all_daemonsets(rendered):
        strategy = ds["spec"]["updateStrategy"]
        assert strategy["type"] == "RollingUpdate"
        assert str(strategy["rollingUpdate"]["maxSurge"]) == "0"
        assert str(strategy["rollingUpdate"]["maxUnavailable"]) == "1"
        assert ds["spec"]["minReadySeconds"] > 0


def test_probes_use_the_agents_health_paths_on_its_host_port(rendered: Objects) -> None:
    for _, ds in all_daemonsets(rendered):
        container = agent_container(ds)
        ports = {p["name"]: p for p in container["ports"]}
        assert ports["http"]["containerPort"] == ports["http"]["hostPort"] == AGENT_PORT
        expected = {"startupProbe": "/healthz", "livenessProbe": "/healthz",
                    "readinessProbe": "/readyz"}
        for probe, path in expected.items():
            assert container[probe]["httpGet"]["path"] == path
            assert container[probe]["httpGet"]["port"] in ("http", AGENT_PORT)
        annotations = ds["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/port"] == str(AGENT_PORT)
        assert annotations["prometheus.io/path"] == "/metrics"


def test_resources_fit_the_measured_footprint_and_the_design_limits(rendered: Objects) -> None:
    for _, ds in all_daemonsets(rendered):
        resources = agent_container(ds)["resources"]
        requests, limits = resources["requests"], resources["limits"]
        # Design template: 100m CPU, 200Mi. Measured: < 60 MiB RSS, ~50m CPU at 5k readings/s.
        assert cpu_millis(limits["cpu"]) == 100
        assert mebibytes(limits["memory"]) == 200
        assert mebibytes(requests["memory"]) >= 60
        assert 0 < cpu_millis(requests["cpu"]) <= cpu_millis(limits["cpu"])


def test_agent_is_node_critical_and_tolerates_tainted_nodes(rendered: Objects) -> None:
    for _, ds in all_daemonsets(rendered):
        spec = pod(ds)
        assert spec["priorityClassName"] == "system-node-critical"
        effects = {t["effect"] for t in spec["tolerations"] if t.get("operator") == "Exists"}
        assert {"NoSchedule", "NoExecute"} <= effects
        assert spec["nodeSelector"]["edge-agent.io/agent"] == "enabled"


def test_no_service_account_token_reaches_the_agent(rendered: Objects) -> None:
    for name in OVERLAYS:
        assert one(rendered[name], "ServiceAccount")["automountServiceAccountToken"] is False
        for ds in daemonsets(rendered[name]):
            assert pod(ds)["automountServiceAccountToken"] is False
            assert pod(ds)["serviceAccountName"] == "edge-agent"


def test_grace_period_outlasts_the_agents_shutdown_flush(rendered: Objects) -> None:
    for name in OVERLAYS:
        grace = agent_config(rendered[name]).get("shutdown_grace", 10)
        for ds in daemonsets(rendered[name]):
            # Room after the flush for publishing the offline status and exiting.
            assert pod(ds)["terminationGracePeriodSeconds"] >= grace + 5


def test_config_secrets_and_buffer_live_where_the_pod_mounts_them(rendered: Objects) -> None:
    for name in OVERLAYS:
        config = agent_config(rendered[name])
        configmap = one(rendered[name], "ConfigMap")["metadata"]["name"]
        for ds in daemonsets(rendered[name]):
            assert volume(ds, "config")["configMap"]["name"] == configmap
            # the whole ConfigMap directory: config.yaml and the nodes__<node>.yaml files
            assert agent_container(ds)["args"] == ["run", "-c", mount_of(ds, "config")]
            secrets = mount_of(ds, "mqtt")
            assert volume(ds, "mqtt")["secret"]["secretName"] == "edge-agent-mqtt"
            files = [config["mqtt"]["password_file"], *config["mqtt"]["tls"].values()]
            assert all(Path(f).parent == Path(secrets) for f in files), files
            buffer = volume(ds, "buffer")["hostPath"]
            assert buffer["path"] == "/var/lib/edge-agent"
            assert Path(config["buffer"]["path"]).parent == Path(mount_of(ds, "buffer"))


def test_device_plugin_overlay_grants_devices_without_stranding_deviceless_nodes(
        rendered: Objects) -> None:
    agents = daemonsets(rendered["device-plugin"])
    requesting = [ds for ds in agents
                  if "squat.ai/serial" in agent_container(ds)["resources"].get("limits", {})]
    plain = [ds for ds in agents if ds not in requesting]
    assert len(requesting) == 1 and len(plain) == 1
    # Disjoint node sets: the requesting agent only where the label is, the plain one elsewhere.
    assert pod(requesting[0])["nodeSelector"]["edge-agent.io/serial"] == "present"
    terms = pod(plain[0])["affinity"]["nodeAffinity"][
        "requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert all({"key": "edge-agent.io/serial", "operator": "DoesNotExist"} in t["matchExpressions"]
               for t in terms)
    selectors = [ds["spec"]["selector"]["matchLabels"] for ds in agents]
    assert selectors[0] != selectors[1]
    assert pod(requesting[0])["securityContext"]["supplementalGroups"] == [10070]
    for ds in agents:  # no host /dev: without privileged the device cgroup would deny it anyway
        paths = [v["hostPath"]["path"] for v in pod(ds)["volumes"] if "hostPath" in v]
        assert paths == ["/var/lib/edge-agent"]


def test_privileged_overlay_mounts_only_narrow_host_paths(rendered: Objects) -> None:
    (ds,) = daemonsets(rendered["privileged"])
    host = {v["name"]: v["hostPath"]["path"] for v in pod(ds)["volumes"] if "hostPath" in v}
    assert sorted(host.values()) == ["/dev", "/run/udev", "/sys", "/var/lib/edge-agent"]
    mounts = {m["name"]: m for m in agent_container(ds)["volumeMounts"]}
    for name, path in host.items():
        read_only = mounts[name].get("readOnly", False)
        assert read_only is (path in {"/run/udev", "/sys"}), path
    assert pod(ds)["securityContext"]["supplementalGroups"] == [10070]


def test_image_host_files_and_manifests_agree_on_ids() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    (user,) = re.findall(r"^USER (\d+):(\d+)$", dockerfile, re.M)
    workload = yaml.safe_load((DEPLOY / "base/workload/daemonset.yaml").read_text())
    context = workload["spec"]["template"]["spec"]["securityContext"]
    assert user == (str(context["runAsUser"]), str(context["runAsGroup"]))
    tmpfiles = (DEPLOY / "host/edge-agent.tmpfiles.conf").read_text()
    assert re.search(rf"^d /var/lib/edge-agent 0750 {user[0]} {user[1]} -$", tmpfiles, re.M)
    rules = (DEPLOY / "host/99-edge-agent.rules").read_text()
    (gid, group) = re.findall(r"groupadd --system --gid (\d+) (\S+)", rules)[0]
    assert gid == "10070"
    groups = re.findall(r'GROUP="([^"]+)"', rules)
    assert groups and set(groups) == {group}


def test_dockerfile_follows_the_image_rules() -> None:
    text = (REPO / "Dockerfile").read_text()
    bases = re.findall(r"^FROM (\S+) AS (\w+)$", text, re.M)
    assert [stage for _, stage in bases] == ["build", "runtime"]
    # Both stages name one base, so the venv's interpreter path (/usr/local/bin/python3.11 in
    # the pinned image, /usr/bin/python3.11 in build-image.sh's Debian base) is the same in each,
    # whichever base the build is given.
    assert bases[0][0] == bases[1][0], "both stages must share the venv's interpreter"
    (default,) = re.findall(r"^ARG BASE=(\S+)$", text.split("\nFROM ", 1)[0], re.M)
    assert bases[0][0] == "${BASE}"
    assert re.fullmatch(r"python:3\.11\.\d+-slim-\w+", default)
    runtime = text.split(" AS runtime", 1)[1]
    assert re.search(r"libusb-1\.0-0=\S+", runtime) and re.search(r"tini=\S+", runtime)
    for tool in ("gcc", "build-essential", "make ", "-dev"):
        assert tool not in runtime, tool
    assert "COPY --from=build /opt/venv /opt/venv" in runtime
    assert re.search(r'^ENTRYPOINT \["/usr/bin/tini", "--", ', runtime, re.M)
    assert re.search(r"^CMD \[", runtime, re.M)
    assert re.search(r"^HEALTHCHECK .*\n?.*/healthz", runtime, re.M)
    assert (REPO / ".dockerignore").read_text().splitlines()[1] == "*"


def edge_agent_command() -> list[str]:
    script = Path(sys.executable).with_name("edge-agent")
    if script.exists():
        return [str(script)]
    found = shutil.which("edge-agent")
    if found:
        return [found]
    return [sys.executable, "-c", "import sys; from edge_agent.cli import main; sys.exit(main())"]


def check_config(files: dict[str, str], tmp_path: Path,
                 *options: str) -> subprocess.CompletedProcess[str]:
    """check-config on the ConfigMap's keys written out as the pod sees them (one directory)."""
    root = tmp_path / "edge-agent"
    root.mkdir(exist_ok=True)
    for key, text in files.items():
        (root / key).write_text(text)
    return subprocess.run([*edge_agent_command(), "check-config", str(root), *options],
                          capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "NODE_NAME": "edge-node-1"})


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_configmap_config_passes_check_config(
        overlay: str, rendered: Objects, tmp_path: Path) -> None:
    files = configmap_files(rendered[overlay])
    done = check_config(files, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    for text in files.values():
        for device in yaml.safe_load(text)["devices"]:
            assert device["name"] in done.stdout


def test_configmap_is_a_fleet_each_node_runs_only_its_devices(
        rendered: Objects, tmp_path: Path) -> None:
    """The shipped fleet: the gateway on one node, the USB meter on line 3, a per-node file."""
    files = configmap_files(rendered["device-plugin"])
    assert set(files) == {"config.yaml", "nodes__edge-b.yaml"}
    expected = {"edge-a": "boiler-1", "line-3-07": "meter-1", "edge-b": "gps-1",
                "edge-z": "-"}
    for node, devices in expected.items():
        done = check_config(files, tmp_path, "--node", node)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f"# node {node} runs " in done.stdout
        assert done.stdout.splitlines()[0].endswith(f"device(s): {devices}"), done.stdout


def test_check_config_rejects_a_broken_copy_of_the_configmap(
        rendered: Objects, tmp_path: Path) -> None:
    """check-config is not a rubber stamp: the shipped config with one bad value exits 2."""
    files = dict(configmap_files(rendered["device-plugin"]))
    config = agent_config(rendered["device-plugin"])
    config["mqtt"]["qos"] = 7
    files["config.yaml"] = yaml.safe_dump(config)
    done = check_config(files, tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "config.yaml: mqtt.qos" in done.stdout + done.stderr


def test_base_config_is_the_one_every_overlay_ships(rendered: Objects) -> None:
    source = DEPLOY / "base/config"
    expected = {"config.yaml": (source / "config.yaml").read_text()}
    for path in sorted((source / "nodes").glob("*.yaml")):
        expected[f"nodes__{path.name}"] = path.read_text()
    for name in OVERLAYS:
        assert configmap_files(rendered[name]) == expected
