"""Ollama's API at /api/* (ai_stack/surfaces/ollama.py): the `ollama` client, shapes, errors, keep_alive."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime
from typing import Any

import httpx
import jsonschema
import ollama
import pytest
from starlette.testclient import TestClient

from ai_stack.engines.fake import fake_tokens
from ai_stack.errors import InvalidRequest
from ai_stack.surfaces.ollama import keep_alive_seconds
from tests.conftest import FAKE, wait_for, wait_ready

HERMES_TEMPLATE = "{% for m in messages %}{{ m.content }}{% endfor %} <tool_call> (hermes-style tools)"
THINK_TEMPLATE = "{{ '<think>' }} {{ '<tool_call>' }}"
WEATHER_CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
STATS = ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration", "eval_count")
USER = [{"role": "user", "content": "hello there"}]


def lines(response: Any) -> list[dict[str, Any]]:
    """The NDJSON objects of a streamed answer."""
    return [json.loads(line) for line in response.text.splitlines() if line.strip()]


def state_of(client: TestClient | httpx.Client, model: str) -> str:
    """A model's state in /v1/models."""
    return str(next(m["state"] for m in client.get("/v1/models").json()["data"] if m["id"] == model))


def assert_ollama_error(response: Any, status: int, *words: str) -> str:
    """Ollama's error shape: exactly {"error": "message"}, with the status and words expected."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"], body
    for word in words:
        assert word in body["error"], body["error"]
    return str(body["error"])


def check_stats(final: Any) -> None:
    """Ollama's final statistics: non-negative integer nanoseconds and counts."""
    for key in (*STATS, "eval_duration"):
        assert isinstance(final[key], int) and final[key] >= 0, (key, final[key])
    assert final["total_duration"] >= final["eval_duration"]


# ------------------------------------------------------------------------------------------ real clients


def test_ollama_client_lists_shows_and_reports_loaded_models(live_server: Any) -> None:
    live = live_server([FAKE, {"id": "voice", "kind": "speech", "engine": "fake-speech", "source": "fake:"}])
    client = ollama.Client(host=live.url)
    assert wait_for(lambda: bool(client.ps().models))
    assert httpx.get(f"{live.url}/api/version").json() == {"version": "0.12.0"}
    [model] = client.list().models  # chat models only
    assert model.model == "fake-chat:latest" and len(model.digest or "") == 64
    assert model.modified_at is not None and model.modified_at.tzinfo is not None
    shown = client.show("fake:latest")
    assert shown.capabilities == ["completion"]
    assert shown.modelinfo is not None and shown.modelinfo["ai-stack.context_length"] == 4096
    assert "FROM fake-chat" in (shown.modelfile or "")
    [loaded] = client.ps().models
    assert loaded.model == "fake-chat:latest" and loaded.context_length == 4096
    assert loaded.expires_at is not None and loaded.expires_at.year == 9999  # no keep_alive: stays loaded


def test_ollama_client_chat_whole_and_streamed(live_server: Any) -> None:
    live = live_server([{**FAKE, "options": {"reply": "one two three four"}}])
    client = ollama.Client(host=live.url)
    assert wait_for(lambda: bool(client.ps().models))
    answer = client.chat(model="fake", messages=USER)
    assert answer.message.role == "assistant" and answer.message.content == "one two three four"
    assert answer.model == "fake" and answer.done and answer.done_reason == "stop"
    check_stats(answer)
    assert answer.eval_count == 4 and answer.prompt_eval_count == len(
        fake_tokens("user: hello there\nassistant:")
    )
    parts = list(
        client.chat(model="fake-chat:latest", messages=USER, stream=True, options={"num_predict": 3})
    )
    assert "".join(p.message.content or "" for p in parts) == "one two three"
    assert [p.done for p in parts] == [False] * (len(parts) - 1) + [True]
    assert parts[-1].done_reason == "length" and parts[-1].eval_count == 3
    check_stats(parts[-1])


