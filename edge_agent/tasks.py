"""Every task the agent creates has its outcome looked at, and the loop's last-resort handler
logs structured events: nothing of the agent's ever reaches stderr as a raw traceback.

`spawn` is how the core starts a task: a failure is logged as `task_failed` (with the task's
name) the moment the task ends, instead of "Task exception was never retrieved" when it is
garbage-collected. `install` routes what no one else catches (a callback that raised, a
future nobody awaited, an exception in a thread) to the structured log.
"""

from __future__ import annotations

import asyncio
import threading
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
            "task_failed", task=task.get_name(), error=repr(exc),
            exc_info=(type(exc), exc, exc.__traceback__))


def install(loop: asyncio.AbstractEventLoop) -> None:
    """Makes the loop's exception handler and the threads' excepthook log structured events."""
    log = logs.get("edge_agent.loop")

    def handler(_loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        fields: dict[str, Any] = {"message": context.get("message", "")}
        for key in ("task", "future", "handle"):
            if key in context:
                fields[key] = _describe(context[key])
        if isinstance(exc, BaseException):
            fields["error"] = repr(exc)
            fields["exc_info"] = (type(exc), exc, exc.__traceback__)
        log.error("loop_error", **fields)

    loop.set_exception_handler(handler)

    def thread_hook(args: threading.ExceptHookArgs) -> None:
        if args.exc_type is SystemExit:
            return
        thread = args.thread.name if args.thread is not None else None
        exc = args.exc_value
        log.error("thread_failed", thread=thread, error=repr(exc),
                  exc_info=(args.exc_type, exc, args.exc_traceback) if exc else None)

    threading.excepthook = thread_hook


def _describe(thing: Any) -> str:
    if isinstance(thing, asyncio.Task):
        return thing.get_name()
    text = repr(thing)
    return text if len(text) <= 200 else text[:200] + "..."
