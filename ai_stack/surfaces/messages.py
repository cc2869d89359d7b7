"""Anthropic's Messages API at /v1/messages: a translation layer over the one chat pipeline.

A request becomes a ChatCompletionRequest (system, messages with their content blocks, tools, tool_choice,
thinking, output format) that `ChatService.prepare` validates and renders; the chat events come back as
Anthropic's content blocks (`text`, `thinking`, `tool_use`), in one message or as Anthropic's stream events.
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Annotated, Any, Literal

from pydantic import Field, ValidationError, field_validator, model_validator
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import BaseRoute, Route

from ai_stack.errors import APIError, InvalidRequest, anthropic_body
from ai_stack.fleet.proxy import forward, remote_engine
from ai_stack.json_body import load_json
from ai_stack.protocol import ChatCompletionRequest, Lenient
from ai_stack.routes import disconnect_waiter, parse_body
from ai_stack.serving.chat import ChatService, ClientDisconnected
from ai_stack.serving.generation import ChoiceEvent, PreparedChat, RunResult
from ai_stack.serving.parsers import ParsedDelta, ToolCall

log = logging.getLogger(__name__)

# What a model that reads text only is told in place of a block it cannot read.
OMITTED = "[{kind} omitted: this model reads text only]"


def _blocks(value: Any) -> Any:
    """A string content is shorthand for one text block."""
    return [{"type": "text", "text": value}] if isinstance(value, str) else value


class TextBlock(Lenient):
    """{"type": "text", "text": ...}."""

    type: Literal["text"]
    text: str


class ImageBlock(Lenient):
    """An image: the models here read text only, so it becomes a note in the text."""

    type: Literal["image"]
    source: dict[str, Any] | None = None


class DocumentBlock(Lenient):
    """A document: plain-text sources are read as text; others become a note."""

    type: Literal["document"]
    source: dict[str, Any] | None = None
    title: str | None = None

    def text(self) -> str:
        """The document's text, or the note that it was left out."""
        source = self.source or {}
        if source.get("type") == "text" and isinstance(source.get("data"), str):
            return f"{self.title}\n\n{source['data']}" if self.title else str(source["data"])
        if source.get("type") == "content" and isinstance(source.get("content"), (str, list)):
            parts = _blocks(source["content"])
            texts = [p["text"] for p in parts if isinstance(p, dict) and isinstance(p.get("text"), str)]
            if texts:
                return "\n\n".join(texts)
        return OMITTED.format(kind="document")


class ToolUseBlock(Lenient):
    """An earlier tool call of the assistant."""

    type: Literal["tool_use"]
    id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    input: dict[str, Any]


ToolResultPart = Annotated[TextBlock | ImageBlock | DocumentBlock, Field(discriminator="type")]


class ToolResultBlock(Lenient):
    """A tool's answer, sent back in a user message."""

    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1)
    content: list[ToolResultPart] = Field(default_factory=list)
    is_error: bool = False

    @field_validator("content", mode="before")
    @classmethod
    def _content_blocks(cls, value: Any) -> Any:
        return _blocks(value)

    def text(self) -> str:
        """The result as the text a chat template's tool message carries."""
        text = "\n\n".join(_part_text(part) for part in self.content)
        return f"Error: {text}" if self.is_error else text


class ThinkingBlock(Lenient):
    """An earlier answer's reasoning; its signature is accepted as it is and not checked."""

    type: Literal["thinking"]
    thinking: str
    signature: str | None = None


class RedactedThinkingBlock(Lenient):
    """Opaque reasoning of another server: nothing here can read it, so it is left out."""

    type: Literal["redacted_thinking"]
    data: str | None = None


Block = Annotated[
    TextBlock
    | ImageBlock
    | DocumentBlock
    | ToolUseBlock
    | ToolResultBlock
    | ThinkingBlock
    | RedactedThinkingBlock,
    Field(discriminator="type"),
]


def _part_text(part: TextBlock | ImageBlock | DocumentBlock) -> str:
    if isinstance(part, TextBlock):
        return part.text
    if isinstance(part, ImageBlock):
        return OMITTED.format(kind="image")
    return part.text()


