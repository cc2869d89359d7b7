"""Which models exist, their state, loading and unloading at run time, and lookup by id or alias."""

from __future__ import annotations

import asyncio
import enum
import logging
import time
from collections.abc import Callable
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
        for entry in self.entries.values():
            if entry.task is not None and not entry.task.done():
                entry.task.cancel()
        for entry in self.entries.values():
            if entry.engine is not None:
                engine, entry.engine = entry.engine, None
                entry.state = ModelState.UNLOADED
                await asyncio.to_thread(engine.close)
