"""The simulator spec's printed agent config states every word order that matters."""

from __future__ import annotations

from edge_agent_simulators import runner, spec


def test_printed_config_names_the_order_of_every_multi_register_point() -> None:
    sim = spec.SimSpec.model_validate({"devices": [{"name": "m", "kind": "modbus-tcp", "units": [
        {"unit": 1, "registers": [
            {"name": "f", "address": 0, "type": "float32"},
            {"name": "u", "address": 2, "type": "uint32", "order": "CDAB"},
            {"name": "w", "address": 4, "type": "uint16"},
            {"name": "s", "address": 5, "type": "string", "length": 4}]}]}]})
    points = {p["name"]: p for p in runner._points(sim.devices[0], 1)}
    assert points["f"]["order"] == "ABCD"
    assert points["u"]["order"] == "CDAB"
    assert "order" not in points["w"] and "order" not in points["s"]
