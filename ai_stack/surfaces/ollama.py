"""Ollama's API at /api/*: version, tags, ps, show, chat, generate, translated onto the one chat pipeline.

A request becomes a ChatCompletionRequest (or a SamplingRequest for raw and fill-in-the-middle prompts) and
goes through ChatService; the answer comes back in Ollama's shapes: one JSON object, or NDJSON lines that end
with a `done` line carrying Ollama's statistics (durations in nanoseconds). Names resolve as Ollama clients
send them: `ID`, `ID:latest`, an alias or `alias:latest`. Errors are `{"error": "..."}` (errors.body_for).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar, cast

from pydantic import BaseModel, Field, ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from ai_stack.engines.base import ChatEngine, TokenLogprob
from ai_stack.errors import ContextLengthExceeded, InvalidRequest, ModelNotFound, stream_error_body
from ai_stack.fleet.engine import RemoteEngine
from ai_stack.protocol import ChatCompletionRequest, Lenient, SamplingRequest
from ai_stack.registry import ModelEntry, ModelRegistry, ModelState
from ai_stack.routes import disconnect_waiter, parse_body
from ai_stack.serving.chat import UNKNOWN_CONTEXT, ChatService, ClientDisconnected, unless_disconnected
from ai_stack.serving.fim import fim_family, fim_prompt, fim_stops, stop_at_fim_ends
from ai_stack.serving.generation import PreparedChat, RunResult
from ai_stack.serving.parsers import ToolCall, detect_reasoning, detect_tool_format

# The Ollama release whose API shapes these routes follow (what /api/version reports).
OLLAMA_VERSION = "0.12.0"
# expires_at of a model that stays loaded until it is unloaded.
NEVER = "9999-12-31T23:59:59Z"
# A keep_alive longer than this (about 31 years) is forever.
MAX_KEEP_ALIVE_SECONDS = 1e9
_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")
_DURATION_PART = re.compile(r"([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(ns|us|µs|ms|s|m|h)")
_DURATION = re.compile(rf"(?:{_DURATION_PART.pattern})+")

M = TypeVar("M", bound=BaseModel)


class OllamaOptions(Lenient):
    """`options` of a request; the ones not listed (mirostat, num_gpu, num_thread, ...) are ignored."""

    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    num_predict: int | None = None
    num_ctx: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    repeat_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None


class OllamaFunctionCall(Lenient):
    """The function of an earlier tool call: its name and arguments (an object)."""

    name: str
    arguments: dict[str, Any] | str = Field(default_factory=dict)


class OllamaToolCall(Lenient):
    """One tool call of an earlier assistant message."""

    id: str | None = None
    function: OllamaFunctionCall


class OllamaMessage(Lenient):
    """One message of /api/chat."""

    role: Literal["system", "user", "assistant", "tool"]
    content: str | None = None
    thinking: str | None = None
    images: list[Any] | None = None
    tool_calls: list[OllamaToolCall] | None = None
    tool_name: str | None = None
    tool_call_id: str | None = None


class OllamaRequest(Lenient):
    """The fields /api/chat and /api/generate share."""

    model: str = Field(min_length=1)
    stream: bool | None = None  # Ollama streams unless told not to
    options: OllamaOptions | None = None
    format: str | dict[str, Any] | None = None
    keep_alive: float | str | None = None
    think: bool | Literal["low", "medium", "high"] | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)


class OllamaChatRequest(OllamaRequest):
    """POST /api/chat."""

    messages: list[OllamaMessage] = Field(default_factory=list)
    tools: list[dict[str, Any]] | None = None


class OllamaGenerateRequest(OllamaRequest):
    """POST /api/generate."""

    prompt: str | None = None
    suffix: str | None = None
    system: str | None = None
    template: str | None = None
    raw: bool = False
    images: list[Any] | None = None
    context: list[int] | None = None


class ModelName(Lenient):
    """The body of /api/show, /api/pull, /api/push, /api/delete: a model name (`name` in older clients)."""

    model: str | None = None
    name: str | None = None

    def value(self) -> str:
        """The name given, or a 400."""
        name = self.model or self.name
        if not name:
            raise InvalidRequest("Missing required parameter: 'model'", param="model")
        return name


# Pipeline field -> the Ollama parameter that set it, so that a 400 names what the client sent.
_PARAMS = {
    "temperature": "options.temperature",
    "top_p": "options.top_p",
    "top_k": "options.top_k",
    "min_p": "options.min_p",
    "seed": "options.seed",
    "stop": "options.stop",
    "repetition_penalty": "options.repeat_penalty",
    "presence_penalty": "options.presence_penalty",
    "frequency_penalty": "options.frequency_penalty",
    "response_format": "format",
    "reasoning_effort": "think",
}


def _validated(schema: type[M], data: dict[str, Any]) -> M:
    """Validate a translated request; a problem is a 400 naming the Ollama parameter."""
    try:
        return schema.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = [str(part) for part in error["loc"]]
        if loc:
            loc[0] = _PARAMS.get(loc[0], loc[0])
        param = ".".join(loc) or None
        message = str(error["msg"]).removeprefix("Value error, ")
        raise InvalidRequest(
            f"Invalid value for '{param}': {message}" if param else message, param=param, code="invalid_value"
        ) from None


def keep_alive_seconds(value: float | str | None) -> float | None:
    """Ollama's keep_alive in seconds: a number of seconds or a Go duration ("5m", "1h30m"); < 0 = forever."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        sign, rest = (-1.0, text[1:]) if text.startswith("-") else (1.0, text.removeprefix("+"))
        if _NUMBER.fullmatch(rest):
            value = sign * float(rest)
        elif _DURATION.fullmatch(rest):
            value = sign * sum(float(n) * _GO_UNITS[unit] for n, unit in _DURATION_PART.findall(rest))
        else:
            raise InvalidRequest(
                f"Invalid keep_alive {value[:40]!r}: use seconds or a duration such as '5m' or '1h'",
                param="keep_alive",
            )
    return -1.0 if value > MAX_KEEP_ALIVE_SECONDS else float(value)


