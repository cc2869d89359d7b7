"""The Responses API's request and items: input items checked and given ids, then turned into chat messages.

Items are kept in one normalized form (the shapes `GET /v1/responses/{id}/input_items` lists), so a stored
conversation, a new request's input and an earlier response's output all become messages the same way.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from ai_stack.errors import InvalidRequest

_TEXT_PARTS = {"input_text", "output_text", "text"}
_FUNCTION_NAME = re.compile(r"[a-zA-Z0-9_.-]{1,64}")


def new_id(prefix: str) -> str:
    """An OpenAI-style id: prefix, underscore, 32 hex digits."""
    return f"{prefix}_{uuid.uuid4().hex}"


class TextFormat(BaseModel):
    """text.format: plain text, any JSON object, or JSON that follows a schema."""

    model_config = ConfigDict(extra="ignore", populate_by_name=True)

    type: Literal["text", "json_object", "json_schema"]
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class TextConfig(BaseModel):
    """The request's text options."""

    model_config = ConfigDict(extra="ignore")

    format: TextFormat | None = None
    verbosity: Literal["low", "medium", "high"] | None = None


class ReasoningConfig(BaseModel):
    """The request's reasoning options: effort turns a thinking model's thinking on or off."""

    model_config = ConfigDict(extra="ignore")

    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None


class ResponsesRequest(BaseModel):
    """POST /v1/responses body (unknown fields are ignored, as for chat completions)."""

    model_config = ConfigDict(extra="ignore")

    model: str = Field(min_length=1)
    input: Any = None  # a string or a list of items, checked by normalize_input for clear errors
    instructions: str | None = None
    tools: list[Any] | None = Field(default=None, max_length=128)
    tool_choice: Any = None
    parallel_tool_calls: bool = True
    text: TextConfig | None = None
    reasoning: ReasoningConfig | None = None
    max_output_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0.0, le=2.0)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0)
    metadata: dict[str, str] | None = None
    user: str | None = None
    store: bool = True
    stream: bool = False
    previous_response_id: str | None = None
    include: list[str] | None = None
    top_logprobs: int | None = Field(default=None, ge=0, le=20)
    truncation: Literal["auto", "disabled"] | None = None
    background: bool | None = None
    conversation: Any = None
    prompt: Any = None
    # Sampling extras peers accept through extra_body; the chat pipeline checks their ranges.
    seed: int | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        if len(value) > 16:
            raise ValueError("metadata takes at most 16 key-value pairs")
        for key, item in value.items():
            if len(key) > 64 or len(item) > 512:
                raise ValueError("metadata keys are at most 64 characters and values at most 512")
        return value

    def refuse_unsupported(self) -> None:
        """A clear 400 for the features this server does not offer, rather than a silent wrong answer."""
        if self.background:
            raise InvalidRequest(
                "background responses are not supported here; stream the response instead",
                param="background",
            )
        if self.conversation is not None:
            raise InvalidRequest(
                "conversation is not supported here; continue with previous_response_id", param="conversation"
            )
        if self.prompt is not None:
            raise InvalidRequest("prompt templates (prompt) are not supported here", param="prompt")

    @property
    def logprobs(self) -> bool:
        """Whether the output text's log-probabilities were asked for (include)."""
        return "message.output_text.logprobs" in (self.include or [])


def _text_of_parts(parts: Any, param: str, allowed: set[str]) -> str:
    """A content given as a string or a list of text parts, as one string; other part types are a 400."""
    if isinstance(parts, str):
        return parts
    if not isinstance(parts, list):
        raise InvalidRequest("content must be a string or a list of content parts", param=param)
    pieces = []
    for number, part in enumerate(parts):
        where = f"{param}[{number}]"
        if not isinstance(part, dict) or not isinstance(part.get("type"), str):
            raise InvalidRequest("each content part must be an object with a type", param=where)
        kind = part["type"]
        if kind == "refusal" and "refusal" in allowed:
            text = part.get("refusal")
        elif kind in allowed:
            text = part.get("text")
        else:
            raise InvalidRequest(
                f"content part type {kind!r} is not supported; this server's models read text "
                f"({', '.join(sorted(allowed))})",
                param=f"{where}.type",
            )
        if not isinstance(text, str):
            raise InvalidRequest(f"a {kind} part needs its text as a string", param=where)
        pieces.append(text)
    return "".join(pieces)


