"""The remote engine: a gateway `ai-stack serve` in front of real upstream `ai-stack serve` processes.

Everything runs as real processes on 127.0.0.1: two upstreams with the fake engines, the gateway in front,
the official openai SDK as the client. Calls through the gateway must equal the same calls made directly.
"""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import ollama
import openai
import pytest

from ai_stack.config import ConfigError, load_config
from ai_stack.fleet.pool import UpstreamPool, conversation_keys
from ai_stack.fleet.proxy import ModelRewriter
from tests.conftest import DEFAULT_CHAT_MODEL, free_port, wait_for

HERMES_TEMPLATE = "{% for m in messages %}{{ m.content }}{% endfor %} <tool_call> (hermes-style tools)"
CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
UPSTREAM_MODELS: list[dict[str, Any]] = [
    {"id": "fake-chat", "engine": "fake", "source": "fake:", "options": {"token_delay": 0.01}},
    {
        "id": "fake-tools",
        "engine": "fake",
        "source": "fake:",
        "options": {"reply": CALL, "chat_template": HERMES_TEMPLATE},
    },
    # Long and slow answers: for disconnects and streams in flight.
    {
        "id": "fake-slow",
        "engine": "fake",
        "source": "fake:",
        "options": {"reply": "tick " * 400, "token_delay": 0.05},
    },
    # One request at a time, none waiting: a second one gets the upstream's 429.
    {
        "id": "fake-single",
        "engine": "fake",
        "source": "fake:",
        "max_running": 1,
        "max_queue": 0,
        "options": {"reply": "one at a time " * 20, "token_delay": 0.05},
    },
    {"id": "fake-tts", "kind": "speech", "engine": "fake-speech", "source": "fake:"},
]


def toml_value(value: Any) -> str:
    """A value in TOML (inline tables for dicts; JSON strings, numbers and arrays are TOML already)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{key} = {toml_value(item)}" for key, item in value.items()) + " }"
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    return json.dumps(value)


def toml_config(models: list[dict[str, Any]], server: dict[str, Any] | None = None) -> str:
    """A config file's text."""
    lines = ["[server]", *(f"{k} = {toml_value(v)}" for k, v in (server or {}).items()), ""]
    for model in models:
        lines += ["[[models]]", *(f"{k} = {toml_value(v)}" for k, v in model.items()), ""]
    return "\n".join(lines)


class Node:
    """An `ai-stack serve` subprocess on a fixed port that can be killed and started again."""

    def __init__(self, folder: Path, name: str, config: str, env: dict[str, str] | None = None) -> None:
        self.folder, self.name = folder, name
        self.path = folder / f"{name}.toml"
        self.path.write_text(config)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> Node:
        """Start the server; wait until every model is ready."""
        log = (self.folder / f"{self.name}.log").open("a")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ai_stack", "serve", "--config", str(self.path), "--port", str(self.port)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
        )
        if wait:
            assert wait_for(self.ready, timeout=120, interval=0.1), self.log()
        return self

    def ready(self) -> bool:
        """Whether /health/ready answers 200 with status ok."""
        assert self.proc is not None and self.proc.poll() is None, self.log()
        try:
            response = httpx.get(f"{self.url}/health/ready", timeout=2)
        except httpx.TransportError:
            return False
        return response.status_code == 200 and response.json()["status"] == "ok"

    def log(self) -> str:
        """The server's log so far."""
        path = self.folder / f"{self.name}.log"
        return path.read_text()[-3000:] if path.exists() else ""

    def kill(self) -> None:
        """Kill the process at once (SIGKILL: no clean shutdown)."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        """Stop the process."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def metric(self, name: str, **labels: str) -> float:
        """The sum of a Prometheus sample over series whose labels include these."""
        total = 0.0
        for line in httpx.get(f"{self.url}/metrics", timeout=5).text.splitlines():
            if line.startswith(name + "{") and all(f'{k}="{v}"' in line for k, v in labels.items()):
                total += float(line.rsplit(" ", 1)[1])
        return total


def remote(
    model_id: str, upstream_model: str, nodes: list[Node], kind: str = "chat", **options: Any
) -> dict[str, Any]:
    """A remote model entry over the nodes."""
    return {
        "id": model_id,
        "kind": kind,
        "engine": "remote",
        "options": {
            "upstreams": [f"{n.url}/v1" for n in nodes],
            "model": upstream_model,
            "health_interval": 0.5,
            **options,
        },
    }


