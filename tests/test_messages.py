"""Anthropic's Messages API (/v1/messages, count_tokens) through the official `anthropic` SDK and the wire."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import anthropic
import jsonschema
import pytest

from ai_stack.engines.fake import fake_tokens
from ai_stack.serving.chat import ChatService
from ai_stack.serving.generation import ChoiceEvent, PreparedChat
from tests.conftest import FAKE, wait_ready

HERMES_TEMPLATE = "{% for m in messages %}{{ m.content }}{% endfor %} <tool_call> (hermes-style tools)"
QWEN3_TEMPLATE = "{{ '<think>' }} {{ '<tool_call>' }}"
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
WEATHER: dict[str, Any] = {
    "name": "get_weather",
    "description": "Current weather for a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}
HI = [{"role": "user", "content": "Hi there"}]


def fake(reply: str | None, template: str | None = HERMES_TEMPLATE, **options: Any) -> dict[str, Any]:
    """A fake chat model with a scripted reply (None: it echoes) and a template naming its formats."""
    return {**FAKE, "options": {"reply": reply, "chat_template": template, **options}}


def sdk(url: str, **kwargs: Any) -> anthropic.Anthropic:
    """The official client pointed at a server, as Claude Code is with ANTHROPIC_BASE_URL."""
    return anthropic.Anthropic(base_url=url, api_key=kwargs.pop("api_key", "unused"), max_retries=0, **kwargs)


def sse(text: str) -> list[tuple[str, dict[str, Any]]]:
    """(event name, data) of each server-sent event; checks each data's type is its event name."""
    events = []
    for block in text.strip().split("\n\n"):
        name, data = block.split("\n")
        assert name.startswith("event: ") and data.startswith("data: "), block
        body = json.loads(data[6:])
        assert body["type"] == name[7:]
        events.append((name[7:], body))
    return events


def assert_anthropic_error(response: Any, status: int, type_: str) -> str:
    """Anthropic's error shape with the right status; returns the message."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"type", "error"} and body["type"] == "error"
    assert set(body["error"]) == {"type", "message"}
    assert body["error"]["type"] == type_
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return str(body["error"]["message"])


def rendered_tokens(messages: list[tuple[str, str]]) -> int:
    """The fake engine's prompt length for these (role, content) messages: its render is 'role: content'."""
    return len(fake_tokens("".join(f"{role}: {content}\n" for role, content in messages) + "assistant:"))


# ---------------------------------------------------------------------------------------------- the SDK


def test_create_has_anthropic_shape_and_usage(live_server: Any) -> None:
    client = sdk(live_server([fake(None)]).url)
    message = client.messages.create(model="fake", max_tokens=50, system="Be brief.", messages=HI)
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_")
    assert message.model == "fake-chat"
    [block] = message.content
    assert block.type == "text" and block.text == "You said: Hi there"
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message.usage.input_tokens == rendered_tokens([("system", "Be brief."), ("user", "Hi there")])
    assert message.usage.output_tokens == len(fake_tokens("You said: Hi there"))
    assert message.usage.cache_read_input_tokens == 0


