"""Chat completions: protocol in, engine calls in a worker thread, protocol out (full or streamed)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ai_stack.engines.base import ChatEngine, Generation, GenerationCancelled, Piece, Prompt, SamplingParams
from ai_stack.errors import APIError, ContextLengthExceeded, InvalidRequest
from ai_stack.metrics import Metrics
from ai_stack.protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionRequest,
    Choice,
    ChunkChoice,
    Delta,
    Usage,
)
from ai_stack.registry import ModelRegistry

log = logging.getLogger(__name__)


class StopMatcher:
    """Cuts streamed text at the first stop sequence, holding back text that may be a stop's beginning."""

    def __init__(self, stops: list[str]) -> None:
        self.stops = stops
        self.buffer = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Add text; return what is safe to emit and whether a stop sequence was reached."""
        self.buffer += text
        if not self.stops:
            out, self.buffer = self.buffer, ""
            return out, False
        hits = [i for i in (self.buffer.find(stop) for stop in self.stops) if i >= 0]
        if hits:
            out, self.buffer = self.buffer[: min(hits)], ""
            return out, True
        hold = 0
        for stop in self.stops:
            for size in range(min(len(stop) - 1, len(self.buffer)), hold, -1):
                if self.buffer.endswith(stop[:size]):
                    hold = size
                    break
        out = self.buffer[: len(self.buffer) - hold]
        self.buffer = self.buffer[len(out) :]
        return out, False

    def flush(self) -> str:
        """Whatever is held back once generation has ended without a stop."""
        out, self.buffer = self.buffer, ""
        return out


class ClientDisconnected(Exception):
    """The client went away before its answer was ready; the generation was cancelled."""


@dataclass
class _Done:
    result: Generation | BaseException


@dataclass
class RunResult:
    """How a generation ended."""

    finish_reason: str = "stop"
    completion_tokens: int = 0


async def generate_text(
    engine: ChatEngine,
    prompt: Prompt,
    params: SamplingParams,
    stops: list[str],
    cancel: threading.Event,
    result: RunResult,
) -> AsyncIterator[str]:
    """Run engine.generate in a daemon thread and yield text deltas; closing the iterator cancels the work."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Piece | _Done] = asyncio.Queue()

    def put(item: Piece | _Done) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody is listening any more
            loop.call_soon_threadsafe(queue.put_nowait, item)

    def work() -> None:
        try:
            outcome: Generation | BaseException = engine.generate(prompt, params, cancel, put)
        except BaseException as exc:
            outcome = exc
        put(_Done(outcome))

    threading.Thread(target=work, name="generate", daemon=True).start()
    matcher = StopMatcher(stops)
    stopped = False
    try:
        while True:
            item = await queue.get()
            if isinstance(item, _Done):
                if isinstance(item.result, GenerationCancelled):
                    result.finish_reason = "stop"
                    return
                if isinstance(item.result, BaseException):
                    raise item.result
                if not stopped:
                    tail = matcher.flush()
                    if tail:
                        yield tail
                    result.finish_reason = item.result.finish_reason
                result.completion_tokens = item.result.completion_tokens
                return
            if stopped:
                continue  # the engine is winding down after a stop sequence
            text, stopped = matcher.feed(item.text)
            if text:
                yield text
            if stopped:
                result.finish_reason = "stop"
                cancel.set()
    finally:
        cancel.set()


def _messages(request: ChatCompletionRequest) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = []
    for index, message in enumerate(request.messages):
        try:
            text = message.text()
        except ValueError as exc:
            raise InvalidRequest(str(exc), param=f"messages[{index}].content") from None
        item: dict[str, Any] = {
            "role": "system" if message.role == "developer" else message.role,
            "content": text,
        }
        if message.name:
            item["name"] = message.name
        if message.tool_calls:
            item["tool_calls"] = message.tool_calls
        if message.tool_call_id:
            item["tool_call_id"] = message.tool_call_id
        reasoning = message.reasoning_content or message.reasoning
        if reasoning:
            item["reasoning_content"] = reasoning
        messages.append(item)
    return messages


@dataclass
class PreparedChat:
    """A validated request, bound to its model and rendered prompt."""

    model_id: str
    engine: ChatEngine
    prompt: Prompt
    params: SamplingParams
    stops: list[str]


def _usage(chat: PreparedChat, result: RunResult) -> Usage:
    prompt_tokens = len(chat.prompt.token_ids)
    return Usage(
        prompt_tokens=prompt_tokens,
        completion_tokens=result.completion_tokens,
        total_tokens=prompt_tokens + result.completion_tokens,
    )


