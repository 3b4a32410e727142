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

from edge_agent import __version__
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
    run.add_argument("-c", "--config", metavar="FILE", help=CONFIG_HELP)
    run.set_defaults(func=_run)

    check = add_command(commands, "check-config", "validate a config file",
                        "Validates a config and prints it resolved (defaults filled in, "
                        "environment overrides applied, secrets redacted). An invalid config "
                        "prints one line per problem with the field's path and exits 2.",
                        "edge-agent check-config plc.yaml\n  edge-agent check-config -c plc.yaml")
    check.add_argument("file", nargs="?", metavar="FILE", help="the config file to check")
    check.add_argument("-c", "--config", metavar="FILE", dest="config",
                       help="the same, as `run` takes it (default: $EDGE_AGENT_CONFIG, then "
                       f"{config_mod.DEFAULT_CONFIG_PATH})")
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


CONFIG_HELP = ("config file (default: $EDGE_AGENT_CONFIG, then "
               f"{config_mod.DEFAULT_CONFIG_PATH})")


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

    with asyncio.Runner(loop_factory=event_loop_factory()) as loop_runner:
        loop_runner.run(runner())


def event_loop_factory():
    """uvloop's event loop where it is installed (a dependency on Linux), else asyncio's.

    The agent spends much of its CPU in the event loop itself (a wake-up, a callback, a
    socket write per Modbus request and per MQTT message); uvloop does that in C and takes
    about 12 % off the CPU per reading on the peer rig (docs/performance.md).
    """
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _run(args: argparse.Namespace) -> int:
    from edge_agent import logs
    from edge_agent.identity import node_name
    from edge_agent.runtime import Agent

    path = config_mod.resolve_config_path(args.config)
    config = config_mod.load(path, strict_drivers=False)
    logs.configure(config.log_level, node_name(config.node))
    agent = Agent(config, config_path=path)
    run_until_signalled(agent.run, on_hangup=agent.request_reload)
    return 0


def _check_config(args: argparse.Namespace) -> int:
    if args.file and args.config:
        raise ConfigError(["check-config: name the file once, as FILE or as -c FILE"])
    config = config_mod.load(config_mod.resolve_config_path(args.file or args.config))
    print(yaml.safe_dump(config_mod.redacted(config), sort_keys=False), end="")
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