class Fleet:
    """Two upstream nodes and a gateway in front of them."""

    def __init__(self, folder: Path) -> None:
        self.a = Node(folder, "node-a", toml_config(UPSTREAM_MODELS))
        self.b = Node(folder, "node-b", toml_config(UPSTREAM_MODELS))
        both = [self.a, self.b]
        models = [
            remote("chat", "fake-chat", both),
            remote("tools", "fake-tools", both),
            remote("slow", "fake-slow", both),
            remote("single", "fake-single", [self.a]),
            remote("tts", "fake-tts", both, kind="speech"),
            # One request runs at the gateway and one waits there: the bounds of a remote model's queue.
            {**remote("bounded", "fake-slow", [self.a], max_concurrency=1), "max_queue": 1},
            # A local voice answering OpenAI's generic name: tts-1 with a remote model's voice goes there.
            {
                "id": "local-tts",
                "aliases": ["tts-1"],
                "kind": "speech",
                "engine": "fake-speech",
                "source": "fake:",
                "options": {"voices": ["local-a"]},
            },
        ]
        self.gateway = Node(folder, "gateway", toml_config(models))

    def upstreams(self, model: str) -> dict[str, dict[str, Any]]:
        """The gateway's view of a model's upstreams, by URL."""
        card = httpx.get(f"{self.gateway.url}/v1/models/{model}", timeout=5).json()
        return {u["url"]: u for u in card["upstreams"]}

    def requests(self, model: str) -> dict[str, int]:
        """Requests the gateway has sent to each upstream of a model, by node name."""
        views = self.upstreams(model)
        return {n.name: views[f"{n.url}/v1"]["requests"] for n in (self.a, self.b)}

    def healthy(self, node: Node, model: str = "chat") -> bool:
        """Whether the gateway finds the node healthy for a model."""
        return bool(self.upstreams(model)[f"{node.url}/v1"]["healthy"])


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    """Two upstream nodes (fake engines) and a gateway, started once for this module."""
    fleet = Fleet(tmp_path_factory.mktemp("fleet"))
    nodes = [fleet.a, fleet.b, fleet.gateway]
    try:
        fleet.a.start(wait=False)
        fleet.b.start()
        assert wait_for(fleet.a.ready, timeout=120, interval=0.1), fleet.a.log()
        fleet.gateway.start()
        yield fleet
    finally:
        for node in nodes:
            node.stop()


def client(url: str) -> openai.OpenAI:
    """The official SDK on a server."""
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)


MESSAGES: list[Any] = [{"role": "user", "content": "What is the capital of France?"}]


def test_chat_full_and_streamed_equal_direct(fleet: Fleet) -> None:
    gateway, direct = client(fleet.gateway.url), client(fleet.a.url)
    through = gateway.chat.completions.create(
        model="chat", messages=MESSAGES, logprobs=True, top_logprobs=2, n=2
    )
    alone = direct.chat.completions.create(
        model="fake-chat", messages=MESSAGES, logprobs=True, top_logprobs=2, n=2
    )
    assert through.model == "chat"  # the gateway's id, as a local model would answer
    assert [c.model_dump() for c in through.choices] == [c.model_dump() for c in alone.choices]
    assert through.usage == alone.usage
    assert through.choices[0].message.content == "You said: What is the capital of France?"

    def chunks(sdk: openai.OpenAI, model: str) -> list[dict[str, Any]]:
        stream = sdk.chat.completions.create(
            model=model, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
        )
        return [c.model_dump(exclude={"id", "created", "model"}) for c in stream]

    streamed = chunks(gateway, "chat")
    assert streamed == chunks(direct, "fake-chat")
    assert streamed[-1]["usage"]["completion_tokens"] * 2 == alone.usage.completion_tokens  # n=2 there
    model_ids = {
        c.model for c in gateway.chat.completions.create(model="chat", messages=MESSAGES, stream=True)
    }
    assert model_ids == {"chat"}


def test_tools_and_structured_output_equal_direct(fleet: Fleet) -> None:
    gateway, direct = client(fleet.gateway.url), client(fleet.b.url)
    ask: dict[str, Any] = {"messages": [{"role": "user", "content": "Weather in Paris?"}], "tools": [WEATHER]}
    through = gateway.chat.completions.create(model="tools", **ask)
    alone = direct.chat.completions.create(model="fake-tools", **ask)
    calls = through.choices[0].message.tool_calls
    assert calls is not None and calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments) == {"city": "Paris"}
    assert through.choices[0].finish_reason == alone.choices[0].finish_reason == "tool_calls"
    assert [c.function for c in calls] == [c.function for c in alone.choices[0].message.tool_calls or []]
    stream = gateway.chat.completions.create(model="tools", stream=True, **ask)
    deltas = [c.choices[0].delta.tool_calls for c in stream if c.choices and c.choices[0].delta.tool_calls]
    assert deltas and deltas[0][0].function.name == "get_weather"  # type: ignore[union-attr]


