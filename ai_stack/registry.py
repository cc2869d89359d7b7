"""Which models exist, their state, loading and unloading at run time, and lookup by id or alias."""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import cast

from ai_stack.config import Config, ModelSpec
from ai_stack.engines.base import ChatEngine, SpeechEngine
from ai_stack.engines.catalog import ENGINES, EngineOptions
from ai_stack.errors import Conflict, InvalidRequest, ModelNotFound, ModelUnavailable
from ai_stack.threads import run_in_daemon_thread

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 5
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

    def lookup(self, name: str) -> ModelEntry:
        """The entry for an id or alias; ModelNotFound otherwise (never a fallback to another model)."""
        model_id = self._names.get(name)
        if model_id is None:
            raise ModelNotFound(f"The model '{name}' does not exist", param="model")
        return self.entries[model_id]

    async def start(self) -> None:
        """Begin loading every model marked autoload, in the background."""
        for entry in self.entries.values():
            if entry.spec.autoload:
                self.load(entry.spec.id)
        self._reaper = asyncio.create_task(self._unload_idle(), name="keep-alive")

    def keep_alive(self, name: str, seconds: float) -> None:
        """How long a model stays loaded once idle: negative = until unloaded, 0 = unload when idle now."""
        model_id = self.lookup(name).spec.id
        if seconds < 0:
            self._keep_alive.pop(model_id, None)
            self._expires.pop(model_id, None)
            return
        self._keep_alive[model_id] = seconds
        if not self._busy.get(model_id):
            self._expires[model_id] = time.monotonic() + seconds
            self._wake.set()

    @contextlib.contextmanager
    def in_use(self, model_id: str) -> Iterator[None]:
        """Mark a model busy while a request generates with it; its keep-alive counts from the end."""
        self._busy[model_id] = self._busy.get(model_id, 0) + 1
        self._expires.pop(model_id, None)
        try:
            yield
        finally:
            left = self._busy.pop(model_id) - 1
            if left:
                self._busy[model_id] = left
            elif model_id in self._keep_alive:
                self._expires[model_id] = time.monotonic() + self._keep_alive[model_id]
                self._wake.set()

    def busy(self, model_id: str) -> bool:
        """Whether a request is generating with the model now."""
        return bool(self._busy.get(model_id))

    def expires_at(self, model_id: str) -> float | None:
        """When the model will be unloaded if left idle (Unix time), or None: it stays loaded."""
        if model_id not in self._keep_alive:
            return None
        deadline = self._expires.get(model_id)
        if deadline is None:  # busy: its keep-alive starts when the request ends
            return time.time() + self._keep_alive[model_id]
        return time.time() + max(0.0, deadline - time.monotonic())

    async def _unload_idle(self) -> None:
        """Unload each model whose keep-alive has run out, sleeping until the next one is due."""
        while True:
            self._wake.clear()
            now = time.monotonic()
            for model_id, deadline in list(self._expires.items()):
                if deadline > now or self._busy.get(model_id):
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
                        await self.unload(model_id)
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
        entry.state, entry.error = ModelState.LOADING, None
        entry.task = asyncio.create_task(self._load(entry), name=f"load {entry.spec.id}")
        return entry

    async def _load(self, entry: ModelEntry) -> None:
        async with self._load_lock:
            started = time.monotonic()
            log.info("loading model %s (%s, %s)", entry.spec.id, entry.spec.engine, entry.spec.source)
            try:
                engine = await run_in_daemon_thread(
                    lambda: self._loader(entry.spec, self.config), name=f"load-{entry.spec.id}"
                )
            except asyncio.CancelledError:
                entry.state, entry.error = ModelState.UNLOADED, None
                raise
            except Exception as exc:
                entry.state, entry.error = ModelState.FAILED, str(exc) or type(exc).__name__
                log.error("model %s failed to load: %s", entry.spec.id, entry.error)
                return
            entry.engine, entry.state = engine, ModelState.READY
            entry.created = int(time.time())
            log.info("model %s ready in %.1f s", entry.spec.id, time.monotonic() - started)

    async def unload(self, name: str) -> ModelEntry:
        """Drop a model's engine; a loading model cannot be unloaded until its load ends."""
        entry = self.lookup(name)
        if entry.state == ModelState.LOADING:
            raise Conflict(
                f"The model '{entry.spec.id}' is loading; unload it once it is ready", param="model"
            )
        engine, entry.engine = entry.engine, None
        entry.state, entry.error = ModelState.UNLOADED, None
        self._keep_alive.pop(entry.spec.id, None)  # a keep_alive holds for one load
        self._expires.pop(entry.spec.id, None)
        if engine is not None:
            await asyncio.to_thread(engine.close)
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
            return entry, entry.engine
        retry = {"Retry-After": str(RETRY_AFTER_SECONDS)}
        if entry.state == ModelState.FAILED:
            raise ModelUnavailable(
                f"The model '{entry.spec.id}' failed to load: {entry.error}",
                param="model",
                code="model_load_failed",
                headers={"x-should-retry": "false"},
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
                await asyncio.to_thread(engine.close)
