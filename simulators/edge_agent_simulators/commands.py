"""`edge-agent simulate` and `edge-agent demo`: registered in the entry-point group
`edge_agent.commands` by this distribution, so the core CLI ships no test tooling and a
production image without edge-agent-simulators simply has no such commands."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import yaml

from edge_agent import config as config_mod
from edge_agent.cli import add_command, run_until_signalled

Commands = argparse._SubParsersAction  # what argparse's add_subparsers returns


def add_simulate(commands: Commands[argparse.ArgumentParser]) -> None:
    simulate = add_command(
        commands, "simulate", "start device simulators",
        "Starts simulated devices (a built-in set without a spec), reached through the same "
        "transports as real ones: ptys for serial devices, TCP for Modbus TCP, a pyusb backend "
        "for USB. Prints where each one is, the environment the agent needs, and an agent "
        "config for them; runs until stopped.",
        "edge-agent simulate --spec lab.yaml --broker mqtt://127.0.0.1:1883 > agent.yaml")
    simulate.add_argument("--spec", "-c", metavar="SPEC", dest="spec",
                          help="simulator spec file (default: the built-in set); `-c` is kept "
                          "for scripts written before --spec, and names a spec, not an agent "
                          "config")
    simulate.add_argument("--broker", default="mqtt://127.0.0.1:1883",
                          help="broker URL written into the printed agent config")
    simulate.set_defaults(func=_simulate)


def add_demo(commands: Commands[argparse.ArgumentParser]) -> None:
    demo = add_command(
        commands, "demo", "simulators + agent + broker + live view",
        "Starts the built-in simulators, a broker (the configured one, else Mosquitto if "
        "installed, else an embedded one), the agent, and a live view of the telemetry.",
        "edge-agent demo --duration 30")
    demo.add_argument("-c", "--config", metavar="FILE",
                      help="take the broker settings from this agent config")
    demo.add_argument("--broker", choices=("auto", "mosquitto", "embedded"), default="auto",
                      help="without a configured broker: start Mosquitto if installed (auto), "
                      "or the embedded one")
    demo.add_argument("--duration", type=float, default=None,
                      help="stop after this many seconds (default: run until stopped)")
    demo.set_defaults(func=_demo)


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
    from edge_agent_simulators.demo import demo

    broker_url = None
    if args.config or config_mod.resolve_config_path(None).exists():
        from edge_agent import fleet  # a config file or a fleet's directory

        configured = fleet.load_node(config_mod.resolve_config_path(args.config)).config
        broker_url = configured.mqtt.urls[0]
    run_until_signalled(lambda stop: demo(stop, broker_url, args.duration, args.broker))
    return 0
