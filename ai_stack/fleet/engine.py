"""The `remote` engine: a model whose requests go to OpenAI-compatible upstream servers (no local weights)."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ai_stack.engines.base import EngineLoadError, VoiceInfo
from ai_stack.engines.catalog import RemoteOptions
from ai_stack.fleet.pool import UpstreamPool

if TYPE_CHECKING:
    from ai_stack.config import Config, ModelSpec


class RemoteEngine:
    """A chat or speech model served by upstream replicas; the routes forward its requests (fleet/proxy.py).

    It loads nothing locally: "loading" it starts its keep-alive clients and health checks.
    """

    engine_kind = "remote"
    device = "remote"
    memory_bytes = 0  # no local memory: the memory budget ignores it
    blends = False
    sample_rate = 0
    chat_template: str | None = None  # the upstreams render prompts; the gateway never does
    vocab_size: int | None = None

    def __init__(self, spec: ModelSpec, options: RemoteOptions, api_key: str | None) -> None:
        self.kind = spec.kind
        self.pool = UpstreamPool(spec.id, options.model or spec.id, options, api_key)
        if spec.kind == "speech":
            self.pool.voices = []  # listed by the upstreams' health checks
        # The gateway admits this many requests at once (its admission control), then queues.
        self.parallel = options.max_concurrency * len(options.upstreams)

    @property
    def context_length(self) -> int | None:
        """The context the upstreams report, when they do."""
        return self.pool.context_length

    @property
    def available(self) -> bool:
        """Whether an upstream can serve now (/health/ready counts a model without one as degraded)."""
        return self.pool.available

    def describe(self) -> list[dict[str, Any]]:
        """The upstreams as /v1/models shows them."""
        return self.pool.describe()

    def token_id(self, text: str) -> int | None:
        """No tokenizer here: the upstreams tokenize."""
        return None

    def voices(self) -> list[VoiceInfo]:
        """A speech model's voices as its upstreams list them (requests pass any voice through)."""
        return list(self.pool.voices or [])

    async def start(self) -> None:
        """Check the upstreams once and start their health checks (the registry awaits it after the load)."""
        await self.pool.start()

    async def aclose(self) -> None:
        """Stop the health checks and close the connections (the registry awaits it at unload)."""
        await self.pool.aclose()

    def close(self) -> None:
        """Nothing to free in a thread: see aclose."""


def load(spec: ModelSpec, config: Config, options: RemoteOptions) -> RemoteEngine:
    """Build a remote model's engine; its key comes from api_key_env (read now) or api_key."""
    api_key = options.api_key
    if options.api_key_env is not None:
        api_key = os.environ.get(options.api_key_env)
        if not api_key:
            raise EngineLoadError(f"the environment variable {options.api_key_env} (api_key_env) is not set")
    return RemoteEngine(spec, options, api_key)
