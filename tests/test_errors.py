"""Every error is OpenAI-shaped (ai_stack/errors.py): bad models, bodies, JSON, routes and context length."""

from __future__ import annotations

from typing import Any

import pytest
from starlette.testclient import TestClient

from tests.conftest import FAKE, assert_error, wait_for, wait_ready

USER = [{"role": "user", "content": "hi"}]


def test_unknown_model_is_404_and_lists_nothing(client: TestClient) -> None:
    response = client.post("/v1/chat/completions", json={"model": "gpt-9", "messages": USER})
    error = assert_error(response, 404, "model_not_found", "model")
    assert "fake-chat" not in error["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": USER}, "model"),
        ({"model": "fake-chat"}, "messages"),
        ({"model": "fake-chat", "messages": []}, "messages"),
        ({"model": "fake-chat", "messages": [{"role": "wizard", "content": "x"}]}, "messages.0.role"),
        ({"model": "fake-chat", "messages": USER, "temperature": 5}, "temperature"),
        ({"model": "fake-chat", "messages": USER, "top_p": 0}, "top_p"),
        ({"model": "fake-chat", "messages": USER, "max_tokens": 0}, "max_tokens"),
        ({"model": "fake-chat", "messages": USER, "n": 17}, "n"),
        ({"model": "fake-chat", "messages": USER, "stop": [""]}, "stop"),
        ({"model": "fake-chat", "messages": USER, "presence_penalty": 3}, "presence_penalty"),
        (
            {"model": "fake-chat", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]},
            "messages[0].content",
        ),
    ],
)
def test_invalid_bodies_are_400_naming_the_param(
    client: TestClient, body: dict[str, Any], param: str
) -> None:
    assert_error(client.post("/v1/chat/completions", json=body), 400, None if False else _code(param), param)


def _code(param: str) -> str:
    return "invalid_request" if param.endswith("].content") else "invalid_value"


@pytest.mark.parametrize("raw", [b"{not json", b"[1, 2]", b"\xff\xfe", b""])
def test_malformed_json_is_400(client: TestClient, raw: bytes) -> None:
    response = client.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert_error(response, 400, "invalid_request")


def test_unknown_route_and_method(client: TestClient) -> None:
    assert_error(client.get("/v1/nothing-here"), 404, "not_found")
    assert_error(client.get("/v1/chat/completions"), 405, "method_not_allowed")
    assert_error(client.get("/v1/models/nope"), 404, "model_not_found")


def test_context_length_exceeded(app_client: Any) -> None:
    client = app_client([{**FAKE, "options": {"context_length": 12}}])
    wait_ready(client, "fake-chat")
    long = [{"role": "user", "content": "word " * 40}]
    error = assert_error(
        client.post("/v1/chat/completions", json={"model": "fake-chat", "messages": long}),
        400,
        "context_length_exceeded",
        "messages",
    )
    assert "maximum context length is 12 tokens" in error["message"]
    body = {"model": "fake-chat", "messages": USER, "max_tokens": 100}
    assert_error(client.post("/v1/chat/completions", json=body), 400, "context_length_exceeded", "max_tokens")
    ok = client.post("/v1/chat/completions", json={"model": "fake-chat", "messages": USER, "max_tokens": 2})
    assert ok.status_code == 200


def test_server_keeps_serving_after_bad_requests(client: TestClient) -> None:
    for raw in (b"{", b"null", b'{"model": 1, "messages": "x"}', b'{"model": "fake-chat", "messages": [{}]}'):
        assert client.post("/v1/chat/completions", content=raw).status_code == 400
    assert wait_for(
        lambda: (
            client.post("/v1/chat/completions", json={"model": "fake-chat", "messages": USER}).status_code
            == 200
        )
    )


TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object", "properties": {}}}}


