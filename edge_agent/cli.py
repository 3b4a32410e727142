"""The `edge-agent` command line: run, check-config, scan, and the commands that installed
distributions register (simulate and demo, from edge-agent-simulators).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import textwrap
from collections.abc import Awaitable, Callable
from importlib.metadata import entry_points

import yaml

from edge_agent import __version__, fleet, identity
from edge_agent import config as config_mod
from edge_agent.errors import ConfigError

#: entry-point group of commands other distributions add (simulate and demo come from
#: edge-agent-simulators): each names a callable that adds one subparser, see add_commands
COMMANDS_GROUP = "edge_agent.commands"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-agent", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = add_command(commands, "run", "run the agent until SIGTERM/SIGINT",
                      "Runs the agent: polls the configured devices and publishes their readings "
                      "until SIGTERM or SIGINT, then flushes and publishes the offline status. "
                      "SIGHUP (or a changed file) reloads the config.",
                      "edge-agent run -c /etc/edge-agent/config.yaml")
    run.add_argument("-c", "--config", metavar="FILE|DIR", help=CONFIG_HELP)
    run.set_defaults(func=_run)

    check = add_command(commands, "check-config",
                        "validate a config file or a fleet's config directory",
                        "Validates a config and prints it resolved (defaults filled in, "
                        "environment overrides applied, secrets redacted). A fleet config "
                        "(devices with `nodes:` patterns, or a directory of config.yaml and "
                        "nodes/<node>.yaml files) is checked for every node; --node prints what "
                        "that node runs and its config hash. An invalid config prints one line "
                        "per problem with the file and the field's path and exits 2.",
                        "edge-agent check-config plc.yaml\n  edge-agent check-config -c plc.yaml"
                        "\n  edge-agent check-config deploy/base/config --node edge-a")
    check.add_argument("file", nargs="?", metavar="FILE|DIR",
                       help="the config file or directory to check")
    check.add_argument("-c", "--config", metavar="FILE|DIR", dest="config",
                       help="the same, as `run` takes it (default: $EDGE_AGENT_CONFIG, then "
                       f"{config_mod.DEFAULT_CONFIG_PATH})")
    check.add_argument("--node", metavar="NAME", help="print what this node's agent runs")
    check.set_defaults(func=_check_config)

    scan = add_command(commands, "scan", "list serial ports and USB devices; search a line",
                       "Lists serial ports and USB devices with their stable identities "
                       "(by-id path, VID:PID, serial number) and a config snippet for each. "
                       "With --mbus PORT, searches that M-Bus line for meters instead (read "
                       "only: a primary address sweep, or --secondary for an identification "
                       "number search).",
                       "edge-agent scan\n  edge-agent scan --mbus /dev/ttyUSB0 --secondary")
    scan.add_argument("--mbus", metavar="PORT", help="search this M-Bus line for meters")
    scan.add_argument("--secondary", action="store_true",
                      help="with --mbus: search by identification number (finds meters that "
                      "share a primary address)")
    scan.add_argument("--baudrate", type=int, default=None,
                      help="with --mbus: the line's rate (default 2400)")
    scan.set_defaults(func=_scan)

    add_commands(commands)
    return parser


CONFIG_HELP = ("config file, or a fleet's config directory (default: $EDGE_AGENT_CONFIG, "
               f"then {config_mod.DEFAULT_CONFIG_PATH})")


def add_command(commands: argparse._SubParsersAction[argparse.ArgumentParser], name: str,
                summary: str, description: str, example: str) -> argparse.ArgumentParser:
    """A subcommand whose --help says what it does and shows an example."""
    return commands.add_parser(name, help=summary, description=textwrap.fill(description, 88),
                               epilog=f"example:\n  {example}",
                               formatter_class=argparse.RawDescriptionHelpFormatter)


def add_commands(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Adds the commands other installed distributions register (COMMANDS_GROUP).

    An entry point's name is the command; it names a callable `(commands) -> None` that adds
    that subparser (with `add_command`) and sets its `func`. One that fails to import becomes
    a command that says why, so the rest of the CLI works without it.
    """
    for entry in sorted(entry_points(group=COMMANDS_GROUP), key=lambda e: e.name):
        try:
            entry.load()(commands)
        except Exception as exc:  # a broken extension must not take the CLI down
            broken = commands.add_parser(entry.name, help=f"(unavailable: {exc!r})")
            broken.set_defaults(func=_unavailable(entry.name, exc))


def _unavailable(name: str, exc: Exception) -> Callable[[argparse.Namespace], int]:
    def fail(args: argparse.Namespace) -> int:
        print(f"edge-agent: command '{name}' failed to load: {exc!r}", file=sys.stderr)
        return 1
    return fail


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except ConfigError as exc:
        print("edge-agent: invalid configuration:", file=sys.stderr)
        for line in exc.problems:
            print(line, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


def run_until_signalled(coroutine_factory: Callable[[asyncio.Event], Awaitable[None]],
                        on_hangup: Callable[[], None] | None = None) -> None:
    """Runs `coroutine_factory(stop_event)`; SIGTERM and SIGINT set the event, and SIGHUP
    calls `on_hangup()` on the loop when given (the agent reloads its config)."""

    async def runner() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        if on_hangup is not None:
            loop.add_signal_handler(signal.SIGHUP, on_hangup)
        await coroutine_factory(stop)

    asyncio.run(runner())


def _run(args: argparse.Namespace) -> int:
    from edge_agent import logs
    from edge_agent.identity import node_name
    from edge_agent.runtime import Agent

    path = config_mod.resolve_config_path(args.config)
    loaded = fleet.load_node(path)  # the shared config and this node's devices
    config = loaded.config
    logs.configure(config.log_level, node_name(config.node))
    ignored = fleet.ignored_node_files(path)
    if ignored:
        logs.get("edge_agent.config").warning(
            "node_files_ignored", config=str(path), files=[str(p) for p in ignored],
            hint=f"-c names a file: to run this node's file too, use -c {path.parent}")
    agent = Agent(config, config_path=path, config_hash=loaded.hash)
    run_until_signalled(agent.run, on_hangup=agent.request_reload)
    return 0


def _check_config(args: argparse.Namespace) -> int:
    if args.file and args.config:
        raise ConfigError(["check-config: name the file once, as FILE or as -c FILE"])
    path = config_mod.resolve_config_path(args.file or args.config)
    checked = fleet.check(path)  # every node's part, whatever --node says
    if args.node is None:
        if checked.nodes:
            print(f"# nodes named in this config: {', '.join(checked.nodes)}")
        data = fleet.printable(checked.shared, checked.devices)
    else:
        node = identity.topic_safe(args.node)
        loaded = fleet.load_node(path, node, strict_drivers=True)
        names = [device.name for device in loaded.config.devices if device.enabled]
        print(f"# node {node} runs {len(names)} device(s): {', '.join(names) or '-'}")
        print(f"# config hash (its status's \"config\"): {loaded.hash}")
        data = fleet.printable(loaded.config)
    print(yaml.safe_dump(data, sort_keys=False), end="")
    return 0


def _scan(args: argparse.Namespace) -> int:
    from edge_agent.scan import scan, search_line

    if args.mbus:
        return search_line("mbus", args.mbus, sys.stdout, secondary=args.secondary,
                           baudrate=args.baudrate)
    return scan(sys.stdout)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
