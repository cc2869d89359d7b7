"""The command line (ai_stack/cli.py): serve, models and prepare."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from ai_stack import cli


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

    def run(server: Any) -> None:  # uvicorn's Server.run, as the CLI's GracefulServer would call it
        config = server.config
        calls.append({"app": config.app, "host": config.host, "port": config.port, "workers": config.workers})
        server.started = True

    monkeypatch.setattr("ai_stack.http_server.GracefulServer.run", run)
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