def _now() -> str:
    return datetime.now(UTC).isoformat().replace("+00:00", "Z")


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


def _registry(request: Request) -> ModelRegistry:
    registry: ModelRegistry = request.app.state.registry
    return registry


def resolve(registry: ModelRegistry, name: str) -> ModelEntry:
    """The entry for a name as Ollama clients send it: an id or alias, with or without `:latest`."""
    for candidate in dict.fromkeys((name, name.removesuffix(":latest"))):
        with contextlib.suppress(ModelNotFound):
            return registry.lookup(candidate)
    raise ModelNotFound(
        f"model '{name}' not found: ai-stack serves the models of its config (GET /api/tags lists them)",
        param="model",
    )


async def _ready(registry: ModelRegistry, entry: ModelEntry) -> tuple[ChatEngine, int]:
    """The model's chat engine, loading it first if need be (as Ollama does); and the load wait in ns."""
    started = time.perf_counter_ns()
    await registry.wait_ready(entry.spec.id, "chat", blocking=True)
    _, engine = registry.chat_engine(entry.spec.id)  # the reason it cannot serve, if it cannot
    return engine, time.perf_counter_ns() - started


def _digest(entry: ModelEntry) -> str:
    return hashlib.sha256(f"{entry.spec.id}\n{entry.spec.source}".encode()).hexdigest()


def _chat_engine(entry: ModelEntry) -> ChatEngine | None:
    """The engine of a loaded chat model, else None."""
    if entry.state != ModelState.READY or entry.spec.kind != "chat":
        return None
    return cast(ChatEngine, entry.engine)