def _message_item(item: dict[str, Any], param: str) -> dict[str, Any]:
    role = item.get("role")
    if role not in ("user", "system", "developer", "assistant"):
        raise InvalidRequest(
            f"a message's role must be user, system, developer or assistant, not {role!r}",
            param=f"{param}.role",
        )
    if role == "assistant":
        text = _text_of_parts(item.get("content"), f"{param}.content", {"output_text", "text", "refusal"})
        content = [{"type": "output_text", "text": text, "annotations": []}]
    else:
        text = _text_of_parts(item.get("content"), f"{param}.content", {"input_text", "text"})
        content = [{"type": "input_text", "text": text}]
    return {
        "id": _given_id(item) or new_id("msg"),
        "type": "message",
        "role": role,
        "content": content,
        "status": "completed",
    }


def _given_id(item: dict[str, Any]) -> str | None:
    ident = item.get("id")
    return ident if isinstance(ident, str) and 0 < len(ident) <= 128 else None


def _string_field(item: dict[str, Any], key: str, param: str) -> str:
    value = item.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"{item.get('type')} needs {key} as a non-empty string", param=f"{param}.{key}")
    return value


def _function_call_item(item: dict[str, Any], param: str) -> dict[str, Any]:
    name = _string_field(item, "name", param)
    arguments = item.get("arguments", "{}")
    if not isinstance(arguments, str):
        raise InvalidRequest("function_call arguments must be a JSON string", param=f"{param}.arguments")
    try:
        parsed = json.loads(arguments) if arguments.strip() else {}
    except (json.JSONDecodeError, RecursionError, ValueError):
        parsed = None
    if not isinstance(parsed, dict):
        raise InvalidRequest(
            "function_call arguments must be a JSON object (as a string)", param=f"{param}.arguments"
        )
    return {
        "id": _given_id(item) or new_id("fc"),
        "type": "function_call",
        "call_id": _string_field(item, "call_id", param),
        "name": name,
        "arguments": arguments,
        "status": "completed",
    }


def _function_call_output_item(item: dict[str, Any], param: str) -> dict[str, Any]:
    output = item.get("output")
    if not isinstance(output, str):
        output = _text_of_parts(output, f"{param}.output", {"input_text", "output_text", "text"})
    return {
        "id": _given_id(item) or new_id("fco"),
        "type": "function_call_output",
        "call_id": _string_field(item, "call_id", param),
        "output": output,
        "status": "completed",
    }


def _reasoning_item(item: dict[str, Any], param: str) -> dict[str, Any]:
    def texts(key: str, kind: str) -> list[dict[str, Any]]:
        parts = item.get(key) or []
        if not isinstance(parts, list) or not all(
            isinstance(p, dict) and isinstance(p.get("text"), str) for p in parts
        ):
            raise InvalidRequest(f"reasoning {key} must be a list of {kind} parts", param=f"{param}.{key}")
        return [{"type": kind, "text": p["text"]} for p in parts]

    return {
        "id": _given_id(item) or new_id("rs"),
        "type": "reasoning",
        "summary": texts("summary", "summary_text"),
        "content": texts("content", "reasoning_text"),
    }


def normalize_input(value: Any) -> list[dict[str, Any]]:
    """The request's input as checked items with ids (a string is one user message)."""
    if value is None:
        return []
    if isinstance(value, str):
        return [_message_item({"role": "user", "content": value}, "input")]
    if not isinstance(value, list):
        raise InvalidRequest("input must be a string or a list of input items", param="input")
    items = []
    for index, item in enumerate(value):
        param = f"input[{index}]"
        if not isinstance(item, dict):
            raise InvalidRequest("each input item must be an object", param=param)
        kind = item.get("type", "message" if "role" in item else None)
        if kind == "message":
            items.append(_message_item(item, param))
        elif kind == "function_call":
            items.append(_function_call_item(item, param))
        elif kind == "function_call_output":
            items.append(_function_call_output_item(item, param))
        elif kind == "reasoning":
            items.append(_reasoning_item(item, param))
        else:
            raise InvalidRequest(
                f"input item type {kind!r} is not supported; use message, function_call, "
                "function_call_output or reasoning items",
                param=f"{param}.type",
            )
    return items


def _joined(parts: list[dict[str, Any]]) -> str:
    return "".join(str(part.get("text") or part.get("refusal") or "") for part in parts)