def test_ollama_client_tool_calls_have_object_arguments(live_server: Any) -> None:
    live = live_server([{**FAKE, "options": {"reply": WEATHER_CALL, "chat_template": HERMES_TEMPLATE}}])
    client = ollama.Client(host=live.url)
    assert wait_for(lambda: bool(client.ps().models))
    assert "tools" in (client.show("fake").capabilities or [])
    messages = [{"role": "user", "content": "Weather in Paris?"}]
    answer = client.chat(model="fake", messages=messages, tools=[WEATHER_TOOL])
    [call] = answer.message.tool_calls or []
    assert call.function.name == "get_weather" and call.function.arguments == {"city": "Paris"}
    assert answer.done_reason == "stop"
    streamed = [
        c
        for p in client.chat(model="fake", messages=messages, tools=[WEATHER_TOOL], stream=True)
        for c in p.message.tool_calls or []
    ]
    assert [(c.function.name, dict(c.function.arguments)) for c in streamed] == [
        ("get_weather", {"city": "Paris"})
    ]
    # The call and its result go back as the next turn (tool result linked to the call).
    history = [*messages, answer.message, {"role": "tool", "content": "18 C", "tool_name": "get_weather"}]
    assert client.chat(model="fake", messages=history, tools=[WEATHER_TOOL]).done


def test_thinking_goes_to_message_thinking(live_server: Any) -> None:
    live = live_server(
        [
            {
                **FAKE,
                "options": {
                    "reply": "<think>Paris is in France.</think>Paris",
                    "chat_template": THINK_TEMPLATE,
                },
            }
        ]
    )
    client = ollama.Client(host=live.url)
    assert wait_for(lambda: bool(client.ps().models))
    assert "thinking" in (client.show("fake").capabilities or [])
    answer = client.chat(model="fake", messages=USER, think=True)
    assert answer.message.thinking == "Paris is in France." and answer.message.content == "Paris"
    parts = list(client.generate(model="fake", prompt="Capital?", stream=True))
    assert "".join(p.thinking or "" for p in parts) == "Paris is in France."
    assert "".join(p.response or "" for p in parts) == "Paris"


def test_thinking_on_a_model_without_it_is_a_400(live_server: Any) -> None:
    client = ollama.Client(host=live_server().url)
    assert wait_for(lambda: bool(client.ps().models))
    with pytest.raises(ollama.ResponseError) as error:
        client.chat(model="fake", messages=USER, think=True)
    assert error.value.status_code == 400 and "does not support thinking" in error.value.error


def test_ollama_client_generate_templated_raw_and_system(live_server: Any) -> None:
    client = ollama.Client(host=live_server().url)
    assert wait_for(lambda: bool(client.ps().models))
    answer = client.generate(model="fake", prompt="write a poem", system="be brief")
    assert answer.response == "You said: write a poem" and answer.done and answer.context is None
    check_stats(answer)
    assert answer.prompt_eval_count == len(fake_tokens("system: be brief\nuser: write a poem\nassistant:"))
    raw = client.generate(model="fake", prompt="def f():", raw=True)
    assert raw.response == "You said: def f():" and raw.prompt_eval_count == 2
    with pytest.raises(ollama.ResponseError) as error:  # the fake model has no FIM tokens
        client.generate(model="fake", prompt="def f(", suffix="):\n    pass")
    assert error.value.status_code == 400 and "fill-in-the-middle" in error.value.error


def test_api_key_guards_the_ollama_routes(live_server: Any) -> None:
    live = live_server(api_key="sekret")
    assert_ollama_error(httpx.get(f"{live.url}/api/tags"), 401, "API key")
    client = ollama.Client(host=live.url, headers={"Authorization": "Bearer sekret"})
    assert [m.model for m in client.list().models] == ["fake-chat:latest"]


# ------------------------------------------------------------------------------------------ wire details


def test_streams_by_default_as_ndjson_with_a_final_line(client: TestClient) -> None:
    response = client.post("/api/chat", json={"model": "fake", "messages": USER})
    assert response.headers["content-type"].startswith("application/x-ndjson")
    body = lines(response)
    assert "".join(b["message"]["content"] for b in body) == "You said: hello there"
    assert all(b["model"] == "fake" and b["created_at"].endswith("Z") for b in body)
    assert body[-1]["done"] is True and body[-1]["done_reason"] == "stop"
    assert set(STATS) <= set(body[-1]) and not any(set(STATS) & set(b) for b in body[:-1])
    response = client.post("/api/generate", json={"model": "fake", "prompt": "hi"})
    assert "".join(b["response"] for b in lines(response)) == "You said: hi"


