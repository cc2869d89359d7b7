"""Overload control: per model, a bounded number of running and waiting requests, and their deadlines.

A request is admitted when it is prepared, before any response starts, so a refusal is a real HTTP 429. Its
place (a `Ticket`) is held by the prepared request (a `Hold`) until its events end, or until the prepared
request is dropped without ever generating. Admitted requests wait for a generation slot on the event loop (a
future in a FIFO queue, no thread); only running requests have engine threads, so the engines' own queues
never hold more than `max_running` requests. A `Relay` carries a generation's events so that a deadline or a
server shutdown ends them at once, whatever the engine is doing.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
import threading
import weakref
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Generic, TypeVar

from ai_stack.config import ModelSpec, ServerConfig
from ai_stack.errors import APIError, Overloaded, QueueTimeout, RequestTimeout, ServerShuttingDown
from ai_stack.metrics import Metrics

log = logging.getLogger(__name__)

T = TypeVar("T")

DEFAULT_RUNNING = 4  # for engines without a batch size of their own (the fake engine)
QUEUE_PER_RUNNING = 4  # the default max_queue: this many waiting requests per running one
MAX_RETRY_AFTER = 60  # seconds; OpenAI's client honours a Retry-After of up to 60 s
RELAY_DEPTH = 8  # events a relay holds before the generation waits for its reader

# The tickets the current request (its asyncio task) holds, by model: one request that prepares several
# prompts (legacy completions with a list of prompts, which run one after another) takes one place, not one
# per prompt.
_REQUEST_TICKETS: contextvars.ContextVar[dict[str, Ticket] | None] = contextvars.ContextVar(
    "ai_stack_request_tickets", default=None
)


def engine_slots(engine: object) -> int | None:
    """The engine's batch size (transformers `max_batch`, llama.cpp `parallel`), or None when it has none."""
    for name in ("max_batch", "parallel"):
        value = getattr(engine, name, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


@dataclass(frozen=True)
class Limits:
    """How many requests of one model may run, and how many more may wait."""

    running: int
    queue: int


def limits_for(server: ServerConfig, spec: ModelSpec | None, engine: object) -> Limits:
    """The model's own limits, else the server's, else the engine's batch size (and 4 waiting per slot)."""
    running = (
        (spec.max_running if spec is not None else None)
        or server.max_running
        or engine_slots(engine)
        or DEFAULT_RUNNING
    )
    queue = spec.max_queue if spec is not None and spec.max_queue is not None else server.max_queue
    return Limits(running, QUEUE_PER_RUNNING * running if queue is None else queue)


class Ticket:
    """One admitted request's place in its model's queue: it waits for a slot, runs, and is released."""

    def __init__(self, queue: ModelQueue, weight: int, now: float) -> None:
        self.queue = queue
        self.weight = weight  # generation slots it needs at once (its n choices, at most max_running)
        self.admitted = now  # loop time
        self.started = False  # it has had a slot at least once
        self.runs = 0  # generations running now
        self.run_started = 0.0  # loop time the last generation began
        self.released = False
        self.holds = 0
        self.waiter: asyncio.Future[None] | None = None

    @property
    def request_deadline(self) -> float | None:
        """Loop time by which the whole request must end (request_timeout), or None."""
        timeout = self.queue.server.request_timeout
        return self.admitted + timeout if timeout else None

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Wait (no thread) for a generation slot, then hold it for the block.

        Raises QueueTimeout or RequestTimeout when a deadline passes first, ServerShuttingDown at shutdown.
        """
        await self.queue.start(self)
        try:
            yield
        finally:
            self.queue.finish(self)

    def drop_hold(self) -> None:
        """One prepared request let go of this ticket; the last one releases its place."""
        self.holds -= 1
        if self.holds <= 0:
            self.queue.release(self)


def _let_go(ticket: Ticket) -> None:
    """A hold's finalizer: drop it on the event loop (a garbage collection may run in any thread)."""
    loop = ticket.queue.loop
    try:
        current: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        current = None
    if current is loop:
        ticket.drop_hold()
    else:
        with contextlib.suppress(RuntimeError):  # the loop is closed: the server is gone
            loop.call_soon_threadsafe(ticket.drop_hold)


class Hold:
    """A prepared request's claim on its ticket: released once, when closed or when no longer referenced.

    Copies of a prepared request (dataclasses.replace) share the hold, so it lasts while any of them lives.
    """

    def __init__(self, ticket: Ticket) -> None:
        self.ticket = ticket
        ticket.holds += 1
        self._finalizer = weakref.finalize(self, _let_go, ticket)
        self._finalizer.atexit = False

    def close(self) -> None:
        """Release the claim now (idempotent)."""
        self._finalizer()


class ModelQueue:
    """One model's admitted requests: a bounded count, FIFO slots, and the mean run time for Retry-After."""

    def __init__(self, owner: Admission, model_id: str, loop: asyncio.AbstractEventLoop) -> None:
        self.owner, self.model_id, self.loop = owner, model_id, loop
        self.server = owner.server
        self.limits = Limits(DEFAULT_RUNNING, QUEUE_PER_RUNNING * DEFAULT_RUNNING)
        self.tickets: dict[Ticket, None] = {}  # admitted and not released, in order
        self.held = 0  # the tickets' weights
        self.waiters: deque[Ticket] = deque()
        self.busy = 0  # slots in use
        self.running = 0  # requests generating now
        self.mean_seconds: float | None = None  # a moving average of run times

    @property
    def waiting(self) -> int:
        """Requests admitted and not generating (the queue depth)."""
        return max(0, len(self.tickets) - self.running)

    def check(self, limits: Limits, weight: int) -> int:
        """The weight a new request would take; Overloaded (429) when running plus waiting leave no room."""
        self.limits = limits
        self._reclaim(self.loop.time())
        weight = max(1, min(weight, limits.running))
        if self.held + weight > limits.running + limits.queue:
            if self.owner.metrics is not None:
                self.owner.metrics.record_rejection(self.model_id)
            retry = self.retry_after()
            raise Overloaded(
                f"The model '{self.model_id}' is busy: {limits.running} requests may run and {limits.queue} "
                f"wait, and all places are taken. Retry after {retry} s.",
                headers={"Retry-After": str(retry)},
            )
        return weight

    def admit(self, limits: Limits, weight: int) -> Ticket:
        """A place for a new request, or Overloaded (429) when running plus waiting are at their limit."""
        weight = self.check(limits, weight)
        ticket = Ticket(self, weight, self.loop.time())
        self.tickets[ticket] = None
        self.held += weight
        self._report()
        return ticket

    def retry_after(self) -> int:
        """Seconds until a place is likely to free: a mean run time shared by the running slots."""
        mean = self.mean_seconds if self.mean_seconds is not None else 1.0
        return max(1, min(MAX_RETRY_AFTER, math.ceil(mean / max(1, self.limits.running))))

    def _reclaim(self, now: float) -> None:
        """Release places of prepared requests that never started and are past their queue deadline."""
        timeout = self.server.queue_timeout
        if not timeout:
            return
        for ticket in list(self.tickets):
            if not ticket.started and ticket.waiter is None and now > ticket.admitted + timeout:
                log.debug("reclaiming a place of %s never used within queue_timeout", self.model_id)
                self.release(ticket)

    async def start(self, ticket: Ticket) -> None:
        """Take a slot for the ticket, waiting in line; raise when a deadline passes or the server stops."""
        if self.owner.closing:
            raise shutting_down()
        now = self.loop.time()
        timeout = self.server.queue_timeout
        queue_deadline = (now if ticket.started else ticket.admitted) + timeout if timeout else None
        if ticket.released:  # reclaimed: it sat unused past its queue deadline
            self._expired("queue")
            raise self._queue_timeout()
        if not self.waiters and self.busy + ticket.weight <= self.limits.running:
            self._run(ticket)
            return
        waiter: asyncio.Future[None] = self.loop.create_future()
        ticket.waiter = waiter
        self.waiters.append(ticket)
        self._report()
        deadlines = [d for d in (queue_deadline, ticket.request_deadline) if d is not None]
        until = min(deadlines) if deadlines else None
        try:
            async with asyncio.timeout_at(until):
                await waiter
        except BaseException as exc:
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.finish(ticket)  # the slot came as the wait was given up: pass it on
            else:
                with contextlib.suppress(ValueError):
                    self.waiters.remove(ticket)
                self._wake()  # the head of the line may have changed
            self._report()
            if isinstance(exc, TimeoutError):
                if queue_deadline is not None and until == queue_deadline:
                    self._expired("queue")
                    raise self._queue_timeout() from None
                self._expired("request")
                raise request_timeout(self.server) from None
            raise
        finally:
            ticket.waiter = None

    def _queue_timeout(self) -> QueueTimeout:
        timeout = self.server.queue_timeout
        retry = self.retry_after()
        return QueueTimeout(
            f"The request waited {timeout:g} s (the server's queue_timeout) for the model "
            f"'{self.model_id}' and was not started. Retry after {retry} s.",
            headers={"Retry-After": str(retry)},
        )

    def _expired(self, deadline: str) -> None:
        if self.owner.metrics is not None:
            self.owner.metrics.record_deadline(self.model_id, deadline)

    def _run(self, ticket: Ticket) -> None:
        self.busy += ticket.weight
        self.running += ticket.runs == 0
        ticket.runs += 1
        ticket.started = True
        ticket.run_started = self.loop.time()
        self._report()

    def finish(self, ticket: Ticket) -> None:
        """A generation of the ticket ended: free its slot and let the next in line run."""
        if ticket.runs <= 0:
            return
        ticket.runs -= 1
        self.running -= ticket.runs == 0
        self.busy -= ticket.weight
        seconds = self.loop.time() - ticket.run_started
        self.mean_seconds = seconds if self.mean_seconds is None else 0.8 * self.mean_seconds + 0.2 * seconds
        self._wake()
        self._report()

    def _wake(self) -> None:
        while self.waiters and self.busy + self.waiters[0].weight <= self.limits.running:
            ticket = self.waiters.popleft()
            if ticket.waiter is None or ticket.waiter.done():
                continue
            self._run(ticket)
            ticket.waiter.set_result(None)

    def release(self, ticket: Ticket) -> None:
        """The request is over: its place is free (idempotent)."""
        if ticket.released:
            return
        ticket.released = True
        if ticket in self.tickets:
            del self.tickets[ticket]
            self.held -= ticket.weight
        self._report()

    def fail_waiters(self, error: APIError) -> None:
        """End every wait in line with an error (the server is stopping)."""
        while self.waiters:
            ticket = self.waiters.popleft()
            if ticket.waiter is not None and not ticket.waiter.done():
                ticket.waiter.set_exception(error)
        self._report()

    def _report(self) -> None:
        if self.owner.metrics is not None:
            self.owner.metrics.record_queue(self.model_id, self.waiting, self.running)


def request_timeout(server: ServerConfig) -> RequestTimeout:
    """The error of a request stopped by request_timeout (not retried: it would only run as long again)."""
    return RequestTimeout(
        f"The request ran longer than {server.request_timeout:g} s (the server's request_timeout) and was "
        "stopped. Ask for fewer tokens (max_tokens) or raise request_timeout.",
        headers={"x-should-retry": "false"},
    )


def shutting_down(detail: str = "") -> ServerShuttingDown:
    """The error of a request the stopping server refuses or ends (a restarted one may serve a retry)."""
    return ServerShuttingDown(f"The server is shutting down{detail}", headers={"Retry-After": "5"})


class Admission:
    """Every model's queue (chat, speech): admits or refuses requests, ends the waiting ones at shutdown."""

    def __init__(self, server: ServerConfig, metrics: Metrics | None = None) -> None:
        self.server = server
        self.metrics = metrics
        self.closing = False
        self.queues: dict[str, ModelQueue] = {}

    def _queue(self, model_id: str) -> ModelQueue:
        queue = self.queues.get(model_id)
        if queue is None:
            queue = self.queues[model_id] = ModelQueue(self, model_id, asyncio.get_running_loop())
        return queue

    def _held(self, model_id: str) -> Ticket | None:
        """The ticket the current request already holds for the model, if any."""
        held = _REQUEST_TICKETS.get()
        ticket = held.get(model_id) if held is not None else None
        return ticket if ticket is not None and not ticket.released else None

    def check(self, model_id: str, spec: ModelSpec | None, engine: object, weight: int) -> None:
        """Refuse early (before a prompt is rendered) what admit would refuse; takes no place."""
        if self.closing:
            raise shutting_down()
        if self._held(model_id) is None:
            self._queue(model_id).check(limits_for(self.server, spec, engine), weight)

    def admit(self, model_id: str, spec: ModelSpec | None, engine: object, weight: int) -> Hold:
        """A hold on a place for a request to the model (shared by the request's other prompts).

        Raises Overloaded (429) when the model's running and waiting requests are at their limit, and
        ServerShuttingDown while the server stops. Call on the event loop.
        """
        if self.closing:
            raise shutting_down()
        ticket = self._held(model_id)
        if ticket is None:
            ticket = self._queue(model_id).admit(limits_for(self.server, spec, engine), weight)
            held = _REQUEST_TICKETS.get()
            if held is None:
                held = {}
                _REQUEST_TICKETS.set(held)
            held[model_id] = ticket
        return Hold(ticket)

    def shutdown(self) -> None:
        """Refuse new requests and end the waiting ones with ServerShuttingDown."""
        self.closing = True
        for queue in self.queues.values():
            queue.fail_waiters(shutting_down())


@dataclass
class _End:
    error: BaseException | None = None


class Relay(Generic[T]):
    """A generation's events passed through a short queue, so that `abort` ends the reader's stream at once.

    The source runs in a task of its own; the reader gets its items, then its end or error, unless `abort`
    comes first: then the generation is cancelled and the reader gets the abort's error next.
    """

    def __init__(self, source: AsyncIterator[T], cancels: Sequence[threading.Event]) -> None:
        self._source = source
        self._cancels = cancels
        self._items: asyncio.Queue[T | _End] = asyncio.Queue()
        self._space = asyncio.Semaphore(RELAY_DEPTH)
        self.aborted: str | None = None  # why, once aborted: "deadline", "shutdown"
        self.finished = False  # the source ended on its own

    def abort(self, reason: str, error: APIError) -> None:
        """Stop the generation and end the stream with error (once, unless it already ended)."""
        if self.aborted is not None or self.finished:
            return
        self.aborted = reason
        for cancel in self._cancels:
            cancel.set()
        self._items.put_nowait(_End(error))

    async def _pump(self) -> None:
        try:
            async for item in self._source:
                await self._space.acquire()
                self._items.put_nowait(item)
            self._items.put_nowait(_End())
        except Exception as exc:
            self._items.put_nowait(_End(exc))
        finally:
            await self._source.aclose()  # type: ignore[attr-defined]

    async def stream(self) -> AsyncIterator[T]:
        """The items; closing this iterator cancels the generation."""
        pump = asyncio.ensure_future(self._pump())
        try:
            while True:
                item = await self._items.get()
                if isinstance(item, _End):
                    if item.error is not None:
                        raise item.error
                    self.finished = True
                    return
                self._space.release()
                yield item
        finally:
            for cancel in self._cancels:
                cancel.set()
            pump.cancel()
            await asyncio.wait({pump})  # a cancel of this task still propagates