def test_legacy_completions_pass_through(fleet: Fleet) -> None:
    through = client(fleet.gateway.url).completions.create(model="chat", prompt="one two three", max_tokens=8)
    alone = client(fleet.a.url).completions.create(model="fake-chat", prompt="one two three", max_tokens=8)
    assert through.model == "chat"
    assert through.choices[0].text == alone.choices[0].text


def test_speech_bytes_and_events_equal_direct(fleet: Fleet) -> None:
    ask: dict[str, Any] = {
        "voice": "fake-b",
        "input": "Hello there. Second sentence.",
        "response_format": "wav",
    }
    through = client(fleet.gateway.url).audio.speech.create(model="tts", **ask)
    alone = client(fleet.a.url).audio.speech.create(model="fake-tts", **ask)
    assert through.content[:4] == b"RIFF" and through.content == alone.content
    body = {"model": "tts", **ask, "response_format": "pcm", "stream_format": "sse"}
    with httpx.stream("POST", f"{fleet.gateway.url}/v1/audio/speech", json=body, timeout=30) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    direct = httpx.post(f"{fleet.b.url}/v1/audio/speech", json={**body, "model": "fake-tts"}, timeout=30)
    assert events == [line for line in direct.text.splitlines() if line.startswith("data: ")]
    assert json.loads(events[-1][6:])["type"] == "speech.audio.done"


def test_a_remote_speech_model_lists_its_upstreams_voices(fleet: Fleet) -> None:
    listed = httpx.get(f"{fleet.gateway.url}/v1/audio/voices", params={"model": "tts"}, timeout=10).json()
    assert {(v["id"], v["model"]) for v in listed["voices"]} == {("fake-a", "tts"), ("fake-b", "tts")}
    direct = httpx.get(f"{fleet.a.url}/v1/audio/voices", params={"model": "fake-tts"}, timeout=10).json()
    assert {v["id"] for v in direct["voices"]} == {v["id"] for v in listed["voices"]}
    # A client that can only send tts-1 reaches the remote model's voices too (and the local one's).
    ask: dict[str, Any] = {"input": "Hello there.", "response_format": "wav"}
    generic = client(fleet.gateway.url).audio.speech.create(model="tts-1", voice="fake-b", **ask)
    alone = client(fleet.a.url).audio.speech.create(model="fake-tts", voice="fake-b", **ask)
    assert generic.content == alone.content
    local = client(fleet.gateway.url).audio.speech.create(model="tts-1", voice="local-a", **ask)
    assert local.content[:4] == b"RIFF" and local.content != alone.content


def test_gateway_validation_and_upstream_errors_in_openai_shape(fleet: Fleet) -> None:
    url = f"{fleet.gateway.url}/v1/chat/completions"
    own = httpx.post(url, json={"model": "chat", "messages": MESSAGES, "temperature": 7}, timeout=10)
    assert own.status_code == 400 and own.json()["error"]["param"] == "temperature"  # the gateway's check
    before = fleet.requests("chat")
    too_long = httpx.post(url, json={"model": "chat", "messages": MESSAGES, "max_tokens": 10**6}, timeout=10)
    assert too_long.status_code == 400
    error = too_long.json()["error"]
    assert error["code"] == "context_length_exceeded" and error["type"] == "invalid_request_error"
    assert sum(fleet.requests("chat").values()) == sum(before.values()) + 1  # a 4xx is not retried


def test_upstream_429_and_retry_after_reach_the_client(fleet: Fleet) -> None:
    url = f"{fleet.gateway.url}/v1/chat/completions"
    with httpx.stream(
        "POST", url, json={"model": "single", "messages": MESSAGES, "stream": True}, timeout=30
    ) as busy:
        assert busy.status_code == 200
        lines = busy.iter_lines()  # kept: a dropped iterator would close the connection
        assert next(lines).startswith("data: ")
        refused = httpx.post(url, json={"model": "single", "messages": MESSAGES}, timeout=30)
    assert refused.status_code == 429, refused.text
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"


def _without_ids(value: Any) -> Any:
    """A JSON value without the fields each server makes up anew (ids, times, the model's name)."""
    if isinstance(value, dict):
        drop = {"id", "created_at", "created", "model", "signature", "item_id", "response_id"}
        return {k: _without_ids(v) for k, v in value.items() if k not in drop and not k.endswith("_duration")}
    if isinstance(value, list):
        return [_without_ids(item) for item in value]
    return value