def test_model_names_resolve_with_and_without_latest(client: TestClient) -> None:
    for name in ("fake-chat", "fake-chat:latest", "fake", "fake:latest"):
        response = client.post("/api/chat", json={"model": name, "messages": USER, "stream": False})
        assert response.status_code == 200 and response.json()["model"] == name
    assert_ollama_error(
        client.post("/api/chat", json={"model": "fake:7b", "messages": USER}), 404, "fake:7b", "not found"
    )
    assert_ollama_error(client.post("/api/show", json={"model": "llama3"}), 404, "/api/tags")
    assert client.post("/api/show", json={"name": "fake"}).status_code == 200  # older clients send name


def test_options_reach_the_pipeline(app_client: Any) -> None:
    client = app_client([{**FAKE, "options": {"reply": "alpha beta gamma delta epsilon"}}])
    wait_ready(client, "fake-chat")

    def whole(**body: Any) -> dict[str, Any]:
        response = client.post("/api/chat", json={"model": "fake", "messages": USER, "stream": False, **body})
        assert response.status_code == 200, response.text
        return dict(response.json())

    assert whole(options={"stop": ["gamma"]})["message"]["content"] == "alpha beta "
    capped = whole(options={"num_predict": 2, "temperature": 0, "top_k": 40, "top_p": 0.9, "seed": -1})
    assert capped["message"]["content"] == "alpha beta" and capped["done_reason"] == "length"
    prompt = len(fake_tokens("user: hello there\nassistant:"))
    by_ctx = whole(options={"num_ctx": prompt + 3, "num_predict": -1})
    assert by_ctx["eval_count"] == 3 and by_ctx["done_reason"] == "length"
    assert_ollama_error(
        client.post("/api/chat", json={"model": "fake", "messages": USER, "options": {"num_ctx": prompt}}),
        400,
        "options.num_ctx",
    )
    logged = whole(logprobs=True, top_logprobs=2)
    assert [e["token"] for e in logged["logprobs"]] == ["alpha", " beta", " gamma", " delta", " epsilon"]
    assert all(e["logprob"] == 0.0 and e["top_logprobs"] for e in logged["logprobs"])
    assert "logprobs" not in whole()


def test_format_json_and_schema_are_accepted_and_bad_formats_refused(client: TestClient) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    for fmt in ("json", schema, ""):
        response = client.post("/api/chat", json={"model": "fake", "messages": USER, "format": fmt})
        assert response.status_code == 200, response.text
    assert_ollama_error(
        client.post("/api/chat", json={"model": "fake", "messages": USER, "format": "xml"}), 400, "format"
    )
    bad_schema = {"type": "object", "properties": {"a": {"type": "no-such-type"}}}
    response = client.post("/api/generate", json={"model": "fake", "prompt": "x", "format": bad_schema})
    assert_ollama_error(response, 400)


def test_tool_history_is_linked_and_tools_need_a_tool_template(app_client: Any) -> None:
    client = app_client(
        [FAKE, {**FAKE, "id": "hermes", "aliases": [], "options": {"chat_template": HERMES_TEMPLATE}}]
    )
    wait_ready(client, "fake-chat")
    wait_ready(client, "hermes")
    body = {"model": "fake", "messages": USER, "tools": [WEATHER_TOOL]}
    assert_ollama_error(client.post("/api/chat", json=body), 400, "does not support tools")
    history = [
        *USER,
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Rome"}}}],
        },
        {"role": "tool", "content": "21 C", "tool_name": "get_weather"},
    ]
    response = client.post(
        "/api/chat", json={"model": "hermes", "messages": history, "tools": [WEATHER_TOOL]}
    )
    assert response.status_code == 200 and lines(response)[-1]["done"] is True
    history[1]["tool_calls"][0]["function"]["arguments"] = ["not", "an", "object"]
    response = client.post(
        "/api/chat", json={"model": "hermes", "messages": history, "tools": [WEATHER_TOOL]}
    )
    assert_ollama_error(response, 400, "arguments")


# ------------------------------------------------------------------------------------------ keep_alive


def test_keep_alive_zero_unloads_after_the_answer(client: TestClient) -> None:
    response = client.post(
        "/api/chat", json={"model": "fake", "messages": USER, "stream": False, "keep_alive": 0}
    )
    assert response.json()["message"]["content"] == "You said: hello there"
    assert wait_for(lambda: state_of(client, "fake-chat") == "unloaded", 5)
    assert client.get("/api/ps").json() == {"models": []}


