"""Which models exist, their state, loading and unloading at run time, and lookup by id or alias."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import enum
import logging
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import cast

from ai_stack.config import Config, ModelSpec, device_key
from ai_stack.engines.base import ChatEngine, SpeechEngine
from ai_stack.engines.catalog import ENGINES, EngineOptions
from ai_stack.errors import Conflict, InvalidRequest, ModelNotFound, ModelUnavailable
from ai_stack.threads import run_in_daemon_thread

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5
# A request for a model that loads on demand waits this long for the load (as the Ollama surface does), and
# a load waits this long for busy models to become idle so that least recently used ones can be unloaded.
LOAD_WAIT_SECONDS = 600.0
# A model just loaded, or just handed to a request, is held this long (unless a request starts using it
# first) before an idle unload or the memory budget may unload it: its request is about to generate.
PIN_SECONDS = 30.0
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".onnx", ".pth", ".pt")
Engine = ChatEngine | SpeechEngine
Loader = Callable[[ModelSpec, Config], Engine]


class ModelState(enum.StrEnum):
    """Lifecycle of a model in the registry."""

    UNLOADED = "unloaded"
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


@dataclass
class ModelEntry:
    """A configured model and, once loaded, its engine."""

    spec: ModelSpec
    options: EngineOptions  # spec.options as its engine's options model reads them (checked with the config)
    state: ModelState = ModelState.UNLOADED
    engine: Engine | None = None
    error: str | None = None
    created: int = field(default_factory=lambda: int(time.time()))
    task: asyncio.Task[None] | None = None
    memory_bytes: int | None = None  # measured at its load, while it is loaded
    memory_device: str | None = None  # the device that memory is on (`cuda` as `cuda:0`)
    retryable: bool = False  # failed only for want of room: a request may try the load again
    unloaded_because: str | None = None  # said to the requests an unload cut short


class MemoryBudgetError(Exception):
    """A load that the memory budget or max_loaded_models cannot make room for."""

    def __init__(self, message: str, retryable: bool) -> None:
        super().__init__(message)
        self.retryable = retryable


def size_text(size: int) -> str:
    """Bytes as a short human size ("1.5 GiB")."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TiB"


def weight_bytes(spec: ModelSpec, config: Config) -> int:
    """The size of a model's weight files when they are local (a first estimate of its memory), else 0."""
    from ai_stack.sources import EMBEDDED, SourceError, embedded_gguf_path, parse_source

    try:
        source = parse_source(spec.source, config.base_dir)
        if source.kind == "embedded":
            path = embedded_gguf_path(EMBEDDED[source.value], config.server.home)
        elif source.kind in ("gguf", "folder"):
            path = source.path
        else:
            return 0
        if path.is_file():
            return path.stat().st_size
        files = (f for f in path.rglob("*") if f.suffix in _WEIGHT_SUFFIXES) if path.is_dir() else ()
        return sum(f.stat().st_size for f in files if f.is_file())
    except (SourceError, OSError, KeyError):
        return 0


def _process_memory() -> tuple[int, dict[int, int]]:
    """This process's resident memory, and torch's allocated bytes per CUDA device where CUDA is in use."""
    import psutil

    rss = int(psutil.Process().memory_info().rss)
    cuda: dict[int, int] = {}
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        cuda = {i: int(torch.cuda.memory_allocated(i)) for i in range(torch.cuda.device_count())}
    return rss, cuda


def _memory_delta(before: tuple[int, dict[int, int]], after: tuple[int, dict[int, int]], device: str) -> int:
    """The memory a load added on its device: CUDA allocations there, else resident memory (CPU, MPS)."""
    if device.startswith("cuda"):
        index = int(device.partition(":")[2] or 0)
        return max(0, after[1].get(index, 0) - before[1].get(index, 0))
    return max(0, after[0] - before[0])


def release_free_memory() -> None:
    """Hand the C allocator's free memory back to the system (glibc's malloc_trim; elsewhere nothing).

    A load runs in a thread of its own, and glibc keeps what that thread freed (a 4-bit load's temporary
    full-precision weights: 2.4 GB of the default model in NF4) in the thread's arena, counted in RSS.
    """
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc
        return
    trim(0)


