"""Response shapes of Ollama's API (/api/*), for the OpenAPI document.

ollama.py builds these bodies as dicts; these models describe them, and tests/test_openapi.py checks every
answer (and every NDJSON line of a stream) against them, undocumented fields included.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel

from ai_stack.surfaces.completions_schemas import TokenLogprobEntry


class OllamaVersion(BaseModel):
    """GET /api/version: the Ollama release whose API shapes these routes follow."""

    version: str


class OllamaModelDetails(BaseModel):
    """A model's details (format gguf or safetensors; quantization as configured)."""

    parent_model: str
    format: str
    family: str
    families: list[str] | None
    parameter_size: str
    quantization_level: str


class OllamaModel(BaseModel):
    """One model of GET /api/tags: `ID:latest`."""

    name: str
    model: str
    modified_at: str
    size: int
    digest: str
    details: OllamaModelDetails


class OllamaModelList(BaseModel):
    """GET /api/tags: every chat model, loaded or not."""

    models: list[OllamaModel]


class OllamaRunningModel(OllamaModel):
    """One loaded model of GET /api/ps."""

    expires_at: str
    size_vram: int
    context_length: int


class OllamaRunningList(BaseModel):
    """GET /api/ps: the chat models loaded now."""

    models: list[OllamaRunningModel]


class OllamaShow(BaseModel):
    """POST /api/show: a chat model's details, template and capabilities."""

    modelfile: str
    parameters: str
    template: str
    details: OllamaModelDetails
    model_info: dict[str, Any]
    capabilities: list[Literal["completion", "tools", "insert", "thinking"]]
    modified_at: str


class OllamaStatus(BaseModel):
    """POST /api/pull: always success for a configured model (nothing is downloaded)."""

    status: str


class OllamaFunctionOut(BaseModel):
    """A tool call's function: arguments as an object."""

    index: int
    name: str
    arguments: dict[str, Any]


class OllamaToolCallOut(BaseModel):
    """A tool call of the answer."""

    id: str
    function: OllamaFunctionOut


class OllamaMessageOut(BaseModel):
    """The assistant message (a piece of it, in a stream line)."""

    role: Literal["assistant"]
    content: str
    thinking: str | None = None  # present when there is thinking
    tool_calls: list[OllamaToolCallOut] | None = None  # present when there are calls


class _OllamaAnswer(BaseModel):
    """The fields every /api/chat and /api/generate answer and stream line has, and the final statistics."""

    model: str
    created_at: str
    done: bool
    logprobs: list[TokenLogprobEntry] | None = None  # present when logprobs is true
    # In the `done: true` line (or the whole answer) only; durations in nanoseconds. A request that only
    # loads or unloads the model answers done_reason "load" or "unload" without statistics.
    done_reason: Literal["stop", "length", "load", "unload"] | None = None
    total_duration: int | None = None
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    prompt_eval_duration: int | None = None
    eval_count: int | None = None
    eval_duration: int | None = None


class OllamaChatResponse(_OllamaAnswer):
    """POST /api/chat: the whole answer, or one NDJSON line of the stream (the last has done: true)."""

    message: OllamaMessageOut


class OllamaGenerateResponse(_OllamaAnswer):
    """POST /api/generate: the whole answer, or one NDJSON line of the stream (the last has done: true)."""

    response: str
    thinking: str | None = None  # present when there is thinking