def test_empty_request_loads_and_keep_alive_zero_unloads(app_client: Any) -> None:
    client = app_client([{**FAKE, "autoload": False, "options": {"load_delay": 0.3}}])
    assert state_of(client, "fake-chat") == "unloaded"
    loaded = client.post("/api/generate", json={"model": "fake"}).json()
    assert loaded["done"] is True and loaded["done_reason"] == "load" and loaded["response"] == ""
    assert state_of(client, "fake-chat") == "ready"
    unloaded = client.post(
        "/api/chat", json={"model": "fake:latest", "messages": [], "keep_alive": "0s"}
    ).json()
    assert unloaded["done_reason"] == "unload" and unloaded["message"]["content"] == ""
    assert state_of(client, "fake-chat") == "unloaded"
    # A request for an unloaded model waits for its load (as Ollama does) and reports the wait.
    answer = client.post("/api/chat", json={"model": "fake", "messages": USER, "stream": False}).json()
    assert answer["message"]["content"] == "You said: hello there"
    assert answer["load_duration"] >= 200_000_000


def test_keep_alive_zero_counts_from_the_end_of_a_streamed_answer(live_server: Any) -> None:
    reply = " ".join(f"w{i}" for i in range(20))
    live = live_server([{**FAKE, "options": {"reply": reply, "token_delay": 0.03}}])
    http = httpx.Client(base_url=live.url, timeout=30)
    wait_ready(http, "fake-chat")
    body = {"model": "fake", "messages": USER, "keep_alive": 0}
    with http.stream("POST", "/api/chat", json=body) as response:
        received = []
        for line in response.iter_lines():
            received.append(json.loads(line))
            if len(received) == 3:
                assert state_of(http, "fake-chat") == "ready"  # mid-answer: still loaded
    assert received[-1]["done"] is True and "w19" in "".join(r["message"]["content"] for r in received)
    assert wait_for(lambda: state_of(http, "fake-chat") == "unloaded", 5)


def test_keep_alive_duration_unloads_once_idle_and_negative_keeps(client: TestClient) -> None:
    before = datetime.now(UTC)
    client.post("/api/chat", json={"model": "fake", "messages": USER, "stream": False, "keep_alive": "1.5s"})
    [loaded] = client.get("/api/ps").json()["models"]
    expires = datetime.fromisoformat(loaded["expires_at"])
    assert 1.0 < (expires - before).total_seconds() < 3.0
    client.post("/api/chat", json={"model": "fake", "messages": USER, "stream": False, "keep_alive": -1})
    time.sleep(2.0)
    assert state_of(client, "fake-chat") == "ready"  # -1 replaced the 1.5 s
    client.post("/api/generate", json={"model": "fake", "prompt": "hi", "stream": False, "keep_alive": 0.5})
    assert wait_for(lambda: state_of(client, "fake-chat") == "unloaded", 5)


def test_keep_alive_never_unloads_a_model_mid_answer(app_client: Any) -> None:
    reply = " ".join(f"w{i}" for i in range(30))
    client = app_client([{**FAKE, "options": {"reply": reply, "token_delay": 0.02}}])
    wait_ready(client, "fake-chat")
    result: dict[str, Any] = {}

    def stream() -> None:  # a /v1 request: keep-alive applies to every route's generations
        body = {"model": "fake", "messages": USER, "stream": True}
        result["text"] = client.post("/v1/chat/completions", json=body).text

    worker = threading.Thread(target=stream)
    worker.start()
    time.sleep(0.15)
    unload = client.post("/api/generate", json={"model": "fake", "keep_alive": 0}).json()
    assert unload["done_reason"] == "unload"
    assert state_of(client, "fake-chat") == "ready"  # still answering
    worker.join(10)
    assert "w29" in result["text"] and '"error"' not in result["text"]
    assert wait_for(lambda: state_of(client, "fake-chat") == "unloaded", 5)