class ChatService:
    """Serves chat completions over the registry's chat models."""

    def __init__(self, registry: ModelRegistry, metrics: Metrics | None = None) -> None:
        self.registry = registry
        self.metrics = metrics

    def _record(self, chat: PreparedChat, result: RunResult, started: float) -> None:
        if self.metrics is not None:
            self.metrics.record_chat(
                chat.model_id,
                result.finish_reason,
                len(chat.prompt.token_ids),
                result.completion_tokens,
                time.monotonic() - started,
            )

    async def prepare(self, request: ChatCompletionRequest) -> PreparedChat:
        """Find the model, render the prompt and check it fits the context."""
        entry, engine = self.registry.engine_for(request.model, "chat")
        template_kwargs = dict(request.chat_template_kwargs or {})
        if request.tools:
            template_kwargs["tools"] = request.tools
        messages = _messages(request)
        try:
            prompt = await asyncio.to_thread(engine.render, messages, template_kwargs)
        except ValueError as exc:
            raise InvalidRequest(str(exc), param="messages") from None
        context = engine.context_length
        used = len(prompt.token_ids)
        limit = request.completion_limit()
        if used >= context or (limit is not None and used + limit > context):
            asked = (
                f"{used + limit} tokens ({used} in the messages, {limit} in the completion)"
                if limit
                else (f"{used} tokens in the messages")
            )
            raise ContextLengthExceeded(
                f"This model's maximum context length is {context} tokens. However, you requested {asked}. "
                "Please reduce the length of the messages or completion.",
                param="max_tokens" if limit and used < context else "messages",
            )
        params = SamplingParams(
            max_tokens=limit if limit is not None else context - used,
            temperature=request.temperature,
            top_p=request.top_p,
            top_k=request.top_k,
            min_p=request.min_p,
            repetition_penalty=request.repetition_penalty,
            presence_penalty=request.presence_penalty or 0.0,
            frequency_penalty=request.frequency_penalty or 0.0,
            seed=request.seed,
        )
        return PreparedChat(entry.spec.id, engine, prompt, params, list(request.stop or []))

    async def complete(
        self, chat: PreparedChat, wait_disconnect: Callable[[], Awaitable[None]]
    ) -> ChatCompletion:
        """Generate a whole answer; a client that disconnects cancels the generation."""
        cancel = threading.Event()
        result = RunResult()
        started = time.monotonic()

        async def collect() -> str:
            parts = []
            async for text in generate_text(
                chat.engine, chat.prompt, chat.params, chat.stops, cancel, result
            ):
                parts.append(text)
            return "".join(parts)

        collector = asyncio.ensure_future(collect())
        watcher = asyncio.ensure_future(wait_disconnect())
        try:
            done, _ = await asyncio.wait({collector, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if collector not in done:
                cancel.set()
                collector.cancel()
                raise ClientDisconnected()
            content = collector.result()
        finally:
            watcher.cancel()
            cancel.set()
        self._record(chat, result, started)
        return ChatCompletion(
            id=f"chatcmpl-{uuid.uuid4().hex}",
            created=int(time.time()),
            model=chat.model_id,
            choices=[
                Choice(index=0, message=AssistantMessage(content=content), finish_reason=result.finish_reason)
            ],
            usage=_usage(chat, result),
        )

    async def stream(self, chat: PreparedChat, include_usage: bool) -> AsyncIterator[str]:
        """Server-sent events: role chunk, content deltas, finish chunk, optional usage chunk, [DONE]."""
        cancel = threading.Event()
        result = RunResult()
        started = time.monotonic()
        ident, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())

        def chunk(choices: list[ChunkChoice], usage: Usage | None = None) -> str:
            body = ChatCompletionChunk(
                id=ident, created=created, model=chat.model_id, choices=choices, usage=usage
            ).model_dump()
            for choice in body["choices"]:  # a delta carries only the fields it sets, as OpenAI's do
                choice["delta"] = {k: v for k, v in choice["delta"].items() if v is not None}
            return f"data: {json.dumps(body, ensure_ascii=False)}\n\n"

        texts = generate_text(chat.engine, chat.prompt, chat.params, chat.stops, cancel, result)
        try:
            yield chunk([ChunkChoice(index=0, delta=Delta(role="assistant", content=""))])
            async for text in texts:
                yield chunk([ChunkChoice(index=0, delta=Delta(content=text))])
            yield chunk([ChunkChoice(index=0, delta=Delta(), finish_reason=result.finish_reason)])
            self._record(chat, result, started)
            if include_usage:
                usage = _usage(chat, result)
                yield chunk([], usage)
        except Exception as exc:
            if isinstance(exc, APIError):
                error = exc
            else:
                log.exception("generation failed for %s", chat.model_id)
                error = APIError(f"The model failed while generating: {type(exc).__name__}")
            yield f"data: {json.dumps(error.body())}\n\n"
        finally:
            cancel.set()
            await texts.aclose()  # type: ignore[attr-defined]
        yield "data: [DONE]\n\n"