def test_anthropic_messages_equal_direct_full_streamed_and_with_tools(fleet: Fleet) -> None:
    gateway = anthropic.Anthropic(base_url=fleet.gateway.url, api_key="unused", max_retries=0)
    direct = anthropic.Anthropic(base_url=fleet.a.url, api_key="unused", max_retries=0)
    ask: dict[str, Any] = {"max_tokens": 64, "messages": [{"role": "user", "content": "Hello there"}]}
    through = gateway.messages.create(model="chat", **ask)
    alone = direct.messages.create(model="fake-chat", **ask)
    assert through.model == "chat"
    assert through.content[0].text == "You said: Hello there"  # type: ignore[union-attr]
    assert _without_ids(through.model_dump()) == _without_ids(alone.model_dump())
    assert through.usage.input_tokens == alone.usage.input_tokens > 0  # counted by the upstream

    tools = [
        {"name": "get_weather", "description": "Weather", "input_schema": WEATHER["function"]["parameters"]}
    ]
    weather: dict[str, Any] = {
        "max_tokens": 64,
        "messages": [{"role": "user", "content": "Weather in Paris?"}],
        "tools": tools,
    }
    call = gateway.messages.create(model="tools", **weather)
    assert call.stop_reason == "tool_use"
    use = call.content[-1]
    assert use.type == "tool_use" and use.name == "get_weather" and use.input == {"city": "Paris"}
    assert _without_ids(call.model_dump()) == _without_ids(
        direct.messages.create(model="fake-tools", **weather).model_dump()
    )

    def events(sdk: anthropic.Anthropic, model: str, **body: Any) -> list[Any]:
        with sdk.messages.stream(model=model, **body) as stream:
            events = [_without_ids(event.model_dump()) for event in stream]
        # The gateway learns the prompt's size from the upstream at the end (message_delta), not at the start.
        events[0]["message"]["usage"]["input_tokens"] = 0
        return events

    assert events(gateway, "chat", **ask) == events(direct, "fake-chat", **ask)
    streamed = events(gateway, "tools", **weather)
    assert streamed == events(direct, "fake-tools", **weather)
    assert any(e.get("content_block", {}).get("type") == "tool_use" for e in streamed)
    counted = gateway.messages.count_tokens(model="chat", messages=ask["messages"])
    assert (
        counted.input_tokens
        == direct.messages.count_tokens(model="fake-chat", messages=ask["messages"]).input_tokens
    )


def test_openai_responses_equal_direct_full_and_streamed(fleet: Fleet) -> None:
    gateway, direct = client(fleet.gateway.url), client(fleet.b.url)
    through = gateway.responses.create(model="chat", input="Hello responses", store=False)
    alone = direct.responses.create(model="fake-chat", input="Hello responses", store=False)
    assert through.output_text == alone.output_text == "You said: Hello responses"
    assert through.usage == alone.usage and through.usage is not None and through.usage.input_tokens > 0
    assert through.model == "chat"

    def events(sdk: openai.OpenAI, model: str) -> list[Any]:
        stream = sdk.responses.create(model=model, input="Hello responses", store=False, stream=True)
        return [_without_ids(event.model_dump()) for event in stream]

    assert events(gateway, "chat") == events(direct, "fake-chat")
    tools = [{"type": "function", **WEATHER["function"]}]
    call = gateway.responses.create(model="tools", input="Weather in Paris?", tools=tools, store=False)
    [item] = [item for item in call.output if item.type == "function_call"]
    assert item.name == "get_weather" and json.loads(item.arguments) == {"city": "Paris"}  # type: ignore[union-attr]


def test_ollama_chat_and_generate_equal_direct(fleet: Fleet) -> None:
    gateway, direct = ollama.Client(host=fleet.gateway.url), ollama.Client(host=fleet.a.url)
    messages = [{"role": "user", "content": "Hello ollama"}]
    through = gateway.chat(model="chat", messages=messages)
    alone = direct.chat(model="fake-chat", messages=messages)
    assert through.message.content == "You said: Hello ollama"
    assert _without_ids(through.model_dump()) == _without_ids(alone.model_dump())
    assert through.prompt_eval_count == alone.prompt_eval_count and (through.prompt_eval_count or 0) > 0

    def parts(sdk: ollama.Client, model: str) -> list[Any]:
        return [
            _without_ids(part.model_dump()) for part in sdk.chat(model=model, messages=messages, stream=True)
        ]

    streamed = parts(gateway, "chat")
    assert streamed == parts(direct, "fake-chat") and len(streamed) > 2
    tools = [WEATHER]
    call = gateway.chat(model="tools", messages=[{"role": "user", "content": "Weather?"}], tools=tools)
    assert call.message.tool_calls and call.message.tool_calls[0].function.arguments == {"city": "Paris"}
    # A raw prompt goes to the upstream's /v1/completions.
    ask: dict[str, Any] = {"prompt": "raw words", "raw": True, "options": {"num_predict": 2}}
    raw = gateway.generate(model="chat", **ask)
    assert _without_ids(raw.model_dump()) == _without_ids(
        direct.generate(model="fake-chat", **ask).model_dump()
    )
    assert raw.eval_count == 2 and raw.done_reason == "length" and raw.response


