"""The docs stay true to the tree: links resolve, anchors exist, metric names are real, the
command lines shown parse.

Prose drifts silently when code moves; these checks catch the drift that can be checked
mechanically (a renamed heading, a moved file, a renamed metric) at test time instead of when a
reader follows a dead link or builds an alert on a series that does not exist.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

_FENCE = re.compile(r"^(```|~~~).*?^\1", re.MULTILINE | re.DOTALL)
_INLINE_CODE = re.compile(r"`[^`\n]*`")
_LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_HEADING = re.compile(r"^#{1,6}\s+(.+?)\s*#*\s*$", re.MULTILINE)
_METRIC = re.compile(r"\bedge_agent_[a-z0-9_]+")
# Suffixes the Prometheus client adds to a family's name in the exposition.
_SUFFIXES = ("_total", "_bucket", "_count", "_sum", "_created", "_info")


def _prose(text: str) -> str:
    """The text without code blocks, where `[x](y)` is code, not a link."""
    return _INLINE_CODE.sub("", _FENCE.sub("", text))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, markup and punctuation dropped, spaces to -."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link keeps its text
    text = text.replace("`", "").lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    anchors = set()
    for heading in _HEADING.findall(_FENCE.sub("", path.read_text())):
        slug = _slug(heading)
        count = seen.get(slug, 0)
        seen[slug] = count + 1
        anchors.add(slug if count == 0 else f"{slug}-{count}")
    return anchors


def _links() -> list[tuple[Path, str]]:
    return [(doc, target) for doc in DOCS for target in _LINK.findall(_prose(doc.read_text()))
            if not re.match(r"[a-z][a-z0-9+.-]*:", target)]  # http:, https:, mailto:


@pytest.mark.parametrize(("doc", "target"), _links(),
                         ids=lambda v: v.name if isinstance(v, Path) else v)
def test_relative_link_resolves(doc: Path, target: str) -> None:
    file_part, _, anchor = target.partition("#")
    path = (doc.parent / file_part).resolve() if file_part else doc
    assert path.exists(), f"{doc.relative_to(ROOT)}: link to missing {file_part}"
    if anchor and path.suffix == ".md":
        assert anchor in _anchors(path), (
            f"{doc.relative_to(ROOT)}: {path.name} has no heading for #{anchor}")


def _code_strings() -> str:
    sources = [*(ROOT / "edge_agent").rglob("*.py"), *(ROOT / "drivers").rglob("*.py")]
    return "\n".join(p.read_text() for p in sources)


def test_every_metric_named_in_the_docs_exists() -> None:
    code = _code_strings()
    defined = set(re.findall(r"[\"'](edge_agent_[a-z0-9_]+)[\"']", code))
    defined.add("edge_agent_info")  # the Info family "edge_agent" is exposed as edge_agent_info
    packages = {p.name for p in ROOT.rglob("edge_agent_*") if p.is_dir()}
    missing = []
    for doc in DOCS:
        for name in set(_METRIC.findall(doc.read_text())):
            if name in packages or any(name.startswith(f"{p}.") for p in packages):
                continue
            base = next((name.removesuffix(s) for s in _SUFFIXES if name.endswith(s)), name)
            if name not in defined and base not in defined:
                missing.append(f"{doc.relative_to(ROOT)}: {name}")
    assert not missing, "metrics named in the docs that the code does not expose:\n" + "\n".join(
        sorted(missing))


def _code(text: str) -> str:
    """The docs' code: fenced blocks and inline spans, one per line (prose is not a command)."""
    blocks = [m.group(0) for m in _FENCE.finditer(text)]
    spans = [m.group(0).strip("`") for m in _INLINE_CODE.finditer(_FENCE.sub("", text))]
    return "\n".join(blocks + spans)


def _command_lines() -> list[tuple[str, str]]:
    """Every `edge-agent COMMAND ...` the docs show, cut at the first shell or comment syntax."""
    found = []
    for doc in DOCS:
        for match in re.finditer(r"edge-agent ([a-z][a-z-]*(?: [^`#\n|>;&)]*)?)",
                                 _code(doc.read_text())):
            line = match.group(1).replace("[", " ").replace("]", " ").strip().rstrip(".,:")
            found.append((doc.name, line))
    return found


def test_every_command_line_in_the_docs_parses() -> None:
    from edge_agent.cli import build_parser

    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    wrong = []
    for doc, line in _command_lines():
        words = line.split()
        if words[0] not in commands.choices:  # prose: "edge-agent runs ...", "edge-agent COMMAND"
            continue
        try:
            with contextlib.redirect_stderr(io.StringIO()):
                parser.parse_args(words)
        except SystemExit:
            wrong.append(f"{doc}: edge-agent {line}")
    assert not wrong, "command lines in the docs that edge-agent refuses:\n" + "\n".join(wrong)


def _config_blocks() -> list[tuple[str, int, dict]]:
    """The YAML blocks that are agent configs: a `devices:` list of entries naming a driver."""
    import yaml

    blocks = []
    for doc in DOCS:
        text = doc.read_text()
        for match in re.finditer(r"^```ya?ml\n(.*?)^```", text, re.MULTILINE | re.DOTALL):
            data = yaml.safe_load(match.group(1))
            devices = data.get("devices") if isinstance(data, dict) else None
            if devices and all(isinstance(d, dict) and "driver" in d for d in devices):
                blocks.append((doc.name, text[:match.start()].count("\n") + 1, data))
    return blocks


@pytest.mark.parametrize(("doc", "line", "data"), _config_blocks(),
                         ids=lambda v: v if isinstance(v, (str, int)) else "")
def test_every_config_example_validates(doc: str, line: int, data: dict) -> None:
    """What an example shows is valid: every key known, every value in range. An example may
    leave out what it is not about (a required key, e.g. `points:` in a fleet example), and
    what a reader's machine supplies: a file it names (a DBC), a third-party driver it
    installs (docs/drivers.md)."""
    from edge_agent import config as config_mod
    from edge_agent.errors import ConfigError

    try:
        config_mod.validate({"mqtt": {}, **data}, environ={})
    except ConfigError as exc:
        real = [p for p in exc.problems if not p.endswith(": is required")
                and "no such file" not in p and "example-counter" not in p]
        assert not real, f"{doc}:{line}: the example does not validate:\n" + "\n".join(real)


def test_every_core_module_has_its_place_in_the_architecture() -> None:
    """docs/architecture.md says where each concern lives; a new module is named there."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    core = ROOT / "edge_agent"
    unnamed = [str(p.relative_to(core)) for p in sorted(core.rglob("*.py"))
               if p.name not in ("__init__.py", "__main__.py") and not p.stem.endswith("_pb2")
               and p.name not in text]
    assert not unnamed, "modules docs/architecture.md does not mention: " + ", ".join(unnamed)


def test_every_metric_the_agent_exposes_is_in_the_operations_table() -> None:
    source = (ROOT / "edge_agent" / "ops" / "metrics.py").read_text()
    exposed = set(re.findall(r"[\"'](edge_agent_[a-z0-9_]+)[\"']", source))
    table = (ROOT / "docs" / "operations.md").read_text()
    missing = sorted(name for name in exposed if not re.search(
        rf"^\| `{name}(_total)?`", table, re.MULTILINE))
    assert not missing, "metrics missing from docs/operations.md's table: " + ", ".join(missing)