def _details(entry: ModelEntry) -> dict[str, Any]:
    engine = _chat_engine(entry)
    kind = engine.engine_kind if engine is not None else entry.spec.engine
    gguf = kind == "llamacpp" or entry.spec.source.lower().endswith(".gguf")
    return {
        "parent_model": "",
        "format": "gguf" if gguf else "safetensors",
        "family": "",
        "families": None,
        "parameter_size": "",
        "quantization_level": "" if entry.spec.quantization == "none" else entry.spec.quantization.upper(),
    }


def _listing(entry: ModelEntry) -> dict[str, Any]:
    name = f"{entry.spec.id}:latest"
    return {
        "name": name,
        "model": name,
        "modified_at": _iso(entry.created),
        "size": 0,
        "digest": _digest(entry),
        "details": _details(entry),
    }


async def version(request: Request) -> Response:
    """GET /api/version."""
    return JSONResponse({"version": OLLAMA_VERSION})


async def tags(request: Request) -> Response:
    """GET /api/tags: every chat model as `ID:latest`, loaded or not."""
    entries = [e for e in _registry(request).entries.values() if e.spec.kind == "chat"]
    return JSONResponse({"models": [_listing(entry) for entry in entries]})


async def ps(request: Request) -> Response:
    """GET /api/ps: the chat models loaded now, and when an idle keep_alive will unload them."""
    registry = _registry(request)
    models = []
    for entry in registry.entries.values():
        engine = _chat_engine(entry)
        if engine is None:
            continue
        expires = registry.expires_at(entry.spec.id)
        models.append(
            {
                **_listing(entry),
                "expires_at": NEVER if expires is None else _iso(expires),
                "size_vram": 0,
                "context_length": engine.context_length,
            }
        )
    return JSONResponse({"models": models})


async def show(request: Request) -> Response:
    """POST /api/show: details, template, capabilities (the template's only once the model is loaded)."""
    entry = resolve(_registry(request), (await parse_body(request, ModelName)).value())
    if entry.spec.kind != "chat":
        raise InvalidRequest(
            f"'{entry.spec.id}' is a {entry.spec.kind} model, not a chat model", param="model"
        )
    engine = _chat_engine(entry)
    template = engine.chat_template if engine is not None else None
    capabilities = ["completion"]
    if detect_tool_format(template) is not None:
        capabilities.append("tools")
    if engine is not None and fim_family(engine) is not None:
        capabilities.append("insert")
    if detect_reasoning(template):
        capabilities.append("thinking")
    context = engine.context_length if engine is not None else entry.spec.context_length
    info: dict[str, Any] = {"general.architecture": "ai-stack", "general.name": entry.spec.id}
    if context is not None:
        info["ai-stack.context_length"] = context
    return JSONResponse(
        {
            "modelfile": f"# from ai-stack's config\nFROM {entry.spec.id}\n",
            "parameters": "",
            "template": template or "",
            "details": _details(entry),
            "model_info": info,
            "capabilities": capabilities,
            "modified_at": _iso(entry.created),
        }
    )


async def pull(request: Request) -> Response:
    """POST /api/pull: success for a configured model (its load starts); no model is ever downloaded."""
    registry = _registry(request)
    entry = resolve(registry, (await parse_body(request, ModelName)).value())
    if entry.state == ModelState.UNLOADED and registry.config.server.load_on_request:
        registry.load(entry.spec.id)
    return JSONResponse({"status": "success"})


async def not_managed(request: Request) -> Response:
    """POST /api/push, /api/create, /api/copy, DELETE /api/delete: models come from the config only."""
    raise InvalidRequest(
        f"{request.url.path} is not supported: ai-stack serves the models listed in its config file "
        "(add a [[models]] entry and restart to add one)"
    )


# ------------------------------------------------------------------------------------------- generating


@dataclass
class Part:
    """What one step of a generation added: text, thinking, tool calls, log-probabilities."""

    content: str = ""
    thinking: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)
    logprobs: list[TokenLogprob] = field(default_factory=list)

    def extend(self, other: Part) -> None:
        """Append another part (a whole answer is the sum of its parts)."""
        self.content += other.content
        self.thinking += other.thinking
        self.tool_calls += other.tool_calls
        self.logprobs += other.logprobs


