"""docs/config.schema.json is generated from the config models: regenerating it must give
the committed file, so the schema editors validate against cannot drift from the code."""

from __future__ import annotations

import json

from edge_agent import profiles, schema
from tests.helpers import REPO

COMMITTED = REPO / "docs" / "config.schema.json"


def test_committed_schema_is_what_the_models_generate():
    assert COMMITTED.read_text() == schema.render(), (
        "docs/config.schema.json is stale: run "
        "`.venv/bin/python -m edge_agent.schema > docs/config.schema.json`")


def test_schema_has_a_device_variant_per_builtin_driver_and_profile_names_as_enum():
    document = json.loads(COMMITTED.read_text())
    devices = document["properties"]["devices"]["items"]
    assert devices["discriminator"]["propertyName"] == "driver"
    assert set(devices["discriminator"]["mapping"]) == set(schema.builtin_drivers())
    modbus = document["$defs"]["ModbusDevice"]
    assert modbus["properties"]["driver"]["const"] == "modbus"
    assert "points" not in modbus["required"]  # a profile may supply them
    assert "port" in modbus["required"]
    enum = modbus["properties"]["profile"]["anyOf"][0]["enum"]
    assert enum == profiles.Library(None).names
    assert document["$defs"]["ModbusPoint"]["properties"]["order"]["enum"] == [
        "ABCD", "CDAB", "BADC", "DCBA"]
    assert document["additionalProperties"] is False
