"""Setting up simulated USB devices for another process: a spec file and plug files.

`SimulatedBus` writes the spec the backend reads (EDGE_SIMULATORS_USB_SPEC) and a present-file per
device, and gives the environment an agent needs to see the devices. `unplug`/`plug`
remove and recreate that file, which any process using the backend sees at its next call.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

from edge_agent_simulators.running import Running
from edge_agent_simulators.usb.backend import BACKEND_SPEC, SIM_ENV
from edge_agent_simulators.usb.devices import MODELS

# Agent config for each model: the report layout its simulated device produces.
LAYOUTS: dict[str, dict[str, Any]] = {
    "thermo-hygrometer": {
        "interface": 0, "endpoint": "0x81", "request": "01 80 33 01 00 00 00 00",
        "fields": [
            {"name": "temperature", "offset": 2, "type": "int16", "endian": "big",
             "scale": 0.01, "unit": "Cel"},
            {"name": "humidity", "offset": 4, "type": "uint16", "endian": "big",
             "scale": 0.01, "unit": "%"},
        ]},
    "bulk-logger": {
        "interface": 0, "endpoint": "0x82", "request": "a5 01",
        "fields": [
            {"name": "record", "offset": 0, "type": "uint32", "endian": "little"},
            {"name": "voltage", "offset": 4, "type": "float32", "endian": "little", "unit": "V"},
            {"name": "temperature", "offset": 8, "type": "int16", "endian": "little",
             "scale": 0.1, "unit": "Cel"},
            {"name": "battery_low", "offset": 10, "type": "bool", "bit": 0, "endian": "little"},
            {"name": "uptime", "offset": 12, "type": "uint32", "endian": "little", "unit": "s"},
        ]},
}


class SimulatedBus:
    """Simulated USB devices in a directory of their own, reachable from any process."""

    def __init__(self, directory: Path | None = None) -> None:
        self._own_dir = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="edge-agent-usb-"))
        self.directory.mkdir(parents=True, exist_ok=True)
        self.spec_path = self.directory / "usb-sim.yaml"
        self.entries: dict[str, dict[str, Any]] = {}
        self._write()

    def add(self, name: str, model: str, *, plugged: bool = True, **options: Any) -> dict[str, Any]:
        """Adds a device (`serial`, `bus`, `ports`, and the model's values as options);
        returns the `driver: usb` device config that reaches it."""
        if model not in MODELS:
            raise ValueError(f"USB model '{model}' is not one of {', '.join(MODELS)}")
        present = self.directory / f"{name}.present"
        options.setdefault("address", len(self.entries) + 2)  # distinct, as on a real bus
        options.setdefault("ports", [len(self.entries) + 1])
        self.entries[name] = {"model": model, "present_file": str(present), **options}
        if plugged:
            self.plug(name)
        self._write()
        return self.device_config(name)

    def device_config(self, name: str, interval: float = 1.0) -> dict[str, Any]:
        entry = self.entries[name]
        model = MODELS[entry["model"]]
        config: dict[str, Any] = {"name": name, "driver": "usb", "vid": f"0x{model.vid:04x}",
                                  "pid": f"0x{model.pid:04x}"}
        if entry.get("serial"):
            config["serial"] = entry["serial"]
        config.update({"interval": interval, **LAYOUTS[entry["model"]]})
        return config

    @property
    def env(self) -> dict[str, str]:
        """The environment under which pyusb in the agent finds these devices."""
        return {"EDGE_AGENT_USB_BACKEND": BACKEND_SPEC, SIM_ENV: str(self.spec_path)}

    def unplug(self, name: str) -> None:
        (self.directory / f"{name}.present").unlink(missing_ok=True)

    def plug(self, name: str) -> None:
        path = self.directory / f"{name}.present"
        tmp = path.with_suffix(".plugging")
        tmp.write_text(f"{time.time_ns()}\n")  # a new token: a new plug-in
        os.replace(tmp, path)

    def _write(self) -> None:
        tmp = self.spec_path.with_suffix(".tmp")
        tmp.write_text(yaml.safe_dump({"devices": list(self.entries.values())}))
        os.replace(tmp, self.spec_path)

    def close(self) -> None:
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)
        else:
            for name in self.entries:
                self.unplug(name)


async def start_usb(spec: Any, running: dict[str, Any]) -> Any:
    """The `usb` simulator kind of `edge-agent simulate`: keys `model` (thermo-hygrometer or
    bulk-logger), `serial`, `bus`, `ports`, and the model's values (e.g. `temperature`).

    All USB devices of one spec share one simulated bus (one spec file), so one pair of
    environment variables, printed with each device, lets an agent see all of them.
    """
    options = dict(spec.model_extra or {})
    model = options.pop("model", None)
    if model is None:
        raise ValueError(f"simulated USB device '{spec.name}' needs `model`: "
                         f"one of {', '.join(MODELS)}")
    owner = next((r for r in running.values() if isinstance(r.handle, SimulatedBus)), None)
    bus = owner.handle if owner else SimulatedBus()
    bus.add(spec.name, model, **options)
    config = bus.device_config(spec.name, spec.interval)
    env = " ".join(f"{key}={value}" for key, value in bus.env.items())
    where = f"usb {config['vid'][2:]}:{config['pid'][2:]}"
    if config.get("serial"):
        where += f" serial {config['serial']}"
    return Running(spec.name, f"{where} (agent env: {env})", config,
                   None if owner else bus, env=dict(bus.env))
