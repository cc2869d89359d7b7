"""Tools, reasoning, n, logprobs and structured-output validation through the app, on fake and tiny models."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from transformers import AutoTokenizer

from tests.conftest import FAKE, wait_ready

HERMES_TEMPLATE = "{% for m in messages %}{{ m.content }}{% endfor %} <tool_call> (hermes-style tools)"
QWEN3_TEMPLATE = "{{ '<think>' }} {{ '<tool_call>' }}"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
USER = [{"role": "user", "content": "Weather in Paris?"}]


def fake(reply: str, template: str | None = HERMES_TEMPLATE, **options: Any) -> dict[str, Any]:
    """A fake chat model whose reply is scripted and whose template names a tool-call format."""
    return {**FAKE, "options": {"reply": reply, "chat_template": template, **options}}


def events(text: str) -> list[dict[str, Any]]:
    """The JSON data events of an SSE body."""
    return [json.loads(block[6:]) for block in text.split("\n\n") if block.startswith("data: {")]


def test_tool_call_is_parsed_into_tool_calls(app_client: Any) -> None:
    reply = 'Let me look.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    client = app_client([fake(reply)])
    body = client.post(
        "/v1/chat/completions", json={"model": "fake-chat", "messages": USER, "tools": [WEATHER]}
    ).json()
    choice = body["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Let me look."
    [call] = choice["message"]["tool_calls"]
    assert call["type"] == "function" and call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    assert json.loads(call["function"]["arguments"]) == {"city": "Paris"}


def test_streamed_tool_calls_carry_indexes(app_client: Any) -> None:
    reply = (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>'
    )
    client = app_client([fake(reply)])
    text = client.post(
        "/v1/chat/completions",
        json={"model": "fake-chat", "messages": USER, "tools": [WEATHER], "stream": True},
    ).text
    chunks = events(text)
    calls = [c for chunk in chunks for c in chunk["choices"][0]["delta"].get("tool_calls", [])]
    assert [c["index"] for c in calls] == [0, 1]
    assert [json.loads(c["function"]["arguments"])["city"] for c in calls] == ["Paris", "Rome"]
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    content = "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks)
    assert content == ""


def test_parallel_tool_calls_false_keeps_the_first_call(app_client: Any) -> None:
    reply = (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>'
    )
    client = app_client([fake(reply)])
    body = client.post(
        "/v1/chat/completions",
        json={"model": "fake-chat", "messages": USER, "tools": [WEATHER], "parallel_tool_calls": False},
    ).json()
    assert len(body["choices"][0]["message"]["tool_calls"]) == 1


def test_malformed_tool_call_is_content_not_an_error(app_client: Any) -> None:
    reply = '<tool_call>\n{"name": "get_weather", "arguments": {"city": </tool_call>'
    client = app_client([fake(reply)])
    response = client.post(
        "/v1/chat/completions", json={"model": "fake-chat", "messages": USER, "tools": [WEATHER]}
    )
    assert response.status_code == 200
    choice = response.json()["choices"][0]
    assert choice["finish_reason"] == "stop" and "tool_calls" not in choice["message"]
    assert choice["message"]["content"].replace(" ", "") == reply.replace(" ", "")


def test_tool_choice_none_leaves_text_alone(app_client: Any) -> None:
    reply = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    client = app_client([fake(reply)])
    body = client.post(
        "/v1/chat/completions",
        json={"model": "fake-chat", "messages": USER, "tools": [WEATHER], "tool_choice": "none"},
    ).json()
    assert body["choices"][0]["finish_reason"] == "stop"
    assert "<tool_call>" in body["choices"][0]["message"]["content"]


def test_reasoning_goes_to_both_reasoning_fields(app_client: Any) -> None:
    client = app_client([fake("<think>\nThe user greets me.\n</think>\n\nHello!", template=QWEN3_TEMPLATE)])
    body = client.post("/v1/chat/completions", json={"model": "fake-chat", "messages": USER}).json()
    message = body["choices"][0]["message"]
    assert message["content"] == "Hello!"
    assert message["reasoning_content"] == message["reasoning"] == "The user greets me."
    assert (
        0
        < body["usage"]["completion_tokens_details"]["reasoning_tokens"]
        < body["usage"]["completion_tokens"]
    )
    chunks = events(
        client.post(
            "/v1/chat/completions", json={"model": "fake-chat", "messages": USER, "stream": True}
        ).text
    )
    deltas = [chunk["choices"][0]["delta"] for chunk in chunks]
    assert "".join(d.get("reasoning_content", "") for d in deltas) == "The user greets me."
    assert "".join(d.get("reasoning", "") for d in deltas) == "The user greets me."
    assert "".join(d.get("content", "") for d in deltas) == "Hello!"


def test_incoming_reasoning_and_tool_messages_are_accepted(app_client: Any) -> None:
    client = app_client([fake("Sunny.")])
    history = [
        *USER,
        {
            "role": "assistant",
            "content": None,
            "reasoning_content": "I should call the tool.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"sky": "sunny"}'},
    ]
    response = client.post(
        "/v1/chat/completions", json={"model": "fake-chat", "messages": history, "tools": [WEATHER]}
    )
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "Sunny."


def test_n_choices_full_and_streamed(app_client: Any) -> None:
    client = app_client([fake("one two three", template=None)])
    body = client.post("/v1/chat/completions", json={"model": "fake-chat", "messages": USER, "n": 3}).json()
    assert [c["index"] for c in body["choices"]] == [0, 1, 2]
    assert all(c["message"]["content"] == "one two three" for c in body["choices"])
    assert body["usage"]["completion_tokens"] == 9
    text = client.post(
        "/v1/chat/completions",
        json={
            "model": "fake-chat",
            "messages": USER,
            "n": 3,
            "stream": True,
            "stream_options": {"include_usage": True},
        },
    ).text
    chunks = events(text)
    by_index: dict[int, str] = {}
    finishes = []
    for chunk in chunks:
        for choice in chunk["choices"]:
            by_index[choice["index"]] = by_index.get(choice["index"], "") + (
                choice["delta"].get("content") or ""
            )
            if choice["finish_reason"]:
                finishes.append(choice["index"])
    assert by_index == {0: "one two three", 1: "one two three", 2: "one two three"}
    assert sorted(finishes) == [0, 1, 2]
    assert chunks[-1]["usage"]["completion_tokens"] == 9


def test_logprobs_shape_full_and_streamed(app_client: Any) -> None:
    client = app_client([fake("a b", template=None)])
    request = {"model": "fake-chat", "messages": USER, "logprobs": True, "top_logprobs": 1}
    body = client.post("/v1/chat/completions", json=request).json()
    content = body["choices"][0]["logprobs"]["content"]
    assert [e["token"] for e in content] == ["a", " b"]
    assert content[1] == {
        "token": " b",
        "logprob": 0.0,
        "bytes": [32, 98],
        "top_logprobs": [content[1]["top_logprobs"][0]],
    }
    chunks = events(client.post("/v1/chat/completions", json={**request, "stream": True}).text)
    streamed = [
        e["token"]
        for c in chunks
        if c["choices"] and "logprobs" in c["choices"][0]
        for e in c["choices"][0]["logprobs"]["content"]
    ]
    assert streamed == ["a", " b"]
    plain = client.post("/v1/chat/completions", json={"model": "fake-chat", "messages": USER}).json()
    assert plain["choices"][0]["logprobs"] is None


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"top_logprobs": 3}, None),
        ({"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
        ({"logit_bias": {"abc": 1}}, "logit_bias"),
        ({"logit_bias": {"5": 101}}, "logit_bias"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, None),
        ({"tool_choice": "required"}, None),
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, None),
        ({"response_format": {"type": "json_schema", "json_schema": {"name": "x"}}}, None),
        ({"response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "nope"}}}}, None),
        ({"response_format": {"type": "yaml"}}, None),
        ({"n": 0}, "n"),
    ],
)
def test_bad_parity_parameters_are_400(app_client: Any, extra: dict[str, Any], param: str | None) -> None:
    client = app_client()
    response = client.post("/v1/chat/completions", json={"model": "fake-chat", "messages": USER, **extra})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["message"]
    if param:
        assert error["param"] == param
    assert client.get("/health").status_code == 200


def test_invalid_schema_names_the_schema(app_client: Any) -> None:
    client = app_client()
    bad = {
        "type": "json_schema",
        "json_schema": {"name": "x", "schema": {"type": "object", "properties": {"a": {"type": 5}}}},
    }
    response = client.post(
        "/v1/chat/completions", json={"model": "fake-chat", "messages": USER, "response_format": bad}
    )
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "response_format.json_schema.schema"
    assert response.json()["error"]["code"] == "invalid_schema"


def test_required_tool_choice_without_a_tool_format_is_400(app_client: Any) -> None:
    client = app_client([fake("x", template=None)])
    response = client.post(
        "/v1/chat/completions",
        json={"model": "fake-chat", "messages": USER, "tools": [WEATHER], "tool_choice": "required"},
    )
    assert response.status_code == 400 and response.json()["error"]["param"] == "tool_choice"


# --- the tiny random Qwen3 model with its real template ---------------------------------------------------


@pytest.fixture(scope="module")
def tiny_qwen3(tiny_model: Callable[[str], Path]) -> Path:
    return tiny_model("qwen3")


def test_tiny_qwen3_reasoning_through_the_engine(app_client: Any, tiny_qwen3: Path) -> None:
    """Bias the random model towards `<think>`: everything after it is reasoning, counted as such."""
    client = app_client([{"id": "q", "source": str(tiny_qwen3), "dtype": "float32"}])
    wait_ready(client, "q", timeout=60)
    think = AutoTokenizer.from_pretrained(str(tiny_qwen3)).convert_tokens_to_ids("<think>")
    request = {
        "model": "q",
        "messages": USER,
        "max_tokens": 6,
        "temperature": 0,
        "logit_bias": {str(think): 100},
    }
    body = client.post("/v1/chat/completions", json=request).json()
    message = body["choices"][0]["message"]
    assert message["content"] == ""
    assert message["reasoning_content"] == message["reasoning"] == "<think>" * 5
    assert body["usage"]["completion_tokens_details"]["reasoning_tokens"] == 6
    off = client.post(
        "/v1/chat/completions", json={**request, "chat_template_kwargs": {"enable_thinking": False}}
    ).json()
    # With thinking off the template closes the think block in the prompt: the output is all content.
    assert off["choices"][0]["message"]["content"] == "<think>" * 6
    assert "reasoning_content" not in off["choices"][0]["message"]
    effort = client.post("/v1/chat/completions", json={**request, "reasoning_effort": "none"}).json()
    assert effort["choices"][0]["message"]["content"] == "<think>" * 6


def test_tiny_qwen3_forced_tool_call_and_schema(app_client: Any, tiny_qwen3: Path) -> None:
    """A random model still produces a valid call / schema-valid JSON when the grammar constrains it."""
    import jsonschema

    client = app_client([{"id": "q", "source": str(tiny_qwen3), "dtype": "float32"}])
    wait_ready(client, "q", timeout=60)
    # Bounded arguments, so that a random model's answer ends well inside max_tokens.
    weather = json.loads(json.dumps(WEATHER))
    weather["function"]["parameters"]["properties"]["city"] = {"enum": ["Paris", "Rome"]}
    forced = client.post(
        "/v1/chat/completions",
        json={
            "model": "q",
            "messages": USER,
            "tools": [weather],
            "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
            "max_tokens": 200,
            "temperature": 0,
        },
    ).json()
    choice = forced["choices"][0]
    assert choice["finish_reason"] == "tool_calls", choice
    [call] = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    jsonschema.validate(json.loads(call["function"]["arguments"]), weather["function"]["parameters"])
    schema = {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 8},
            "age": {"type": "integer", "minimum": 0, "maximum": 150},
        },
        "required": ["name", "age"],
        "additionalProperties": False,
    }
    answer = client.post(
        "/v1/chat/completions",
        json={
            "model": "q",
            "messages": USER,
            "max_tokens": 200,
            "temperature": 0,
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "p", "schema": schema, "strict": True},
            },
        },
    ).json()
    assert answer["choices"][0]["finish_reason"] == "stop", answer
    jsonschema.validate(json.loads(answer["choices"][0]["message"]["content"]), schema)