@dataclass
class Run:
    """One request's timing and outcome, for Ollama's final statistics (nanoseconds)."""

    received: int
    load_ns: int
    keep_alive: float | None = None  # applied when the answer ends, so it counts from there
    prompt_tokens: int = 0
    generating: int = 0
    first: int | None = None
    end: int | None = None
    result: RunResult = field(default_factory=RunResult)

    def final(self) -> dict[str, Any]:
        """done_reason and the statistics fields of the last line."""
        end = self.end or time.perf_counter_ns()
        first = self.first or end
        return {
            "done_reason": "length" if self.result.finish_reason == "length" else "stop",
            "total_duration": end - self.received,
            "load_duration": self.load_ns,
            "prompt_eval_count": self.prompt_tokens,
            "prompt_eval_duration": first - (self.generating or first),
            "eval_count": self.result.completion_tokens,
            "eval_duration": end - first,
        }


async def _parts(service: ChatService, chat: PreparedChat, run: Run) -> AsyncIterator[Part]:
    """The generation's parts as they come (closing this iterator cancels the generation)."""
    run.prompt_tokens = len(chat.prompt.token_ids)
    run.generating = time.perf_counter_ns()
    events = service.events(chat)
    try:
        async for event in events:
            if run.first is None:
                run.first = time.perf_counter_ns()
            if event.result is not None:
                run.result = event.result
            delta = event.delta
            if delta.content or delta.reasoning or delta.tool_calls or event.logprobs:
                yield Part(delta.content, delta.reasoning, list(delta.tool_calls), list(event.logprobs))
    finally:
        await events.aclose()  # type: ignore[attr-defined]
        if run.keep_alive is not None:
            service.registry.keep_alive(chat.model_id, run.keep_alive)
    run.prompt_tokens = chat.prompt_tokens(run.result)  # a remote model's upstream counts it at the end
    run.end = time.perf_counter_ns()


Shape = Callable[[Part, int], dict[str, Any]]  # a part (and the number of tool calls before it) as fields


def _line(body: dict[str, Any]) -> bytes:
    return (json.dumps(body, ensure_ascii=False, separators=(",", ":")) + "\n").encode()


async def _ndjson(
    head: dict[str, Any], shape: Shape, parts: AsyncIterator[Part], run: Run, model_id: str
) -> AsyncIterator[bytes]:
    """NDJSON lines: one per part, then the `done` line; an error after the start is an `error` line."""
    calls = 0
    try:
        async for part in parts:
            yield _line({**head, "created_at": _now(), **shape(part, calls), "done": False})
            calls += len(part.tool_calls)
        yield _line({**head, "created_at": _now(), **shape(Part(), calls), "done": True, **run.final()})
    except Exception as exc:
        yield _line({"error": stream_error_body(exc, model_id, "generating")["error"]["message"]})
    finally:
        await parts.aclose()  # type: ignore[attr-defined]


async def _whole(parts: AsyncIterator[Part], request: Request) -> Part:
    """The whole answer; a client that disconnects cancels the generation (ClientDisconnected)."""
    total = Part()

    async def consume() -> None:
        try:
            async for part in parts:
                total.extend(part)
        finally:
            await parts.aclose()  # type: ignore[attr-defined]

    await unless_disconnected(consume(), disconnect_waiter(request))
    return total


