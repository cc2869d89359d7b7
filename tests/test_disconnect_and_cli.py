"""Over real HTTP: a client that goes away stops its generation; the CLI and config error handling."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from ai_stack import cli
from ai_stack.config import ConfigError, load_config
from tests.conftest import FAKE, wait_for

SLOW = {**FAKE, "options": {"reply": "word " * 500, "token_delay": 0.05}}
BODY = {"model": "fake-chat", "messages": [{"role": "user", "content": "talk"}]}


def test_streaming_client_disconnect_stops_generation(live_server: Any) -> None:
    live = live_server([SLOW])
    with httpx.Client(base_url=live.url, timeout=10) as client:
        assert wait_for(lambda: client.get("/health/ready").status_code == 200)
        engine = live.app.state.registry.entries["fake-chat"].engine
        with client.stream("POST", "/v1/chat/completions", json={**BODY, "stream": True}) as response:
            lines = response.iter_lines()
            received = [next(lines) for _ in range(6)]
            events = [json.loads(line[6:]) for line in received if line.startswith("data: {")]
            deltas = [event["choices"][0]["delta"] for event in events]
            assert any("word" in (delta.get("content") or "") for delta in deltas)
        # The response is closed: the generation must notice and stop, not run 500 tokens for nobody.
        assert wait_for(lambda: engine.cancelled == 1 and engine.active == 0, timeout=10)
        assert engine.finished == 1
        ok = client.post("/v1/chat/completions", json={**BODY, "max_tokens": 3})
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 3


def test_non_streamed_client_disconnect_stops_generation(live_server: Any) -> None:
    live = live_server([SLOW])
    with httpx.Client(base_url=live.url, timeout=10) as client:
        assert wait_for(lambda: client.get("/health/ready").status_code == 200)
    engine = live.app.state.registry.entries["fake-chat"].engine
    with pytest.raises(httpx.ReadTimeout), httpx.Client(base_url=live.url, timeout=0.5) as impatient:
        impatient.post("/v1/chat/completions", json=BODY)
    assert wait_for(lambda: engine.cancelled == 1 and engine.active == 0, timeout=10)


def test_bad_config_files_name_file_key_and_problem(tmp_path: Path) -> None:
    cases = {
        "broken.toml": ("[server\nport = 1", "", "not valid TOML"),
        "port.toml": ("[server]\nport = 99999", "server.port", "less than or equal to 65535"),
        "key.toml": (
            '[[models]]\nid = "a"\nsource = "fake:"\nengine = "fake"\ncolour = "red"',
            "models[0].colour",
            "unknown key",
        ),
        "dup.toml": (
            '[[models]]\nid = "a"\nsource = "x/y"\n[[models]]\nid = "b"\naliases = ["a"]\nsource = "x/y"',
            "",
            "already used",
        ),
        "kind.toml": (
            '[[models]]\nid = "a"\nsource = "x/y"\nengine = "nonsense"',
            "models[0].engine",
            "unknown engine 'nonsense'; known engines: transformers, llamacpp",
        ),
        "option.toml": (
            '[[models]]\nid = "a"\nsource = "x/y"\noptions = { max_batchh = 4 }',
            "models[0]",
            "model 'a': unknown option 'max_batchh' for engine 'transformers' "
            "(its options: max_batch, prefill_chunk)",
        ),
        "option-type.toml": (
            '[[models]]\nid = "a"\nsource = "x.gguf"\nengine = "llamacpp"\noptions = { parallel = "4" }',
            "models[0]",
            "model 'a': option 'parallel': Input should be a valid integer",
        ),
        "speech-kind.toml": (
            '[[models]]\nid = "a"\nsource = "x.onnx"\nengine = "piper"',
            "models[0]",
            "engine 'piper' serves speech models; set kind = \"speech\"",
        ),
    }
    for name, (text, key, problem) in cases.items():
        path = tmp_path / name
        path.write_text(text)
        with pytest.raises(ConfigError) as caught:
            load_config(path, environ={})
        assert caught.value.source == str(path)
        assert key in caught.value.key
        assert problem in caught.value.problem
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "missing.toml", environ={})


def test_env_and_cli_override_the_file(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    path.write_text('[server]\nport = 9000\nhost = "0.0.0.0"\n')
    env = {"AI_STACK_PORT": "9100", "AI_STACK_API_KEY": "k", "AI_STACK_CORS_ORIGINS": "http://a, http://b"}
    config = load_config(path, environ=env)
    assert (config.server.port, config.server.host, config.server.api_key) == (9100, "0.0.0.0", "k")
    assert config.server.cors_origins == ["http://a", "http://b"]
    config = load_config(path, overrides={"port": 9200, "host": None}, environ=env)
    assert (config.server.port, config.server.host) == (9200, "0.0.0.0")
    with pytest.raises(ConfigError, match="AI_STACK_PORT"):
        load_config(path, environ={"AI_STACK_PORT": "many"})


def test_cli_serve_reports_bad_config_without_traceback(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[server]\nport = 'x'\n")
    result = CliRunner().invoke(cli.main, ["serve", "--config", str(path)])
    assert result.exit_code != 0
    assert f"{path}: server.port" in result.output
    assert "Traceback" not in result.output


def test_cli_serve_builds_app_and_runs_uvicorn_with_flags(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ok.toml"
    path.write_text('[[models]]\nid = "f"\nengine = "fake"\nsource = "fake:"\n')
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr("uvicorn.run", lambda app, **kwargs: calls.append({"app": app, **kwargs}))
    result = CliRunner().invoke(
        cli.main, ["serve", "--config", str(path), "--port", "8123", "--host", "127.0.0.2"]
    )
    assert result.exit_code == 0, result.output
    [call] = calls
    assert (call["host"], call["port"], call["workers"]) == ("127.0.0.2", 8123, 1)
    assert [e.spec.id for e in call["app"].state.registry.entries.values()] == ["f"]


def test_cli_models_lists_cache_state(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AI_STACK_HOME", raising=False)  # the file names its own home
    path = tmp_path / "m.toml"
    path.write_text(
        f'[server]\nhome = "{tmp_path / "home"}"\n'
        '[[models]]\nid = "q"\naliases = ["d"]\nsource = "embedded:qwen2.5-coder-0.5b-instruct"\n'
        '[[models]]\nid = "h"\nsource = "hf:Qwen/Qwen3-8B"\n'
    )
    result = CliRunner().invoke(cli.main, ["models", "--config", str(path)])
    assert result.exit_code == 0, result.output
    assert "q (aliases: d)" in result.output and "not converted yet" in result.output
    assert "hub id" in result.output
    result = CliRunner().invoke(cli.main, ["prepare", "--config", str(path), "nope"])
    assert result.exit_code != 0 and "unknown model" in result.output