class InputMessage(Lenient):
    """One message of `messages`: a user or assistant turn (or, as recent SDKs allow, a system one)."""

    role: Literal["user", "assistant", "system"]
    content: list[Block]

    @field_validator("content", mode="before")
    @classmethod
    def _content_blocks(cls, value: Any) -> Any:
        return _blocks(value)

    @model_validator(mode="after")
    def _blocks_fit_role(self) -> InputMessage:
        allowed = {
            "user": {"text", "image", "document", "tool_result"},
            "assistant": {"text", "tool_use", "thinking", "redacted_thinking"},
            "system": {"text"},
        }[self.role]
        for block in self.content:
            if block.type not in allowed:
                raise ValueError(f"a {block.type!r} block cannot be in a {self.role} message")
        return self


class ToolDefinition(Lenient):
    """A client tool (name, description, input_schema); server tools (other `type`s) cannot run here."""

    type: str | None = None
    name: str = Field(min_length=1)
    description: str | None = None
    input_schema: dict[str, Any] | None = None

    @property
    def is_client_tool(self) -> bool:
        """Whether this is a tool the client runs (the only kind a local model can call)."""
        return self.type in (None, "custom")

    @model_validator(mode="after")
    def _schema_given(self) -> ToolDefinition:
        if self.is_client_tool and self.input_schema is None:
            raise ValueError(f"tool {self.name!r} needs an input_schema")
        return self


class ToolChoiceAuto(Lenient):
    """The model decides whether to call tools."""

    type: Literal["auto"]
    disable_parallel_tool_use: bool = False


class ToolChoiceAny(Lenient):
    """The model must call one of the tools."""

    type: Literal["any"]
    disable_parallel_tool_use: bool = False


class ToolChoiceTool(Lenient):
    """The model must call the named tool."""

    type: Literal["tool"]
    name: str = Field(min_length=1)
    disable_parallel_tool_use: bool = False


class ToolChoiceNone(Lenient):
    """The model may not call tools (they are left out of the prompt)."""

    type: Literal["none"]
    disable_parallel_tool_use: bool = False


ToolChoice = Annotated[
    ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone, Field(discriminator="type")
]


class ThinkingConfig(Lenient):
    """thinking: the model's thinking switch; budget_tokens is accepted and not enforced."""

    type: Literal["enabled", "disabled", "adaptive", "between_tools"]
    budget_tokens: int | None = None
    display: Literal["summarized", "omitted"] | None = None


class OutputFormat(Lenient):
    """output_config.format: JSON that follows a schema, enforced by constrained decoding."""

    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema")


class OutputConfig(Lenient):
    """output_config: the output format and the effort (which only passes through as reasoning_effort)."""

    effort: Literal["low", "medium", "high", "xhigh", "max"] | None = None
    format: OutputFormat | None = None


class Metadata(Lenient):
    """metadata: the user id is passed on as OpenAI's `user`."""

    user_id: str | None = None


