"""The `edge-agent` command line: run, check-config, simulate, demo, scan."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from pathlib import Path

import yaml

from edge_agent import __version__
from edge_agent import config as config_mod
from edge_agent.errors import ConfigError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="edge-agent", description=__doc__)
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    run = commands.add_parser("run", help="run the agent until SIGTERM/SIGINT")
    run.add_argument("-c", "--config", help="config file (default: $EDGE_AGENT_CONFIG, "
                     f"then {config_mod.DEFAULT_CONFIG_PATH})")
    run.set_defaults(func=_run)

    check = commands.add_parser("check-config", help="validate a config file")
    check.add_argument("file")
    check.set_defaults(func=_check_config)

    simulate = commands.add_parser("simulate", help="start device simulators")
    simulate.add_argument("-c", "--spec", help="simulator spec (default: the built-in set)")
    simulate.add_argument("--broker", default="mqtt://127.0.0.1:1883",
                          help="broker URL written into the printed agent config")
    simulate.set_defaults(func=_simulate)

    demo = commands.add_parser("demo", help="simulators + agent + broker + live view")
    demo.add_argument("-c", "--config", help="take the broker settings from this config")
    demo.add_argument("--broker", choices=("auto", "mosquitto", "embedded"), default="auto",
                      help="without a configured broker: start Mosquitto if installed (auto), "
                      "or the embedded one")
    demo.add_argument("--duration", type=float, default=None,
                      help="stop after this many seconds (default: run until stopped)")
    demo.set_defaults(func=_demo)

    scan = commands.add_parser("scan", help="list serial ports and USB devices")
    scan.set_defaults(func=_scan)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        print("edge-agent: invalid configuration:", file=sys.stderr)
        for line in exc.problems:
            print(line, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


def run_until_signalled(coroutine_factory, on_hangup=None) -> None:
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
    config = config_mod.load(Path(args.file))
    print(yaml.safe_dump(config_mod.redacted(config), sort_keys=False), end="")
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from edge_agent_simulators import runner, spec

    sim_spec = spec.load(Path(args.spec) if args.spec else None)

    async def serve(stop: asyncio.Event) -> None:
        sims = await runner.start(sim_spec)
        for sim in sims:
            print(f"# {sim.name}: {sim.where}")
        env = runner.agent_env(sims)
        if env:
            print("# the agent needs this environment: "
                  + " ".join(f"{key}={value}" for key, value in env.items()))
        print("# agent config for these devices:")
        print(yaml.safe_dump(runner.agent_config(sims, args.broker), sort_keys=False), flush=True)
        await stop.wait()
        for sim in sims:
            sim.close()

    run_until_signalled(serve)
    return 0


def _demo(args: argparse.Namespace) -> int:
    from edge_agent.demo import demo

    broker_url = None
    if args.config or config_mod.resolve_config_path(None).exists():
        configured = config_mod.load(config_mod.resolve_config_path(args.config),
                                     strict_drivers=False)
        broker_url = configured.mqtt.urls[0]
    run_until_signalled(lambda stop: demo(stop, broker_url, args.duration, args.broker))
    return 0


def _scan(args: argparse.Namespace) -> int:
    from edge_agent.scan import scan

    return scan(sys.stdout)


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        sys.exit(main())