def test_keep_alive_parsing() -> None:
    assert keep_alive_seconds(None) is None
    assert keep_alive_seconds(300) == 300.0
    assert keep_alive_seconds("5m") == 300.0
    assert keep_alive_seconds("1h30m") == 5400.0
    assert keep_alive_seconds("1.5s") == 1.5
    assert keep_alive_seconds("300ms") == pytest.approx(0.3)
    assert keep_alive_seconds("120") == 120.0
    assert keep_alive_seconds("0") == 0.0
    assert keep_alive_seconds("-1") == -1.0 and keep_alive_seconds("-5m") == -300.0
    assert keep_alive_seconds(1e300) == -1.0  # longer than anyone waits: forever
    for bad in ("", "forever", "5 m", "m", "1d", "inf", "nan"):
        with pytest.raises(InvalidRequest):
            keep_alive_seconds(bad)


# ------------------------------------------------------------------------------------------ errors


BAD_REQUESTS: list[tuple[str, str, Any, int, str]] = [
    ("POST", "/api/chat", "{not json", 400, ""),
    ("POST", "/api/chat", [1, 2], 400, "JSON object"),
    ("POST", "/api/chat", {"messages": USER}, 400, "model"),
    ("POST", "/api/chat", {"model": "", "messages": USER}, 400, "model"),
    ("POST", "/api/chat", {"model": "fake", "messages": "hi"}, 400, "messages"),
    ("POST", "/api/chat", {"model": "fake", "messages": [{"role": "robot", "content": "x"}]}, 400, "role"),
    (
        "POST",
        "/api/chat",
        {"model": "fake", "messages": [{"role": "user", "content": "x", "images": ["aGk="]}]},
        400,
        "images",
    ),
    ("POST", "/api/chat", {"model": "fake", "messages": USER, "options": "hot"}, 400, "options"),
    (
        "POST",
        "/api/chat",
        {"model": "fake", "messages": USER, "options": {"temperature": 9}},
        400,
        "options.temperature",
    ),
    (
        "POST",
        "/api/chat",
        {"model": "fake", "messages": USER, "options": {"top_k": "many"}},
        400,
        "options.top_k",
    ),
    (
        "POST",
        "/api/chat",
        {"model": "fake", "messages": USER, "options": {"stop": [""]}},
        400,
        "options.stop",
    ),
    (
        "POST",
        "/api/chat",
        {"model": "fake", "messages": USER, "options": {"repeat_penalty": 0}},
        400,
        "repeat_penalty",
    ),
    (
        "POST",
        "/api/chat",
        {"model": "fake", "messages": USER, "options": {"seed": 2**70}},
        400,
        "options.seed",
    ),
    ("POST", "/api/chat", {"model": "fake", "messages": USER, "options": {"num_ctx": 0}}, 400, "num_ctx"),
    ("POST", "/api/chat", {"model": "fake", "messages": USER, "format": 7}, 400, "format"),
    ("POST", "/api/chat", {"model": "fake", "messages": USER, "keep_alive": "soon"}, 400, "keep_alive"),
    ("POST", "/api/chat", {"model": "fake", "messages": USER, "keep_alive": [1]}, 400, "keep_alive"),
    ("POST", "/api/chat", {"model": "fake", "messages": USER, "think": "very"}, 400, "think"),
    ("POST", "/api/chat", {"model": "fake", "messages": USER, "top_logprobs": 3}, 400, "logprobs"),
    (
        "POST",
        "/api/chat",
        {"model": "fake", "messages": USER, "logprobs": True, "top_logprobs": 99},
        400,
        "top_logprobs",
    ),
    (
        "POST",
        "/api/chat",
        {"model": "fake", "messages": USER, "tools": [{"function": {"name": "bad name!"}}]},
        400,
        "tools",
    ),
    ("POST", "/api/chat", {"model": "fake", "messages": USER, "stream": "sometimes"}, 400, "stream"),
    ("POST", "/api/chat", {"model": "voice", "messages": USER}, 400, "speech"),
    ("POST", "/api/chat", {"model": "nope", "messages": USER}, 404, "not found"),
    ("POST", "/api/generate", {"model": "fake", "prompt": "x", "images": ["aGk="]}, 400, "images"),
    ("POST", "/api/generate", {"model": "fake", "prompt": "x", "template": "{{ .Prompt }}"}, 400, "template"),
    ("POST", "/api/generate", {"model": "fake", "prompt": "x", "context": [1, 2, 3]}, 400, "context"),
    ("POST", "/api/generate", {"model": "fake", "prompt": "x", "raw": True, "system": "s"}, 400, "raw"),
    ("POST", "/api/generate", {"model": "fake", "prompt": 5}, 400, "prompt"),
    ("POST", "/api/generate", {"model": "fake", "prompt": "x" * 200_000}, 400, "context length"),
    ("POST", "/api/generate", {"model": "voice", "prompt": "x"}, 400, "speech"),
    ("POST", "/api/show", {}, 400, "model"),
    ("POST", "/api/show", {"model": "voice"}, 400, "speech"),
    ("POST", "/api/pull", {"model": "llama3.2"}, 404, "config"),
    ("POST", "/api/push", {"model": "fake"}, 400, "config"),
    ("POST", "/api/create", {"model": "mine", "from": "fake"}, 400, "config"),
    ("POST", "/api/copy", {"source": "fake", "destination": "x"}, 400, "config"),
    ("DELETE", "/api/delete", {"model": "fake"}, 400, "config"),
    ("POST", "/api/embed", {"model": "fake", "input": "x"}, 404, "No route"),
    ("GET", "/api/chat", None, 405, "not allowed"),
]


