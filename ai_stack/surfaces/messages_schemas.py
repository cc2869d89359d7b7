"""Response shapes of Anthropic's Messages API (/v1/messages, /v1/messages/count_tokens).

messages.py builds these bodies as dicts; these models describe them for the OpenAPI document, and
tests/test_openapi.py checks every answer against them, undocumented fields included.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field


class TextContent(BaseModel):
    """A text block of the answer."""

    type: Literal["text"]
    text: str


class ThinkingContent(BaseModel):
    """The model's thinking (empty text with display "omitted"); the signature is its text's digest."""

    type: Literal["thinking"]
    thinking: str
    signature: str


class ToolUseContent(BaseModel):
    """A tool call: answer it with a tool_result block of the same id."""

    type: Literal["tool_use"]
    id: str
    name: str
    input: dict[str, Any]


ContentBlock = Annotated[TextContent | ThinkingContent | ToolUseContent, Field(discriminator="type")]


class MessageUsage(BaseModel):
    """A message's token counts (no prompt cache: the cache counts are 0)."""

    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int
    cache_read_input_tokens: int


StopReason = Literal["end_turn", "max_tokens", "stop_sequence", "tool_use", "model_context_window_exceeded"]


class Message(BaseModel):
    """POST /v1/messages: the answer (stop_reason null only in a stream's message_start)."""

    id: str
    type: Literal["message"]
    role: Literal["assistant"]
    model: str
    content: list[ContentBlock]
    stop_reason: StopReason | None
    stop_sequence: str | None
    usage: MessageUsage


class TokenCount(BaseModel):
    """POST /v1/messages/count_tokens."""

    input_tokens: int


class TextDelta(BaseModel):
    """More text of a text block."""

    type: Literal["text_delta"]
    text: str


class ThinkingDelta(BaseModel):
    """More text of a thinking block."""

    type: Literal["thinking_delta"]
    thinking: str


class SignatureDelta(BaseModel):
    """A thinking block's signature, just before the block stops."""

    type: Literal["signature_delta"]
    signature: str


class InputJsonDelta(BaseModel):
    """A tool_use block's input, as JSON text."""

    type: Literal["input_json_delta"]
    partial_json: str


BlockDelta = Annotated[
    TextDelta | ThinkingDelta | SignatureDelta | InputJsonDelta, Field(discriminator="type")
]


class MessageDelta(BaseModel):
    """message_delta's delta: how the message ended."""

    stop_reason: StopReason
    stop_sequence: str | None


class StreamErrorDetail(BaseModel):
    """An error event's error: Anthropic's error type and a message."""

    type: str
    message: str


class MessageStreamEvent(BaseModel):
    """One server-sent event of a streamed message (its `event:` line repeats `type`).

    message_start carries `message`; content_block_start `index` and `content_block`; content_block_delta
    `index` and a block `delta`; content_block_stop `index`; message_delta a message `delta` and `usage`;
    error `error`; ping and message_stop nothing else.
    """

    type: Literal[
        "message_start",
        "ping",
        "content_block_start",
        "content_block_delta",
        "content_block_stop",
        "message_delta",
        "message_stop",
        "error",
    ]
    message: Message | None = None
    index: int | None = None
    content_block: ContentBlock | None = None
    delta: BlockDelta | MessageDelta | None = None
    usage: MessageUsage | None = None
    error: StreamErrorDetail | None = None
