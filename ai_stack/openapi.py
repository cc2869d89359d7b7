"""GET /openapi.json: an OpenAPI 3.1 document built from the routes' pydantic request and response models.

The document is a table (`OPENAPI_ROUTES`): one `ApiRoute` per method and path, naming its request model,
its response model (or the media types of a non-JSON body), its stream events and the error shape of its API
(OpenAI's, Anthropic's for /v1/messages*, Ollama's for /api/*, llama.cpp's for /infill and /completion). The
schemas come from pydantic (`models_json_schema`), never written by hand: the surfaces that build their
answers as dicts describe them in ai_stack/surfaces/*_schemas.py. A new route is one more line in the table,
or an `extra` entry passed to `openapi_document`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ai_stack import __version__
from ai_stack.audio import FORMATS
from ai_stack.fleet.proxy import UpstreamRef
from ai_stack.protocol import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ModelCard,
    ModelList,
    SpeechRequest,
)
from ai_stack.surfaces.completions import CompletionRequest, InfillRequest, LlamaCompletionRequest
from ai_stack.surfaces.completions_schemas import (
    LlamaCompletion,
    LlamaStreamEvent,
    TextCompletion,
    TextCompletionChunk,
)
from ai_stack.surfaces.messages import CountTokensRequest, MessagesRequest
from ai_stack.surfaces.messages_schemas import Message, MessageStreamEvent, TokenCount
from ai_stack.surfaces.ollama import ModelName, OllamaChatRequest, OllamaGenerateRequest
from ai_stack.surfaces.ollama_schemas import (
    OllamaChatResponse,
    OllamaGenerateResponse,
    OllamaModelList,
    OllamaRunningList,
    OllamaShow,
    OllamaStatus,
    OllamaVersion,
)
from ai_stack.surfaces.response_items import ResponsesRequest
from ai_stack.surfaces.responses_schemas import (
    InputItemList,
    ResponseDeleted,
    ResponseObject,
    ResponseStreamEvent,
)

SSE = "text/event-stream"
NDJSON = "application/x-ndjson"


class ErrorDetail(BaseModel):
    """OpenAI's error object."""

    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    """OpenAI's error body: every 4xx and 5xx of the OpenAI routes."""

    error: ErrorDetail


class AnthropicErrorDetail(BaseModel):
    """Anthropic's error object: its error type (invalid_request_error, not_found_error, ...) and message."""

    type: str
    message: str


class AnthropicError(BaseModel):
    """Anthropic's error body: every 4xx and 5xx of /v1/messages*."""

    type: Literal["error"]
    error: AnthropicErrorDetail


class OllamaError(BaseModel):
    """Ollama's error body: every 4xx and 5xx of /api/* (and an error line in an NDJSON stream)."""

    error: str


class LlamaErrorDetail(BaseModel):
    """llama.cpp server's error object: the HTTP status as code, a message and its error type."""

    code: int
    message: str
    type: str


class LlamaError(BaseModel):
    """llama.cpp server's error body: every 4xx and 5xx of /infill and /completion."""

    error: LlamaErrorDetail


class Health(BaseModel):
    """GET /health."""

    status: Literal["ok"]


class ModelStatus(BaseModel):
    """One model's state in GET /health/ready."""

    id: str
    kind: str
    state: str
    error: str | None


class Readiness(BaseModel):
    """GET /health/ready (the models only for the API key's holder when a key is set)."""

    status: Literal["ok", "degraded", "loading"]
    models: list[ModelStatus] | None = None


class Voice(BaseModel):
    """One voice of GET /v1/audio/voices."""

    id: str
    name: str
    model: str
    language: str | None
    description: str | None
    state: str


class VoiceList(BaseModel):
    """GET /v1/audio/voices."""

    voices: list[Voice]


class AudioModel(BaseModel):
    """One speech model of GET /v1/audio/models."""

    id: str
    name: str
    aliases: list[str]
    engine: str
    state: str


class AudioModelList(BaseModel):
    """GET /v1/audio/models."""

    models: list[AudioModel]


@dataclass(frozen=True)
class ApiRoute:
    """One operation of the document: method, path (`{name}` for path parameters), models and summary."""

    method: str
    path: str
    request: type[BaseModel] | None
    response: type[BaseModel] | None
    summary: str
    media_types: tuple[str, ...] = ()  # a non-JSON success body (audio, event or NDJSON streams, text/plain)
    query: tuple[str, ...] = ()  # optional string query parameters
    error: type[BaseModel] = ErrorResponse  # the error body of the route's API
    status: int = 200
    stream: type[BaseModel] | None = None  # each event (SSE data) or line (NDJSON) of a streamed answer
    others: tuple[tuple[int, type[BaseModel], str], ...] = ()  # other statuses: (status, body, description)


