"""Configuration: a YAML file, overridden by `EDGE_AGENT_*` environment variables.

Validation is two-staged. The agent-level model checks everything the core owns; then each
device is validated against the model of the driver it names, so a driver owns its keys and
the error still carries the full path (`devices[2].points[0].type`).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from edge_agent import config_source, identity, profiles, registry
from edge_agent.config_problems import format_problems
from edge_agent.device_config import (  # noqa: F401  (the device models, also named here)
    NAME_PATTERN,
    DeviceConfig,
    PointConfig,
    PointModel,
    SerialDevice,
    Strict,
    share_points,
)
from edge_agent.errors import ConfigError, DriverLoadError

DEFAULT_CONFIG_PATH = Path("/etc/edge-agent/config.yaml")
ENV_PREFIX = "EDGE_AGENT_"
SECRET_KEYS = frozenset({"password", "key", "token", "secret"})


class TlsConfig(Strict):
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure: bool = False  # skip host name verification; for lab brokers only

    @model_validator(mode="after")
    def _cert_and_key_together(self) -> TlsConfig:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("cert_file and key_file must be given together (mutual TLS)")
        return self


class SparkplugConfig(Strict):
    group_id: str = "edge"
    primary_host: str | None = None  # Sparkplug host id (STATE)

    @field_validator("group_id", "primary_host")
    @classmethod
    def _topic_level(cls, value: str | None) -> str | None:
        return value if value is None else identity.check_level(value, "the id")


class MqttConfig(Strict):
    url: str | list[str] = "mqtt://127.0.0.1:1883"
    allow_dollar_prefix: bool = False  # a `$` prefix: only for brokers that accept one
    topic_prefix: str = "edge"  # checked after allow_dollar_prefix, which it depends on
    qos: Literal[0, 1, 2] = 1
    format: Literal["json", "sparkplug"] = "json"
    protocol: Literal["3.1.1", "5"] = "3.1.1"
    username: str | None = None
    password_file: Path | None = None
    tls: TlsConfig | None = None
    keepalive: int = Field(30, ge=5, le=3600)
    inflight: int = Field(64, ge=1, le=65535)
    reconnect_max: float = Field(30.0, gt=0, le=3600)  # seconds; backoff ceiling between rounds
    sparkplug: SparkplugConfig = Field(default_factory=SparkplugConfig)

    @field_validator("topic_prefix")
    @classmethod
    def _prefix_is_topic_levels(cls, value: str, info: ValidationInfo) -> str:
        return identity.check_prefix(value, info.data.get("allow_dollar_prefix", False))

    @property
    def urls(self) -> list[str]:
        return [self.url] if isinstance(self.url, str) else list(self.url)

    @field_validator("url")
    @classmethod
    def _urls_are_mqtt(cls, value: str | list[str]) -> str | list[str]:
        for url in [value] if isinstance(value, str) else value:
            if not url.startswith(("mqtt://", "mqtts://", "tcp://", "ssl://")):
                raise ValueError(f"'{url}' is not an mqtt:// or mqtts:// URL")
        if isinstance(value, list) and not value:
            raise ValueError("at least one broker URL is needed")
        return value


class BufferConfig(Strict):
    path: Path | None = None  # None keeps the buffer in memory only (development)
    max_bytes: int = Field(100 * 1024 * 1024, ge=64 * 1024)
    #: a flush appends to `<path>.journal` while the broker keeps up, and rows go into
    #: SQLite only when they wait (docs/delivery.md); false commits every flush to SQLite
    journal: bool = True


class HttpConfig(Strict):
    listen: str = "0.0.0.0:7070"
    enabled: bool = True

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        _host, sep, port = value.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ValueError(f"'{value}' is not host:port")
        return value


class AgentConfig(BaseSettings):
    """The whole configuration. Environment variables win over the file.

    pydantic-settings' own env source cannot index into lists (`EDGE_AGENT_DEVICES__0__PORT`)
    and hands every value over as a string, which a `Literal[0, 1, 2]` rejects; so the env
    overlay is applied to the file's data first (`overlay_env`), with YAML scalar typing, and
    the settings sources are reduced to that merged input.
    """

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="forbid", case_sensitive=False
    )

    node: str | None = None
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    shutdown_grace: float = Field(10.0, ge=0, le=600)
    mqtt: MqttConfig = Field(default_factory=MqttConfig)
    buffer: BufferConfig = Field(default_factory=BufferConfig)
    http: HttpConfig = Field(default_factory=HttpConfig)
    profiles_dir: Path | None = None  # the user's device profiles (docs/profiles.md)
    devices: list[DeviceConfig] = Field(default_factory=list)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)

    @field_validator("node")
    @classmethod
    def _node_name(cls, value: str | None) -> str | None:
        return value if value is None else identity.check_node_name(value)



def read_yaml(path: Path) -> dict[str, Any]:
    """Loads the file through the one safe reading step (size, UTF-8, YAML limits)."""
    return config_source.read_config(path).data


def resolve_config_path(cli_value: str | None) -> Path:
    """`-c FILE`, else env `EDGE_AGENT_CONFIG`, else /etc/edge-agent/config.yaml."""
    return Path(cli_value or os.environ.get(f"{ENV_PREFIX}CONFIG") or DEFAULT_CONFIG_PATH)


#: EDGE_AGENT_* variables that configure the process or the project's tooling, not config
#: keys (EDGE_AGENT_TOOLS_VENV: where deploy/ci-tools.sh installs the deployment checkers;
#: EDGE_AGENT_BIN: the agent binary the shared peer rig runs)
NOT_CONFIG_KEYS = frozenset({"config", "usb_backend", "tools_venv", "bin"})


def overlay_env(data: dict[str, Any], environ: dict[str, str]) -> dict[str, Any]:
    """Applies `EDGE_AGENT_A__B__0__C=value` overrides onto the file's data.

    Keys are case-insensitive; a number indexes a list; values are typed as YAML scalars
    (`2` is an int, `true` a bool, `[a, b]` a list). Env wins over the file.
    """
    merged = copy.deepcopy(data)
    for name in sorted(environ):
        if not name.upper().startswith(ENV_PREFIX):
            continue
        path = name[len(ENV_PREFIX):].lower().split("__")
        if not path[0] or path[0] in NOT_CONFIG_KEYS:
            continue
        try:
            value = config_source.parse_value(environ[name], name)
        except ConfigError:
            value = environ[name]
        node: Any = merged
        for index, key in enumerate(path):
            last = index == len(path) - 1
            if isinstance(node, list):
                if not key.isdigit() or int(key) >= len(node):
                    raise ConfigError([f"{name}: no list item {key} in the config"])
                slot: Any = int(key)
            else:
                slot = key
            if last:
                node[slot] = value
            else:  # a scalar on the way becomes a mapping; the schema then says what is wrong
                child = node[slot] if isinstance(node, list) else node.get(slot)
                if not isinstance(child, dict | list):
                    node[slot] = {}
                node = node[slot]
    return merged


def validate(data: dict[str, Any], *, strict_drivers: bool = True,
             environ: dict[str, str] | None = None) -> AgentConfig:
    """Validates a config mapping; raises ConfigError listing every problem found.

    With `strict_drivers` a driver that cannot be loaded is a problem (check-config); without,
    its devices are kept with only the core keys checked, and the runtime disables them.
    """
    data = overlay_env(data, dict(os.environ) if environ is None else environ)
    odd_keys = [repr(key) for key in data if not isinstance(key, str)]
    if odd_keys:
        raise ConfigError([f"<root>: keys must be names, not {', '.join(odd_keys)}"])
    entries = data.get("devices")
    data, profile_problems = profiles.resolve(data)
    if profile_problems:
        raise ConfigError(profile_problems)
    try:
        config = AgentConfig(**data)
    except ValidationError as exc:
        raise ConfigError(format_problems(exc)) from None
    except RecursionError:
        raise ConfigError(["<root>: nested too deeply"]) from None
    problems = _duplicate_names(config.devices)
    typed: list[DeviceConfig] = []
    shared: dict[Any, PointModel] = {}  # equal points of different devices: one model
    for index, device in enumerate(config.devices):
        where = f"devices[{index}]"
        try:
            driver_cls = registry.load(device.driver)
        except DriverLoadError as exc:
            if strict_drivers:
                problems.append(f"{where}.driver: {exc}")
            typed.append(device)
            continue
        try:
            typed.append(driver_cls.config_model.model_validate(
                device.model_dump(exclude_unset=True)))
            share_points(typed[-1], shared)
        except ValidationError as exc:
            lines = format_problems(exc, where)
            if device.profile is not None and isinstance(entries, list):
                # number points as the user's file does
                lines = profiles.relocate(lines, entries[index], data["devices"][index])
            problems.extend(lines)
    problems.extend(_port_conflicts(typed))
    if problems:
        raise ConfigError(problems)
    given = set(config.model_fields_set)
    config.devices = typed
    # keep "devices" out of the fields set when the file did not name it: a reload tells an
    # empty or truncated file from an intended `devices: []` by it (config_source)
    config.model_fields_set.intersection_update(given)
    return config


def _duplicate_names(devices: list[DeviceConfig]) -> list[str]:
    """A device name is a topic level: each names one device (`devices[1].name: ...`)."""
    first: dict[str, int] = {}
    problems = []
    for index, device in enumerate(devices):
        earlier = first.setdefault(device.name, index)
        if earlier != index:
            problems.append(f"devices[{index}].name: device name '{device.name}' is used twice "
                            f"(also devices[{earlier}])")
    return problems


def _port_conflicts(devices: list[DeviceConfig]) -> list[str]:
    """One owner per physical port: devices may share a port only when they use the same
    driver and that driver serialises them (Modbus units on one RS-485 line or gateway)."""
    owners: dict[str, DeviceConfig] = {}
    problems = []
    for index, device in enumerate(devices):
        if not device.port or not device.enabled:
            continue
        first = owners.setdefault(device.port, device)
        if first is device:
            continue
        try:
            shares = registry.load(device.driver).shares_port
        except DriverLoadError:
            continue  # reported as the driver's problem
        if device.driver != first.driver or not shares:
            problems.append(
                f"devices[{index}].port: '{device.port}' is already used by device "
                f"'{first.name}'; only devices of one driver that shares its port (modbus) "
                f"can be configured on the same port")
    return problems


def load(path: Path, *, strict_drivers: bool = True) -> AgentConfig:
    return validate(read_yaml(path), strict_drivers=strict_drivers)


def redacted(config: AgentConfig) -> dict[str, Any]:
    """The resolved config as plain data with anything secret-looking masked."""
    return _redact(config.model_dump(mode="json", serialize_as_any=True))


def _redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {
            key: "***" if any(s in key.lower() for s in SECRET_KEYS) and not key.endswith("_file")
            and item is not None else _redact(item)
            for key, item in value.items()
        }
    if isinstance(value, list):
        return [_redact(item) for item in value]
    return value
