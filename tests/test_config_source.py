"""The one safe step every config byte passes (edge_agent.config_source), node names and
topic levels: hostile files and names end in a ConfigError naming the problem, or exit 2 with
no traceback, in bounded time (issue #18, items 7-11)."""

from __future__ import annotations

import contextlib
import time

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent import cli, config_source
from edge_agent.config import validate
from edge_agent.errors import ConfigError
from edge_agent.identity import (
    check_level,
    check_prefix,
    client_id,
    injective_safe,
    node_name,
    topic_safe,
)
from tests.helpers import run_cli

ALIAS_BOMB = "a: &a [x,x,x,x,x,x,x,x,x,x]\n" + "".join(
    f"{chr(98 + i)}: &{chr(98 + i)} [{','.join([f'*{chr(97 + i)}'] * 10)}]\n" for i in range(8))


@pytest.mark.parametrize(("content", "problem"), [
    (b"node: caf\xe9\n", "not UTF-8 text: byte 0xe9 at offset 9"),
    (b"\xef\xbb\xbfnode: \xff\n", "byte 0xff at offset 9"),
    (b"mqtt: {qos: 1}\n\x00\x00", "a NUL byte at offset 15"),
    (ALIAS_BOMB.encode(), "alias bomb"),
    (b"a: &a [*a]\n", "a cycle"),
    (b"x:\n" + b"  - " * 1 + b"[" * 200 + b"]" * 200, "nested"),
    (b"- just\n- a list\n", "must be a mapping"),
    (b"mqtt: {qos: 1\n", "invalid YAML"),
    (b"!!python/object:os.system {}\n", "invalid YAML"),
    (b"{[1, 2]: x}\n", "invalid YAML"),
    (b"1: x\n", "keys must be names"),
])
def test_a_hostile_file_is_one_config_error_naming_the_file(tmp_path, content, problem):
    path = tmp_path / "config.yaml"
    path.write_bytes(content)
    started = time.perf_counter()
    with pytest.raises(ConfigError) as caught:
        validate(config_source.read_config(path).data, environ={})
    assert problem in caught.value.problems[0]
    assert time.perf_counter() - started < 5  # generous: a bomb must not take 14 s
    if "keys must be" not in problem:
        assert caught.value.problems[0].startswith(str(path))


def test_a_file_past_the_size_limit_is_refused_before_it_is_parsed(tmp_path):
    path = tmp_path / "huge.yaml"
    path.write_bytes(b"# padding\n" * (config_source.MAX_BYTES // 10 + 1))
    with pytest.raises(ConfigError, match="larger than the limit"):
        config_source.read_config(path)


def test_anchors_used_the_normal_way_still_work_and_empty_is_reported_as_empty(tmp_path):
    source = config_source.parse(
        "points: &p [{name: a, address: 0}]\ndevices: [{x: *p}, {x: *p}]\n", "f")
    assert source.data["devices"][1]["x"] == [{"name": "a", "address": 0}]
    assert config_source.parse("# only a comment\n", "f") == config_source.Source({}, True)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_any_bytes_give_data_or_a_config_error(data):
    try:
        source = config_source.parse(config_source.decode_text(data, "f"), "f")
        validate(source.data, environ={}, strict_drivers=False)
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) for p in exc.problems)


_YAMLISH = st.text(alphabet="ab:-[]{}&*!|>'\"#\n ,01.~$\\", max_size=120)


def _composed(text: str) -> object:
    """What PyYAML's own loader makes of `text` (node graph, then objects), or its error."""
    try:
        return ("ok", yaml.load(text, Loader=config_source._Loader))  # a safe loader
    except (yaml.YAMLError, RecursionError):
        return ("error", None)


def _streamed(text: str) -> object:
    try:
        return ("ok", config_source.parse_value(text, "f"))
    except ConfigError:
        return ("error", None)