def items_to_messages(instructions: str | None, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Chat messages for normalized items: calls join their assistant message, reasoning the next one."""
    messages: list[dict[str, Any]] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    reasoning = ""
    joinable = False  # the last message is an assistant turn that later calls may still join
    for item in items:
        kind = item["type"]
        if kind == "reasoning":
            reasoning += _joined(item["content"]) or _joined(item["summary"])
            continue
        if kind == "message":
            message: dict[str, Any] = {"role": item["role"], "content": _joined(item["content"])}
            joinable = item["role"] == "assistant"
        elif kind == "function_call":
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            }
            if joinable and messages and not reasoning:
                messages[-1].setdefault("tool_calls", []).append(call)
                continue
            message = {"role": "assistant", "content": "", "tool_calls": [call]}
            joinable = True
        else:  # function_call_output
            message = {"role": "tool", "content": item["output"], "tool_call_id": item["call_id"]}
            joinable = False
        if message["role"] == "assistant" and reasoning:
            message["reasoning_content"] = reasoning
            reasoning = ""
        messages.append(message)
    return messages


def chat_tools(tools: list[Any] | None) -> list[dict[str, Any]] | None:
    """Function tools in chat completions' shape; any other tool type is a 400 naming it."""
    if not tools:
        return None
    out = []
    for index, tool in enumerate(tools):
        param = f"tools[{index}]"
        if not isinstance(tool, dict):
            raise InvalidRequest("each tool must be an object", param=param)
        kind = tool.get("type")
        if kind != "function":
            raise InvalidRequest(
                f"tool type {kind!r} is not supported; only 'function' tools are (the client runs them)",
                param=f"{param}.type",
            )
        name = tool.get("name")
        if not isinstance(name, str) or not _FUNCTION_NAME.fullmatch(name):
            raise InvalidRequest(
                "a function tool needs a name of 1-64 letters, digits, '_', '.' or '-'", param=f"{param}.name"
            )
        parameters = tool.get("parameters")
        if parameters is not None and not isinstance(parameters, dict):
            raise InvalidRequest(
                "a function's parameters must be a JSON schema object", param=f"{param}.parameters"
            )
        description = tool.get("description")
        if description is not None and not isinstance(description, str):
            raise InvalidRequest("a function's description must be a string", param=f"{param}.description")
        function: dict[str, Any] = {"name": name}
        if description is not None:
            function["description"] = description
        if parameters is not None:
            function["parameters"] = parameters
        if isinstance(tool.get("strict"), bool):
            function["strict"] = tool["strict"]
        out.append({"type": "function", "function": function})
    return out


def chat_tool_choice(
    choice: Any, tools: list[dict[str, Any]] | None
) -> tuple[str | dict[str, Any] | None, list[dict[str, Any]] | None]:
    """tool_choice in chat completions' shape, and the tools left on offer (allowed_tools narrows them)."""
    if choice is None or choice in ("none", "auto", "required"):
        return choice, tools
    if isinstance(choice, dict):
        kind = choice.get("type")
        if kind == "function" and isinstance(choice.get("name"), str):
            return {"type": "function", "function": {"name": choice["name"]}}, tools
        if kind == "allowed_tools" and choice.get("mode") in ("auto", "required"):
            listed = choice.get("tools")
            if not isinstance(listed, list):
                raise InvalidRequest("allowed_tools needs a list of tools", param="tool_choice.tools")
            names = {t.get("name") for t in listed if isinstance(t, dict) and t.get("type") == "function"}
            return choice["mode"], [t for t in tools or [] if t["function"]["name"] in names] or None
        raise InvalidRequest(
            f"tool_choice of type {kind!r} is not supported; use 'none', 'auto', 'required', "
            "{'type': 'function', 'name': ...} or allowed_tools",
            param="tool_choice",
        )
    raise InvalidRequest(
        "tool_choice must be 'none', 'auto', 'required' or an object naming a function", param="tool_choice"
    )


def chat_response_format(text: TextConfig | None) -> dict[str, Any] | None:
    """text.format as chat completions' response_format."""
    fmt = text.format if text is not None else None
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return {"type": "json_object"}
    if fmt.schema_ is None:
        raise InvalidRequest("text.format of type 'json_schema' needs a schema", param="text.format.schema")
    schema: dict[str, Any] = {"name": fmt.name or "response", "schema": fmt.schema_}
    if fmt.strict is not None:
        schema["strict"] = fmt.strict
    return {"type": "json_schema", "json_schema": schema}