def test_llama_cpp_routes_over_a_remote_model(fleet: Fleet) -> None:
    body = {"prompt": "one two three", "n_predict": 5}
    through = httpx.post(f"{fleet.gateway.url}/completion", json={**body, "model": "chat"}, timeout=30)
    alone = httpx.post(f"{fleet.a.url}/completion", json={**body, "model": "fake-chat"}, timeout=30)
    assert through.status_code == 200, through.text
    assert through.json()["content"] == alone.json()["content"]
    assert through.json()["tokens_evaluated"] == alone.json()["tokens_evaluated"] > 0
    # /infill with repository context needs the model's own FIM tokens: a clear 400 here.
    extra = {"input_prefix": "a", "input_suffix": "b", "input_extra": [{"filename": "x.py", "text": "x"}]}
    refused = httpx.post(f"{fleet.gateway.url}/infill", json={**extra, "model": "chat"}, timeout=30)
    assert refused.status_code == 400 and "input_extra" in refused.text
    # Prefix and suffix go to the upstream's /v1/completions (whose fake model has no FIM tokens: its 400).
    fim = httpx.post(
        f"{fleet.gateway.url}/infill",
        json={"input_prefix": "a", "input_suffix": "b", "model": "chat"},
        timeout=30,
    )
    direct = httpx.post(
        f"{fleet.a.url}/v1/completions", json={"prompt": "a", "suffix": "b", "model": "fake-chat"}, timeout=30
    )
    assert fim.status_code == direct.status_code == 400, (fim.text, direct.text)
    assert fim.json()["error"]["message"] == direct.json()["error"]["message"]


def test_a_remote_models_waiting_requests_are_bounded(fleet: Fleet) -> None:
    """max_concurrency x upstreams run, max_queue wait at the gateway; the next is a 429 at once."""
    url = f"{fleet.gateway.url}/v1/chat/completions"
    body = {"model": "bounded", "messages": MESSAGES, "stream": True, "max_tokens": 40}
    before = fleet.upstreams("bounded")[f"{fleet.a.url}/v1"]["requests"]
    waited: list[int] = []

    def wait_in_line() -> None:
        waited.append(httpx.post(url, json={**body, "stream": False}, timeout=60).status_code)

    with httpx.stream("POST", url, json=body, timeout=30) as running:
        lines = running.iter_lines()
        assert next(lines).startswith("data: ")
        waiter = threading.Thread(target=wait_in_line)
        waiter.start()
        assert wait_for(
            lambda: fleet.gateway.metric("ai_stack_requests_waiting", model="bounded") >= 1, timeout=10
        )
        refused = httpx.post(url, json={**body, "stream": False}, timeout=30)
        assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
        assert refused.json()["error"]["code"] == "rate_limit_exceeded"
        messages = httpx.post(
            f"{fleet.gateway.url}/v1/messages",
            json={"model": "bounded", "max_tokens": 5, "messages": MESSAGES},
            timeout=30,
        )
        assert messages.status_code == 429 and messages.json()["type"] == "error"  # Anthropic's shape
        view = fleet.upstreams("bounded")[f"{fleet.a.url}/v1"]
        assert view["in_flight"] == 1 and view["requests"] == before + 1  # only the running one went upstream
    waiter.join(60)
    assert waited == [200]


def test_pipeline_disconnect_cancels_and_upstream_429_reaches_the_client(fleet: Fleet) -> None:
    def cancelled() -> float:
        return sum(
            n.metric("ai_stack_generations_aborted_total", model="fake-slow") for n in (fleet.a, fleet.b)
        )

    before = cancelled()
    body = {"model": "slow", "messages": MESSAGES}
    with httpx.stream("POST", f"{fleet.gateway.url}/api/chat", json=body, timeout=30) as response:
        lines = response.iter_lines()
        assert json.loads(next(lines))["done"] is False
    assert wait_for(lambda: cancelled() > before, timeout=10), "the upstream kept generating"
    assert wait_for(lambda: all(u["in_flight"] == 0 for u in fleet.upstreams("slow").values()), timeout=10)

    url = f"{fleet.gateway.url}/v1/chat/completions"
    with httpx.stream(
        "POST", url, json={"model": "single", "messages": MESSAGES, "stream": True}, timeout=30
    ) as busy:
        lines = busy.iter_lines()
        assert next(lines).startswith("data: ")
        with pytest.raises(openai.RateLimitError) as raised:
            client(fleet.gateway.url).responses.create(model="single", input="hi", store=False)
    assert int(raised.value.response.headers["retry-after"]) >= 1


