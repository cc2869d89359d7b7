"""Shared fixtures: configs with fake models, an in-process client, a real uvicorn server in a thread.

Also the embedded speech engines (loaded once per run) and assert_error, the check of an OpenAI-shaped error.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.testclient import TestClient

from ai_stack.app import create_app
from ai_stack.config import Config, default_config_path, load_config
from ai_stack.engines.kokoro_onnx import KokoroOnnxEngine, load_kokoro_onnx
from ai_stack.engines.piper import PiperEngine, load_piper
from tests.tiny_models import build_tiny_model

FAKE: dict[str, Any] = {"id": "fake-chat", "aliases": ["fake"], "engine": "fake", "source": "fake:"}


def make_config(tmp_path: Path, models: list[dict[str, Any]], **server: Any) -> Config:
    """A config with its home under tmp_path."""
    return Config.model_validate(
        {"server": {"home": str(tmp_path / "home"), **server}, "models": models, "base_dir": str(tmp_path)}
    )


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0, interval: float = 0.02) -> bool:
    """Poll until predicate() holds or the timeout passes; return its last value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


def wait_ready(client: TestClient | httpx.Client, model: str, timeout: float = 30.0) -> None:
    """Wait until a model reports ready in /v1/models."""

    def ready() -> bool:
        data = client.get("/v1/models").json()["data"]
        return any(m["id"] == model and m["state"] == "ready" for m in data)

    assert wait_for(ready, timeout), client.get("/v1/models").json()


def assert_error(response: Any, status: int, code: str | None, param: str | None = None) -> dict[str, Any]:
    """Check status, the {"error": {message, type, param, code}} shape and the request id."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error"}
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert isinstance(error["message"], str) and error["message"]
    assert isinstance(error["type"], str)
    assert error["code"] is None or isinstance(error["code"], str)
    assert error["code"] == code
    if param is not None:
        assert error["param"] == param
    assert response.headers.get("x-request-id")
    return error  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Path]:
    """The folder of a tiny random model (qwen3, llama, mistral), built once per test run on first use."""
    built: dict[str, Path] = {}

    def get(arch: str) -> Path:
        if arch not in built:
            built[arch] = build_tiny_model(arch, tmp_path_factory.mktemp("tiny") / arch)
        return built[arch]

    return get


@pytest.fixture(scope="session")
def piper() -> Iterator[PiperEngine]:
    """The embedded Piper voice, loaded once per test run."""
    engine = load_piper()
    yield engine
    engine.close()


@pytest.fixture(scope="session")
def kokoro_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder holding the assembled Kokoro model."""
    return tmp_path_factory.mktemp("kokoro-cache")


@pytest.fixture(scope="session")
def kokoro(kokoro_cache: Path) -> Iterator[KokoroOnnxEngine]:
    """The embedded Kokoro ONNX model with its Japanese voices, loaded once per test run."""
    engine = load_kokoro_onnx(cache_dir=kokoro_cache)
    yield engine
    engine.close()


@pytest.fixture
def client(app_client: Callable[..., TestClient]) -> TestClient:
    """A TestClient for the default config of one fake chat model, once that model is ready."""
    c = app_client()
    wait_ready(c, "fake-chat")
    return c


@pytest.fixture
def app_client(tmp_path: Path) -> Iterator[Callable[..., TestClient]]:
    """Factory: a TestClient (lifespan running) for a config of the given models and server settings."""
    clients: list[TestClient] = []

    def build(models: list[dict[str, Any]] | None = None, **server: Any) -> TestClient:
        client = TestClient(
            create_app(make_config(tmp_path, models if models is not None else [FAKE], **server))
        )
        client.__enter__()
        clients.append(client)
        settle(client.app, models if models is not None else [FAKE])
        return client

    yield build
    for client in clients:
        client.__exit__(None, None, None)


def settle(app: Starlette, models: list[dict[str, Any]]) -> None:
    """Wait until the fake models that load at once (no load_delay) have finished loading.

    Tests of a fake model's answers must not race its load (a 503 model_loading); tests of loading states
    give their model a load_delay.
    """
    registry = app.state.registry
    for model in models:
        options = model.get("options") or {}
        if model.get("engine") == "fake" and model.get("autoload", True) and not options.get("load_delay"):
            entry = registry.entries.get(model["id"])
            if entry is not None:
                wait_for(lambda e=entry: e.state.value != "loading", 30)


def free_port() -> int:
    """A TCP port that is free on the loopback interface now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class LiveServer:
    """A real uvicorn server on loopback, running an app in a background thread."""

    def __init__(self, app: Starlette) -> None:
        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        assert wait_for(lambda: self.server.started, 10), "server did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture
def live_server(tmp_path: Path) -> Iterator[Callable[..., LiveServer]]:
    """Factory: a running LiveServer for a config of the given models."""
    servers: list[LiveServer] = []

    def build(models: list[dict[str, Any]] | None = None, **server: Any) -> LiveServer:
        live = LiveServer(
            create_app(make_config(tmp_path, models if models is not None else [FAKE], **server))
        )
        live.__enter__()
        servers.append(live)
        settle(live.app, models if models is not None else [FAKE])
        return live

    yield build
    for live in servers:
        live.__exit__()


DEFAULT_CHAT_MODEL = "qwen2.5-coder-0.5b-instruct"


@contextmanager
def served(config: Path, timeout: float = 900.0, all_ready: bool = True) -> Iterator[str]:
    """A real `ai-stack serve` of a config (log: serve.log next to it) once ready; all_ready: all models."""
    with serve_process(config, timeout, all_ready) as (_, url):
        yield url


@contextmanager
def serve_process(
    config: Path, timeout: float = 900.0, all_ready: bool = True
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """served(), also yielding the process (to signal or kill it); it is stopped at the end if still alive."""
    port = free_port()
    log_path = config.parent / "serve.log"
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ai_stack", "serve", "--config", str(config), "--port", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + timeout  # a first start converts the GGUF (about a minute here)
            while time.monotonic() < deadline:
                assert proc.poll() is None, log_path.read_text()
                try:
                    if httpx.get(f"{url}/health/ready", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            else:
                pytest.fail(f"the server did not become ready:\n{log_path.read_text()}")
            if all_ready:
                models = httpx.get(f"{url}/v1/models").json()["data"]
                assert all(m["state"] == "ready" for m in models), models
            yield proc, url
        finally:
            proc.terminate()
            proc.wait(30)


@pytest.fixture(scope="session")
def default_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One `ai-stack serve` for the session: the default chat model (alias default) and Piper (alias tts-1).

    The models are those `make install` caches; tests that use this server are marked slow.
    """
    default = load_config(default_config_path())
    spec = next(s for s in default.models if s.id == DEFAULT_CHAT_MODEL)
    config = tmp_path_factory.mktemp("serve") / "chat.toml"
    config.write_text(
        f'[server]\nhome = "{default.server.home}"\n\n[[models]]\nid = "{spec.id}"\naliases = ["default"]\n'
        f'source = "{spec.source}"\n\n'
        '[[models]]\nid = "piper-joe"\naliases = ["tts-1"]\nkind = "speech"\nengine = "piper"\n'
        'source = "embedded:en_US-joe-medium"\n'
    )
    with served(config) as url:
        yield url