OPENAPI_ROUTES: tuple[ApiRoute, ...] = (
    ApiRoute("GET", "/health", None, Health, "Liveness: always 200 and fast"),
    ApiRoute(
        "GET",
        "/health/ready",
        None,
        Readiness,
        "Readiness: each model's state",
        others=((503, Readiness, "A model is still loading"),),
    ),
    ApiRoute("GET", "/metrics", None, None, "Prometheus metrics", media_types=("text/plain",)),
    ApiRoute("GET", "/v1/models", None, ModelList, "List the configured models with their state"),
    ApiRoute("GET", "/v1/models/{model_id}", None, ModelCard, "One model by id or alias"),
    ApiRoute(
        "POST", "/v1/models/{model_id}/load", None, ModelCard, "Start loading a model (202)", status=202
    ),
    ApiRoute("POST", "/v1/models/{model_id}/unload", None, ModelCard, "Unload a model"),
    ApiRoute(
        "POST",
        "/v1/models/{model_id}/upstreams/drain",
        UpstreamRef,
        ModelCard,
        "Send a remote model's new requests to its other upstreams (requests in flight run to their end)",
    ),
    ApiRoute("POST", "/v1/models/{model_id}/upstreams/undrain", UpstreamRef, ModelCard, "Undo a drain"),
    ApiRoute(
        "POST",
        "/v1/chat/completions",
        ChatCompletionRequest,
        ChatCompletion,
        "Create a chat completion (server-sent chunks with stream: true)",
        media_types=(SSE,),
        stream=ChatCompletionChunk,
    ),
    ApiRoute(
        "POST",
        "/v1/audio/speech",
        SpeechRequest,
        None,
        "Speak text: one audio file (FLAC sent whole, other formats streamed) or speech.audio.delta events",
        media_types=(*dict.fromkeys(FORMATS.values()), SSE),
    ),
    ApiRoute("GET", "/v1/audio/voices", None, VoiceList, "Voices of every speech model", query=("model",)),
    ApiRoute("GET", "/v1/audio/models", None, AudioModelList, "The speech models"),
    # OpenAI's legacy completions and llama.cpp server's completions (code completion, fill-in-the-middle).
    ApiRoute(
        "POST",
        "/v1/completions",
        CompletionRequest,
        TextCompletion,
        "Complete a raw prompt (fill-in-the-middle with suffix); server-sent chunks with stream: true",
        media_types=(SSE,),
        stream=TextCompletionChunk,
    ),
    ApiRoute(
        "POST",
        "/infill",
        InfillRequest,
        LlamaCompletion,
        "llama.cpp fill-in-the-middle with other files as context; server-sent events with stream: true",
        media_types=(SSE,),
        error=LlamaError,
        stream=LlamaStreamEvent,
    ),
    ApiRoute(
        "POST",
        "/completion",
        LlamaCompletionRequest,
        LlamaCompletion,
        "llama.cpp completion of a raw prompt; server-sent events with stream: true",
        media_types=(SSE,),
        error=LlamaError,
        stream=LlamaStreamEvent,
    ),
    # OpenAI's Responses API.
    ApiRoute(
        "POST",
        "/v1/responses",
        ResponsesRequest,
        ResponseObject,
        "Create a response (typed server-sent events with stream: true)",
        media_types=(SSE,),
        stream=ResponseStreamEvent,
    ),
    ApiRoute(
        "GET",
        "/v1/responses/{response_id}",
        None,
        ResponseObject,
        "A stored response, or one being generated",
        query=("stream",),
    ),
    ApiRoute("DELETE", "/v1/responses/{response_id}", None, ResponseDeleted, "Delete a stored response"),
    ApiRoute(
        "GET",
        "/v1/responses/{response_id}/input_items",
        None,
        InputItemList,
        "The input items of a response, earlier turns included",
        query=("limit", "order", "after", "before"),
    ),
    ApiRoute(
        "POST",
        "/v1/responses/{response_id}/cancel",
        None,
        ResponseObject,
        "Cancel a response being generated (it keeps the output made so far)",
    ),
    # Anthropic's Messages API.
    ApiRoute(
        "POST",
        "/v1/messages",
        MessagesRequest,
        Message,
        "Create a message (Anthropic's server-sent events with stream: true)",
        media_types=(SSE,),
        error=AnthropicError,
        stream=MessageStreamEvent,
    ),
    ApiRoute(
        "POST",
        "/v1/messages/count_tokens",
        CountTokensRequest,
        TokenCount,
        "Count a message request's prompt tokens",
        error=AnthropicError,
    ),
    # Ollama's API.
    ApiRoute("GET", "/api/version", None, OllamaVersion, "The Ollama API version served", error=OllamaError),
    ApiRoute("GET", "/api/tags", None, OllamaModelList, "The chat models", error=OllamaError),
    ApiRoute("GET", "/api/ps", None, OllamaRunningList, "The chat models loaded now", error=OllamaError),
    ApiRoute("POST", "/api/show", ModelName, OllamaShow, "A chat model's details", error=OllamaError),
    ApiRoute(
        "POST",
        "/api/chat",
        OllamaChatRequest,
        OllamaChatResponse,
        "Chat: NDJSON lines unless stream is false",
        media_types=(NDJSON,),
        error=OllamaError,
        stream=OllamaChatResponse,
    ),
    ApiRoute(
        "POST",
        "/api/generate",
        OllamaGenerateRequest,
        OllamaGenerateResponse,
        "Generate from a prompt (raw, or fill-in-the-middle with suffix): NDJSON unless stream is false",
        media_types=(NDJSON,),
        error=OllamaError,
        stream=OllamaGenerateResponse,
    ),
    ApiRoute(
        "POST", "/api/pull", ModelName, OllamaStatus, "Start loading a configured model", error=OllamaError
    ),
    *(
        ApiRoute(
            method,
            path,
            None,
            None,
            "Refused (400): the models come from the config file",
            error=OllamaError,
        )
        for method, path in (
            ("POST", "/api/push"),
            ("POST", "/api/create"),
            ("POST", "/api/copy"),
            ("DELETE", "/api/delete"),
        )
    ),
)

