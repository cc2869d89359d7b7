"""Response shapes of /v1/completions, /infill and /completion, for the OpenAPI document.

completions.py builds these bodies as dicts; these models describe them (tests/test_openapi.py checks every
answer against them, undocumented fields included), and the token log-probability entry is shared by the
other surfaces' schemas.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, RootModel

from ai_stack.protocol import Usage


class TopLogprobEntry(BaseModel):
    """One alternative of a generated token: its text, log-probability and UTF-8 bytes."""

    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprobEntry(BaseModel):
    """A generated token's log-probability and its likeliest alternatives (OpenAI's logprobs content item)."""

    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprobEntry]


class CompletionLogprobs(BaseModel):
    """OpenAI's legacy logprobs of one choice (echoed prompt tokens have null log-probabilities)."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    """One choice of a text completion (finish_reason null in a stream chunk that does not end it)."""

    text: str
    index: int
    logprobs: CompletionLogprobs | None
    finish_reason: str | None


class TextCompletion(BaseModel):
    """POST /v1/completions: the whole answer."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    system_fingerprint: str | None


class TextCompletionChunk(BaseModel):
    """One server-sent `data:` event of a streamed /v1/completions (usage only in the last, when asked)."""

    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None


class LlamaCompletion(BaseModel):
    """POST /completion and /infill: llama.cpp server's finished completion (also its last stream event)."""

    content: str
    stop: bool
    model: str
    tokens_predicted: int
    tokens_evaluated: int
    truncated: bool
    stop_type: Literal["limit", "eos"]
    completion_probabilities: list[TokenLogprobEntry] | None = None  # present when n_probs > 0


class LlamaPartial(BaseModel):
    """A streamed piece of a llama.cpp completion: `stop: false` until the final event."""

    content: str
    stop: Literal[False]
    completion_probabilities: list[TokenLogprobEntry] | None = None  # present when n_probs > 0


class LlamaStreamEvent(RootModel[LlamaPartial | LlamaCompletion]):
    """One server-sent `data:` event of a streamed /completion or /infill (no [DONE] at the end)."""
