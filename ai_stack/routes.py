"""Thin HTTP endpoints: parse, call the serving layer, shape the response."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar, cast

from pydantic import BaseModel, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from ai_stack.config import Config
from ai_stack.engines.base import ChatEngine
from ai_stack.errors import InvalidRequest, ModelUnavailable, NotFound
from ai_stack.fleet.engine import RemoteEngine
from ai_stack.fleet.proxy import UpstreamRef, forward, remote_engine
from ai_stack.json_body import load_json
from ai_stack.protocol import ChatCompletionRequest, ModelCard, ModelList, SpeechRequest
from ai_stack.registry import ModelEntry, ModelRegistry, ModelState
from ai_stack.serving.chat import ChatService, ClientDisconnected
from ai_stack.serving.speech import SpeechService, speech_options

M = TypeVar("M", bound=BaseModel)


async def parse_body(request: Request, schema: type[M]) -> M:
    """Read a JSON object body and validate it; every problem is a 400 naming the parameter."""
    config: Config = request.app.state.config
    data = load_json(await request.body(), config.server.max_json_depth)
    if not isinstance(data, dict):
        raise InvalidRequest("The request body must be a JSON object")
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        param = ".".join(str(part) for part in error["loc"]) or None
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "missing":
            message = f"Missing required parameter: '{param}'"
        elif param:
            message = f"Invalid value for '{param}': {message}"
        raise InvalidRequest(message, param=param, code="invalid_value") from None


def disconnect_waiter(request: Request) -> Callable[[], Awaitable[None]]:
    """A coroutine function that returns once the client has disconnected (for ChatService.collect)."""

    async def wait_disconnect() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    return wait_disconnect


def model_card(entry: ModelEntry) -> ModelCard:
    """The /v1/models view of one registry entry."""
    chat = cast(ChatEngine, entry.engine) if entry.engine is not None and entry.spec.kind == "chat" else None
    return ModelCard(
        id=entry.spec.id,
        created=entry.created,
        kind=entry.spec.kind,
        engine=chat.engine_kind if chat is not None else entry.spec.engine,
        state=entry.state.value,
        aliases=entry.spec.aliases,
        error=entry.error,
        context_length=chat.context_length if chat is not None else None,
        device=chat.device if chat is not None else None,
        memory_bytes=entry.memory_bytes if entry.state == ModelState.READY else None,
    )


def _registry(request: Request) -> ModelRegistry:
    registry: ModelRegistry = request.app.state.registry
    return registry


def card_body(entry: ModelEntry) -> dict[str, Any]:
    """A model card as JSON; a remote model's lists its upstreams with their health and load."""
    body = model_card(entry).model_dump()
    if entry.spec.engine == "remote":
        engine = entry.engine
        body["upstreams"] = (
            engine.describe()
            if isinstance(engine, RemoteEngine)
            else [{"url": url, "healthy": None} for url in getattr(entry.options, "upstreams", [])]
        )
    return body


async def list_models(request: Request) -> Response:
    """GET /v1/models: every configured model with its state."""
    cards = [card_body(entry) for entry in _registry(request).entries.values()]
    return JSONResponse({**ModelList(data=[]).model_dump(), "data": cards})


async def get_model(request: Request) -> Response:
    """GET /v1/models/{id}."""
    return JSONResponse(card_body(_registry(request).lookup(request.path_params["model_id"])))


async def drain_upstream(request: Request) -> Response:
    """POST /v1/models/{id}/upstreams/drain|undrain {"upstream": URL}: stop or resume new requests to it.

    Requests in flight on a drained upstream (streams included) run to their end.
    """
    url = (await parse_body(request, UpstreamRef)).upstream
    entry = _registry(request).lookup(request.path_params["model_id"])
    if entry.spec.engine != "remote":
        raise InvalidRequest(
            f"The model '{entry.spec.id}' has no upstreams (its engine is not remote)", param="model"
        )
    if not isinstance(entry.engine, RemoteEngine):
        raise ModelUnavailable(
            f"The model '{entry.spec.id}' is not loaded", param="model", code="model_not_loaded"
        )
    upstream = entry.engine.pool.find(url)
    if upstream is None:
        raise NotFound(f"The model '{entry.spec.id}' has no upstream {url[:200]!r}", param="upstream")
    entry.engine.pool.drain(upstream, request.url.path.endswith("/drain"))
    return JSONResponse(card_body(entry))


async def load_model(request: Request) -> Response:
    """POST /v1/models/{id}/load: start loading; 202 while loading, 200 when already ready."""
    entry = _registry(request).load(request.path_params["model_id"])
    status = 200 if entry.state == ModelState.READY else 202
    return JSONResponse(model_card(entry).model_dump(), status_code=status)


async def unload_model(request: Request) -> Response:
    """POST /v1/models/{id}/unload: free the model's memory."""
    entry = await _registry(request).unload(request.path_params["model_id"])
    return JSONResponse(model_card(entry).model_dump())