_PATH_PARAM = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")
_REF = "#/components/schemas/{model}"


def _operation_id(route: ApiRoute) -> str:
    words = re.sub(r"[^A-Za-z0-9]+", "_", route.path.replace("{", "by_").replace("}", "")).strip("_")
    return f"{route.method.lower()}_{words}"


def _json(schema: dict[str, Any]) -> dict[str, Any]:
    return {"application/json": {"schema": schema}}


def openapi_document(
    extra: Iterable[ApiRoute] = (), routes: Iterable[ApiRoute] = OPENAPI_ROUTES
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of routes (the table by default) plus extra entries."""
    table = [*routes, *extra]
    keys: list[tuple[type[BaseModel], JsonSchemaMode]] = []
    for route in table:
        keys += [(route.request, "validation")] if route.request is not None else []
        keys += [(model, "serialization") for model in (route.response, route.stream, route.error) if model]
        keys += [(model, "serialization") for _, model, _ in route.others]
    schemas, defs = models_json_schema(list(dict.fromkeys(keys)), ref_template=_REF)
    paths: dict[str, dict[str, Any]] = {}
    for route in table:
        responses: dict[str, Any] = {}
        content: dict[str, Any] = {}
        if route.response is not None:
            content.update(_json(schemas[(route.response, "serialization")]))
        for media in route.media_types:
            schema = (
                schemas[(route.stream, "serialization")]
                if media in (SSE, NDJSON) and route.stream is not None
                else {"type": "string", "format": "binary"}
            )
            content[media] = {"schema": schema}
        if content:  # a route that always refuses (Ollama's push, create, copy, delete) documents no success
            responses[str(route.status)] = {"description": route.summary, "content": content}
        error = {"description": "An error, in the shape of the route's API", "content": {}}
        error["content"] = _json(schemas[(route.error, "serialization")])
        responses["4XX"] = error
        responses["5XX"] = error
        for status, model, description in route.others:
            responses[str(status)] = {
                "description": description,
                "content": _json(schemas[(model, "serialization")]),
            }
        operation: dict[str, Any] = {
            "operationId": _operation_id(route),
            "summary": route.summary,
            "responses": responses,
        }
        parameters = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _PATH_PARAM.findall(route.path)
        ] + [
            {"name": name, "in": "query", "required": False, "schema": {"type": "string"}}
            for name in route.query
        ]
        if parameters:
            operation["parameters"] = parameters
        if route.request is not None:
            operation["requestBody"] = {
                "required": True,
                "content": _json(schemas[(route.request, "validation")]),
            }
        paths.setdefault(route.path, {})[route.method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "ai-stack",
            "version": __version__,
            "description": (
                "OpenAI-compatible chat, completions, responses and speech from local models; also "
                "Anthropic's Messages API, Ollama's API and llama.cpp server's completion routes"
            ),
        },
        "paths": paths,
        "components": {"schemas": defs.get("$defs", {})},
    }


async def openapi_endpoint(request: Request) -> Response:
    """GET /openapi.json."""
    document = getattr(request.app.state, "openapi", None)
    if document is None:  # built on first use, once per app
        document = request.app.state.openapi = openapi_document()
    return JSONResponse(document)
