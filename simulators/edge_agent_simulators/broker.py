"""A local MQTT broker for the demo and the tests: Mosquitto if installed, else amqtt.

Production always uses the configured broker; this exists so a newcomer's first command
works with nothing installed by hand.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    """Polls until something accepts connections on the port, or raises TimeoutError."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on 127.0.0.1:{port}") from None
            time.sleep(0.02)


class Mosquitto:
    """A throwaway mosquitto process on a free port, optionally with extra config lines."""

    def __init__(self, port: int | None = None, extra: str = "",
                 persistence: bool = False, detached: bool = False) -> None:
        self.port = port or free_port()
        #: in a session of its own: a terminal's Ctrl-C (SIGINT to the whole foreground
        #: process group) then reaches only its owner, who stops it after its clients
        self.detached = detached
        self.dir = Path(tempfile.mkdtemp(prefix="edge-agent-mosquitto-"))
        conf = self.dir / "mosquitto.conf"
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true",
                 f"persistence {'true' if persistence else 'false'}",
                 f"persistence_location {self.dir}/", "log_dest none", extra]
        conf.write_text("\n".join(lines) + "\n")
        self.conf = conf
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def start(self) -> Mosquitto:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        self.process = subprocess.Popen([binary, "-c", str(self.conf)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                        start_new_session=self.detached)
        wait_for_port(self.port)
        return self

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def kill(self) -> None:
        if self.process and self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def mosquitto_available() -> bool:
    return shutil.which("mosquitto") is not None or Path("/usr/sbin/mosquitto").exists()


async def start_embedded(port: int) -> Any:
    """amqtt in this process, for machines without Mosquitto."""
    from amqtt.broker import Broker

    broker = Broker({
        "listeners": {"default": {"type": "tcp", "bind": f"127.0.0.1:{port}"}},
        "plugins": {"amqtt.plugins.authentication.AnonymousAuthPlugin": {"allow_anonymous": True}},
    }, loop=asyncio.get_running_loop())
    await broker.start()
    return broker
