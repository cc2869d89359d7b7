"""OpenAI's legacy /v1/completions (fill-in-the-middle via `suffix`), llama.cpp's /infill and /completion.

Translation layers over the chat pipeline's raw-prompt path (`ChatService.prepare_raw`, `events`, `collect`):
sampling, stops, streaming, cancellation, usage and metrics are the chat route's own.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any

from pydantic import BaseModel, Field, model_validator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from ai_stack.engines.base import ChatEngine, TokenLogprob
from ai_stack.errors import APIError, ContextLengthExceeded, InvalidRequest, llama_body, stream_error_body
from ai_stack.fleet.engine import RemoteEngine
from ai_stack.fleet.proxy import forward, remote_engine
from ai_stack.json_body import load_json
from ai_stack.protocol import SamplingRequest
from ai_stack.registry import ModelRegistry
from ai_stack.routes import disconnect_waiter, parse_body
from ai_stack.serving.chat import ChatService, ChoiceText, ClientDisconnected, usage_of
from ai_stack.serving.fim import fim_prompt, stop_at_fim_ends, suffix_stop
from ai_stack.serving.generation import PreparedChat, RunResult

MAX_PROMPTS = 16  # prompts in one legacy request; each runs after the other
MAX_EXTRA_CHUNKS = 256  # /infill input_extra chunks
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


# ---------------------------------------------------------------------------------------------- requests


class CompletionRequest(SamplingRequest):
    """POST /v1/completions body (OpenAI's legacy completions)."""

    prompt: str | list[str] | list[int] | list[list[int]]
    suffix: str | None = None
    echo: bool = False
    logprobs: int | None = Field(default=None, ge=0, le=20)
    best_of: int | None = Field(default=None, ge=1, le=16)
    max_tokens: int | None = Field(default=16, ge=0)  # OpenAI's default; 0 with echo returns the prompt

    @model_validator(mode="after")
    def _consistent(self) -> CompletionRequest:
        if isinstance(self.prompt, list):
            if not self.prompt or any(isinstance(p, list) and not p for p in self.prompt):
                raise ValueError("prompt must not be empty")
            if isinstance(self.prompt[0], str | list) and len(self.prompt) > MAX_PROMPTS:
                raise ValueError(f"at most {MAX_PROMPTS} prompts are allowed in one request")
        if self.best_of is not None and self.best_of < self.n:
            raise ValueError("best_of must be greater than or equal to n")
        if self.best_of is not None and self.best_of > self.n and self.stream:
            raise ValueError("best_of greater than n cannot be streamed")
        if self.echo and self.suffix is not None:
            raise ValueError("echo cannot be used with suffix")
        return self

    def prompts(self) -> list[str | list[int]]:
        """Each prompt of the request: text or token ids."""
        if isinstance(self.prompt, str):
            return [self.prompt]
        if all(isinstance(p, int) for p in self.prompt):
            return [[int(p) for p in self.prompt]]  # type: ignore[arg-type]
        return list(self.prompt)  # type: ignore[arg-type]


class InfillChunk(BaseModel):
    """One entry of /infill's input_extra: another file's text as context."""

    filename: str = Field(default="tmp", max_length=4096)
    text: str


class LlamaCompletionRequest(SamplingRequest):
    """POST /completion body (llama.cpp server's native completion); unknown fields are ignored."""

    model: str = ""  # llama.cpp clients send none: the first chat model then
    prompt: str | list[int]
    n_predict: int = Field(default=-1, ge=-1)
    n_probs: int = Field(default=0, ge=0, le=20)

    @model_validator(mode="before")
    @classmethod
    def _llama_names(cls, data: Any) -> Any:
        """llama.cpp's names and forms of the shared fields."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        if "grammar" in data:
            raise ValueError("grammar (GBNF) is not supported; use json_schema")
        if "repeat_penalty" in data and "repetition_penalty" not in data:
            data["repetition_penalty"] = data["repeat_penalty"]
        if data.get("seed") == -1:  # llama.cpp's "random"
            data["seed"] = None
        if data.get("json_schema") is not None:
            data["response_format"] = {"type": "json_schema", "json_schema": {"schema": data["json_schema"]}}
        bias = data.get("logit_bias")
        if isinstance(bias, list):  # [[token id, bias or false], ...]
            pairs: dict[str, float] = {}
            for pair in bias:
                if not (isinstance(pair, list) and len(pair) == 2 and type(pair[0]) is int):
                    raise ValueError("logit_bias entries must be [token id, bias] pairs")
                pairs[str(pair[0])] = -100.0 if pair[1] is False else pair[1]
            data["logit_bias"] = pairs
        return data

    def completion_limit(self) -> int | None:
        """n_predict (-1: the rest of the context), else max_tokens."""
        return self.n_predict if self.n_predict >= 0 else self.max_tokens


class InfillRequest(LlamaCompletionRequest):
    """POST /infill body (llama.cpp's fill-in-the-middle, as llama.vscode sends it)."""

    prompt: str = ""  # text after the FIM middle token (the part of the line already typed)
    input_prefix: str = ""
    input_suffix: str = ""
    input_extra: list[InfillChunk] = Field(default_factory=list, max_length=MAX_EXTRA_CHUNKS)


# ---------------------------------------------------------------------------------------------- shared


def _service(request: Request) -> ChatService:
    service: ChatService = request.app.state.chat
    return service


def _no_generation(chat: PreparedChat) -> bool:
    """max_tokens / n_predict 0: answer without generating (echo, usage, or nothing)."""
    return chat.params.max_tokens == 0


async def _prompt_tokens(engine: ChatEngine, chat: PreparedChat) -> list[str]:
    """The prompt's tokens as texts (for echo with logprobs); one entry when the engine has no vocabulary."""
    try:
        return await asyncio.to_thread(lambda: [engine.decode([token]) for token in chat.prompt.token_ids])
    except ValueError:
        return [chat.prompt.text]


class LegacyLogprobs:
    """OpenAI's legacy logprobs of one choice: tokens, token_logprobs, top_logprobs, text_offset."""

    def __init__(self, top: int, offset: int = 0) -> None:
        self.top = top
        self.offset = offset

    def prompt(self, texts: list[str]) -> dict[str, Any]:
        """Entries for echoed prompt tokens: not scored, so their log-probabilities are null."""
        return self._entries([(text, None, None) for text in texts])

    def generated(self, entries: list[TokenLogprob]) -> dict[str, Any]:
        """Entries for generated tokens."""
        return self._entries(
            [
                (e.token, e.logprob, {t: lp for t, lp, _ in e.top[: self.top]} if self.top else None)
                for e in entries
            ]
        )

    def _entries(self, items: list[tuple[str, float | None, dict[str, float] | None]]) -> dict[str, Any]:
        offsets = []
        for text, _, _ in items:
            offsets.append(self.offset)
            self.offset += len(text)
        return {
            "tokens": [text for text, _, _ in items],
            "token_logprobs": [logprob for _, logprob, _ in items],
            "top_logprobs": [top for _, _, top in items],
            "text_offset": offsets,
        }


def _join(parts: list[dict[str, Any]]) -> dict[str, Any]:
    keys = ("tokens", "token_logprobs", "top_logprobs", "text_offset")
    return {key: [item for part in parts for item in part[key]] for key in keys}


def _with_suffix_stop(stop: str | list[str] | None, suffix: str | None) -> list[str]:
    """The request's stop sequences, plus the suffix's next line for a fill-in-the-middle request."""
    stops = [stop] if isinstance(stop, str) else list(stop or [])
    line = suffix_stop(suffix) if suffix is not None else None
    return [*stops, line] if line is not None and line not in stops else stops


def _usage(chats: list[PreparedChat], results: list[list[RunResult]]) -> dict[str, Any]:
    usages = [usage_of(chat, result) for chat, result in zip(chats, results, strict=True)]
    prompt = sum(u.prompt_tokens for u in usages)
    completion = sum(u.completion_tokens for u in usages)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


# ----------------------------------------------------------------------------------------- /v1/completions


async def _prepare_legacy(service: ChatService, body: CompletionRequest) -> list[PreparedChat]:
    """One prepared request per prompt, each with best_of choices; every problem is a 400 before streaming."""
    await service.registry.wait_ready(body.model, "chat")
    _, engine = service.registry.chat_engine(body.model)
    best_of = body.best_of or body.n
    sampling = body.model_copy(update={"n": best_of})
    # Ranking best_of choices needs each token's log-probability.
    logprobs = body.logprobs if body.logprobs is not None else (0 if best_of > body.n else None)
    chats = []
    stops = _with_suffix_stop(body.stop, body.suffix)
    for prompt in body.prompts():
        if body.suffix is not None:
            if not isinstance(prompt, str):
                raise InvalidRequest("suffix needs the prompt as text, not token ids", param="suffix")
            prompt = fim_prompt(engine, prompt, body.suffix)
        chat = await service.prepare_raw(sampling, prompt, logprobs=logprobs, stops=stops)
        chats.append(stop_at_fim_ends(chat))
    return chats


def _best(texts: list[ChoiceText], n: int) -> list[ChoiceText]:
    """The n choices with the highest total log-probability, in that order (all of them when n == len)."""
    if n == len(texts):
        return texts
    return sorted(texts, key=lambda text: -sum(e.logprob for e in text.logprobs))[:n]


async def _legacy_full(request: Request, body: CompletionRequest, chats: list[PreparedChat]) -> Response:
    service = _service(request)
    choices: list[dict[str, Any]] = []
    results: list[list[RunResult]] = []
    for chat in chats:
        if _no_generation(chat):
            texts = [ChoiceText(finish_reason="length") for _ in range(chat.n)]
        else:
            try:
                texts = await service.collect(chat, disconnect_waiter(request))
            except ClientDisconnected:
                return Response(status_code=499)
        results.append([text.result for text in texts])
        prompt_texts = (
            await _prompt_tokens(chat.engine, chat) if body.echo and body.logprobs is not None else []
        )
        for text in _best(texts, body.n):
            content = "".join(text.content)
            logprobs = None
            if body.logprobs is not None:
                legacy = LegacyLogprobs(body.logprobs)
                logprobs = _join([legacy.prompt(prompt_texts), legacy.generated(text.logprobs)])
            choices.append(
                {
                    "text": chat.prompt.text + content if body.echo else content,
                    "index": len(choices),
                    "logprobs": logprobs,
                    "finish_reason": text.finish_reason,
                }
            )
    return JSONResponse(
        {
            "id": f"cmpl-{uuid.uuid4().hex}",
            "object": "text_completion",
            "created": int(time.time()),
            "model": chats[0].model_id,
            "choices": choices,
            "usage": _usage(chats, results),
            "system_fingerprint": None,
        }
    )


async def _legacy_stream(
    service: ChatService, body: CompletionRequest, chats: list[PreparedChat]
) -> AsyncIterator[str]:
    """text_completion chunks: echoed prompts, text deltas, finish reasons, optional usage, [DONE].

    Prompts run one after another; closing the stream (the client left) cancels the running generation.
    """
    ident, created, model = f"cmpl-{uuid.uuid4().hex}", int(time.time()), chats[0].model_id

    def chunk(choices: list[dict[str, Any]], usage: dict[str, Any] | None = None) -> str:
        data = {
            "id": ident,
            "object": "text_completion",
            "created": created,
            "model": model,
            "choices": choices,
            "usage": usage,
        }
        return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"

    def choice(index: int, text: str, logprobs: dict[str, Any] | None, finish: str | None) -> dict[str, Any]:
        return {"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish}

    results: list[list[RunResult]] = []
    try:
        for number, chat in enumerate(chats):
            base = number * chat.n
            legacy = [LegacyLogprobs(body.logprobs or 0) for _ in range(chat.n)]
            results.append([RunResult() for _ in range(chat.n)])
            if body.echo:
                texts = await _prompt_tokens(chat.engine, chat) if body.logprobs is not None else []
                for index in range(chat.n):
                    logprobs = legacy[index].prompt(texts) if body.logprobs is not None else None
                    yield chunk([choice(base + index, chat.prompt.text, logprobs, None)])
            if _no_generation(chat):
                for index in range(chat.n):
                    yield chunk([choice(base + index, "", None, "length")])
                continue
            events = service.events(chat)
            try:
                async for event in events:
                    if event.result is not None:
                        results[-1][event.index] = event.result
                    logprobs = (
                        legacy[event.index].generated(event.logprobs)
                        if body.logprobs is not None and event.logprobs
                        else None
                    )
                    if event.delta.content or logprobs or event.finish_reason is not None:
                        yield chunk(
                            [choice(base + event.index, event.delta.content, logprobs, event.finish_reason)]
                        )
            finally:
                await events.aclose()  # type: ignore[attr-defined]
        if body.stream_options is not None and body.stream_options.include_usage:
            yield chunk([], _usage(chats, results))
    except Exception as exc:
        yield f"data: {json.dumps(stream_error_body(exc, model, 'generating'))}\n\n"
    yield "data: [DONE]\n\n"


async def completions(request: Request) -> Response:
    """POST /v1/completions: OpenAI's legacy completions, full or streamed; `suffix` fills in the middle."""
    body = await parse_body(request, CompletionRequest)
    remote = await remote_engine(request.app.state.registry, body.model, "chat")
    if remote is not None:  # the upstreams serve it: the client's body goes there as it is
        raw = load_json(await request.body(), request.app.state.config.server.max_json_depth)
        return await forward(request, *remote, "completions", raw, weight=body.n)
    service = _service(request)
    chats = await _prepare_legacy(service, body)
    if body.stream:
        return StreamingResponse(
            _legacy_stream(service, body, chats), media_type="text/event-stream", headers=SSE_HEADERS
        )
    return await _legacy_full(request, body, chats)


# ---------------------------------------------------------------------------------------------- llama.cpp


def _llama_model(registry: ModelRegistry, body: LlamaCompletionRequest) -> None:
    """Fill in the model a llama.cpp client did not name: the first configured chat model."""
    if body.model:
        return
    chat = next((e.spec.id for e in registry.entries.values() if e.spec.kind == "chat"), None)
    if chat is None:
        raise InvalidRequest("No chat model is configured", param="model")
    body.model = chat


async def _prepare_infill(service: ChatService, body: InfillRequest) -> PreparedChat:
    """The FIM prompt with as much of input_extra as fits the context (oldest chunks dropped first)."""
    await service.registry.wait_ready(body.model, "chat")
    entry, engine = service.registry.chat_engine(body.model)
    extra = [(chunk.filename, chunk.text) for chunk in body.input_extra]
    stops = _with_suffix_stop(body.stop, body.input_suffix)
    if isinstance(engine, RemoteEngine):  # the upstream writes the FIM prompt from prompt and suffix
        if extra or body.prompt:
            raise InvalidRequest(
                f"The model '{entry.spec.id}' is served by remote upstreams, which take a prefix and a "
                "suffix (/v1/completions): input_extra and prompt need the model's own FIM tokens here",
                param="input_extra" if extra else "prompt",
                code="unsupported_for_remote_model",
            )
        return await service.prepare_raw(
            body, body.input_prefix, stops=stops, param="input_prefix", suffix=body.input_suffix
        )
    while True:
        prompt = fim_prompt(engine, body.input_prefix, body.input_suffix, extra, param="input_suffix")
        try:
            return await service.prepare_raw(body, prompt + body.prompt, stops=stops, param="input_prefix")
        except ContextLengthExceeded:
            if not extra:
                raise
            extra = extra[1:]


def _llama_final(chat: PreparedChat, text: ChoiceText, n_probs: int) -> dict[str, Any]:
    """The body of a finished llama.cpp completion (the last stream event carries the same fields)."""
    body: dict[str, Any] = {
        "content": "".join(text.content),
        "stop": True,
        "model": chat.model_id,
        "tokens_predicted": text.result.completion_tokens,
        "tokens_evaluated": chat.prompt_tokens(text.result),
        "truncated": False,
        # A stop string also reads "eos": the pipeline reports both as "stop".
        "stop_type": "limit" if text.finish_reason == "length" else "eos",
    }
    if n_probs:
        body["completion_probabilities"] = [entry.to_openai() for entry in text.logprobs]
    return body


async def _llama_stream(service: ChatService, chat: PreparedChat, n_probs: int) -> AsyncIterator[str]:
    """llama.cpp's stream: `data: {"content", "stop": false}` events, then the final body (no [DONE])."""
    text = ChoiceText()
    events = service.events(chat)
    try:
        async for event in events:
            text.add(event)
            if event.delta.content or (n_probs and event.logprobs):
                data: dict[str, Any] = {"content": event.delta.content, "stop": False}
                if n_probs:
                    data["completion_probabilities"] = [entry.to_openai() for entry in event.logprobs]
                yield f"data: {json.dumps(data, ensure_ascii=False)}\n\n"
        final = _llama_final(chat, text, n_probs)
        yield f"data: {json.dumps({**final, 'content': ''}, ensure_ascii=False)}\n\n"
    except Exception as exc:
        error = stream_error_body(exc, chat.model_id, "generating")["error"]
        status = exc.status if isinstance(exc, APIError) else 500
        body = llama_body(APIError(error["message"], status=status))
        yield f"data: {json.dumps(body)}\n\n"
    finally:
        await events.aclose()  # type: ignore[attr-defined]


async def _llama_answer(
    request: Request, service: ChatService, chat: PreparedChat, body: LlamaCompletionRequest
) -> Response:
    chat = stop_at_fim_ends(chat)
    if body.stream:
        return StreamingResponse(
            _llama_stream(service, chat, body.n_probs), media_type="text/event-stream", headers=SSE_HEADERS
        )
    if _no_generation(chat):
        return JSONResponse(_llama_final(chat, ChoiceText(finish_reason="length"), body.n_probs))
    try:
        texts = await service.collect(chat, disconnect_waiter(request))
    except ClientDisconnected:
        return Response(status_code=499)
    return JSONResponse(_llama_final(chat, texts[0], body.n_probs))


async def llama_completion(request: Request) -> Response:
    """POST /completion: llama.cpp's native completion of a raw prompt."""
    body = await parse_body(request, LlamaCompletionRequest)
    service = _service(request)
    _llama_model(service.registry, body)
    body = body.model_copy(update={"n": 1})
    chat = await service.prepare_raw(body, body.prompt, logprobs=body.n_probs or None)
    return await _llama_answer(request, service, chat, body)


async def infill(request: Request) -> Response:
    """POST /infill: llama.cpp's fill-in-the-middle with other files as context (llama.vscode)."""
    body = await parse_body(request, InfillRequest)
    service = _service(request)
    _llama_model(service.registry, body)
    body = body.model_copy(update={"n": 1})
    chat = await _prepare_infill(service, body)
    return await _llama_answer(request, service, chat, body)


def v1_routes() -> list[BaseRoute]:
    """Routes under /v1."""
    return [Route("/completions", completions, methods=["POST"])]


def llama_routes() -> list[BaseRoute]:
    """llama.cpp's top-level routes."""
    return [
        Route("/infill", infill, methods=["POST"]),
        Route("/completion", llama_completion, methods=["POST"]),
    ]
