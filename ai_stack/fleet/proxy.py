"""Forwarding a validated request of a remote model to an upstream, and its answer back as it comes.

The gateway's own checks (auth, body limits, the route's schema, admission) have run before. The JSON body
goes to the chosen upstream with `model` set to the upstream's id; a connection error or a 5xx before any
byte reached the client is retried on another upstream, never after. Answers stream back byte by byte; the
`model` field of chat and completion answers (full JSON, and each SSE event) is set back to the gateway's
model id when the upstream's differs. Upstream errors keep their status, in OpenAI's error shape, with
Retry-After passed on.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Sequence
from functools import partial
from typing import Any

import httpx
from pydantic import BaseModel, ConfigDict, Field
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from ai_stack.errors import APIError
from ai_stack.fleet.engine import RemoteEngine
from ai_stack.fleet.pool import Upstream, conversation_keys
from ai_stack.fleet.upstream import PASSED_HEADERS, UpstreamError, open_upstream
from ai_stack.registry import ModelEntry, ModelRegistry
from ai_stack.serving.chat import ChatService, ClientDisconnected, unless_disconnected

log = logging.getLogger(__name__)

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class UpstreamRef(BaseModel):
    """The body of POST /v1/models/{id}/upstreams/drain and .../undrain: which upstream."""

    model_config = ConfigDict(extra="forbid")

    upstream: str = Field(min_length=1, max_length=2048)  # its URL as configured (e.g. http://gpu-a:8080/v1)


class ModelRewriter:
    """Sets `model` in each SSE event's JSON to the gateway's id, line by line as bytes arrive."""

    def __init__(self, model: str) -> None:
        self.model = model
        self._partial = b""

    def feed(self, data: bytes) -> bytes:
        """The complete lines of data so far, rewritten; an unfinished line waits for the next bytes."""
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        return b"".join(self._line(line) + b"\n" for line in lines)

    def flush(self) -> bytes:
        """What is left at the end of the stream."""
        rest, self._partial = self._partial, b""
        return self._line(rest) if rest else b""

    def _line(self, line: bytes) -> bytes:
        if not line.startswith(b"data: {"):
            return line
        try:
            event = json.loads(line[6:])
        except ValueError:
            return line
        if not isinstance(event, dict) or "model" not in event:
            return line
        event["model"] = self.model
        return b"data: " + json.dumps(event, ensure_ascii=False).encode()


def _stream_error(exc: Exception, upstream: Upstream) -> bytes:
    body = UpstreamError(f"The upstream {upstream.url} stopped mid-answer ({type(exc).__name__})").body()
    return f"data: {json.dumps(body)}\n\ndata: [DONE]\n\n".encode()


async def forward(
    request: Request,
    entry: ModelEntry,
    engine: RemoteEngine,
    path: str,
    body: dict[str, Any],
    *,
    weight: int = 1,
    messages: Sequence[Any] | None = None,
    rewrite: bool = True,
) -> Response:
    """Forward a validated request to the model's upstreams; the answer streams back as the upstream sends it.

    weight: the generation slots it takes in the gateway's admission (n); messages: the chat messages whose
    leading runs key conversation affinity; rewrite: set `model` in JSON answers back to the gateway's id.
    """
    service: ChatService = request.app.state.chat
    registry: ModelRegistry = request.app.state.registry
    model_id, pool = entry.spec.id, engine.pool
    body = {**body, "model": pool.upstream_model}
    keys = conversation_keys(messages) if messages else []
    rewriter = ModelRewriter(model_id) if rewrite and pool.upstream_model != model_id else None
    hold = service.admission.admit(model_id, entry.spec, engine, weight)  # the gateway's own limits first
    stack = contextlib.AsyncExitStack()
    stack.callback(hold.close)
    try:
        await stack.enter_async_context(hold.ticket.running())
        stack.enter_context(registry.in_use(model_id))

        async def exchange() -> tuple[Upstream, httpx.Response, bytes | None]:
            upstream, response = await open_upstream(pool, path, body, keys)
            if "text/event-stream" in response.headers.get("content-type", "") or not _is_json(response):
                return upstream, response, None
            try:  # a whole JSON answer: read it here, where a client that leaves still cancels it
                content = await response.aread()
            except BaseException:
                await response.aclose()
                pool.release(upstream)
                raise
            return upstream, response, content

        try:
            upstream, response, content = await unless_disconnected(
                exchange(), partial(_disconnected, request)
            )
        except ClientDisconnected:
            await stack.aclose()
            return Response(status_code=499)
        stack.push_async_callback(response.aclose)
        stack.callback(pool.release, upstream)
    except BaseException:
        await stack.aclose()
        raise
    headers = {k: v for k in PASSED_HEADERS if (v := response.headers.get(k)) is not None}
    media_type = response.headers.get("content-type", "application/octet-stream")
    if content is not None:
        await stack.aclose()
        pool.remember(keys, upstream)
        if rewriter is not None:
            with contextlib.suppress(ValueError):
                data = json.loads(content)
                if isinstance(data, dict) and "model" in data:
                    data["model"] = model_id
                    return JSONResponse(data, status_code=response.status_code, headers=headers)
        return Response(content, status_code=response.status_code, media_type=media_type, headers=headers)
    sse = "text/event-stream" in media_type

    async def relay() -> AsyncIterator[bytes]:
        finished = False
        try:
            async for data in response.aiter_raw():
                yield rewriter.feed(data) if rewriter is not None and sse else data
            if rewriter is not None and sse:
                yield rewriter.flush()
            finished = True
        except httpx.HTTPError as exc:  # bytes have gone out: no retry now, an error event ends an SSE stream
            upstream.stats.error("broken_stream")
            log.warning("upstream %s of %s broke off an answer: %s", upstream.url, model_id, exc)
            if isinstance(exc, httpx.TransportError) and not isinstance(exc, httpx.TimeoutException):
                pool.mark_down(upstream, f"broke off an answer: {type(exc).__name__}")
            if sse:
                yield _stream_error(exc, upstream)
        finally:
            if finished:
                pool.remember(keys, upstream)
            await stack.aclose()

    return StreamingResponse(
        relay(),
        status_code=response.status_code,
        media_type=media_type,
        headers={**(SSE_HEADERS if sse else {"Cache-Control": "no-cache"}), **headers},
    )


async def _disconnected(request: Request) -> None:
    """Return once the client has gone (its body was read already)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass


def _is_json(response: httpx.Response) -> bool:
    media = str(response.headers.get("content-type", "")).split(";", 1)[0].strip().lower()
    return media == "application/json" or media.endswith("+json")


async def remote_engine(
    registry: ModelRegistry, name: str, kind: str
) -> tuple[ModelEntry, RemoteEngine] | None:
    """The remote engine serving a request's `model`, or None for a local model (or one that does not exist).

    The registry's checks apply: a model of another kind, or one not ready, is an error here.
    """
    try:
        entry = registry.lookup(name)
    except APIError:
        return None
    if entry.spec.engine != "remote":
        return None
    await registry.wait_ready(name, kind)
    entry, engine = registry.engine_for(name, kind)
    assert isinstance(engine, RemoteEngine)
    return entry, engine
