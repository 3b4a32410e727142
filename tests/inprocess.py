"""The agent in-process, on an event loop in a thread: for tests that look inside it.

Each Agent has its own prometheus registry, so several can run in one test process. HTTP
binds port 0; `url()` tells where it ended up.
"""

from __future__ import annotations

import asyncio
import threading
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from edge_agent import config as config_mod
from edge_agent.runtime import Agent
from tests.helpers import wait_until


class AgentThread:
    def __init__(self, config: dict[str, Any], config_path: Path | None = None,
                 watch_interval: float | None = None) -> None:
        config = {**config, "http": {"listen": "127.0.0.1:0"}}  # always on, on a free port
        self.agent = Agent(config_mod.validate(config, strict_drivers=False), config_path,
                           watch_interval)
        self.loop = asyncio.new_event_loop()
        self._stop: asyncio.Event | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        asyncio.set_event_loop(self.loop)

        async def run() -> None:
            self._stop = asyncio.Event()
            await self.agent.run(self._stop)

        try:
            self.loop.run_until_complete(run())
        except BaseException as exc:
            self.error = exc

    def start(self) -> AgentThread:
        self.thread.start()
        wait_until(lambda: self.agent.http is not None or self.error, what="HTTP up")
        if self.error:
            raise self.error
        return self

    def call(self, func: Callable[[], Any]) -> Any:
        async def run() -> Any:
            return func()
        return asyncio.run_coroutine_threadsafe(run(), self.loop).result(10)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.agent.http.port}{path}"

    def get(self, path: str, timeout: float = 10) -> tuple[int, str]:
        return http_get(self.url(path), timeout)

    def metrics(self) -> dict[str, Any]:
        return scrape(self.url("/metrics"))

    def stop(self) -> None:
        if self._stop is not None and self.thread.is_alive():
            self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(30)
        if self.error:
            raise self.error


def http_get(url: str, timeout: float = 10) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def scrape(url: str) -> dict[str, Any]:
    """{family name: family} parsed with prometheus-client's own text parser."""
    status, text = http_get(url)
    assert status == 200, text
    return {family.name: family for family in text_string_to_metric_families(text)}


def sample_value(families: dict[str, Any], name: str, **labels: str) -> float | None:
    """The value of the sample `name` whose labels include `labels`, or None."""
    for family in families.values():
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None
