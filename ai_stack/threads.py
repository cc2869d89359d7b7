"""Bridges from blocking work in threads to asyncio."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


async def run_in_daemon_thread(fn: Callable[[], T], name: str) -> T:
    """Run fn in a daemon thread and await its result; a stopping server never waits for it."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def deliver(setter: Callable[[], None]) -> None:
        if not future.done():
            setter()

    def work() -> None:
        try:
            result = fn()
        except BaseException as exc:  # delivered to the awaiting task, not lost in the thread
            error = exc
            with contextlib.suppress(RuntimeError):  # the loop may be closed already
                loop.call_soon_threadsafe(deliver, lambda: future.set_exception(error))
            return
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(deliver, lambda: future.set_result(result))

    threading.Thread(target=work, name=name, daemon=True).start()
    return await future
