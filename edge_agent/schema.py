"""The configuration's JSON Schema, generated from the pydantic models so it cannot drift.

`python -m edge_agent.schema > docs/config.schema.json` writes it; a test regenerates it and
compares. Devices are a union discriminated by `driver` over the built-in drivers' own models
(the same ones that validate a config), and `profile` offers the shipped profile names as an
enum (any other string is allowed too: it may name a profile of the user's directory).
Editors use it through the YAML language server's modeline (docs/profiles.md).
"""

from __future__ import annotations

import json
import sys
from importlib.metadata import entry_points
from typing import Annotated, Any, Literal, Union

from pydantic import Field, create_model

from edge_agent import profiles, registry
from edge_agent.config import AgentConfig

#: the lists of named items a profile supplies: not required in an entry that names one
PROFILE_LISTS = ("points", "fields")


def builtin_drivers() -> list[str]:
    """Drivers shipped with edge-agent (a third-party driver is not ours to describe)."""
    return sorted(ep.name for ep in entry_points(group=registry.GROUP)
                  if ep.value.startswith("edge_agent_drivers."))


def build() -> dict[str, Any]:
    variants = []
    for name in builtin_drivers():
        model = registry.load(name).config_model
        variants.append(create_model(
            f"{name.capitalize()}Device", __base__=model, __doc__=model.__doc__,
            driver=(Literal[name], ...)))  # type: ignore[arg-type]  # a Literal made at run time
    # a union of models made at run time: no static type to check
    device = Annotated[Union[tuple(variants)], Field(discriminator="driver")]  # type: ignore[valid-type]  # noqa: UP007
    top = create_model("EdgeAgentConfig", __base__=AgentConfig,
                       __doc__="edge-agent configuration (see README.md and docs/).",
                       devices=(list[device], Field(default_factory=list)))  # type: ignore[valid-type]
    schema = top.model_json_schema(mode="validation")
    names = [n for n in profiles.Library(None).names]
    for definition in schema.get("$defs", {}).values():
        props = definition.get("properties", {})
        if "profile" in props and "driver" in props:
            props["profile"] = {
                "anyOf": [{"enum": names, "description": "a shipped profile"},
                          {"type": "string", "description": "a profile in profiles_dir"},
                          {"type": "null"}],
                "default": None, "title": "Profile",
                "description": "device profile supplying points and settings "
                               "(edge-agent profiles; docs/profiles.md)"}
            definition["required"] = [r for r in definition.get("required", [])
                                      if r not in PROFILE_LISTS]
    return {"$schema": "https://json-schema.org/draft/2020-12/schema", **schema}


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def main() -> int:
    sys.stdout.write(render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
