"""A remote model's upstreams: keep-alive clients, health checks, least-outstanding choice, affinity, drain.

Each upstream is an OpenAI-compatible server (another ai-stack, vLLM, SGLang, llama-server) at a base URL
ending in /v1. A request goes to the healthy, undrained upstream with the fewest requests in flight (ties go
to the one picked least), unless its conversation was last served by another that still has room: that one
keeps its prefix cache. A connection error or a 5xx takes an upstream out until a health check
(`GET {url}/models`) finds it serving again.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import hashlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from ai_stack.engines.base import VoiceInfo
from ai_stack.engines.catalog import RemoteOptions
from ai_stack.errors import ModelUnavailable

log = logging.getLogger(__name__)

# Seconds of response latency (request sent to response headers) counted per upstream.
LATENCY_BUCKETS: tuple[float, ...] = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
# An idle pooled connection is dropped after this many seconds: below the common 5 s keep-alive of servers
# (uvicorn, ai-stack), so the gateway does not reuse a connection the upstream is closing.
KEEPALIVE_EXPIRY = 4.0
RETRY_AFTER_SECONDS = 5
MAX_VOICES = 1000  # a speech model's voices kept from its upstreams' listings


@dataclass
class UpstreamStats:
    """What one upstream has done: requests, errors by kind, and response latency (a histogram)."""

    requests: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    latency_counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    latency_sum: float = 0.0

    def error(self, kind: str) -> None:
        """Count one error ("connect", "timeout", "status_5xx", "broken_stream", ...)."""
        self.errors[kind] = self.errors.get(kind, 0) + 1

    def latency(self, seconds: float) -> None:
        """Count one response's latency."""
        self.latency_counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.latency_sum += seconds


class Upstream:
    """One upstream server: its keep-alive client, health, drain flag and requests in flight."""

    def __init__(self, url: str, options: RemoteOptions, api_key: str | None) -> None:
        self.url = url
        self.max_concurrency = options.max_concurrency
        headers = {"Accept-Encoding": "identity"}  # bytes pass straight through; no gzip on streams
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self.client = httpx.AsyncClient(
            base_url=url + "/",
            headers=headers,
            timeout=httpx.Timeout(
                connect=options.connect_timeout,
                read=options.read_timeout,
                write=options.read_timeout,
                pool=options.read_timeout,
            ),
            # One connection more than the cap: a health check never waits behind requests.
            limits=httpx.Limits(
                max_connections=options.max_concurrency + 1,
                max_keepalive_connections=options.max_concurrency + 1,
                keepalive_expiry=KEEPALIVE_EXPIRY,
            ),
            trust_env=False,
        )
        self.healthy = False
        self.draining = False
        self.error: str | None = "not checked yet"
        self.checked_at: float | None = None  # Unix time of the last health check
        self.outstanding = 0
        self.picks = 0
        self.context_length: int | None = None
        self.stats = UpstreamStats()

    @property
    def has_room(self) -> bool:
        """Whether it may take one more request now."""
        return self.healthy and not self.draining and self.outstanding < self.max_concurrency

    def describe(self) -> dict[str, Any]:
        """The /v1/models view of this upstream."""
        return {
            "url": self.url,
            "healthy": self.healthy,
            "draining": self.draining,
            "error": self.error,
            "in_flight": self.outstanding,
            "requests": self.stats.requests,
            "max_concurrency": self.max_concurrency,
        }


def conversation_keys(messages: Sequence[Any]) -> list[str]:
    """Hashes of every leading run of messages (1, 2, ... all): the keys of conversation affinity."""
    keys: list[str] = []
    digest = hashlib.sha256()
    for message in messages:
        digest.update(json.dumps(message, sort_keys=True, ensure_ascii=False).encode())
        digest.update(b"\x00")
        keys.append(digest.copy().hexdigest()[:32])
    return keys


