"""Response shapes of the Responses API (/v1/responses and its retrieve/list/delete/cancel routes).

responses.py and response_items.py build these bodies as dicts (they are stored as JSON and replayed);
these models describe them for the OpenAPI document, and tests/test_openapi.py checks every answer
against them, undocumented fields included.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from ai_stack.surfaces.completions_schemas import TokenLogprobEntry
from ai_stack.surfaces.response_items import ReasoningConfig, TextFormat

ItemStatus = Literal["in_progress", "completed", "incomplete"]


class InputText(BaseModel):
    """Text a user, system or developer message holds."""

    type: Literal["input_text"]
    text: str


class OutputText(BaseModel):
    """Text an assistant message holds (logprobs in generated output only, when included)."""

    type: Literal["output_text"]
    text: str
    annotations: list[Any]
    logprobs: list[TokenLogprobEntry] | None = None


class ReasoningText(BaseModel):
    """The reasoning text of a reasoning item."""

    type: Literal["reasoning_text"]
    text: str


class SummaryText(BaseModel):
    """A summary part of a reasoning item (only ever from input: this server writes no summaries)."""

    type: Literal["summary_text"]
    text: str


class MessageItem(BaseModel):
    """A message item: generated (assistant), or from the input (any role)."""

    id: str
    type: Literal["message"]
    role: Literal["user", "system", "developer", "assistant"]
    status: ItemStatus
    content: list[Annotated[InputText | OutputText, Field(discriminator="type")]]


class ReasoningItem(BaseModel):
    """A reasoning item: the model's thinking as reasoning_text content."""

    id: str
    type: Literal["reasoning"]
    summary: list[SummaryText]
    content: list[ReasoningText]


class FunctionCallItem(BaseModel):
    """A function call the model made (arguments a JSON string); answer it with a function_call_output."""

    id: str
    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str
    status: ItemStatus


class FunctionCallOutputItem(BaseModel):
    """A function's result, as the client sent it in the input."""

    id: str
    type: Literal["function_call_output"]
    call_id: str
    output: str
    status: ItemStatus


OutputItem = Annotated[MessageItem | ReasoningItem | FunctionCallItem, Field(discriminator="type")]
InputItem = Annotated[
    MessageItem | ReasoningItem | FunctionCallItem | FunctionCallOutputItem, Field(discriminator="type")
]


class InputTokensDetails(BaseModel):
    """Input tokens served from a cache (none are reported here)."""

    cached_tokens: int
    cache_write_tokens: int


class OutputTokensDetails(BaseModel):
    """Output tokens spent on reasoning."""

    reasoning_tokens: int


class ResponseUsage(BaseModel):
    """A response's token counts."""

    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class ResponseError(BaseModel):
    """Why a response failed."""

    code: str
    message: str


class IncompleteDetails(BaseModel):
    """Why a response is incomplete."""

    reason: str


class ResponseText(BaseModel):
    """The response's text options, as the request set them."""

    format: TextFormat
    verbosity: Literal["low", "medium", "high"] | None


class ResponseObject(BaseModel):
    """A response: POST /v1/responses, GET /v1/responses/{id}, POST /v1/responses/{id}/cancel."""

    id: str
    object: Literal["response"]
    created_at: int
    completed_at: int | None
    status: Literal["in_progress", "completed", "incomplete", "failed", "cancelled"]
    background: bool
    error: ResponseError | None
    incomplete_details: IncompleteDetails | None
    instructions: str | None
    max_output_tokens: int | None
    max_tool_calls: int | None
    metadata: dict[str, str]
    model: str
    output: list[OutputItem]
    parallel_tool_calls: bool
    previous_response_id: str | None
    reasoning: ReasoningConfig
    store: bool
    temperature: float | None
    text: ResponseText
    tool_choice: Any
    tools: list[Any]
    top_logprobs: int | None
    top_p: float | None
    truncation: Literal["auto", "disabled"]
    usage: ResponseUsage | None
    user: str | None


class ResponseDeleted(BaseModel):
    """DELETE /v1/responses/{id}."""

    id: str
    object: Literal["response.deleted"]
    deleted: bool


class InputItemList(BaseModel):
    """GET /v1/responses/{id}/input_items: one page of a response's input items."""

    object: Literal["list"]
    data: list[InputItem]
    first_id: str | None
    last_id: str | None
    has_more: bool


ResponseEventType = Literal[
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.reasoning_text.delta",
    "response.reasoning_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.function_call_arguments.delta",
    "response.function_call_arguments.done",
    "response.completed",
    "response.incomplete",
    "response.failed",
    "error",
]


class ResponseStreamEvent(BaseModel):
    """One server-sent event of a streamed response (its `event:` line repeats `type`).

    Which fields an event carries depends on its type: `response` (created, in_progress and the terminal
    events), `output_index` and `item` (output_item.*), `item_id`, `content_index`, `part`, `delta`, `text`,
    `logprobs` (content and text events), `name` and `arguments` (function calls), `code`, `message` and
    `param` (error).
    """

    type: ResponseEventType
    sequence_number: int
    response: ResponseObject | None = None
    output_index: int | None = None
    item: OutputItem | None = None
    item_id: str | None = None
    content_index: int | None = None
    part: Annotated[OutputText | ReasoningText, Field(discriminator="type")] | None = None
    delta: str | None = None
    text: str | None = None
    logprobs: list[TokenLogprobEntry] | None = None
    name: str | None = None
    arguments: str | None = None
    code: str | None = None
    message: str | None = None
    param: str | None = None
