"""The one bridge from blocking work in a thread to asyncio: items it emits, then its result or error."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _End(Generic[R]):
    result: R | None = None
    error: BaseException | None = None


class ThreadStream(Generic[T, R]):
    """Runs `work(put)` in a daemon thread; iterating yields each item it puts, then raises its error.

    Once iteration ends, `result` holds what `work` returned. A stopping server never waits for the thread:
    whoever drives the work (a cancel event it watches) must tell it to stop.
    """

    def __init__(self, work: Callable[[Callable[[T], None]], R], name: str) -> None:
        self._loop = asyncio.get_running_loop()
        self._queue: asyncio.Queue[T | _End[R]] = asyncio.Queue()
        self.result: R | None = None
        self._ended = False
        threading.Thread(target=self._run, args=(work,), name=name, daemon=True).start()

    def _put(self, item: T | _End[R]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is listening any more
            self._loop.call_soon_threadsafe(self._queue.put_nowait, item)

    def _run(self, work: Callable[[Callable[[T], None]], R]) -> None:
        try:
            end: _End[R] = _End(result=work(self._put))
        except BaseException as exc:  # delivered to the awaiting task, not lost in the thread
            end = _End(error=exc)
        self._put(end)

    def __aiter__(self) -> ThreadStream[T, R]:
        return self

    async def __anext__(self) -> T:
        if self._ended:
            raise StopAsyncIteration
        item = await self._queue.get()
        if isinstance(item, _End):
            self._ended = True
            if item.error is not None:
                raise item.error
            self.result = item.result
            raise StopAsyncIteration
        return item


async def run_in_daemon_thread(fn: Callable[[], R], name: str) -> R:
    """Run fn in a daemon thread and await its result; a stopping server never waits for it."""
    stream: ThreadStream[None, R] = ThreadStream(lambda put: fn(), name)
    async for _ in stream:
        pass
    return stream.result  # type: ignore[return-value]