def test_least_outstanding_spreads_concurrent_load(fleet: Fleet) -> None:
    before = fleet.requests("chat")
    sdk = client(fleet.gateway.url)
    answers: list[str] = []

    def ask(index: int) -> None:
        reply = sdk.chat.completions.create(model="chat", messages=[{"role": "user", "content": f"q{index}"}])
        answers.append(reply.choices[0].message.content or "")

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(answers) == sorted(f"You said: q{i}" for i in range(8))
    after = fleet.requests("chat")
    spread = [after[name] - before[name] for name in after]
    assert sum(spread) == 8 and min(spread) >= 3, spread  # both replicas took a fair share


def test_conversation_affinity(fleet: Fleet) -> None:
    sdk = client(fleet.gateway.url)
    served: list[str] = []
    for index in range(4):  # four conversations of three turns each
        messages: list[Any] = [{"role": "user", "content": f"conversation {index}"}]
        homes = []
        for turn in range(3):
            before = fleet.requests("chat")
            reply = sdk.chat.completions.create(model="chat", messages=messages)
            after = fleet.requests("chat")
            homes.append(next(name for name in after if after[name] > before[name]))
            messages += [
                reply.choices[0].message.model_dump(exclude_none=True),
                {"role": "user", "content": f"{turn}"},
            ]
        assert len(set(homes)) == 1, homes  # every turn on the replica of the first
        served.append(homes[0])
    assert len(set(served)) == 2  # and the conversations themselves spread over both


def test_disconnect_cancels_the_upstream_generation(fleet: Fleet) -> None:
    def cancelled() -> float:
        return sum(
            n.metric("ai_stack_generations_aborted_total", model="fake-slow") for n in (fleet.a, fleet.b)
        )

    before = cancelled()
    body = {"model": "slow", "messages": MESSAGES, "stream": True}
    with httpx.stream("POST", f"{fleet.gateway.url}/v1/chat/completions", json=body, timeout=30) as response:
        lines = response.iter_lines()
        assert next(lines).startswith("data: ")
        next(lines)
    # The client left after two events of a 400-token answer (20 s of generation): the upstream stops it.
    assert wait_for(lambda: cancelled() > before, timeout=10), "the upstream kept generating"
    assert wait_for(lambda: all(u["in_flight"] == 0 for u in fleet.upstreams("slow").values()), timeout=10)
    # A full (not streamed) request cancelled while the upstream generates.
    before = cancelled()
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{fleet.gateway.url}/v1/chat/completions", json={**body, "stream": False}, timeout=1.0)
    assert wait_for(lambda: cancelled() > before, timeout=10), "the upstream kept generating"


def test_drain_keeps_streams_in_flight_and_sends_new_requests_elsewhere(fleet: Fleet) -> None:
    drain = f"{fleet.gateway.url}/v1/models/slow/upstreams"
    body = {"model": "slow", "messages": MESSAGES, "stream": True, "max_tokens": 30}
    with httpx.stream("POST", f"{fleet.gateway.url}/v1/chat/completions", json=body, timeout=30) as response:
        lines = response.iter_lines()
        next(lines)
        busy = next(url for url, u in fleet.upstreams("slow").items() if u["in_flight"] == 1)
        answer = httpx.post(f"{drain}/drain", json={"upstream": busy}, timeout=5)
        assert answer.status_code == 200
        assert next(u for u in answer.json()["upstreams"] if u["url"] == busy)["draining"] is True
        before = fleet.upstreams("slow")[busy]["requests"]
        for _ in range(3):
            short = {**body, "stream": False, "max_tokens": 2}
            assert (
                httpx.post(f"{fleet.gateway.url}/v1/chat/completions", json=short, timeout=30).status_code
                == 200
            )
        assert fleet.upstreams("slow")[busy]["requests"] == before  # nothing new went to the drained node
        rest = [line for line in lines if line]  # the stream in flight on it runs to its end
    assert rest[-1] == "data: [DONE]" and not any('"error"' in line for line in rest)
    assert httpx.post(f"{drain}/undrain", json={"upstream": busy}, timeout=5).status_code == 200
    assert fleet.upstreams("slow")[busy]["draining"] is False
    unknown = httpx.post(f"{drain}/drain", json={"upstream": "http://nowhere:1/v1"}, timeout=5)
    assert unknown.status_code == 404 and unknown.json()["error"]["param"] == "upstream"


def test_metrics_per_upstream(fleet: Fleet) -> None:
    for turn in range(2):  # two conversations: one on each replica (least picked first)
        question = [{"role": "user", "content": f"metrics {turn}"}]
        client(fleet.gateway.url).chat.completions.create(model="chat", messages=question)
    gateway = fleet.gateway
    for node in (fleet.a, fleet.b):
        labels = {"model": "chat", "upstream": f"{node.url}/v1"}
        assert gateway.metric("ai_stack_upstream_requests_total", **labels) >= 1
        assert gateway.metric("ai_stack_upstream_healthy", **labels) == 1
        assert gateway.metric("ai_stack_upstream_latency_seconds_count", **labels) >= 1
        assert gateway.metric("ai_stack_upstream_in_flight", **labels) == 0
    ready = httpx.get(f"{gateway.url}/health/ready", timeout=5).json()
    assert ready["status"] == "ok"
    assert {m["id"]: m.get("upstreams_healthy") for m in ready["models"]}["chat"] == 2