async def _answer(
    request: Request, body: OllamaRequest, chat: PreparedChat, shape: Shape, run: Run
) -> Response:
    """Generate and answer: NDJSON lines when streamed (the default), else one object."""
    service: ChatService = request.app.state.chat
    head = {"model": body.model}
    parts = _parts(service, chat, run)
    if body.stream is not False:
        return StreamingResponse(
            _ndjson(head, shape, parts, run, chat.model_id),
            media_type="application/x-ndjson",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    try:
        total = await _whole(parts, request)
    except ClientDisconnected:
        return Response(status_code=499)
    return JSONResponse({**head, "created_at": _now(), **shape(total, 0), "done": True, **run.final()})


def _tool_call(call: ToolCall, index: int) -> dict[str, Any]:
    """A tool call as Ollama sends it: arguments as an object, not a JSON string."""
    try:
        arguments = json.loads(call.arguments) if call.arguments.strip() else {}
    except ValueError:
        arguments = {}
    if not isinstance(arguments, dict):
        arguments = {}
    return {"id": call.id, "function": {"index": index, "name": call.name, "arguments": arguments}}


def _logprobs(part: Part, body: OllamaRequest) -> dict[str, Any]:
    return {"logprobs": [entry.to_openai() for entry in part.logprobs]} if body.logprobs else {}


def _chat_shape(body: OllamaRequest) -> Shape:
    def shape(part: Part, calls: int) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": part.content}
        if part.thinking:
            message["thinking"] = part.thinking
        if part.tool_calls:
            message["tool_calls"] = [_tool_call(c, calls + i) for i, c in enumerate(part.tool_calls)]
        return {"message": message, **_logprobs(part, body)}

    return shape


def _generate_shape(body: OllamaRequest) -> Shape:
    def shape(part: Part, calls: int) -> dict[str, Any]:
        fields: dict[str, Any] = {"response": part.content}
        if part.thinking:
            fields["thinking"] = part.thinking
        return {**fields, **_logprobs(part, body)}

    return shape


def _response_format(value: str | dict[str, Any] | None) -> dict[str, Any] | None:
    """Ollama's `format` as a response_format: "json" -> any JSON object, an object -> that schema."""
    if value is None or value == "":
        return None
    if value == "json":
        return {"type": "json_object"}
    if isinstance(value, dict):
        return {"type": "json_schema", "json_schema": {"name": "response", "schema": value}}
    raise InvalidRequest(f'format must be "json" or a JSON schema object, not {value[:40]!r}', param="format")


def _sampling(body: OllamaRequest) -> dict[str, Any]:
    """The pipeline's sampling fields from Ollama's options (seed -1 = a random seed, as in Ollama)."""
    options = body.options or OllamaOptions()
    if body.top_logprobs is not None and not body.logprobs:
        raise InvalidRequest("top_logprobs needs logprobs to be true", param="top_logprobs")
    fields = {
        "temperature": options.temperature,
        "top_p": options.top_p,
        "top_k": options.top_k,
        "min_p": options.min_p,
        "seed": None if options.seed == -1 else options.seed,
        "stop": options.stop or None,
        "repetition_penalty": options.repeat_penalty,
        "presence_penalty": options.presence_penalty,
        "frequency_penalty": options.frequency_penalty,
        "response_format": _response_format(body.format),
    }
    return {key: value for key, value in fields.items() if value is not None}


def _fit(chat: PreparedChat, options: OllamaOptions | None) -> PreparedChat:
    """Cap the answer by num_predict (<= 0: up to the context) and num_ctx (caps prompt + answer)."""
    options = options or OllamaOptions()
    used, limit = len(chat.prompt.token_ids), chat.params.max_tokens
    if options.num_predict is not None and options.num_predict > 0:
        limit = (
            chat.engine.context_length or UNKNOWN_CONTEXT
        ) - used  # num_predict replaces the server's default_max_tokens
    if options.num_ctx is not None:
        if used >= options.num_ctx:
            raise ContextLengthExceeded(
                f"The prompt has {used} tokens, which does not leave room for an answer within "
                f"options.num_ctx ({options.num_ctx}); the prompt is never truncated",
                param="options.num_ctx",
            )
        limit = min(limit, options.num_ctx - used)
    if options.num_predict is not None and options.num_predict > 0:
        limit = min(limit, options.num_predict)
    chat.params = replace(chat.params, max_tokens=limit)
    return chat


def _check_think(body: OllamaRequest, entry: ModelEntry, engine: ChatEngine) -> str | None:
    """reasoning_effort for `think`; thinking asked of a model that cannot is a 400, as in Ollama."""
    if body.think and not isinstance(engine, RemoteEngine) and not detect_reasoning(engine.chat_template):
        raise InvalidRequest(f"'{entry.spec.id}' does not support thinking", param="think")
    if body.think is False:
        return "none"
    return body.think if isinstance(body.think, str) else None


async def _lifecycle(
    request: Request, body: OllamaRequest, empty: bool, shape: Shape
) -> tuple[ModelEntry, ChatEngine, Run] | Response:
    """Resolve and load the model; an empty request only loads it (or unloads it, with keep_alive 0)."""
    received = time.perf_counter_ns()
    registry = _registry(request)
    entry = resolve(registry, body.model)
    keep_alive = keep_alive_seconds(body.keep_alive)
    if empty and keep_alive == 0:
        if entry.spec.kind != "chat":
            registry.chat_engine(entry.spec.id)  # the wrong-kind error
        if entry.state == ModelState.READY and not registry.busy(entry.spec.id):
            await registry.unload(entry.spec.id)
        elif entry.state in (ModelState.READY, ModelState.LOADING):
            registry.keep_alive(entry.spec.id, 0)  # unloaded once its load or last answer ends
        return _done(body, shape, "unload")
    engine, load_ns = await _ready(registry, entry)
    if empty:
        if keep_alive is not None:
            registry.keep_alive(entry.spec.id, keep_alive)
        return _done(body, shape, "load")
    return entry, engine, Run(received, load_ns, keep_alive)


def _done(body: OllamaRequest, shape: Shape, reason: str) -> Response:
    return JSONResponse(
        {"model": body.model, "created_at": _now(), **shape(Part(), 0), "done": True, "done_reason": reason}
    )


def _chat_messages(body: OllamaChatRequest) -> list[dict[str, Any]]:
    """The messages in the pipeline's (OpenAI) form; tool results are linked to the calls they answer."""
    messages: list[dict[str, Any]] = []
    pending: list[str] = []  # ids of the last assistant message's calls not answered yet
    for index, message in enumerate(body.messages):
        if message.images:
            raise InvalidRequest(
                "images are not supported: the models here read text only", param=f"messages[{index}].images"
            )
        item: dict[str, Any] = {"role": message.role, "content": message.content or ""}
        if message.thinking:
            item["reasoning_content"] = message.thinking
        if message.tool_calls:
            # Mistral's templates take only 9-character alphanumeric ids.
            ids = [call.id or f"{index:05d}{n:04d}" for n, call in enumerate(message.tool_calls)]
            item["tool_calls"] = [
                {"id": ident, "type": "function", "function": call.function.model_dump()}
                for ident, call in zip(ids, message.tool_calls, strict=True)
            ]
            pending = ids
        if message.role == "tool":
            if message.tool_name:
                item["name"] = message.tool_name
            call_id = message.tool_call_id or (pending.pop(0) if pending else None)
            if call_id:
                item["tool_call_id"] = call_id
        messages.append(item)
    return messages


async def chat(request: Request) -> Response:
    """POST /api/chat: messages, tools, format, think, options; NDJSON stream or one object."""
    body = await parse_body(request, OllamaChatRequest)
    data: dict[str, Any] = {
        **_sampling(body),
        "messages": _chat_messages(body),
        "tools": [{"type": "function", **tool} for tool in body.tools or []] or None,
        "logprobs": body.logprobs,
        "top_logprobs": body.top_logprobs,
    }
    shape = _chat_shape(body)
    state = await _lifecycle(request, body, not body.messages, shape)
    if isinstance(state, Response):
        return state
    entry, engine, run = state
    # A remote model's upstream renders the tools (or answers its own 4xx).
    if (
        body.tools
        and not isinstance(engine, RemoteEngine)
        and detect_tool_format(engine.chat_template) is None
    ):
        raise InvalidRequest(f"'{entry.spec.id}' does not support tools", param="tools")
    data.update(model=entry.spec.id, reasoning_effort=_check_think(body, entry, engine))
    completion = _validated(ChatCompletionRequest, {k: v for k, v in data.items() if v is not None})
    service: ChatService = request.app.state.chat
    with service.registry.in_use(entry.spec.id):  # no idle unload while the prompt is prepared
        prepared = _fit(await service.prepare(completion), body.options)
    return await _answer(request, body, prepared, shape, run)


async def _prepare_generate(
    service: ChatService,
    body: OllamaGenerateRequest,
    sampling: dict[str, Any],
    entry: ModelEntry,
    engine: ChatEngine,
) -> PreparedChat:
    """Fill-in-the-middle (a suffix), a raw prompt, or system + prompt through the chat template."""
    if body.suffix or body.raw:
        raw = _validated(SamplingRequest, sampling)
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
        if isinstance(engine, RemoteEngine):  # the upstream writes the FIM prompt (its /v1/completions)
            return await service.prepare_raw(raw, body.prompt or "", logprobs=logprobs, suffix=body.suffix)
        if body.suffix:
            text = fim_prompt(engine, body.prompt or "", body.suffix)
            stops = [*(raw.stop or []), *fim_stops(engine)]
            prepared = await service.prepare_raw(raw, text, logprobs=logprobs, stops=stops)
        else:
            prepared = await service.prepare_raw(raw, body.prompt or "", logprobs=logprobs)
        return stop_at_fim_ends(prepared)
    messages = [{"role": "system", "content": body.system}] if body.system else []
    messages.append({"role": "user", "content": body.prompt or ""})
    data: dict[str, Any] = {
        **sampling,
        "messages": messages,
        "logprobs": body.logprobs,
        "top_logprobs": body.top_logprobs,
        "reasoning_effort": _check_think(body, entry, engine),
    }
    completion = _validated(ChatCompletionRequest, {k: v for k, v in data.items() if v is not None})
    return await service.prepare(completion)


async def generate(request: Request) -> Response:
    """POST /api/generate: a prompt through the chat template, raw, or fill-in-the-middle with `suffix`."""
    body = await parse_body(request, OllamaGenerateRequest)
    if body.images:
        raise InvalidRequest("images are not supported: the models here read text only", param="images")
    if body.template:
        raise InvalidRequest(
            "template is not supported: prompts use the model's own chat template (or raw: true)",
            param="template",
        )
    if body.context:
        raise InvalidRequest(
            "context is not supported: send the conversation as messages to /api/chat", param="context"
        )
    if body.raw and body.system:
        raise InvalidRequest("raw mode does not support system", param="system")
    sampling = _sampling(body)
    shape = _generate_shape(body)
    state = await _lifecycle(request, body, not body.prompt and not body.suffix, shape)
    if isinstance(state, Response):
        return state
    entry, engine, run = state
    service: ChatService = request.app.state.chat
    sampling["model"] = entry.spec.id
    with service.registry.in_use(entry.spec.id):  # no idle unload while the prompt is prepared
        prepared = await _prepare_generate(service, body, sampling, entry, engine)
    return await _answer(request, body, _fit(prepared, body.options), shape, run)


def routes() -> list[BaseRoute]:
    """This API's routes (mounted by the app at /api)."""
    return [
        Route("/version", version, methods=["GET"]),
        Route("/tags", tags, methods=["GET"]),
        Route("/ps", ps, methods=["GET"]),
        Route("/show", show, methods=["POST"]),
        Route("/chat", chat, methods=["POST"]),
        Route("/generate", generate, methods=["POST"]),
        Route("/pull", pull, methods=["POST"]),
        Route("/push", not_managed, methods=["POST"]),
        Route("/create", not_managed, methods=["POST"]),
        Route("/copy", not_managed, methods=["POST"]),
        Route("/delete", not_managed, methods=["DELETE"]),
    ]