_MERGES = st.lists(st.sampled_from([
    "a: 1\n", "b: &m {x: 1, y: 2}\n", "c: {<<: *m, y: 3}\n", "d: [&s x, *s]\n",
    "e: {<<: [*m, {x: 9, z: 8}], x: 0}\n", "f: !!str 12\n", "g: {=: v, w: 2}\n",
    "h: !!set {p, q}\n", "i: {1: a, 1.5: b, null: c, true: d}\n", "j: 2001-12-14\n",
    "k: !!binary aGk=\n", "l: {[1]: x}\n", "m: *undefined\n", "n: {<<: 3}\n", "o: 0x1f\n",
    "p: [1, [2, [3, {q: r}]]]\n", "q: &q {r: *q}\n", "---\nz: 1\n", "r: ~\n", "s: '<<'\n",
]), max_size=8)


@settings(max_examples=300, deadline=None)
@given(st.one_of(_YAMLISH, _MERGES.map("".join)))
def test_data_built_from_events_is_what_the_composing_loader_builds(text):
    # edge_agent.yaml_stream builds without a node graph: same data, same refusals
    composed, streamed = _composed(text), _streamed(text)
    if composed[0] == "ok" and streamed[0] == "error":  # refused by a limit: a cycle
        assert "&" in text and "*" in text
    else:
        assert streamed == composed


@settings(max_examples=300, deadline=None)
@given(_YAMLISH)
def test_any_yaml_shaped_text_gives_data_or_a_config_error(text):
    with contextlib.suppress(ConfigError):
        validate(config_source.parse(text, "f").data, environ={}, strict_drivers=False)


# -- the CLI: exit 2, one line per problem, no traceback ------------------------------------
@pytest.mark.parametrize("content", [b"node: \xff\xfe\n", ALIAS_BOMB.encode(), b"a: &a [*a]\n",
                                     b"mqtt:\n  topic_prefix: $SYS/edge\n"])
