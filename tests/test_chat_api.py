"""The chat API over a fake engine: wire format, streaming order, stops, limits and errors."""

from __future__ import annotations

import json
from typing import Any

from starlette.testclient import TestClient

from ai_stack.engines.fake import fake_tokens
from tests.conftest import FAKE, wait_ready


def chat(client: TestClient, **body: Any) -> Any:
    """POST a chat completion to the fake model."""
    payload = {"model": "fake-chat", "messages": [{"role": "user", "content": "hello there"}], **body}
    return client.post("/v1/chat/completions", json=payload)


def sse_events(response: Any) -> list[Any]:
    """Parse an SSE body into JSON payloads, with the [DONE] marker kept as a string."""
    events = []
    for block in response.text.split("\n\n"):
        if not block.strip():
            continue
        assert block.startswith("data: "), block
        data = block.removeprefix("data: ")
        events.append(data if data == "[DONE]" else json.loads(data))
    return events


def test_full_response_has_openai_shape_and_usage(app_client: Any) -> None:
    client = app_client()
    wait_ready(client, "fake-chat")
    response = chat(client)
    assert response.status_code == 200
    assert response.headers["x-request-id"]
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["id"].startswith("chatcmpl-")
    assert body["model"] == "fake-chat"
    assert isinstance(body["created"], int)
    [choice] = body["choices"]
    assert choice == {
        "index": 0,
        "message": {"role": "assistant", "content": "You said: hello there"},
        "finish_reason": "stop",
        "logprobs": None,
    }
    prompt_tokens = len(fake_tokens("user: hello there\nassistant:"))
    assert body["usage"] == {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": 4,
        "total_tokens": prompt_tokens + 4,
        "completion_tokens_details": {"reasoning_tokens": 0},
        "prompt_tokens_details": {"cached_tokens": 0},
    }


def test_alias_routes_to_the_model_and_reports_its_id(app_client: Any) -> None:
    client = app_client()
    wait_ready(client, "fake-chat")
    response = chat(client, model="fake")
    assert response.status_code == 200
    assert response.json()["model"] == "fake-chat"


def test_max_tokens_truncates_with_length(app_client: Any) -> None:
    client = app_client([{**FAKE, "options": {"reply": "one two three four five six"}}])
    wait_ready(client, "fake-chat")
    body = chat(client, max_tokens=3).json()
    assert body["choices"][0]["message"]["content"] == "one two three"
    assert body["choices"][0]["finish_reason"] == "length"
    assert body["usage"]["completion_tokens"] == 3
    body = chat(client, max_completion_tokens=2).json()
    assert body["choices"][0]["message"]["content"] == "one two"


def test_stop_sequence_cuts_text_and_generation(app_client: Any) -> None:
    reply = "alpha beta gamma delta epsilon " + "filler " * 100
    client = app_client([{**FAKE, "options": {"reply": reply, "token_delay": 0.01}}])
    wait_ready(client, "fake-chat")
    body = chat(client, stop=["gam", "zzz"]).json()
    assert body["choices"][0]["message"]["content"] == "alpha beta "
    assert body["choices"][0]["finish_reason"] == "stop"
    assert body["usage"]["completion_tokens"] < 100  # generation stopped at the stop sequence
    streamed = sse_events(chat(client, stop="delta", stream=True))
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in streamed[:-1] if e["choices"])
    assert text == "alpha beta gamma "


def test_stream_order_role_deltas_finish_usage_done(app_client: Any) -> None:
    client = app_client([{**FAKE, "options": {"reply": "a b c d"}}])
    wait_ready(client, "fake-chat")
    response = chat(client, stream=True, stream_options={"include_usage": True})
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert len({c["id"] for c in chunks}) == 1 and len({c["created"] for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
    deltas = [c["choices"][0]["delta"]["content"] for c in chunks[1:-2]]
    assert "".join(deltas) == "a b c d"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    assert all(c["choices"][0]["finish_reason"] is None for c in chunks[:-2])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4
    assert all(c["usage"] is None for c in chunks[:-1])


def test_stream_without_include_usage_sends_no_usage_chunk(app_client: Any) -> None:
    client = app_client()
    wait_ready(client, "fake-chat")
    events = sse_events(chat(client, stream=True))
    assert events[-1] == "[DONE]"
    assert all(e["choices"] for e in events[:-1])
    assert all(e["usage"] is None for e in events[:-1])


def test_content_parts_and_developer_role_and_unknown_fields(app_client: Any) -> None:
    client = app_client()
    wait_ready(client, "fake-chat")
    messages = [
        {"role": "developer", "content": "be brief"},
        {"role": "user", "content": [{"type": "text", "text": "hi "}, {"type": "text", "text": "you"}]},
    ]
    response = chat(client, messages=messages, some_future_field={"x": 1}, user="u1", seed=3)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "You said: hi you"


def test_models_list_has_openai_shape_and_states(app_client: Any) -> None:
    client = app_client([FAKE, {**FAKE, "id": "slow", "aliases": [], "options": {"load_delay": 30}}])
    wait_ready(client, "fake-chat")
    body = client.get("/v1/models").json()
    assert body["object"] == "list"
    cards = {m["id"]: m for m in body["data"]}
    assert cards["fake-chat"]["object"] == "model" and cards["fake-chat"]["owned_by"] == "ai-stack"
    assert cards["fake-chat"]["state"] == "ready" and cards["fake-chat"]["aliases"] == ["fake"]
    assert cards["slow"]["state"] in ("loading",)
    assert client.get("/v1/models/fake").json()["id"] == "fake-chat"
