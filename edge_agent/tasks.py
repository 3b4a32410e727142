"""Every task the agent creates has its outcome looked at, and the loop's last-resort handler
logs structured events: nothing of the agent's ever reaches stderr as a raw traceback.

`spawn` is how the core starts a task: a failure is logged as `task_failed` (with the task's
name) the moment the task ends, instead of "Task exception was never retrieved" when it is
garbage-collected. `install` routes what no one else catches on the loop (a callback that
raised, a task nobody awaited) to the structured log as `loop_error`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from edge_agent import logs

T = TypeVar("T")


def spawn(coroutine: Coroutine[Any, Any, T], name: str,
          log: Any = None) -> asyncio.Task[T]:
    """Starts `coroutine` as a task whose failure is logged, not left for the GC to print."""
    task = asyncio.get_running_loop().create_task(coroutine, name=name)
    task.add_done_callback(lambda done: _retrieve(done, log))
    return task


def _retrieve(task: asyncio.Task[Any], log: Any) -> None:
    if task.cancelled():
        return
    exc = task.exception()  # retrieved: asyncio will not complain about it later
    if exc is not None:
        (log or logs.get("edge_agent.tasks")).error(
            "task_failed", task=task.get_name(), **logs.exception_fields(exc, exc.__traceback__))


def install(loop: asyncio.AbstractEventLoop) -> None:
    """Makes the loop's last-resort exception handler log a structured `loop_error` (a
    callback that raised, a task that failed with no one awaiting it), naming the task or
    callback. Threads and uncaught exceptions are `edge_agent.logs`' (`thread_crashed`)."""
    log = logs.get("edge_agent.loop")

    def handler(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        fields: dict[str, Any] = {"message": str(context.get("message", ""))[:500]}
        for key in ("task", "future", "handle"):
            if key in context:
                fields[key] = _describe(context[key])
        if isinstance(exc, BaseException):
            fields.update(logs.exception_fields(exc, exc.__traceback__))
        log.error("loop_error", **fields)

    loop.set_exception_handler(handler)


def _describe(thing: Any) -> str:
    if isinstance(thing, asyncio.Task):
        return thing.get_name()
    text = repr(thing)
    return text if len(text) <= 200 else text[:200] + "..."