def test_check_config_exits_2_with_the_reason(tmp_path, capsys, content):
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    assert cli.main(["check-config", str(path)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.splitlines()) == 2


def test_run_with_an_impossible_node_name_exits_2_naming_it_and_check_config_a_bad_file(
        tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("mqtt: {url: 'mqtt://127.0.0.1:1'}\nhttp: {enabled: false}\n")
    result = run_cli("run", "-c", str(path), env={"NODE_NAME": "edge\n1"}, timeout=30)
    assert result.returncode == 2, result.stderr
    assert "NODE_NAME: the node name 'edge\\n1' contains the control" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    path.write_bytes(b"node: \xc3\x28\n")
    result = run_cli("check-config", str(path))
    assert result.returncode == 2 and "not UTF-8 text: byte 0xc3 at offset 6" in result.stderr
    assert "Traceback" not in result.stderr


# -- names and topic levels -----------------------------------------------------------------
@pytest.mark.parametrize(("name", "problem"), [
    ("edge\n1", "control"), ("edge\x1b1", "control"), ("a\u200bb", "U+200B"),
    ("caf\udce9", "not UTF-8 (byte 0xe9)"), ("x" * 70_000, "70000 bytes"), (" edge", "white"),
    ("a~b", "reserved"),
])
def test_node_names_mqtt_cannot_carry_are_refused_naming_the_source(monkeypatch, name, problem):
    monkeypatch.setenv("NODE_NAME", name)
    with pytest.raises(ConfigError) as caught:
        node_name("configured")
    assert caught.value.problems[0].startswith("NODE_NAME: ") and problem in str(caught.value)


def test_node_name_sources_in_order(monkeypatch):
    monkeypatch.setenv("NODE_NAME", "from-env")
    assert node_name("cfg") == "from-env"
    monkeypatch.delenv("NODE_NAME")
    assert node_name("cfg/1") == "cfg_1"
    assert client_id("cfg/1") == "edge-agent-cfg_1~s"


def test_sanitising_keeps_common_names_and_the_contract_replacement_and_never_collides():
    assert topic_safe("edge-1.example") == "edge-1.example"
    assert topic_safe("edge_1") == "edge_1" and topic_safe("a/b+c#d") == "a_b_c_d"
    assert injective_safe("edge_1") == "edge_1"
    outs = {name: injective_safe(name) for name in ["a/b", "a+b", "a#b", "a_b", "a_/b", "a/_b"]}
    assert outs["a/b"].startswith("a_b") and outs["a_b"] == "a_b"
    assert len(set(outs.values())) == len(outs)


@settings(max_examples=500, deadline=None)
@given(st.text(alphabet="ab_/+#~", max_size=8), st.text(alphabet="ab_/+#~", max_size=8))
def test_sanitising_is_injective_on_accepted_names(first, second):
    if "~" in first or "~" in second or first == second:
        return
    assert injective_safe(first) != injective_safe(second)
    for out in (injective_safe(first), injective_safe(second)):
        assert not set(out) & set("/+#")


@pytest.mark.parametrize(("prefix", "ok"), [
    ("edge", True), ("plant/line-3", True), ("$SYS/edge", False), ("a\x00", False),
    ("a//b", False), ("a/", False), ("", False), ("a/+/b", False), ("#", False),
    ("é" * 600, False),
])
def test_topic_prefixes(prefix, ok):
    if ok:
        assert check_prefix(prefix) == prefix
    else:
        with pytest.raises(ValueError):
            check_prefix(prefix)
    assert check_prefix("$share/x", allow_dollar=True)


@pytest.mark.parametrize("level", ["", "a/b", "a+b", "a#b", "a\nb", "x" * 300])
def test_sparkplug_ids_and_levels_must_be_one_printable_topic_level(level):
    with pytest.raises(ValueError):
        check_level(level)
    with pytest.raises(ConfigError, match=r"mqtt\.sparkplug\.group_id"):
        validate({"mqtt": {"sparkplug": {"group_id": level}}}, environ={})


def test_device_names_are_bounded_topic_levels():
    device = {"name": "d" * 129, "driver": "nope"}
    with pytest.raises(ConfigError, match=r"devices\[0\]\.name"):
        validate({"devices": [device]}, environ={}, strict_drivers=False)


# -- reload refusal of an empty or truncated file -------------------------------------------
RUNNING = {"devices": [{"name": "d", "driver": "nope"}]}


@pytest.mark.parametrize(("text", "refused"), [
    ("", "empty"),
    ("# nothing\n", "empty"),
    ("mqtt:\n  qos: 1\n", "no `devices:` key"),
    ("devices: []\n", None),
    ("devices:\n  - {name: d, driver: nope, enabled: false}\n", None),
    ("devices:\n  - {name: e, driver: nope}\n", None),
])
def test_a_reload_that_would_stop_everything_needs_an_explicit_devices_key(text, refused):
    running = validate(RUNNING, environ={}, strict_drivers=False)
    new = validate(config_source.parse(text, "f").data, environ={}, strict_drivers=False)
    reason = config_source.reload_refusal(running, new)
    assert (reason is None) if refused is None else (refused in reason)
    idle = validate({}, environ={}, strict_drivers=False)
    assert config_source.reload_refusal(idle, new) is None  # nothing running: nothing to stop


_ENV_NAME = st.lists(st.sampled_from(["MQTT", "URL", "QOS", "DEVICES", "0", "1", "NAME", "NODE",
                                      "HTTP", "", "X", "99999999999999999999"]),
                     min_size=1, max_size=4).map(lambda parts: "EDGE_AGENT_" + "__".join(parts))


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(_ENV_NAME, st.one_of(st.text(max_size=20), st.sampled_from(
    ["[1, 2]", "{a: 1}", "&a [*a]", "!!binary AAAA", "1e999", "null"])), max_size=4))
def test_any_env_overlay_gives_a_config_or_a_config_error(env):
    data = {"devices": [{"name": "d", "driver": "nope"}], "mqtt": "not a mapping"}
    with contextlib.suppress(ConfigError):
        validate(data, environ=env, strict_drivers=False)