async def chat_completions(request: Request) -> Response:
    """POST /v1/chat/completions, full or streamed."""
    body = await parse_body(request, ChatCompletionRequest)
    remote = await remote_engine(_registry(request), body.model, "chat")
    if remote is not None:
        raw = await _json_object(request)
        return await forward(
            request, *remote, "chat/completions", raw, weight=body.n, messages=raw["messages"]
        )
    service: ChatService = request.app.state.chat
    chat = await service.prepare(body)
    if body.stream:
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        return StreamingResponse(
            service.stream(chat, include_usage),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    try:
        completion = await service.complete(chat, disconnect_waiter(request))
    except ClientDisconnected:
        return Response(status_code=499)
    return JSONResponse(completion)


async def health(request: Request) -> Response:
    """GET /health: liveness, always fast."""
    return JSONResponse({"status": "ok"})


async def readiness(request: Request) -> Response:
    """GET /health/ready: 503 while any model loads; each model's state and error."""
    entries = list(_registry(request).entries.values())
    models: list[dict[str, Any]] = [
        {"id": e.spec.id, "kind": e.spec.kind, "state": e.state.value, "error": without_paths(e.error)}
        for e in entries
    ]
    for model, e in zip(models, entries, strict=True):
        if isinstance(e.engine, RemoteEngine):
            model["upstreams_healthy"] = sum(bool(u["healthy"]) for u in e.engine.describe())
    if any(e.state == ModelState.LOADING for e in entries):
        status, code = "loading", 503
    elif all(
        e.state == ModelState.READY and getattr(e.engine, "available", True)
        for e in entries
        if e.spec.autoload
    ):
        status, code = "ok", 200
    else:
        status, code = "degraded", 200
    headers = {"Retry-After": "5"} if code == 503 else None
    body: dict[str, Any] = {"status": status}
    if request.scope.get("state", {}).get("authenticated", True):  # the models only for the key's holder
        body["models"] = models
    return JSONResponse(body, status_code=code, headers=headers)


_PATH = re.compile(r"(?:[A-Za-z]:)?[/\\](?:[^\s'\"/\\]+[/\\])+([^\s'\"/\\]*)")


def without_paths(text: str | None) -> str | None:
    """An error message with each absolute file path cut to its last part (`.../model.gguf`)."""
    return None if text is None else _PATH.sub(lambda m: ".../" + m.group(1), text)


async def audio_speech(request: Request) -> Response:
    """POST /v1/audio/speech: one continuous audio file streamed as it is made, or SSE deltas."""
    body = await parse_body(request, SpeechRequest)
    service: SpeechService = request.app.state.speech
    name = service.route(body.model, body.voice_id)  # tts-1 with another model's voice: that model
    remote = await remote_engine(_registry(request), name, "speech")
    if remote is not None:
        return await forward(request, *remote, "audio/speech", await _json_object(request), rewrite=False)
    await _registry(request).wait_ready(name, "speech")
    speech = service.prepare(body)
    content = await service.start(speech)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(content, media_type=speech.media_type, headers=headers)


async def audio_models(request: Request) -> Response:
    """GET /v1/audio/models: the speech models, as Open WebUI reads them first (`{"models": [{"id"}]}`)."""
    models = [
        {
            "id": entry.spec.id,
            "name": entry.spec.id,
            "aliases": entry.spec.aliases,
            "engine": entry.spec.engine,
            "state": entry.state.value,
        }
        for entry in _registry(request).entries.values()
        if entry.spec.kind == "speech"
    ]
    return JSONResponse({"models": models})


async def audio_voices(request: Request) -> Response:
    """GET /v1/audio/voices[?model=ID]: the voices of every speech model (or one), loaded or not."""
    registry = _registry(request)
    service: SpeechService = request.app.state.speech
    name = request.query_params.get("model")
    entries = [registry.lookup(name)] if name else list(registry.entries.values())
    voices: list[dict[str, Any]] = []
    for entry in entries:
        if entry.spec.kind != "speech":
            continue
        state = entry.state.value
        # A model not loaded yet lists the voices its files name (read without loading it).
        known = service.voices_of(entry)
        if known is not None:
            voices += [
                {
                    "id": v.id,
                    "name": v.name,
                    "model": entry.spec.id,
                    "language": v.language,
                    "description": v.description,
                    "state": state,
                }
                for v in known
            ]
            continue
        # Its files cannot be read before it loads: name the voices its config mentions.
        options = speech_options(entry)
        named = [options.default_voice, *options.voice_map.values()]
        for voice in dict.fromkeys(str(v) for v in named if v):
            description = f"voice of {entry.spec.id} (listed in full once the model is loaded)"
            voices.append(
                {
                    "id": voice,
                    "name": voice,
                    "model": entry.spec.id,
                    "language": None,
                    "description": description,
                    "state": state,
                }
            )
    return JSONResponse({"voices": voices})


async def _json_object(request: Request) -> dict[str, Any]:
    """The request's JSON body as the client sent it (already checked by parse_body), to forward upstream."""
    config: Config = request.app.state.config
    data = load_json(await request.body(), config.server.max_json_depth)
    assert isinstance(data, dict)
    return data


def api_routes() -> list[BaseRoute]:
    """The /v1 routes."""
    return [
        Route("/models", list_models, methods=["GET"]),
        Route("/models/{model_id:path}/load", load_model, methods=["POST"]),
        Route("/models/{model_id:path}/unload", unload_model, methods=["POST"]),
        Route("/models/{model_id:path}/upstreams/drain", drain_upstream, methods=["POST"]),
        Route("/models/{model_id:path}/upstreams/undrain", drain_upstream, methods=["POST"]),
        Route("/models/{model_id:path}", get_model, methods=["GET"]),
        Route("/chat/completions", chat_completions, methods=["POST"]),
        Route("/audio/speech", audio_speech, methods=["POST"]),
        Route("/audio/voices", audio_voices, methods=["GET"]),
        Route("/audio/models", audio_models, methods=["GET"]),
    ]