def test_bad_input_gets_ollamas_error_shape_never_a_500(app_client: Any) -> None:
    client = app_client([FAKE, {"id": "voice", "kind": "speech", "engine": "fake-speech", "source": "fake:"}])
    wait_ready(client, "fake-chat")
    for method, path, body, status, words in BAD_REQUESTS:
        content = body if isinstance(body, str) else json.dumps(body) if body is not None else None
        response = client.request(method, path, content=content, headers={"content-type": "application/json"})
        assert_ollama_error(response, status, words)
        assert response.headers.get("x-request-id")


def test_pull_of_a_configured_model_succeeds_and_starts_its_load(app_client: Any) -> None:
    client = app_client([{**FAKE, "autoload": False}])
    assert client.post("/api/pull", json={"model": "fake:latest", "stream": False}).json() == {
        "status": "success"
    }
    wait_ready(client, "fake-chat")


def test_a_model_that_failed_to_load_is_a_503_in_ollama_shape(app_client: Any) -> None:
    client = app_client([{**FAKE, "options": {"fail_load": "weights are corrupt"}}])
    assert wait_for(lambda: state_of(client, "fake-chat") == "failed")
    response = client.post("/api/chat", json={"model": "fake", "messages": USER})
    assert_ollama_error(response, 503, "weights are corrupt")


# ------------------------------------------------------------------------------------------ the real model


@pytest.mark.slow
def test_real_model_through_the_ollama_client(default_server: str) -> None:
    client = ollama.Client(host=default_server)
    assert "default:latest" not in [m.model for m in client.list().models]  # ids are listed, aliases resolve
    shown = client.show("default:latest")
    assert {"completion", "tools", "insert"} <= set(shown.capabilities or [])
    options = {"temperature": 0, "num_predict": 8}
    messages = [{"role": "user", "content": "What is the capital of France? One word."}]
    answer = client.chat(model="default", messages=messages, options=options)
    assert "Paris" in (answer.message.content or "")
    assert answer.eval_count and 0 < answer.eval_count <= 8 and (answer.eval_duration or 0) > 0
    streamed = list(client.chat(model="default:latest", messages=messages, options=options, stream=True))
    assert "".join(p.message.content or "" for p in streamed) == answer.message.content
    assert streamed[-1].done and streamed[-1].eval_count == answer.eval_count

    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "population": {"type": "integer"}},
        "required": ["city", "population"],
        "additionalProperties": False,
    }
    formatted = client.chat(
        model="default",
        messages=[{"role": "user", "content": "Give the largest city of Japan and its population as JSON."}],
        format=schema,
        options={"temperature": 0, "num_predict": 40},
    )
    jsonschema.validate(json.loads(formatted.message.content or ""), schema)

    weather = client.chat(
        model="default",
        messages=[{"role": "user", "content": "What is the weather in Paris? Use the tool."}],
        tools=[WEATHER_TOOL],
        options={"temperature": 0, "num_predict": 40},
    )
    [call] = weather.message.tool_calls or []
    assert call.function.name == "get_weather" and isinstance(call.function.arguments, dict)
    assert "Paris" in str(call.function.arguments.get("city"))

    filled = client.generate(
        model="default",
        prompt="def add(a, b):\n    return ",
        suffix="\n\nprint(add(1, 2))\n",
        options={"temperature": 0, "num_predict": 8},
    )
    assert "a + b" in (filled.response or "") and filled.done
