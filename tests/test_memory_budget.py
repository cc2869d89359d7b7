"""The memory budget (ai_stack/registry.py): LRU unloads, busy models kept, keep_alive, mid-stream unloads."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from ai_stack.app import create_app
from ai_stack.config import ConfigError, ModelSpec, load_config
from ai_stack.engines.base import Generation, Piece, Prompt, SamplingParams
from ai_stack.engines.catalog import FakeOptions, load_engine
from ai_stack.engines.fake import FakeChatEngine
from tests.conftest import LiveServer, assert_error, make_config, wait_for, wait_ready

USER = [{"role": "user", "content": "hi"}]


class TrackedEngine(FakeChatEngine):
    """A fake engine that behaves as the real ones do on close (running generations fail), reports its own
    memory, and, when given a gate, emits one token and then waits for the gate before answering the rest."""

    def __init__(self, options: FakeOptions, memory_bytes: int | None, gate: threading.Event | None) -> None:
        super().__init__(options)
        if memory_bytes is not None:
            self.memory_bytes = memory_bytes
        self.gate = gate
        self.closed = threading.Event()

    def generate(
        self, prompt: Prompt, params: SamplingParams, cancel: threading.Event, emit: Callable[[Piece], None]
    ) -> Generation:
        """Emit one token, wait for the gate (or cancel, or close), then the scripted reply."""
        if self.gate is not None:
            emit(Piece("first", 1))
            while not (self.gate.wait(0.01) or cancel.is_set() or self.closed.is_set()):
                pass
        if self.closed.is_set():
            raise RuntimeError("the model was unloaded")
        return super().generate(prompt, params, cancel, emit)

    def close(self) -> None:
        """Fail running generations, as the llama.cpp and transformers engines do."""
        self.closed.set()


def fake(model_id: str, **spec: Any) -> dict[str, Any]:
    return {"id": model_id, "engine": "fake", "source": "fake:", **spec}


class Setup:
    """Per-model memory sizes and gates that the test loader gives the engines it builds."""

    def __init__(self) -> None:
        self.sizes: dict[str, int] = {}
        self.reserved: dict[str, int] = {}  # what an engine's caches may still grow to (reserved_bytes)
        self.gates: dict[str, threading.Event] = {}
        self.loads: list[str] = []

    def load(self, spec: ModelSpec, config: Any) -> Any:
        self.loads.append(spec.id)
        if spec.engine != "fake":
            return load_engine(spec, config)
        options = FakeOptions.model_validate(spec.options)
        engine = TrackedEngine(options, self.sizes.get(spec.id), self.gates.get(spec.id))
        engine.reserved_bytes = self.reserved.get(spec.id, 0)
        return engine


@pytest.fixture
def setup() -> Setup:
    return Setup()


@pytest.fixture
def budget_client(tmp_path: Path, setup: Setup) -> Iterator[Callable[..., TestClient]]:
    """Factory: a TestClient whose models load through the test loader."""
    clients: list[TestClient] = []

    def build(models: list[dict[str, Any]], **server: Any) -> TestClient:
        client = TestClient(create_app(make_config(tmp_path, models, **server), setup.load))
        client.__enter__()
        clients.append(client)
        return client

    yield build
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def budget_server(tmp_path: Path, setup: Setup) -> Iterator[Callable[..., LiveServer]]:
    """Factory: a real uvicorn server (streams arrive as they are sent) with the test loader."""
    servers: list[LiveServer] = []

    def build(models: list[dict[str, Any]], **server: Any) -> LiveServer:
        live = LiveServer(create_app(make_config(tmp_path, models, **server), setup.load))
        live.__enter__()
        servers.append(live)
        return live

    yield build
    for live in servers:
        live.__exit__()


def states(client: TestClient | httpx.Client) -> dict[str, str]:
    return {m["id"]: m["state"] for m in client.get("/v1/models").json()["data"]}


def chat(client: TestClient | httpx.Client, model: str) -> Any:
    return client.post("/v1/chat/completions", json={"model": model, "messages": USER})


def chat_in_thread(url: str, model: str, into: dict[str, Any]) -> threading.Thread:
    """A chat request on its own connection in a thread; its response lands in into["response"]."""

    def run() -> None:
        with httpx.Client(base_url=url, timeout=60) as client:
            into["response"] = chat(client, model)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


# ------------------------------------------------------------------------------------------------ config


def test_budget_and_keep_alive_config(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(
        '[server]\nmemory_budget = {cpu = "8GiB", cuda = 12000000000}\nmax_loaded_models = 2\n'
        '[[models]]\nid = "a"\nengine = "fake"\nsource = "fake:"\nkeep_alive = "1h30m"\n'
    )
    config = load_config(path, environ={})
    assert config.server.memory_budget == {"cpu": 8 * 1024**3, "cuda:0": 12_000_000_000}
    assert config.server.max_loaded_models == 2
    assert config.models[0].keep_alive == 5400.0
    one = load_config(path, environ={"AI_STACK_MEMORY_BUDGET": "512MB"})
    assert one.server.memory_budget == {"*": 512_000_000}
    split = load_config(path, environ={"AI_STACK_MEMORY_BUDGET": "cpu=1GiB,cuda:1=2GiB"})
    assert split.server.memory_budget == {"cpu": 1024**3, "cuda:1": 2 * 1024**3}


@pytest.mark.parametrize(
    ("line", "key", "words"),
    [
        ('memory_budget = "lots"', "server.memory_budget", "not a size"),
        ("memory_budget = {gpu = 100}", "server.memory_budget", "unknown device 'gpu'"),
        ("memory_budget = -5", "server.memory_budget", "more than 0"),
        ("max_loaded_models = 0", "server.max_loaded_models", "greater than or equal to 1"),
    ],
)
def test_bad_budget_names_the_key(tmp_path: Path, line: str, key: str, words: str) -> None:
    path = tmp_path / "c.toml"
    path.write_text(f"[server]\n{line}\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert caught.value.key.startswith(key) and words in caught.value.problem


def test_bad_keep_alive_names_the_model(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[[models]]\nid = "a"\nengine = "fake"\nsource = "fake:"\nkeep_alive = "soon"\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path, environ={})
    assert caught.value.key == "models[0].keep_alive" and "not a duration" in caught.value.problem


# ---------------------------------------------------------------------------------------------- LRU unload


def test_max_loaded_models_unloads_the_least_recently_used_idle_model(
    budget_client: Callable[..., TestClient], setup: Setup
) -> None:
    client = budget_client([fake("a"), fake("b"), fake("c")], max_loaded_models=2)
    wait_ready(client, "a")
    wait_ready(client, "b")
    assert states(client) == {"a": "ready", "b": "ready", "c": "unloaded"}  # autoload stops at the limit
    assert chat(client, "a").status_code == 200  # b is now the least recently used
    # A request for an unloaded model loads it on demand and waits for it (no 503 to retry).
    response = chat(client, "c")
    assert response.status_code == 200, response.text
    assert states(client) == {"a": "ready", "b": "unloaded", "c": "ready"}
    assert chat(client, "b").status_code == 200  # a (used before c) goes
    assert states(client) == {"a": "unloaded", "b": "ready", "c": "ready"}
    assert setup.loads == ["a", "b", "c", "b"]


def test_byte_budget_unloads_until_the_model_fits_and_reports_memory(
    budget_client: Callable[..., TestClient], setup: Setup
) -> None:
    setup.sizes.update({"x": 60, "y": 50, "z": 30, "big": 150})
    models = [fake(name, autoload=False) for name in ("x", "y", "z", "big")]
    client = budget_client(models, memory_budget={"cpu": 100})
    assert chat(client, "x").status_code == 200
    assert chat(client, "y").status_code == 200  # measured 50 at its load: 110 > 100, so x goes
    assert states(client) == {"x": "unloaded", "y": "ready", "z": "unloaded", "big": "unloaded"}
    assert chat(client, "z").status_code == 200  # 80 fits
    assert chat(client, "x").status_code == 200  # x's 60 is known now: y (older than z) goes first
    cards = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert {k: c["state"] for k, c in cards.items()} == {
        "x": "ready",
        "y": "unloaded",
        "z": "ready",
        "big": "unloaded",
    }
    assert (cards["x"]["memory_bytes"], cards["y"]["memory_bytes"], cards["z"]["memory_bytes"]) == (
        60,
        None,
        30,
    )
    # A model that alone exceeds the budget fails with the reason; the others keep serving.
    error = assert_error(chat(client, "big"), 503, "model_load_failed", "model")
    assert "more than its memory_budget" in error["message"]
    assert chat(client, "z").status_code == 200


def test_a_cache_that_grows_counts_with_its_whole_budget(
    budget_client: Callable[..., TestClient], setup: Setup
) -> None:
    setup.sizes.update({"x": 40, "y": 40})
    setup.reserved.update({"x": 30})  # x's prefix cache may grow by 30 after its load
    client = budget_client([fake("x", autoload=False), fake("y", autoload=False)], memory_budget={"cpu": 100})
    assert chat(client, "x").status_code == 200
    cards = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert cards["x"]["memory_bytes"] == 70
    assert chat(client, "y").status_code == 200  # 70 + 40 > 100: x goes, though its load alone took 40
    assert states(client) == {"x": "unloaded", "y": "ready"}


def test_a_busy_model_is_not_unloaded_to_make_room(
    budget_server: Callable[..., LiveServer], setup: Setup
) -> None:
    setup.gates["a"] = threading.Event()
    live = budget_server([fake("a"), fake("b", autoload=False)], max_loaded_models=1)
    with httpx.Client(base_url=live.url, timeout=60) as client:
        wait_ready(client, "a")
        body = {"model": "a", "messages": USER, "stream": True}
        with client.stream("POST", "/v1/chat/completions", json=body) as stream:
            lines = stream.iter_lines()
            assert any('"first"' in line for line in lines)  # a is generating now
            other: dict[str, Any] = {}
            waiter = chat_in_thread(live.url, "b", other)
            assert wait_for(lambda: states(client)["b"] == "loading")
            # b's load waits for room; a, busy, stays loaded and its answer goes on.
            assert states(client)["a"] == "ready" and waiter.is_alive()
            setup.gates["a"].set()
            rest = [line for line in lines if line.startswith("data: ")]
        assert rest[-1] == "data: [DONE]" and not any('"error"' in line for line in rest)
        waiter.join(30)
        assert other["response"].status_code == 200, other["response"].text
        assert states(client) == {"a": "unloaded", "b": "ready"}


def test_unloading_a_model_mid_stream_tells_the_client_why(
    budget_server: Callable[..., LiveServer], setup: Setup
) -> None:
    setup.gates["a"] = threading.Event()
    live = budget_server([fake("a")])
    with httpx.Client(base_url=live.url, timeout=60) as client:
        wait_ready(client, "a")
        body = {"model": "a", "messages": USER, "stream": True}
        with client.stream("POST", "/v1/chat/completions", json=body) as stream:
            lines = stream.iter_lines()
            assert any('"first"' in line for line in lines)
            assert client.post("/v1/models/a/unload").json()["state"] == "unloaded"
            rest = [line for line in lines if line.startswith("data: ")]
        assert rest[-1] == "data: [DONE]"
        error = json.loads(rest[-2].removeprefix("data: "))["error"]
        assert error["code"] == "model_unloaded"
        assert "was unloaded while this request was using it" in error["message"]
        assert "POST /v1/models/a/unload" in error["message"]
        # A whole (non-streamed) answer cut short the same way is a 503 with that code.
        assert client.post("/v1/models/a/load").status_code in (200, 202)
        wait_ready(client, "a")
        setup.gates["a"].clear()
        other: dict[str, Any] = {}
        waiter = chat_in_thread(live.url, "a", other)
        assert wait_for(lambda: live.app.state.registry.busy("a"))
        client.post("/v1/models/a/unload")
        waiter.join(30)
        assert_error(other["response"], 503, "model_unloaded", "model")


# ----------------------------------------------------------------------------------------------- keep_alive


def test_model_keep_alive_zero_unloads_after_each_answer_and_reloads_on_demand(
    budget_client: Callable[..., TestClient], setup: Setup
) -> None:
    client = budget_client([fake("k", keep_alive=0, autoload=False), fake("stay")])
    wait_ready(client, "stay")
    assert chat(client, "k").status_code == 200
    assert wait_for(lambda: states(client)["k"] == "unloaded")
    # Its next request loads it again and waits for it (a model with a keep_alive loads on demand).
    assert chat(client, "k").status_code == 200
    assert wait_for(lambda: states(client)["k"] == "unloaded")
    assert states(client)["stay"] == "ready"
    assert setup.loads.count("k") == 2


def test_model_keep_alive_is_the_default_and_a_request_overrides_it(
    budget_client: Callable[..., TestClient],
) -> None:
    client = budget_client([fake("k", keep_alive="5m")])
    wait_ready(client, "k")
    registry = client.app.state.registry  # type: ignore[attr-defined]
    expires = registry.expires_at("k")
    assert expires is not None and 240 < expires - time.time() <= 300
    ps = {m["name"]: m for m in client.get("/api/ps").json()["models"]}
    assert ps["k:latest"]["expires_at"].startswith(time.strftime("%Y", time.gmtime()))
    # Ollama's per-request keep_alive (negative: forever) overrides the model's own.
    response = client.post(
        "/api/generate", json={"model": "k", "prompt": "hi", "stream": False, "keep_alive": -1}
    )
    assert response.status_code == 200, response.text
    assert registry.expires_at("k") is None


def test_speech_and_legacy_completions_load_on_demand_too(budget_client: Callable[..., TestClient]) -> None:
    speech = {"id": "voice", "kind": "speech", "engine": "fake-speech", "source": "fake:", "autoload": False}
    client = budget_client([fake("a", autoload=False), speech], max_loaded_models=1)
    body = {"model": "voice", "voice": "fake-a", "input": "hi", "response_format": "wav"}
    response = client.post("/v1/audio/speech", json=body)
    assert response.status_code == 200 and response.content[:4] == b"RIFF"
    response = client.post("/v1/completions", json={"model": "a", "prompt": "hi", "max_tokens": 2})
    assert response.status_code == 200, response.text
    assert states(client) == {"a": "ready", "voice": "unloaded"}
    # A request of the wrong kind loads nothing: it is refused as before.
    assert_error(client.post("/v1/audio/speech", json={**body, "model": "a"}), 400, "model_kind_mismatch")
    assert states(client) == {"a": "ready", "voice": "unloaded"}
