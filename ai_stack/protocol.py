"""Pure OpenAI wire schemas for chat completions: no torch, no starlette."""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class Lenient(BaseModel):
    """A request model that ignores fields it does not know, as OpenAI-compatible (and peer) servers must."""

    model_config = ConfigDict(extra="ignore")


class ContentPart(Lenient):
    """One part of a message's content list."""

    type: str
    text: str | None = None


class ChatMessage(Lenient):
    """One message of the conversation."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None

    def text(self) -> str:
        """The message's text, joining text parts; other part types are refused."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        pieces = []
        for part in self.content:
            if part.type != "text" or part.text is None:
                raise ValueError(f"content part type {part.type!r} is not supported; only 'text' parts are")
            pieces.append(part.text)
        return "".join(pieces)


class FunctionDefinition(Lenient):
    """A function the model may call."""

    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.fullmatch(r"[a-zA-Z0-9_.-]{1,64}", value):
            raise ValueError("function names must be 1-64 letters, digits, '_', '.' or '-'")
        return value


class Tool(Lenient):
    """One entry of `tools`."""

    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(Lenient):
    """The function named by a tool_choice object."""

    name: str


class NamedToolChoice(Lenient):
    """tool_choice {"type": "function", "function": {"name": ...}}."""

    type: Literal["function"]
    function: NamedFunction


class JSONSchemaFormat(Lenient):
    """response_format.json_schema."""

    name: str = "response"
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(Lenient):
    """response_format: text, any JSON object, or JSON that follows a schema."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self) -> ResponseFormat:
        if self.type == "json_schema" and (self.json_schema is None or self.json_schema.schema_ is None):
            raise ValueError("response_format of type 'json_schema' needs json_schema.schema")
        return self


class StreamOptions(Lenient):
    """stream_options of a streamed request."""

    include_usage: bool = False


class SamplingRequest(Lenient):
    """The fields every generating route shares: model, sampling, limits, stops, n, streaming."""

    model: str = Field(min_length=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(default=None, ge=1)
    stop: str | list[str] | None = None
    seed: int | None = Field(default=None, ge=-(2**63), le=2**64 - 1)  # what torch's generators take
    presence_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(default=None, ge=-2.0, le=2.0)
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    n: int = Field(default=1, ge=1, le=16)
    logit_bias: dict[str, float] | None = None
    response_format: ResponseFormat | None = None
    # Extras that peers accept through extra_body.
    top_k: int | None = Field(default=None, ge=0)
    min_p: float | None = Field(default=None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(default=None, ge=0.01, le=10.0)

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, value: str | list[str] | None) -> list[str] | None:
        if value is None:
            return None
        stops = [value] if isinstance(value, str) else value
        if any(not stop for stop in stops):
            raise ValueError("stop sequences must be non-empty strings")
        if len(stops) > 16:
            raise ValueError("at most 16 stop sequences are allowed")
        if any(len(stop) > 512 for stop in stops):
            raise ValueError("stop sequences must be at most 512 characters long")
        return stops

    @field_validator("logit_bias")
    @classmethod
    def _bias(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        for key, bias in (value or {}).items():
            if not re.fullmatch("[0-9]{1,9}", key):
                raise ValueError(f"logit_bias keys must be token ids, got {key!r}")
            if not -100.0 <= bias <= 100.0:
                raise ValueError(f"logit_bias values must be between -100 and 100, got {bias}")
        return value

    def completion_limit(self) -> int | None:
        """The most tokens to generate, or None for the rest of the context."""
        return self.max_tokens


class ChatCompletionRequest(SamplingRequest):
    """POST /v1/chat/completions body."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    tools: list[Tool] | None = Field(default=None, max_length=128)  # OpenAI's limit
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True
    reasoning_effort: Literal["none", "minimal", "low", "medium", "high"] | None = None
    chat_template_kwargs: dict[str, Any] | None = None
    # vLLM's extension: the last (assistant) message is left open and the answer goes on from its end.
    continue_final_message: bool = False

    @model_validator(mode="after")
    def _consistent(self) -> ChatCompletionRequest:
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs to be true")
        if self.continue_final_message and self.messages[-1].role != "assistant":
            raise ValueError("continue_final_message needs the last message to be the assistant's, to go on")
        if isinstance(self.tool_choice, NamedToolChoice):
            names = {tool.function.name for tool in self.tools or []}
            if self.tool_choice.function.name not in names:
                raise ValueError(
                    f"tool_choice names function {self.tool_choice.function.name!r}, which is not in tools"
                )
        elif self.tool_choice == "required" and not self.tools:
            raise ValueError("tool_choice 'required' needs at least one tool in tools")
        return self

    def completion_limit(self) -> int | None:
        """max_completion_tokens, or the deprecated max_tokens."""
        return self.max_completion_tokens or self.max_tokens