def _deep_schema(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "object", "properties": {"a": schema}}
    return schema


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"seed": 2**70}, "seed"),
        ({"seed": -(2**63) - 1}, "seed"),
        ({"repetition_penalty": 1e-300}, "repetition_penalty"),
        ({"logit_bias": {"\u00b2": 5}}, "logit_bias"),
        ({"logit_bias": {"1" * 12: 5}}, "logit_bias"),
        ({"stop": ["x" * 513]}, "stop"),
        ({"tools": [TOOL] * 129}, "tools"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "deep", "schema": _deep_schema(40)},
                }
            },
            None,
        ),
        ({"tools": [{**TOOL, "function": {"name": "f", "parameters": _deep_schema(40)}}]}, None),
    ],
)
def test_hostile_parameters_are_400(client: TestClient, extra: dict[str, Any], param: str | None) -> None:
    """Out-of-range numbers, odd digits, overlong lists and over-deep schemas are refused, not a 500."""
    response = client.post("/v1/chat/completions", json={"model": "fake-chat", "messages": USER, **extra})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param


@pytest.mark.parametrize(
    ("arguments", "accepted"),
    [('{"city": "Paris"}', True), ("", True), ("not json {", False), ("[1, 2]", False), ('"text"', False)],
)
def test_earlier_tool_call_arguments_must_be_a_json_object(
    client: TestClient, arguments: str, accepted: bool
) -> None:
    call = {"id": "call_1", "type": "function", "function": {"name": "f", "arguments": arguments}}
    messages = [
        {"role": "user", "content": "weather?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    response = client.post("/v1/chat/completions", json={"model": "fake-chat", "messages": messages})
    if accepted:
        assert response.status_code == 200, response.text
    else:
        assert_error(response, 400, "invalid_request", "messages[1].tool_calls[0].function.arguments")


def test_lone_surrogates_and_big_seeds_are_answered(client: TestClient) -> None:
    """A lone surrogate becomes U+FFFD (also in a stream); the largest 64-bit seed works with n > 1."""
    raw = '{"model": "fake-chat", "messages": [{"role": "user", "content": "hi \\ud800 there"}]}'
    response = client.post("/v1/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == "You said: hi \ufffd there"
    streamed = client.post(
        "/v1/chat/completions",
        content=raw.replace('"messages"', '"stream": true, "messages"'),
        headers={"content-type": "application/json"},
    )
    assert streamed.status_code == 200 and "data: [DONE]" in streamed.text and '"error"' not in streamed.text
    body = {"model": "fake-chat", "messages": USER, "seed": 2**64 - 1, "n": 3, "temperature": 1.0}
    assert client.post("/v1/chat/completions", json=body).status_code == 200


@pytest.mark.parametrize("key", ["chat_template", "tokenize", "add_generation_prompt", "tools", "messages"])
def test_template_kwargs_cannot_replace_the_template_or_render_switches(client: TestClient, key: str) -> None:
    kwargs = {key: "{% for x in range(10**9) %}x{% endfor %}" if key == "chat_template" else True}
    response = client.post(
        "/v1/chat/completions", json={"model": "fake-chat", "messages": USER, "chat_template_kwargs": kwargs}
    )
    error = assert_error(response, 400, "invalid_request", f"chat_template_kwargs.{key}")
    if key == "chat_template":
        assert "allow_request_chat_template" in error["message"]


def test_template_variables_pass_and_own_templates_can_be_allowed(app_client: Any) -> None:
    body = {"model": "fake-chat", "messages": USER, "chat_template_kwargs": {"enable_thinking": False}}
    default = app_client()
    wait_ready(default, "fake-chat")
    assert default.post("/v1/chat/completions", json=body).status_code == 200
    allowed = app_client(allow_request_chat_template=True)
    wait_ready(allowed, "fake-chat")
    own = {**body, "chat_template_kwargs": {"chat_template": "{{ messages[0].content }}"}}
    assert allowed.post("/v1/chat/completions", json=own).status_code == 200