async def _close(engine: Engine) -> None:
    """Close an engine: on the loop when it has async work there (remote), else in a worker thread."""
    closer = getattr(engine, "aclose", None)
    if closer is not None:
        await closer()
    else:
        await asyncio.to_thread(engine.close)
    release_free_memory()


def _byte_count(value: object) -> int | None:
    """An engine's reported byte count when it is one (a non-negative int), else None."""
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


class ModelRegistry:
    """Loads several models in one process; requests pick one by id or alias."""

    def __init__(self, config: Config, loader: Loader) -> None:
        self.config = config
        self._loader = loader
        self.entries: dict[str, ModelEntry] = {
            spec.id: ModelEntry(spec, ENGINES[spec.engine].options.model_validate(spec.options))
            for spec in config.models
        }
        self._names = {name: spec.id for spec in config.models for name in spec.names}
        # One load at a time: on a small machine parallel loads only fight over cores and memory.
        self._load_lock = asyncio.Lock()
        # keep_alive (Ollama's API): seconds a model stays loaded once idle. A model without one stays loaded
        # until it is unloaded; one keep_alive holds until the model is unloaded. One slot per model at most.
        self._keep_alive: dict[str, float] = {}
        self._expires: dict[str, float] = {}  # model id -> monotonic time to unload it (idle models only)
        self._busy: dict[str, int] = {}  # model id -> requests generating with it now
        self._wake = asyncio.Event()
        self._reaper: asyncio.Task[None] | None = None
        # Memory budget: when each model was last used (least recently used idle models are unloaded first),
        # models held for a request about to start (model id -> monotonic time the hold ends), the last
        # measured (device, bytes) of each model (the estimate for its next load), and an event set whenever a
        # model becomes idle or is unloaded. One slot per configured model in each.
        self._last_used: dict[str, float] = {}
        self._pinned: dict[str, float] = {}
        self._waiting: dict[str, int] = {}  # model id -> requests waiting for its on-demand load
        self._measured: dict[str, tuple[str, int]] = {}
        self._released = asyncio.Event()

    def lookup(self, name: str) -> ModelEntry:
        """The entry for an id or alias; ModelNotFound otherwise (never a fallback to another model)."""
        model_id = self._names.get(name)
        if model_id is None:
            raise ModelNotFound(f"The model '{name}' does not exist", param="model")
        return self.entries[model_id]

    async def start(self) -> None:
        """Begin loading every model marked autoload (no more than max_loaded_models), in the background."""
        limit = self.config.server.max_loaded_models
        for index, entry in enumerate(e for e in self.entries.values() if e.spec.autoload):
            if limit is not None and index >= limit:
                log.info("model %s not loaded at start: max_loaded_models is %d", entry.spec.id, limit)
                continue
            self.load(entry.spec.id)
        self._reaper = asyncio.create_task(self._unload_idle(), name="keep-alive")

    @property
    def budgeted(self) -> bool:
        """Whether a memory budget or max_loaded_models limits the models loaded at once."""
        server = self.config.server
        return server.memory_budget is not None or server.max_loaded_models is not None

    def loads_on_demand(self, entry: ModelEntry) -> bool:
        """Whether a request for this model, unloaded, loads it and waits (a budget or its keep_alive)."""
        return self.config.server.load_on_request and (self.budgeted or entry.spec.keep_alive is not None)

    async def wait_ready(self, name: str, kind: str | None = None, *, blocking: bool = False) -> None:
        """For a model that loads on demand: start its load if need be and wait for it (then serve it).

        blocking: any unloaded model loads and is waited for when load_on_request allows (Ollama's clients
        block on a load; they do not retry a 503). A model of another kind than the request's is left alone
        (the engine lookup says why it cannot serve).
        """
        entry = self.lookup(name)
        on_demand = self.loads_on_demand(entry) or (blocking and self.config.server.load_on_request)
        if not on_demand or (kind is not None and entry.spec.kind != kind):
            return
        if entry.state == ModelState.UNLOADED or (entry.state == ModelState.FAILED and entry.retryable):
            self.load(entry.spec.id)
        if entry.state == ModelState.LOADING and entry.task is not None:
            model_id = entry.spec.id
            self._waiting[model_id] = self._waiting.get(model_id, 0) + 1
            try:
                await asyncio.wait({entry.task}, timeout=LOAD_WAIT_SECONDS)
            finally:
                if self._waiting[model_id] > 1:
                    self._waiting[model_id] -= 1
                else:
                    del self._waiting[model_id]

    def keep_alive(self, name: str, seconds: float) -> None:
        """How long a model stays loaded once idle: negative = until unloaded, 0 = unload when idle now.

        It overrides the model's configured keep_alive until the model is unloaded.
        """
        model_id = self.lookup(name).spec.id
        self._keep_alive[model_id] = seconds
        if seconds < 0:
            self._expires.pop(model_id, None)
            return
        if not self._busy.get(model_id):
            self._expires[model_id] = time.monotonic() + seconds
            self._wake.set()

    def _idle_limit(self, model_id: str) -> float | None:
        """Seconds the model stays loaded once idle (a request's keep_alive, else its config's), or None."""
        seconds = self._keep_alive.get(model_id, self.entries[model_id].spec.keep_alive)
        return None if seconds is None or seconds < 0 else seconds

    def _pin(self, model_id: str) -> None:
        # Only chat requests release a hold (in_use, when they start generating); a speech model is not held.
        if self.entries[model_id].spec.kind == "chat":
            self._pinned[model_id] = time.monotonic() + PIN_SECONDS

    @contextlib.contextmanager
    def in_use(self, model_id: str) -> Iterator[None]:
        """Mark a model busy while a request generates with it; its keep-alive counts from the end.

        A request whose model is unloaded meanwhile fails with a ModelUnavailable that says so.
        """
        entry = self.entries.get(model_id)
        engine = entry.engine if entry is not None else None
        self._busy[model_id] = self._busy.get(model_id, 0) + 1
        self._expires.pop(model_id, None)
        self._pinned.pop(model_id, None)
        self._last_used[model_id] = time.monotonic()
        try:
            yield
        except Exception as exc:
            if entry is not None and (engine is None or entry.engine is not engine):
                raise ModelUnavailable(
                    f"The model '{model_id}' was unloaded while this request was using it "
                    f"({entry.unloaded_because or 'it was unloaded'}); retry to load it again",
                    param="model",
                    code="model_unloaded",
                    headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
                ) from exc
            raise
        finally:
            self._last_used[model_id] = time.monotonic()
            left = self._busy.pop(model_id) - 1
            if left:
                self._busy[model_id] = left
            else:
                self._released.set()
                limit = self._idle_limit(model_id) if model_id in self.entries else None
                if limit is not None:
                    self._expires[model_id] = time.monotonic() + limit
                    self._wake.set()

    def busy(self, model_id: str) -> bool:
        """Whether a request is generating with the model now."""
        return bool(self._busy.get(model_id))

    def expires_at(self, model_id: str) -> float | None:
        """When the model will be unloaded if left idle (Unix time), or None: it stays loaded."""
        limit = self._idle_limit(model_id)
        if limit is None:
            return None
        deadline = self._expires.get(model_id)
        if deadline is None:  # busy: its keep-alive starts when the request ends
            return time.time() + limit
        return time.time() + max(0.0, deadline - time.monotonic())

    async def _unload_idle(self) -> None:
        """Unload each model whose keep-alive has run out, sleeping until the next one is due."""
        while True:
            self._wake.clear()
            now = time.monotonic()
            for model_id, deadline in list(self._expires.items()):
                if deadline > now or self._busy.get(model_id):
                    continue
                if self._pinned.get(model_id, 0.0) > now:  # a request is about to use it
                    self._expires[model_id] = self._pinned[model_id]
                    continue
                entry = self.entries[model_id]
                if entry.state == ModelState.LOADING:
                    self._expires[model_id] = now + 1.0  # due once it is loaded
                    continue
                self._expires.pop(model_id, None)
                self._keep_alive.pop(model_id, None)
                if entry.state == ModelState.READY:
                    log.info("model %s idle past its keep_alive: unloading", model_id)
                    try:
                        await self.unload(model_id, "it was idle past its keep_alive")
                    except Exception:
                        log.exception("unloading idle model %s failed", model_id)
            due = [d for m, d in self._expires.items() if not self._busy.get(m)]
            timeout = max(0.0, min(due) - time.monotonic()) if due else None
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout)

    def load(self, name: str) -> ModelEntry:
        """Start loading a model unless it is ready or loading; returns at once."""
        entry = self.lookup(name)
        if entry.state in (ModelState.READY, ModelState.LOADING):
            return entry
        entry.state, entry.error, entry.retryable = ModelState.LOADING, None, False
        entry.task = asyncio.create_task(self._load(entry), name=f"load {entry.spec.id}")
        return entry

    async def _load(self, entry: ModelEntry) -> None:
        async with self._load_lock:
            started = time.monotonic()
            model_id = entry.spec.id
            try:
                await self._make_room(entry)
                log.info("loading model %s (%s, %s)", model_id, entry.spec.engine, entry.spec.source)
                engine, device, used = await run_in_daemon_thread(
                    lambda: self._measured_load(entry.spec), name=f"load-{model_id}"
                )
                starter = getattr(engine, "start", None)  # an engine with work on the loop (remote)
                if starter is not None:
                    await starter()
            except asyncio.CancelledError:
                entry.state, entry.error = ModelState.UNLOADED, None
                raise
            except MemoryBudgetError as exc:
                entry.state, entry.error, entry.retryable = ModelState.FAILED, str(exc), exc.retryable
                log.error("model %s not loaded: %s", model_id, entry.error)
                return
            except Exception as exc:
                entry.state, entry.error = ModelState.FAILED, str(exc) or type(exc).__name__
                log.error("model %s failed to load: %s", model_id, entry.error)
                return
            entry.engine, entry.state, entry.unloaded_because = engine, ModelState.READY, None
            entry.memory_bytes, entry.memory_device = used, device
            self._measured[model_id] = (device, used)
            entry.created = int(time.time())
            self._last_used[model_id] = time.monotonic()
            if self._waiting.get(model_id):  # held for the requests that wait for it
                self._pin(model_id)
            log.info(
                "model %s ready in %.1f s (%s on %s)",
                model_id,
                time.monotonic() - started,
                size_text(used),
                device,
            )
            await self._fit_loaded(entry)
            limit = self._idle_limit(model_id)
            ready = entry.state == ModelState.READY and not self._busy.get(model_id)
            if ready and limit is not None and model_id not in self._expires:
                # The request that asked for the load gets there first, even with keep_alive 0.
                self._expires[model_id] = time.monotonic() + max(limit, PIN_SECONDS)
                self._wake.set()

    def _measured_load(self, spec: ModelSpec) -> tuple[Engine, str, int]:
        """Load in this worker thread; the engine, its device and the memory it took there."""
        before = _process_memory()
        engine = self._loader(spec, self.config)
        release_free_memory()  # what the load freed, before it is measured
        after = _process_memory()
        device = device_key(str(getattr(engine, "device", "cpu")))
        # An engine may report what it holds (`memory_bytes`); else the growth of the process's memory on the
        # device; else (memory torch does not see, such as llama.cpp's on CUDA) its weight files' size.
        # A cache that grows while the model serves (transformers' prefix cache) counts with its whole budget
        # (`reserved_bytes`), so that models fitting the budget at load still fit once their caches are full.
        reserved = _byte_count(getattr(engine, "reserved_bytes", 0)) or 0
        own = _byte_count(getattr(engine, "memory_bytes", None))
        if own is not None:
            return engine, device, own + reserved
        loaded = _memory_delta(before, after, device) or weight_bytes(spec, self.config)
        return engine, device, loaded + reserved

    # --- the memory budget ---------------------------------------------------------------------------------

    def _budget(self, device: str) -> int | None:
        budget = self.config.server.memory_budget
        if budget is None:
            return None
        return budget.get(device_key(device), budget.get("*"))

    def _estimate(self, spec: ModelSpec) -> tuple[str, int]:
        """Where a model will load and about how much memory it will take: its last load, else its files."""
        known = self._measured.get(spec.id)
        if known is not None:
            return known
        device = spec.device
        if device == "auto":
            torch = sys.modules.get("torch")  # imported by an engine already, or the model is no torch model
            cuda = torch is not None and torch.cuda.is_available()
            device = "cuda" if cuda else "cpu"
        return device_key(device), weight_bytes(spec, self.config)

    def _loaded(self, device: str | None = None, but: str | None = None) -> list[ModelEntry]:
        return [
            e
            for e in self.entries.values()
            if e.state == ModelState.READY
            and e.spec.id != but
            and e.spec.engine != "remote"
            and (device is None or e.memory_device == device_key(device))
        ]

    def _used(self, device: str, but: str | None = None) -> int:
        return sum(e.memory_bytes or 0 for e in self._loaded(device, but))

    def _least_recently_used(self, but: str, device: str | None) -> ModelEntry | None:
        """The idle loaded model (not generating, not held for a request) used longest ago, if any."""
        now = time.monotonic()
        idle = [
            e
            for e in self._loaded(device, but)
            if not self._busy.get(e.spec.id) and self._pinned.get(e.spec.id, 0.0) <= now
        ]
        return min(idle, key=lambda e: self._last_used.get(e.spec.id, 0.0), default=None)

    def _shortfall(self, model_id: str, device: str, need: int) -> str | None:
        """Why loading a model does not fit now ("count" or "bytes"), or None when it fits."""
        limit = self.config.server.max_loaded_models
        if limit is not None and len(self._loaded(but=model_id)) + 1 > limit:
            return "count"
        budget = self._budget(device)
        if budget is not None and self._used(device, model_id) + need > budget:
            return "bytes"
        return None

    async def _make_room(self, entry: ModelEntry) -> None:
        """Before a load: unload least recently used idle models until it fits; wait while others are busy."""
        if not self.budgeted or entry.spec.engine == "remote":  # a remote model takes no local memory
            return
        model_id = entry.spec.id
        device, need = self._estimate(entry.spec)
        budget = self._budget(device)
        if budget is not None and need > budget:
            raise MemoryBudgetError(
                f"it needs about {size_text(need)} on {device}, more than its memory_budget "
                f"({size_text(budget)})",
                retryable=False,
            )
        deadline = time.monotonic() + LOAD_WAIT_SECONDS
        while True:
            self._released.clear()
            shortfall = self._shortfall(model_id, device, need)
            if shortfall is None:
                return
            victim = self._least_recently_used(model_id, device if shortfall == "bytes" else None)
            if victim is not None:
                log.info(
                    "unloading model %s, the least recently used idle one, to make room for %s",
                    victim.spec.id,
                    model_id,
                )
                await self.unload(victim.spec.id, f"to make room for the model '{model_id}' (memory budget)")
                continue
            now = time.monotonic()
            if now >= deadline:
                busy = ", ".join(e.spec.id for e in self._loaded(but=model_id) if self._busy.get(e.spec.id))
                what = "max_loaded_models" if shortfall == "count" else f"the memory_budget of {device}"
                raise MemoryBudgetError(
                    f"{what} is full and the loaded models ({busy or 'none idle'}) stayed in use for "
                    f"{LOAD_WAIT_SECONDS:.0f} s; retry later",
                    retryable=True,
                )
            holds = [t for t in self._pinned.values() if t > now]
            timeout = min([deadline - now, *(t - now for t in holds)])
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._released.wait(), timeout)

    async def _fit_loaded(self, entry: ModelEntry) -> None:
        """After a load, with its measured memory: unload idle models while over the device's budget.

        A model that alone exceeds its device's budget is unloaded again and fails with the reason.
        """
        device, used = entry.memory_device or "cpu", entry.memory_bytes or 0
        budget = self._budget(device)
        if budget is None:
            return
        model_id = entry.spec.id
        if used > budget:
            engine, entry.engine = entry.engine, None
            entry.memory_bytes = None
            if engine is not None:
                await _close(engine)
            entry.state, entry.retryable = ModelState.FAILED, False
            entry.error = (
                f"it takes {size_text(used)} on {device}, more than its memory_budget ({size_text(budget)})"
            )
            log.error("model %s unloaded again: %s", model_id, entry.error)
            return
        while self._used(device) > budget:
            victim = self._least_recently_used(model_id, device)
            if victim is None:
                log.warning(
                    "memory on %s is over its budget (%s of %s) until busy models are idle",
                    device,
                    size_text(self._used(device)),
                    size_text(budget),
                )
                return
            await self.unload(victim.spec.id, f"to make room for the model '{model_id}' (memory budget)")

    async def unload(self, name: str, reason: str | None = None) -> ModelEntry:
        """Drop a model's engine; a loading model cannot be unloaded until its load ends.

        Requests still generating with it end with an error that gives the reason.
        """
        entry = self.lookup(name)
        if entry.state == ModelState.LOADING:
            raise Conflict(
                f"The model '{entry.spec.id}' is loading; unload it once it is ready", param="model"
            )
        engine, entry.engine = entry.engine, None
        entry.state, entry.error, entry.retryable = ModelState.UNLOADED, None, False
        entry.memory_bytes = None
        if engine is not None:
            entry.unloaded_because = reason or f"POST /v1/models/{entry.spec.id}/unload or keep_alive 0"
        self._keep_alive.pop(entry.spec.id, None)  # a keep_alive holds for one load
        self._expires.pop(entry.spec.id, None)
        self._pinned.pop(entry.spec.id, None)
        self._released.set()
        if engine is not None:
            await _close(engine)
            log.info("model %s unloaded", entry.spec.id)
        return entry

    def chat_engine(self, name: str) -> tuple[ModelEntry, ChatEngine]:
        """The ready chat engine for a request's `model`, or the error that says why it cannot serve."""
        entry, engine = self.engine_for(name, "chat")
        return entry, cast(ChatEngine, engine)

    def speech_engine(self, name: str) -> tuple[ModelEntry, SpeechEngine]:
        """The ready speech engine for a request's `model`, or the error that says why it cannot serve."""
        entry, engine = self.engine_for(name, "speech")
        return entry, cast(SpeechEngine, engine)

    def engine_for(self, name: str, kind: str) -> tuple[ModelEntry, Engine]:
        """The ready engine for a request, or the error that says why it cannot serve now."""
        entry = self.lookup(name)
        if entry.spec.kind != kind:
            raise InvalidRequest(
                f"The model '{name}' is a {entry.spec.kind} model and cannot serve {kind} requests",
                param="model",
                code="model_kind_mismatch",
            )
        if entry.state == ModelState.READY and entry.engine is not None:
            self._last_used[entry.spec.id] = time.monotonic()
            if self.budgeted or self._idle_limit(entry.spec.id) is not None:
                self._pin(entry.spec.id)  # not unloaded before its request starts generating
            return entry, entry.engine
        retry = {"Retry-After": str(RETRY_AFTER_SECONDS)}
        if entry.state == ModelState.FAILED:
            raise ModelUnavailable(
                f"The model '{entry.spec.id}' failed to load: {entry.error}",
                param="model",
                code="model_load_failed",
                headers=retry if entry.retryable else {"x-should-retry": "false"},
            )
        if entry.state == ModelState.UNLOADED:
            if not self.config.server.load_on_request:
                raise ModelUnavailable(
                    f"The model '{entry.spec.id}' is not loaded; POST /v1/models/{entry.spec.id}/load first",
                    param="model",
                    code="model_not_loaded",
                    headers={"x-should-retry": "false"},
                )
            self.load(entry.spec.id)
        raise ModelUnavailable(
            f"The model '{entry.spec.id}' is loading; retry in a few seconds",
            param="model",
            code="model_loading",
            headers=retry,
        )

    async def close(self) -> None:
        """Cancel pending loads and unload every model."""
        if self._reaper is not None:
            self._reaper.cancel()
        for entry in self.entries.values():
            if entry.task is not None and not entry.task.done():
                entry.task.cancel()
        for entry in self.entries.values():
            if entry.engine is not None:
                engine, entry.engine = entry.engine, None
                entry.state = ModelState.UNLOADED
                await _close(engine)