class CountTokensRequest(Lenient):
    """POST /v1/messages/count_tokens body (a create request without max_tokens)."""

    model: str = Field(min_length=1)
    messages: list[InputMessage] = Field(min_length=1)
    system: list[TextBlock] | None = None
    max_tokens: int | None = Field(default=None, ge=0)
    stop_sequences: list[str] | None = None
    stream: bool = Field(default=False, strict=True)
    # Recent SDKs no longer send these; older clients do.
    temperature: float | None = Field(default=None, ge=0.0, le=1.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    top_k: int | None = Field(default=None, ge=0)
    tools: list[ToolDefinition] | None = None
    tool_choice: ToolChoice | None = None
    thinking: ThinkingConfig | None = None
    output_config: OutputConfig | None = None
    metadata: Metadata | None = None

    @field_validator("system", mode="before")
    @classmethod
    def _system_blocks(cls, value: Any) -> Any:
        return _blocks(value)

    @model_validator(mode="after")
    def _choice_names_a_tool(self) -> CountTokensRequest:
        if isinstance(self.tool_choice, ToolChoiceTool):
            if self.tool_choice.name not in {tool.name for tool in self.client_tools()}:
                raise ValueError(f"tool_choice names tool {self.tool_choice.name!r}, which is not in tools")
        elif isinstance(self.tool_choice, ToolChoiceAny) and not self.client_tools():
            raise ValueError("tool_choice 'any' needs at least one tool in tools")
        return self

    def client_tools(self) -> list[ToolDefinition]:
        """The tools a local model can call."""
        return [tool for tool in self.tools or [] if tool.is_client_tool]


class MessagesRequest(CountTokensRequest):
    """POST /v1/messages body; max_tokens is required, as Anthropic requires it."""

    max_tokens: int = Field(ge=0)


def _openai_messages(body: CountTokensRequest) -> list[dict[str, Any]]:
    """Anthropic's system and messages as chat-completion messages (tool results become tool messages)."""
    out: list[dict[str, Any]] = []
    system = "\n\n".join(block.text for block in body.system or [])
    if system:
        out.append({"role": "system", "content": system})
    for message in body.messages:
        if message.role == "assistant":
            text = [b.text for b in message.content if isinstance(b, TextBlock)]
            thinking = [b.thinking for b in message.content if isinstance(b, ThinkingBlock)]
            calls = [
                {
                    "id": b.id,
                    "type": "function",
                    "function": {"name": b.name, "arguments": json.dumps(b.input)},
                }
                for b in message.content
                if isinstance(b, ToolUseBlock)
            ]
            item: dict[str, Any] = {"role": "assistant", "content": "\n\n".join(text)}
            if calls:
                item["tool_calls"] = calls
            if thinking:
                item["reasoning_content"] = "\n\n".join(thinking)
            out.append(item)
            continue
        texts: list[str] = []  # consecutive text blocks make one message; a tool result its own
        for block in message.content:
            if isinstance(block, ToolResultBlock):
                if texts:
                    out.append({"role": message.role, "content": "\n\n".join(texts)})
                    texts = []
                out.append({"role": "tool", "tool_call_id": block.tool_use_id, "content": block.text()})
            elif isinstance(block, TextBlock | ImageBlock | DocumentBlock):
                texts.append(_part_text(block))
        if texts or not message.content:
            out.append({"role": message.role, "content": "\n\n".join(texts)})
    return out


_EFFORTS = {"low": "low", "medium": "medium", "high": "high", "xhigh": "high", "max": "high"}


def chat_request(body: CountTokensRequest) -> ChatCompletionRequest:
    """The chat-completion request an Anthropic request means; the pipeline validates it."""
    if body.messages[-1].role == "assistant":
        raise InvalidRequest(
            "This model does not support assistant message prefill: the last message must be a user message",
            param="messages",
        )
    tools = body.client_tools()
    choice = body.tool_choice
    request: dict[str, Any] = {
        "model": body.model,
        "messages": _openai_messages(body),
        "stop": body.stop_sequences or None,
        "temperature": body.temperature,
        "top_p": body.top_p,
        "top_k": body.top_k,
        "user": body.metadata.user_id if body.metadata else None,
    }
    if tools:
        request["tools"] = [
            {
                "type": "function",
                "function": {"name": t.name, "description": t.description, "parameters": t.input_schema},
            }
            for t in tools
        ]
        if isinstance(choice, ToolChoiceTool):
            request["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
        elif choice is not None:
            request["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}[choice.type]
        if choice is not None and choice.disable_parallel_tool_use:
            request["parallel_tool_calls"] = False
    if body.thinking is not None:
        request["chat_template_kwargs"] = {"enable_thinking": body.thinking.type != "disabled"}
    output = body.output_config
    if output is not None and output.format is not None:
        request["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": "output", "schema": output.format.schema_},
        }
    if output is not None and output.effort is not None:
        request["reasoning_effort"] = _EFFORTS[output.effort]
    try:
        return ChatCompletionRequest.model_validate(request)
    except ValidationError as exc:
        error = exc.errors()[0]
        tool_indexes = [i for i, tool in enumerate(body.tools or []) if tool.is_client_tool]
        param = _anthropic_param([str(part) for part in error["loc"]], tool_indexes)
        message = str(error["msg"]).removeprefix("Value error, ")
        raise InvalidRequest(f"Invalid value for '{param}': {message}", param=param) from None


_PARAMS = {"stop": "stop_sequences", "response_format": "output_config.format", "user": "metadata.user_id"}


def _anthropic_param(loc: list[str], tool_indexes: list[int]) -> str:
    """The Anthropic name of a chat-completion parameter that failed validation."""
    if not loc:
        return "body"
    if loc[0] == "tools" and len(loc) >= 4 and loc[1].isdigit() and int(loc[1]) < len(tool_indexes):
        field = "input_schema" if loc[3] == "parameters" else loc[3]
        return f"tools.{tool_indexes[int(loc[1])]}.{field}"
    if loc[0] in ("tools", "messages"):
        return loc[0]
    return _PARAMS.get(loc[0], ".".join(loc))


# ---------------------------------------------------------------------------------------------- responses


def _usage(chat: PreparedChat, result: RunResult) -> dict[str, int]:
    # Anthropic counts the prompt tokens read from the (prefix) cache apart from input_tokens.
    prompt = chat.prompt_tokens(result)
    cached = min(result.cached_tokens, prompt)
    return {
        "input_tokens": prompt - cached,
        "output_tokens": result.completion_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": cached,
    }


def _stop(finish: str, result: RunResult, context_bound: bool) -> tuple[str, str | None]:
    """Anthropic's stop_reason and stop_sequence for a chat finish reason."""
    if finish == "tool_calls":
        return "tool_use", None
    if finish == "length":
        return ("model_context_window_exceeded" if context_bound else "max_tokens"), None
    if result.stop_sequence is not None:
        return "stop_sequence", result.stop_sequence
    return "end_turn", None


def _tool_input(call: ToolCall) -> dict[str, Any]:
    value = json.loads(call.arguments)  # the parsers only emit a call whose arguments are a JSON object
    return value if isinstance(value, dict) else {}


def _signature(thinking: str) -> str:
    """An opaque signature for a thinking block (its text's digest), as clients pass signatures back."""
    return hashlib.sha256(thinking.encode()).hexdigest()


class Generation:
    """One /v1/messages answer: the prepared chat, the requested limit and how it is shown."""

    def __init__(self, service: ChatService, chat: PreparedChat, body: MessagesRequest) -> None:
        self.service = service
        self.chat = chat
        self.ident = f"msg_{uuid.uuid4().hex}"
        self.show_thinking = not (body.thinking is not None and body.thinking.display == "omitted")
        self.generate = body.max_tokens > 0  # 0: validate and count only, as Anthropic's cache warm-up
        room = chat.params.max_tokens  # what the context leaves (the chat request had no limit)
        if body.max_tokens < room:
            chat.params = replace(chat.params, max_tokens=body.max_tokens)
        # Asked for more than the context leaves: a cut at the context is Anthropic's own stop reason.
        self.context_bound = body.max_tokens > room

    def message(
        self, content: list[dict[str, Any]], stop: tuple[str | None, str | None], usage: dict[str, int]
    ) -> dict[str, Any]:
        """The message object (full, or the empty one of message_start)."""
        return {
            "id": self.ident,
            "type": "message",
            "role": "assistant",
            "model": self.chat.model_id,
            "content": content,
            "stop_reason": stop[0],
            "stop_sequence": stop[1],
            "usage": usage,
        }

    async def complete(self, request: Request) -> dict[str, Any]:
        """The whole message; raises ClientDisconnected when the client leaves."""
        if not self.generate:
            return self.message([], ("max_tokens", None), _usage(self.chat, RunResult()))
        [text] = await self.service.collect(self.chat, disconnect_waiter(request))
        content: list[dict[str, Any]] = []
        thinking = "".join(text.reasoning)
        if thinking:
            shown = thinking if self.show_thinking else ""
            content.append({"type": "thinking", "thinking": shown, "signature": _signature(thinking)})
        answer = "".join(text.content)
        if answer:
            content.append({"type": "text", "text": answer})
        for call in text.tool_calls:
            content.append({"type": "tool_use", "id": call.id, "name": call.name, "input": _tool_input(call)})
        stop = _stop(text.finish_reason, text.result, self.context_bound)
        return self.message(content, stop, _usage(self.chat, text.result))

    async def stream(self) -> AsyncIterator[str]:
        """Anthropic's server-sent events: message_start, ping, blocks, message_delta, message_stop."""
        start = self.message([], (None, None), {**_usage(self.chat, RunResult()), "output_tokens": 0})
        yield _event("message_start", {"message": start})
        yield _event("ping", {})
        blocks = _BlockStream(self.show_thinking)
        finish, result = "length", RunResult()
        events = self.service.events(self.chat) if self.generate else _nothing()
        try:
            async for event in events:
                for line in blocks.feed(event.delta):
                    yield line
                if event.finish_reason is not None:
                    finish, result = event.finish_reason, event.result or result
            for line in blocks.close():
                yield line
            stop_reason, stop_sequence = _stop(finish, result, self.context_bound)
            usage = _usage(self.chat, result)
            delta = {"stop_reason": stop_reason, "stop_sequence": stop_sequence}
            yield _event("message_delta", {"delta": delta, "usage": usage})
            yield _event("message_stop", {})
        except Exception as exc:
            if not isinstance(exc, APIError):
                log.error("generating failed for %s", self.chat.model_id, exc_info=exc)
                exc = APIError(f"The model failed while generating: {type(exc).__name__}")
            yield _event("error", {"error": anthropic_body(exc)["error"]})
        finally:
            await events.aclose()  # type: ignore[attr-defined]


async def _nothing() -> AsyncIterator[ChoiceEvent]:
    return
    yield  # an async generator that yields nothing


def _event(kind: str, data: dict[str, Any]) -> str:
    return f"event: {kind}\ndata: {json.dumps({'type': kind, **data}, ensure_ascii=False)}\n\n"


class _BlockStream:
    """Turns parsed deltas into content-block events: one block per run of text or thinking, per tool call."""

    def __init__(self, show_thinking: bool) -> None:
        self.show_thinking = show_thinking
        self.index = -1
        self.open: str | None = None  # "text" or "thinking"
        self.digest = hashlib.sha256()

    def _start(self, kind: str, block: dict[str, Any]) -> str:
        self.index += 1
        self.open = kind
        return _event("content_block_start", {"index": self.index, "content_block": block})

    def _delta(self, delta: dict[str, Any]) -> str:
        return _event("content_block_delta", {"index": self.index, "delta": delta})

    def close(self) -> list[str]:
        """End the open block (a thinking block gets its signature first)."""
        lines = []
        if self.open == "thinking":
            lines.append(self._delta({"type": "signature_delta", "signature": self.digest.hexdigest()}))
            self.digest = hashlib.sha256()
        if self.open is not None:
            lines.append(_event("content_block_stop", {"index": self.index}))
        self.open = None
        return lines

    def feed(self, delta: ParsedDelta) -> list[str]:
        """The events for one parsed delta."""
        lines: list[str] = []
        if delta.reasoning:
            if self.open != "thinking":
                lines += self.close()
                lines.append(self._start("thinking", {"type": "thinking", "thinking": "", "signature": ""}))
            self.digest.update(delta.reasoning.encode())
            if self.show_thinking:
                lines.append(self._delta({"type": "thinking_delta", "thinking": delta.reasoning}))
        if delta.content:
            if self.open != "text":
                lines += self.close()
                lines.append(self._start("text", {"type": "text", "text": ""}))
            lines.append(self._delta({"type": "text_delta", "text": delta.content}))
        for call in delta.tool_calls:
            lines += self.close()
            lines.append(
                self._start("tool_use", {"type": "tool_use", "id": call.id, "name": call.name, "input": {}})
            )
            lines.append(self._delta({"type": "input_json_delta", "partial_json": call.arguments}))
            lines += self.close()
        return lines


# ---------------------------------------------------------------------------------------------- routes


async def create_message(request: Request) -> Response:
    """POST /v1/messages, full or streamed."""
    body = await parse_body(request, MessagesRequest)
    service: ChatService = request.app.state.chat
    generation = Generation(service, await service.prepare(chat_request(body)), body)
    if body.stream:
        return StreamingResponse(
            generation.stream(),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )
    try:
        return JSONResponse(await generation.complete(request))
    except ClientDisconnected:
        return Response(status_code=499)


async def count_tokens(request: Request) -> Response:
    """POST /v1/messages/count_tokens: the prompt's tokens as the model's template renders it."""
    body = await parse_body(request, CountTokensRequest)
    remote = await remote_engine(request.app.state.registry, body.model, "chat")
    if remote is not None:  # no tokenizer here: the upstream counts (an ai-stack node serves this route)
        raw = load_json(await request.body(), request.app.state.config.server.max_json_depth)
        return await forward(request, *remote, "messages/count_tokens", raw, rewrite=False)
    service: ChatService = request.app.state.chat
    chat = await service.prepare(chat_request(body), admit=False)  # counted, never generated
    return JSONResponse({"input_tokens": len(chat.prompt.token_ids)})


def routes() -> list[BaseRoute]:
    """This API's routes (mounted by the app)."""
    return [
        Route("/messages", create_message, methods=["POST"]),
        Route("/messages/count_tokens", count_tokens, methods=["POST"]),
    ]