def test_killed_upstream_loses_no_unstarted_request_and_comes_back(fleet: Fleet) -> None:
    """Last in this module: it kills and restarts node b."""
    sdk = client(fleet.gateway.url)
    sdk.chat.completions.create(model="chat", messages=MESSAGES)  # warm connections to both
    fleet.b.kill()
    # Requests sent before the gateway's health check notices: each one finds b dead and goes to a.
    answers = [
        sdk.chat.completions.create(model="chat", messages=[{"role": "user", "content": f"after {i}"}])
        for i in range(6)
    ]
    assert [a.choices[0].message.content for a in answers] == [f"You said: after {i}" for i in range(6)]
    assert wait_for(lambda: not fleet.healthy(fleet.b), timeout=10)
    view = fleet.upstreams("chat")[f"{fleet.b.url}/v1"]
    assert view["error"]
    streamed = sdk.chat.completions.create(model="chat", messages=MESSAGES, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices).startswith("You said")
    fleet.b.start()
    assert wait_for(lambda: fleet.healthy(fleet.b), timeout=20)
    before = fleet.requests("chat")
    for i in range(4):
        sdk.chat.completions.create(model="chat", messages=[{"role": "user", "content": f"back {i}"}])
    after = fleet.requests("chat")
    assert after["node-b"] > before["node-b"]  # it takes requests again


# --- without processes --------------------------------------------------------------------------------------


def _config_problem(tmp_path: Path, model: dict[str, Any]) -> str:
    path = tmp_path / "bad.toml"
    path.write_text(toml_config([model]))
    with pytest.raises(ConfigError) as raised:
        load_config(path, environ={})
    return str(raised.value)


def test_config_errors_name_the_problem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bad_url = {"id": "m", "engine": "remote", "options": {"upstreams": ["gpu-a:8080"]}}
    assert "'gpu-a:8080' is not an upstream URL" in _config_problem(tmp_path, bad_url)
    none = {"id": "m", "engine": "remote", "options": {"upstreams": []}}
    assert "upstreams" in _config_problem(tmp_path, none)
    monkeypatch.delenv("AI_STACK_TEST_NODES_KEY", raising=False)
    missing = {
        "id": "m",
        "engine": "remote",
        "options": {"upstreams": ["http://127.0.0.1:9/v1"], "api_key_env": "AI_STACK_TEST_NODES_KEY"},
    }
    assert "AI_STACK_TEST_NODES_KEY is not set" in _config_problem(tmp_path, missing)
    unknown = {"id": "m", "engine": "remote", "options": {"upstreams": ["http://a:1/v1"], "replicas": 2}}
    assert "unknown option 'replicas'" in _config_problem(tmp_path, unknown)
    monkeypatch.setenv("AI_STACK_TEST_NODES_KEY", "secret")
    path = tmp_path / "good.toml"
    path.write_text(toml_config([missing, {**missing, "id": "speech", "kind": "speech"}]))
    config = load_config(path)
    assert [m.kind for m in config.models] == ["chat", "speech"]  # a remote entry needs no source


def test_affinity_prefers_the_last_replica_and_is_bounded() -> None:
    from ai_stack.engines.catalog import RemoteOptions

    options = RemoteOptions(upstreams=["http://a:1/v1", "http://b:1/v1"], affinity_entries=3)
    pool = UpstreamPool("m", "m", options, None)
    a, b = pool.upstreams
    a.healthy = b.healthy = True
    first = conversation_keys([{"role": "user", "content": "hi"}])
    pool.remember(first, b)
    turn = conversation_keys(
        [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "yo"},
            {"role": "user", "content": "x"},
        ]
    )
    assert turn[0] == first[0] and pool.choose(set(), turn) is b
    b.outstanding = b.max_concurrency  # full: the least busy one instead
    assert pool.choose(set(), turn) is a
    b.outstanding = 0
    for index in range(5):
        pool.remember(conversation_keys([{"role": "user", "content": f"other {index}"}]), a)
    assert len(pool._affinity) == 3 and pool.choose(set(), turn) is a  # the oldest was forgotten (ties: a)


def test_sse_model_rewrite_keeps_split_lines_whole() -> None:
    rewriter = ModelRewriter("gateway-id")
    event = b'data: {"id": "x", "model": "Qwen/Qwen3-8B", "choices": []}\n\ndata: [DONE]\n\n'
    out = b"".join(rewriter.feed(event[i : i + 7]) for i in range(0, len(event), 7)) + rewriter.flush()
    lines = out.decode().split("\n")
    assert json.loads(lines[0][6:])["model"] == "gateway-id" and lines[2] == "data: [DONE]"


