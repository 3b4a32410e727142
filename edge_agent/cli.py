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
from edge_agent.errors import ConfigError, StartupError

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
                       "number search). With --modbus PORT, probes that line's Modbus unit ids "
                       "(read only, bounded time per unit) and suggests a device profile and "
                       "a config snippet per unit found.",
                       "edge-agent scan\n  edge-agent scan --mbus /dev/ttyUSB0 --secondary"
                       "\n  edge-agent scan --modbus tcp://10.0.0.7:502 --units 1-20")
    scan.add_argument("--mbus", metavar="PORT", help="search this M-Bus line for meters")
    scan.add_argument("--secondary", action="store_true",
                      help="with --mbus: search by identification number (finds meters that "
                      "share a primary address)")
    scan.add_argument("--baudrate", type=int, default=None,
                      help="with --mbus: the line's rate (default 2400); with --modbus on a "
                      "serial line: its rate (default 9600)")
    scan.add_argument("--modbus", metavar="PORT", help="probe the Modbus unit ids on this "
                      "line (serial path or tcp://host:port) and suggest a profile per unit")
    scan.add_argument("--units", default="1-247", help="with --modbus: the unit ids to probe, "
                      "e.g. 1-20 or 1,2,5-9 (default 1-247)")
    scan.add_argument("--timeout", type=float, default=0.3,
                      help="with --modbus: seconds per request (default 0.3)")
    scan.add_argument("--unit-time", type=float, default=3.0,
                      help="with --modbus: seconds at most per unit (default 3)")
    scan.add_argument("--parity", choices=("N", "E", "O"), default="N",
                      help="with --modbus on a serial line (default N)")
    scan.add_argument("--stopbits", type=int, choices=(1, 2), default=1,
                      help="with --modbus on a serial line (default 1)")
    scan.set_defaults(func=_scan)

    profiles = add_command(commands, "profiles", "list device profiles, or show one",
                           "Lists the device profiles, shipped and the user's (profiles_dir, "
                           "$EDGE_AGENT_PROFILES_DIR); with NAME, that profile's points and the "
                           "vendor document (and revision) its register map comes from. Exit 2 "
                           "for an unknown NAME.",
                           "edge-agent profiles\n  edge-agent profiles eastron-sdm630")
    profiles.add_argument("name", nargs="?", metavar="NAME", help="a profile to show")
    profiles.add_argument("-c", "--config", metavar="FILE",
                          help="take profiles_dir from this config")
    profiles.set_defaults(func=_profiles)

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
    except StartupError as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        return 1
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
    loaded = fleet.load_node(path)  # the shared config and this node's devices
    config = loaded.config
    logs.configure(config.log_level, node_name(config.node))
    ignored = fleet.ignored_node_files(path)
    if ignored:
        logs.get("edge_agent.config").warning(
            "node_files_ignored", config=str(path), files=[str(p) for p in ignored],
            hint=f"-c names a file: to run this node's file too, use -c {path.parent}")
    agent = Agent(config, config_path=path, config_hash=loaded.hash,
                  config_signature=loaded.signature)
    try:
        run_until_signalled(agent.run, on_hangup=agent.request_reload)
    except (StartupError, KeyboardInterrupt):
        raise
    except Exception as exc:  # a bug: its traceback goes to the structured log, not stderr
        logs.get("edge_agent.agent").critical(
            "agent_crashed", **logs.exception_fields(exc, exc.__traceback__))
        print(f"edge-agent: stopped by an unexpected error: {exc!r}", file=sys.stderr)
        return 1
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

    if args.mbus and args.modbus:
        print("edge-agent: scan: search one line at a time (--mbus or --modbus)",
              file=sys.stderr)
        return 2
    if args.mbus:
        return search_line("mbus", args.mbus, sys.stdout, secondary=args.secondary,
                           baudrate=args.baudrate)
    if args.modbus:
        return _scan_modbus(args, search_line)
    return scan(sys.stdout)


def _scan_modbus(args: argparse.Namespace, search_line: Callable[..., int]) -> int:
    from edge_agent import profiles

    try:
        units = _unit_ids(args.units)
    except ValueError as exc:
        print(f"edge-agent: scan: --units: {exc}", file=sys.stderr)
        return 2
    serial = None if args.modbus.startswith("tcp://") else {
        "baudrate": args.baudrate or 9600, "parity": args.parity, "stopbits": args.stopbits}
    rules = profiles.match_rules(profiles.Library(profiles.user_dir()))
    return search_line("modbus", args.modbus, sys.stdout, units=units, timeout=args.timeout,
                       unit_time=args.unit_time, serial=serial, profiles=rules)


def _unit_ids(text: str) -> list[int]:
    """`1-247`, `1,2,5-9`: Modbus unit ids, each 1..247 (0 is broadcast: never probed)."""
    units: set[int] = set()
    for part in text.split(","):
        first, _, last = part.strip().partition("-")
        try:
            low, high = int(first), int(last or first)
        except ValueError:
            raise ValueError(f"'{text}' is not a list of unit ids like 1-247 or 1,2,5-9") from None
        if not 1 <= low <= high <= 247:
            raise ValueError(f"unit ids run from 1 to 247, not {part.strip()}")
        units.update(range(low, high + 1))
    return sorted(units)


def _profiles(args: argparse.Namespace) -> int:
    from edge_agent import profiles_view

    return profiles_view.show(profiles_view.library_for(args.config), args.name)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