def test_system_blocks_content_blocks_and_count_tokens_agree(live_server: Any) -> None:
    client = sdk(live_server([fake(None)]).url)
    request: dict[str, Any] = {
        "model": "fake",
        "system": [{"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}],
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": "One"}, {"type": "text", "text": "two"}]}
        ],
    }
    count = client.messages.count_tokens(**request)
    message = client.messages.create(max_tokens=50, **request)
    assert count.input_tokens == message.usage.input_tokens
    assert count.input_tokens == rendered_tokens([("system", "Be brief."), ("user", "One\n\ntwo")])
    assert message.content[0].text == "You said: One\n\ntwo"


def test_max_tokens_and_stop_sequences_set_the_stop_reason(live_server: Any) -> None:
    client = sdk(live_server([fake("one two three four five")]).url)
    cut = client.messages.create(model="fake", max_tokens=2, messages=HI)
    assert cut.stop_reason == "max_tokens" and cut.usage.output_tokens == 2
    assert cut.content[0].text == "one two"
    stopped = client.messages.create(model="fake", max_tokens=50, messages=HI, stop_sequences=["x", "three"])
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == "three"
    assert stopped.content[0].text == "one two "
    done = client.messages.create(model="fake", max_tokens=50, messages=HI, stop_sequences=["seven"])
    assert done.stop_reason == "end_turn" and done.stop_sequence is None


def test_stream_gives_the_same_message(live_server: Any) -> None:
    client = sdk(live_server([fake("<think>Pondering.</think>The answer.", QWEN3_TEMPLATE)]).url)
    full = client.messages.create(model="fake", max_tokens=50, messages=HI)
    with client.messages.stream(model="fake", max_tokens=50, messages=HI) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == "The answer."
    assert [b.model_dump() for b in final.content] == [b.model_dump() for b in full.content]
    thinking, answer = final.content
    assert thinking.type == "thinking" and thinking.thinking == "Pondering." and thinking.signature
    assert answer.type == "text" and answer.text == "The answer."
    assert final.stop_reason == "end_turn" and final.usage.output_tokens == full.usage.output_tokens


def test_tool_use_round_trip(live_server: Any) -> None:
    client = sdk(live_server([fake("Let me look.\n" + CALL)]).url)
    question = [{"role": "user", "content": "Weather in Paris?"}]
    message = client.messages.create(model="fake", max_tokens=50, tools=[WEATHER], messages=question)
    assert message.stop_reason == "tool_use"
    text, call = message.content
    assert text.type == "text" and text.text == "Let me look."
    assert call.type == "tool_use" and call.name == "get_weather" and call.input == {"city": "Paris"}
    with client.messages.stream(model="fake", max_tokens=50, tools=[WEATHER], messages=question) as stream:
        final = stream.get_final_message()
    assert final.content[1].type == "tool_use" and final.content[1].input == {"city": "Paris"}
    assert final.stop_reason == "tool_use"
    result = [{"type": "tool_result", "tool_use_id": call.id, "content": "18C and sunny"}]
    follow_up = [*question, message.to_param(), {"role": "user", "content": result}]
    count = client.messages.count_tokens(model="fake", tools=[WEATHER], messages=follow_up)
    # The fake engine renders 'role: content' lines: the tool result went in as a tool message.
    expected = [("user", "Weather in Paris?"), ("assistant", "Let me look."), ("tool", "18C and sunny")]
    assert count.input_tokens == rendered_tokens(expected)
    answer = client.messages.create(model="fake", max_tokens=50, tools=[WEATHER], messages=follow_up)
    assert answer.usage.input_tokens == count.input_tokens


def test_tool_choice_none_leaves_the_call_as_text(live_server: Any) -> None:
    client = sdk(live_server([fake(CALL)]).url)
    message = client.messages.create(
        model="fake",
        max_tokens=50,
        tools=[WEATHER],
        tool_choice={"type": "none"},
        messages=HI,
    )
    assert message.stop_reason == "end_turn" and "<tool_call>" in message.content[0].text


def test_errors_raise_the_sdk_exception_classes(live_server: Any) -> None:
    url = live_server([fake(None)]).url
    client = sdk(url)
    with pytest.raises(anthropic.NotFoundError) as missing:
        client.messages.create(model="nope", max_tokens=5, messages=HI)
    assert missing.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.create(
            model="fake",
            max_tokens=5,
            messages=HI,
            tools=[WEATHER],
            tool_choice={"type": "tool", "name": "x"},
        )
    assert "not in tools" in bad.value.message
    with pytest.raises(anthropic.BadRequestError):
        client.messages.count_tokens(model="fake", messages=[])


def test_api_key_as_x_api_key_or_bearer(live_server: Any) -> None:
    url = live_server([fake("ok")], api_key="sekrit").url
    assert sdk(url, api_key="sekrit").messages.create(model="fake", max_tokens=5, messages=HI).content
    bearer = anthropic.Anthropic(base_url=url, auth_token="sekrit", max_retries=0)
    assert bearer.messages.count_tokens(model="fake", messages=HI).input_tokens > 0
    with pytest.raises(anthropic.AuthenticationError) as wrong:
        sdk(url, api_key="wrong").messages.create(model="fake", max_tokens=5, messages=HI)
    assert wrong.value.body["error"]["type"] == "authentication_error"


class FailingChat(ChatService):
    """Yields one event, then the engine fails: the stream has begun, so the error is an SSE event."""

    async def events(self, chat: PreparedChat) -> AsyncIterator[ChoiceEvent]:
        async for event in super().events(chat):
            yield event
            raise RuntimeError("engine fell over")


def test_error_after_the_stream_began_is_an_error_event(live_server: Any, app_client: Any) -> None:
    live = live_server([fake("one two three")])
    live.app.state.chat = FailingChat(live.app.state.registry)
    stream = sdk(live.url).messages.stream(model="fake", max_tokens=50, messages=HI)
    with pytest.raises(anthropic.APIStatusError) as failed, stream as events:
        list(events.text_stream)
    assert failed.value.body["error"]["type"] == "api_error"
    client = app_client([fake("one two three")])
    wait_ready(client, "fake-chat")
    client.app.state.chat = FailingChat(client.app.state.registry)
    response = client.post(
        "/v1/messages", json={"model": "fake", "max_tokens": 9, "messages": HI, "stream": True}
    )
    events = sse(response.text)
    assert [name for name, _ in events][:2] == ["message_start", "ping"]
    name, body = events[-1]
    assert name == "error" and body["error"]["type"] == "api_error"
    assert "RuntimeError" in body["error"]["message"] and "fell over" not in body["error"]["message"]


# ---------------------------------------------------------------------------------------------- the wire


def test_stream_event_order_on_the_wire(client: Any) -> None:
    response = client.post(
        "/v1/messages", json={"model": "fake", "max_tokens": 50, "messages": HI, "stream": True}
    )
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = sse(response.text)
    names = [name for name, _ in events]
    assert names[:4] == ["message_start", "ping", "content_block_start", "content_block_delta"]
    assert names[-4:] == ["content_block_delta", "content_block_stop", "message_delta", "message_stop"]
    start = events[0][1]["message"]
    assert start["content"] == [] and start["stop_reason"] is None and start["usage"]["input_tokens"] > 0
    deltas = [body["delta"]["text"] for name, body in events if name == "content_block_delta"]
    assert "".join(deltas) == "You said: Hi there"
    assert {body["index"] for name, body in events if name.startswith("content_block")} == {0}
    final = events[-2][1]
    assert final["delta"] == {"stop_reason": "end_turn", "stop_sequence": None}
    assert final["usage"]["output_tokens"] == len(fake_tokens("You said: Hi there"))


def test_thinking_display_omitted_keeps_the_block_without_text(app_client: Any) -> None:
    client = app_client([fake("<think>Secret.</think>Shown.", QWEN3_TEMPLATE)])
    wait_ready(client, "fake-chat")
    request = {
        "model": "fake",
        "max_tokens": 50,
        "messages": HI,
        "thinking": {"type": "adaptive", "display": "omitted"},
    }
    body = client.post("/v1/messages", json=request).json()
    assert body["content"][0]["type"] == "thinking" and body["content"][0]["thinking"] == ""
    assert body["content"][0]["signature"] and body["content"][1]["text"] == "Shown."
    events = sse(client.post("/v1/messages", json={**request, "stream": True}).text)
    assert not [
        b for name, b in events if name == "content_block_delta" and b["delta"]["type"] == "thinking_delta"
    ]
    signature = [
        b["delta"]["signature"] for name, b in events if b.get("delta", {}).get("type") == "signature_delta"
    ]
    assert signature == [body["content"][0]["signature"]]


def test_max_tokens_zero_generates_nothing(client: Any) -> None:
    body = client.post("/v1/messages", json={"model": "fake", "max_tokens": 0, "messages": HI}).json()
    assert body["content"] == [] and body["stop_reason"] == "max_tokens"
    assert body["usage"]["output_tokens"] == 0 and body["usage"]["input_tokens"] > 0


def test_max_tokens_over_the_context_stops_at_the_context(app_client: Any) -> None:
    client = app_client([fake(" ".join(["word"] * 40), context_length=20)])
    wait_ready(client, "fake-chat")
    body = client.post("/v1/messages", json={"model": "fake", "max_tokens": 64000, "messages": HI}).json()
    assert body["stop_reason"] == "model_context_window_exceeded"
    assert body["usage"]["input_tokens"] + body["usage"]["output_tokens"] == 20
    long = [{"role": "user", "content": "word " * 50}]
    message = assert_anthropic_error(
        client.post("/v1/messages", json={"model": "fake", "max_tokens": 5, "messages": long}),
        400,
        "invalid_request_error",
    )
    assert "context length" in message


def test_server_tools_are_skipped_and_images_become_a_note(client: Any) -> None:
    image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="}}
    document = {
        "type": "document",
        "source": {"type": "text", "media_type": "text/plain", "data": "Doc text"},
    }
    request = {
        "model": "fake",
        "messages": [{"role": "user", "content": [image, document, {"type": "text", "text": "What is it?"}]}],
        "tools": [{"type": "web_search_20250305", "name": "web_search", "max_uses": 5}],
    }
    count = client.post("/v1/messages/count_tokens", json=request).json()["input_tokens"]
    note = "[image omitted: this model reads text only]"
    assert count == rendered_tokens([("user", f"{note}\n\nDoc text\n\nWhat is it?")])


@pytest.mark.parametrize(
    "change",
    [
        {"max_tokens": None},
        {"max_tokens": -1},
        {"max_tokens": "many"},
        {"messages": []},
        {"messages": "hello"},
        {"messages": [{"role": "tool", "content": "x"}]},
        {"messages": [{"role": "user", "content": 5}]},
        {"messages": [{"role": "user", "content": [{"type": "video", "url": "x"}]}]},
        {"messages": [{"role": "user", "content": [{"type": "text"}]}]},
        {
            "messages": [
                {"role": "user", "content": [{"type": "tool_use", "id": "a", "name": "b", "input": {}}]}
            ]
        },
        {"messages": [*HI, {"role": "assistant", "content": [{"type": "tool_result", "tool_use_id": "a"}]}]},
        {
            "messages": [
                *HI,
                {"role": "assistant", "content": [{"type": "tool_use", "id": "a", "name": "b", "input": 3}]},
            ]
        },
        {"messages": [*HI, {"role": "assistant", "content": "The answer is ("}]},
        {"system": 7},
        {"system": [{"type": "image"}]},
        {"temperature": 1.5},
        {"top_k": -1},
        {"stop_sequences": [""]},
        {"stop_sequences": "stop"},
        {"tools": [{"name": "t"}]},
        {"tools": [{"name": "bad name!", "input_schema": {"type": "object"}}]},
        {"tools": [WEATHER], "tool_choice": {"type": "sometimes"}},
        {"tools": [WEATHER], "tool_choice": "auto"},
        {"tool_choice": {"type": "any"}},
        {"thinking": {"type": "maybe"}},
        {"thinking": True},
        {"output_config": {"format": {"type": "json_schema"}}},
        {
            "output_config": {
                "format": {
                    "type": "json_schema",
                    "schema": {"type": "object", "properties": {"a": {"type": 5}}},
                }
            }
        },
        {"output_config": {"effort": "extreme"}},
        {"metadata": {"user_id": 5}},
        {"model": ""},
        {"stream": "yes"},
    ],
)
def test_hostile_input_is_an_anthropic_400(client: Any, change: dict[str, Any]) -> None:
    body = {"model": "fake", "max_tokens": 5, "messages": HI}
    body.update(change)
    body = {key: value for key, value in body.items() if value is not None}
    assert_anthropic_error(client.post("/v1/messages", json=body), 400, "invalid_request_error")


@pytest.mark.parametrize(
    "content",
    [b"not json", b"[1, 2]", b'{"model": NaN}', b"[" * 200 + b"]" * 200, b'"\\ud800"'],
)
def test_malformed_bodies_are_anthropic_400s(client: Any, content: bytes) -> None:
    for path in ("/v1/messages", "/v1/messages/count_tokens"):
        response = client.post(path, content=content, headers={"content-type": "application/json"})
        assert_anthropic_error(response, 400, "invalid_request_error")


def test_wrong_method_and_content_type_keep_anthropic_shape(client: Any) -> None:
    assert_anthropic_error(client.get("/v1/messages"), 405, "invalid_request_error")
    response = client.post("/v1/messages", content=b"x", headers={"content-type": "text/plain"})
    assert_anthropic_error(response, 415, "invalid_request_error")


# ---------------------------------------------------------------------------------------------- tiny Qwen3


def test_tiny_qwen3_thinking_switch_forced_tool_and_output_format(
    app_client: Any, tiny_model: Callable[[str], Path]
) -> None:
    """Qwen3's real template: thinking off changes the prompt; the grammars hold on a random model."""
    client = app_client([{"id": "q", "source": str(tiny_model("qwen3")), "dtype": "float32"}])
    wait_ready(client, "q", timeout=60)
    base = {"model": "q", "messages": [{"role": "user", "content": "Weather in Paris?"}]}

    def count(**extra: Any) -> int:
        return int(client.post("/v1/messages/count_tokens", json={**base, **extra}).json()["input_tokens"])

    # Qwen3's template closes an empty think block when thinking is off.
    assert count(thinking={"type": "disabled"}) > count(thinking={"type": "enabled", "budget_tokens": 1024})
    assert count(tools=[WEATHER]) > count()
    weather = json.loads(json.dumps(WEATHER))
    weather["input_schema"]["properties"]["city"] = {"enum": ["Paris", "Rome"]}
    forced = client.post(
        "/v1/messages",
        json={
            **base,
            "tools": [weather],
            "tool_choice": {"type": "tool", "name": "get_weather"},
            "max_tokens": 200,
            "temperature": 0,
        },
    ).json()
    assert forced["stop_reason"] == "tool_use", forced
    [call] = [block for block in forced["content"] if block["type"] == "tool_use"]
    assert call["name"] == "get_weather"
    jsonschema.validate(call["input"], weather["input_schema"])
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
        "/v1/messages",
        json={
            **base,
            "max_tokens": 200,
            "temperature": 0,
            "output_config": {"format": {"type": "json_schema", "schema": schema}},
        },
    ).json()
    assert answer["stop_reason"] == "end_turn", answer
    jsonschema.validate(json.loads(answer["content"][-1]["text"]), schema)