# --- real upstreams -----------------------------------------------------------------------------------------


@pytest.mark.slow
def test_real_default_model_behind_the_gateway(default_server: str, tmp_path: Path) -> None:
    """The real default model (and Piper) on an `ai-stack serve` node, reached through a gateway."""
    node = Node(tmp_path, "real", "")
    node.url = default_server
    gateway = Node(
        tmp_path,
        "gateway",
        toml_config(
            [remote("qwen", DEFAULT_CHAT_MODEL, [node]), remote("tts-1", "tts-1", [node], kind="speech")]
        ),
    ).start()
    try:
        ask: dict[str, Any] = {"messages": MESSAGES, "temperature": 0, "max_tokens": 16, "seed": 1}
        through = client(gateway.url).chat.completions.create(model="qwen", **ask)
        alone = client(default_server).chat.completions.create(model=DEFAULT_CHAT_MODEL, **ask)
        assert through.choices[0].message.content == alone.choices[0].message.content
        assert "Paris" in (through.choices[0].message.content or "")
        stream = client(gateway.url).chat.completions.create(model="qwen", stream=True, **ask)
        assert (
            "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
            == alone.choices[0].message.content
        )
        audio = client(gateway.url).audio.speech.create(
            model="tts-1", voice="alloy", input="Hello.", response_format="wav"
        )
        assert audio.content[:4] == b"RIFF" and len(audio.content) > 10_000
    finally:
        gateway.stop()


# llama-cpp-python's server needs its `server` extra (fastapi, sse-starlette, ...), not only llama_cpp.
LLAMA_SERVER = all(
    importlib.util.find_spec(name) is not None
    for name in ("llama_cpp", "fastapi", "sse_starlette", "pydantic_settings", "starlette_context")
)


@pytest.mark.slow
@pytest.mark.skipif(
    not LLAMA_SERVER, reason="llama-cpp-python's server extra is not installed (llama-cpp-python[server])"
)
def test_llama_cpp_python_server_as_an_upstream(tmp_path: Path) -> None:
    """A third-party upstream: llama-cpp-python's own OpenAI server serving the embedded GGUF."""
    from ai_stack.sources import EMBEDDED, embedded_gguf_path

    config = load_config()
    gguf = embedded_gguf_path(EMBEDDED[DEFAULT_CHAT_MODEL], config.server.home)
    if not gguf.is_file():
        pytest.skip("the embedded GGUF is not assembled (make install runs ai-stack prepare)")
    port = free_port()
    log = (tmp_path / "llama.log").open("w")
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(gguf),
            "--model_alias",
            "qwen-gguf",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "2048",
            # Its default stops the running completion whenever another request comes, a health check
            # (GET /v1/models) included: streams would end early.
            "--interrupt_requests",
            "False",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    upstream = Node(tmp_path, "llama", "")
    upstream.url = f"http://127.0.0.1:{port}"
    gateway = Node(tmp_path, "gateway", toml_config([remote("qwen", "qwen-gguf", [upstream])]))
    try:

        def ok() -> bool:
            return server.poll() is None and _answers(f"{upstream.url}/v1/models")

        assert wait_for(ok, timeout=300, interval=0.5), (tmp_path / "llama.log").read_text()[-2000:]
        gateway.start()
        ask: dict[str, Any] = {"messages": MESSAGES, "temperature": 0, "max_tokens": 12}
        through = client(gateway.url).chat.completions.create(model="qwen", **ask)
        alone = client(upstream.url).chat.completions.create(model="qwen-gguf", **ask)
        assert through.model == "qwen"
        assert through.choices[0].message.content == alone.choices[0].message.content
        stream = client(gateway.url).chat.completions.create(model="qwen", stream=True, **ask)
        assert (
            "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
            == alone.choices[0].message.content
        )
        # Through the gateway's own chat pipeline too: Anthropic's Messages over llama-cpp-python's server.
        message = anthropic.Anthropic(base_url=gateway.url, api_key="unused", max_retries=0).messages.create(
            model="qwen", max_tokens=12, messages=MESSAGES, extra_body={"temperature": 0}
        )
        assert message.content[0].text == alone.choices[0].message.content  # type: ignore[union-attr]
        assert message.usage.output_tokens == alone.usage.completion_tokens  # type: ignore[union-attr]
        missing = httpx.post(
            f"{gateway.url}/v1/audio/speech", json={"model": "qwen", "input": "x", "voice": "a"}
        )
        assert missing.status_code == 400 and missing.json()["error"]["code"] == "model_kind_mismatch"
    finally:
        gateway.stop()
        server.terminate()
        server.wait(10)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False