class UpstreamPool:
    """A remote model's upstream replicas: which one serves the next request, and whether they are up."""

    def __init__(
        self, model_id: str, upstream_model: str, options: RemoteOptions, api_key: str | None
    ) -> None:
        self.model_id = model_id
        self.upstream_model = upstream_model
        self.options = options
        self.upstreams = [Upstream(url, options, api_key) for url in options.upstreams]
        # Conversation affinity: the hash of a conversation's messages so far -> the upstream that answered
        # them; bounded (least recently used first out).
        self._affinity: OrderedDict[str, Upstream] = OrderedDict()
        self._changed: asyncio.Event | None = None
        self._health: asyncio.Task[None] | None = None
        # A speech model's voices as its upstreams list them (GET /audio/voices), refreshed by the health
        # checks; None for a chat model.
        self.voices: list[VoiceInfo] | None = None

    # --- lifecycle ------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Check every upstream once, then keep checking them in the background."""
        self._changed = asyncio.Event()
        await self.check_all()
        self._health = asyncio.create_task(self._health_loop(), name=f"health {self.model_id}")

    async def aclose(self) -> None:
        """Stop the health checks and close every connection."""
        if self._health is not None:
            self._health.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health
        for upstream in self.upstreams:
            await upstream.client.aclose()

    async def _health_loop(self) -> None:
        while True:
            # An upstream out of service is probed back sooner than the healthy ones are re-checked.
            down = any(not u.healthy for u in self.upstreams)
            interval = self.options.health_interval
            await asyncio.sleep(min(interval, 1.0) if down else interval)
            try:
                await self.check_all()
            except Exception:  # a bug here must not end the checks for good
                log.exception("health checks of %s failed", self.model_id)

    async def check_all(self) -> None:
        """Check every upstream at once."""
        await asyncio.gather(*(self.check(u) for u in self.upstreams))

    async def check(self, upstream: Upstream) -> None:
        """One health check: `GET {url}/models` must answer 200 and list the model (ready, on an ai-stack)."""
        problem: str | None = None
        timeout = min(self.options.connect_timeout + 5.0, self.options.read_timeout)
        try:
            response = await upstream.client.get("models", timeout=timeout)
            if response.status_code != 200:
                problem = f"GET /models answered {response.status_code}"
            else:
                problem = self._model_problem(upstream, response.json())
        except httpx.HTTPError as exc:
            problem = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        except ValueError:
            problem = "GET /models did not answer JSON"
        upstream.checked_at = time.time()
        self._set_health(upstream, problem)
        if problem is None and self.voices is not None:
            await self._list_voices(upstream)

    async def _list_voices(self, upstream: Upstream) -> None:
        """A speech model's voices from an upstream's `GET /audio/voices` (ai-stack, Kokoro-FastAPI)."""
        wait = min(self.options.connect_timeout + 5.0, self.options.read_timeout)
        try:
            response = await upstream.client.get(
                "audio/voices", params={"model": self.upstream_model}, timeout=wait
            )
            listed = response.json().get("voices") if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            return
        if not isinstance(listed, list):
            return
        voices: dict[str, VoiceInfo] = {}
        about = f"a voice of {self.upstream_model} on the upstreams"
        for item in listed[:MAX_VOICES]:
            if isinstance(item, str):  # Kokoro-FastAPI lists names only
                voices[item] = VoiceInfo(item, item, "", about)
            elif isinstance(item, dict) and isinstance(item.get("id"), str):
                if item.get("model") not in (None, self.upstream_model):
                    continue  # another model's voice on that node
                name, language = item.get("name"), item.get("language")
                voices[item["id"]] = VoiceInfo(
                    item["id"],
                    name if isinstance(name, str) else item["id"],
                    language if isinstance(language, str) else "",
                    about,
                )
        self.voices = list(voices.values())

    def _model_problem(self, upstream: Upstream, body: Any) -> str | None:
        """Why a /models listing shows the upstream cannot serve the model now, or None."""
        cards = body.get("data") if isinstance(body, dict) else None
        if not isinstance(cards, list):
            return "GET /models did not answer a model list"
        name = self.upstream_model
        for card in cards:
            if not isinstance(card, dict):
                continue
            aliases = card.get("aliases")
            if card.get("id") != name and not (isinstance(aliases, list) and name in aliases):
                continue
            length = card.get("context_length") or card.get("max_model_len")
            if isinstance(length, int) and not isinstance(length, bool):
                upstream.context_length = length
            state = card.get("state")  # another ai-stack says whether the model is loaded
            if isinstance(state, str) and state != "ready":
                return f"the model {name!r} is {state} there"
            return None
        served = ", ".join(str(c.get("id")) for c in cards[:8] if isinstance(c, dict))
        return f"it does not serve the model {name!r} (it serves: {served or 'none'})"

    def _set_health(self, upstream: Upstream, problem: str | None) -> None:
        was = upstream.healthy
        upstream.healthy, upstream.error = problem is None, problem
        if was and problem is not None:
            log.warning("upstream %s of %s is out of service: %s", upstream.url, self.model_id, problem)
        elif not was and problem is None:
            log.info("upstream %s of %s is serving", upstream.url, self.model_id)
        self._notify()

    def mark_down(self, upstream: Upstream, problem: str) -> None:
        """Take an upstream out after a failed request; the health checks bring it back."""
        self._set_health(upstream, problem)

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()

    # --- choosing -------------------------------------------------------------------------------------------

    @property
    def available(self) -> bool:
        """Whether any upstream is healthy and not draining."""
        return any(u.healthy and not u.draining for u in self.upstreams)

    @property
    def context_length(self) -> int | None:
        """The model's context as the upstreams report it (the smallest), when they do."""
        known = [u.context_length for u in self.upstreams if u.context_length]
        return min(known) if known else None

    def choose(self, exclude: set[Upstream], keys: Sequence[str] = ()) -> Upstream | None:
        """The upstream for a request: its conversation's last one if it has room, else the least busy."""
        for key in reversed(keys):
            last = self._affinity.get(key)
            if last is not None:
                self._affinity.move_to_end(key)
                if last.has_room and last not in exclude:
                    return last
                break
        candidates = [u for u in self.upstreams if u.has_room and u not in exclude]
        return min(candidates, key=lambda u: (u.outstanding, u.picks), default=None)

    async def acquire(self, exclude: set[Upstream], keys: Sequence[str] = ()) -> Upstream:
        """Take a place on an upstream, waiting while every healthy one is at its max_concurrency.

        Raises ModelUnavailable (503) when none is healthy (and not excluded) or the wait times out.
        """
        deadline = time.monotonic() + self.options.read_timeout
        while True:
            upstream = self.choose(exclude, keys)
            if upstream is not None:
                upstream.outstanding += 1
                upstream.picks += 1
                upstream.stats.requests += 1
                return upstream
            if not any(u.healthy and not u.draining and u not in exclude for u in self.upstreams):
                raise self.unavailable()
            if self._changed is None:
                self._changed = asyncio.Event()
            self._changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise self.unavailable("every upstream stayed at its max_concurrency")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), left)

    def release(self, upstream: Upstream) -> None:
        """A request on the upstream ended."""
        upstream.outstanding -= 1
        self._notify()

    def remember(self, keys: Sequence[str], upstream: Upstream) -> None:
        """The upstream answered this conversation: its next turn prefers it."""
        if not keys or self.options.affinity_entries == 0:
            return
        self._affinity[keys[-1]] = upstream
        self._affinity.move_to_end(keys[-1])
        while len(self._affinity) > self.options.affinity_entries:
            self._affinity.popitem(last=False)

    def unavailable(self, why: str | None = None) -> ModelUnavailable:
        """The 503 of a request no upstream can take, naming each one's problem."""
        states = "; ".join(
            f"{u.url}: {'draining' if u.draining else (u.error or 'busy')}" for u in self.upstreams
        )
        return ModelUnavailable(
            f"The model '{self.model_id}' has no upstream that can serve now ({why or states})",
            param="model",
            code="no_healthy_upstream",
            headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
        )

    # --- draining -------------------------------------------------------------------------------------------

    def find(self, url: str) -> Upstream | None:
        """The upstream with this base URL (a trailing slash ignored)."""
        url = url.rstrip("/")
        return next((u for u in self.upstreams if u.url == url), None)

    def drain(self, upstream: Upstream, draining: bool) -> None:
        """Stop (or resume) sending new requests to an upstream; requests in flight run to their end."""
        upstream.draining = draining
        if draining:
            for key in [k for k, u in self._affinity.items() if u is upstream]:
                del self._affinity[key]
        log.info("upstream %s of %s %s", upstream.url, self.model_id, "drained" if draining else "undrained")
        self._notify()

    def describe(self) -> list[dict[str, Any]]:
        """Each upstream's URL, health, drain flag and load."""
        return [u.describe() for u in self.upstreams]