# ---------------------------------------------------------------------------------------------- real model


@pytest.mark.slow
def test_default_model_tool_round_trip_and_stream(default_server: str) -> None:
    client = sdk(default_server)
    question = [{"role": "user", "content": "What is the weather in Paris?"}]
    message = client.messages.create(
        model="default",
        max_tokens=60,
        extra_body={"temperature": 0},  # as older clients send it
        tools=[WEATHER],
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=question,
    )
    assert message.stop_reason == "tool_use", message
    call = next(block for block in message.content if block.type == "tool_use")
    assert call.name == "get_weather" and isinstance(call.input.get("city"), str)
    result = {"type": "tool_result", "tool_use_id": call.id, "content": "18 degrees Celsius and sunny"}
    follow_up = [*question, message.to_param(), {"role": "user", "content": [result]}]
    with client.messages.stream(
        model="default",
        max_tokens=30,
        extra_body={"temperature": 0},  # as older clients send it
        tools=[WEATHER],
        tool_choice={"type": "none"},  # a 0.5B model given the tool again tends to call it again
        messages=follow_up,
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert final.stop_reason in ("end_turn", "max_tokens") and text.strip()
    assert "18" in text or "sunny" in text.lower(), text
    assert (
        final.usage.input_tokens
        == client.messages.count_tokens(
            model="default",
            tools=[WEATHER],
            tool_choice={"type": "none"},
            messages=follow_up,
        ).input_tokens
    )