class CompletionTokensDetails(BaseModel):
    """How the completion tokens split."""

    reasoning_tokens: int = 0


class PromptTokensDetails(BaseModel):
    """How the prompt tokens split: cached_tokens came from the prefix cache."""

    cached_tokens: int = 0


class Usage(BaseModel):
    """Token counts of one completion."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    completion_tokens_details: CompletionTokensDetails | None = None
    prompt_tokens_details: PromptTokensDetails | None = None


class FunctionCall(BaseModel):
    """The function a tool call invokes, with its JSON-encoded arguments."""

    name: str
    arguments: str


class ToolCallOut(BaseModel):
    """One tool call of an assistant message."""

    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class AssistantMessage(BaseModel):
    """The message of a choice."""

    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCallOut] | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None


class Choice(BaseModel):
    """One choice of a full response."""

    index: int
    message: AssistantMessage
    finish_reason: str | None
    logprobs: dict[str, Any] | None = None


class ChatCompletion(BaseModel):
    """A full chat.completion response."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = None


class Delta(BaseModel):
    """What a chunk adds to the message."""

    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    reasoning: str | None = None
    tool_calls: list[dict[str, Any]] | None = None


class ChunkChoice(BaseModel):
    """One choice of a streamed chunk."""

    index: int
    delta: Delta
    finish_reason: str | None = None
    logprobs: dict[str, Any] | None = None


class ChatCompletionChunk(BaseModel):
    """A chat.completion.chunk event."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class ModelCard(BaseModel):
    """One entry of GET /v1/models (OpenAI shape plus state fields)."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "ai-stack"
    kind: str
    engine: str
    state: str
    aliases: list[str]
    error: str | None = None
    context_length: int | None = None
    device: str | None = None
    memory_bytes: int | None = None  # memory the loaded model takes on its device (measured at its load)


class ModelList(BaseModel):
    """GET /v1/models."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


# ---------------------------------------------------------------------------------------------- speech

SPEECH_INPUT_LIMIT = 4096  # characters, as OpenAI's /v1/audio/speech


class VoiceRef(Lenient):
    """A voice given as {"id": ...} (OpenAI's custom-voice form)."""

    id: str = Field(min_length=1)


class SpeechRequest(Lenient):
    """POST /v1/audio/speech body (OpenAI "Create speech"); instructions are accepted and ignored."""

    model: str = Field(min_length=1)
    input: str = Field(min_length=1, max_length=SPEECH_INPUT_LIMIT)
    voice: str | VoiceRef
    response_format: Literal["wav", "pcm", "flac", "mp3", "opus", "aac"] = "mp3"
    speed: float = Field(default=1.0, ge=0.25, le=4.0)
    stream_format: Literal["audio", "sse"] = "audio"
    instructions: str | None = None

    @field_validator("input")
    @classmethod
    def _input_has_text(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("input must contain text to speak")
        return value

    @property
    def voice_id(self) -> str:
        """The voice name, whichever form it was sent in."""
        return self.voice if isinstance(self.voice, str) else self.voice.id
