"""Fault isolation for native engines (ai_stack/engines/probe.py): a crashing llama.cpp spares the server."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest

from ai_stack.config import Config
from ai_stack.engines import catalog, probe
from ai_stack.engines.catalog import AutoOptions, LlamaCppOptions
from ai_stack.engines.probe import (
    FAULT_ENV,
    MAX_VERDICTS,
    VERDICTS_FILE,
    NativeEngineFault,
    ProbeResult,
    VerdictCache,
    checked_llamacpp_options,
    run_probe,
    verdict_key,
)
from tests.conftest import FAKE, make_config, wait_for, wait_ready

USER = [{"role": "user", "content": "hi"}]


def native_config(tmp_path: Path, **spec: Any) -> Config:
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")  # never read: the simulated fault comes first
    model = {"id": "native", "engine": "llamacpp", "source": str(gguf), **spec}
    return make_config(tmp_path, [model, FAKE])


class Probes:
    """A stand-in for run_probe: how each configuration's child ends, and the options it was run with."""

    def __init__(self, crash_repacked: bool, crash_safe: bool) -> None:
        self.crash = {True: crash_repacked, False: crash_safe}
        self.runs: list[bool] = []

    def __call__(self, spec: Any, config: Any, options: LlamaCppOptions, timeout: float = 0) -> ProbeResult:
        self.runs.append(options.repack)
        if self.crash[options.repack]:
            return ProbeResult(False, True, "killed by SIGSEGV")
        return ProbeResult(True, False, "ok")


@pytest.fixture(autouse=True)
def no_simulated_fault(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(FAULT_ENV, raising=False)


def test_a_crashing_child_is_reported_and_the_parent_survives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = native_config(tmp_path)
    monkeypatch.setenv(FAULT_ENV, "segv")
    result = run_probe(config.models[0], config, LlamaCppOptions(), timeout=120)
    assert not result.ok and result.crashed
    assert "SIGSEGV" in result.detail and "Fatal Python error: Segmentation fault" in result.detail
    assert "string_at" in result.detail  # the innermost frame, where the fault happened


def test_crash_with_repacked_weights_falls_back_to_safe_mode_and_is_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = native_config(tmp_path)
    spec, options = config.models[0], LlamaCppOptions()
    probes = Probes(crash_repacked=True, crash_safe=False)
    monkeypatch.setattr(probe, "run_probe", probes)
    chosen = checked_llamacpp_options(spec, config, options)
    assert chosen.repack is False and chosen.model_dump(exclude={"repack"}) == options.model_dump(
        exclude={"repack"}
    )
    assert probes.runs == [True, False]
    stored = json.loads((config.server.home / VERDICTS_FILE).read_text())
    assert [v["verdict"] for v in stored.values()] == ["safe"] and "SIGSEGV" in next(iter(stored.values()))[
        "reason"
    ]
    # A later start pays nothing: the verdict comes from the cache.
    assert checked_llamacpp_options(spec, config, options).repack is False
    assert probes.runs == [True, False]


def test_crash_in_safe_mode_too_fails_llamacpp_and_auto_uses_transformers(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = native_config(tmp_path)
    probes = Probes(crash_repacked=True, crash_safe=True)
    monkeypatch.setattr(probe, "run_probe", probes)
    with pytest.raises(NativeEngineFault) as caught:
        checked_llamacpp_options(config.models[0], config, LlamaCppOptions())
    assert (
        "crashed" in str(caught.value) and "safe mode" in str(caught.value) and "SIGSEGV" in str(caught.value)
    )
    assert probes.runs == [True, False]

    picked: list[str] = []
    monkeypatch.setattr(catalog, "llamacpp_available", lambda: True)
    monkeypatch.setattr(
        catalog, "_loader", lambda engine: lambda spec, config, options: picked.append(engine)
    )
    auto = config.models[0].model_copy(update={"engine": "auto"})
    catalog.load_auto(auto, config, AutoOptions())
    assert picked == ["transformers"]
    assert probes.runs == [True, False]  # the failed verdict is cached: no third child


def test_safe_mode_is_not_retried_when_repack_is_already_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = native_config(tmp_path)
    probes = Probes(crash_repacked=True, crash_safe=True)
    monkeypatch.setattr(probe, "run_probe", probes)
    with pytest.raises(NativeEngineFault):
        checked_llamacpp_options(config.models[0], config, LlamaCppOptions(repack=False))
    assert probes.runs == [False]


def test_an_inconclusive_check_is_no_fault_and_not_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = native_config(tmp_path)
    monkeypatch.setattr(probe, "run_probe", lambda *a, **k: ProbeResult(False, False, "GGUF file is corrupt"))
    options = LlamaCppOptions()
    assert checked_llamacpp_options(config.models[0], config, options) == options
    assert not (config.server.home / VERDICTS_FILE).exists()


def test_the_check_can_be_turned_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = native_config(tmp_path).model_copy(deep=True)
    config.server.native_probe = False
    monkeypatch.setattr(probe, "run_probe", lambda *a, **k: pytest.fail("no child when native_probe is off"))
    assert checked_llamacpp_options(config.models[0], config, LlamaCppOptions()).repack is True


def test_verdict_key_and_bounded_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = native_config(tmp_path)
    spec = config.models[0]
    key = verdict_key(spec, LlamaCppOptions())
    assert key == verdict_key(spec, LlamaCppOptions())
    assert key != verdict_key(spec, LlamaCppOptions(n_batch=256))
    assert key != verdict_key(spec.model_copy(update={"device": "cpu"}), LlamaCppOptions())
    monkeypatch.setattr(probe, "cpu_fingerprint", lambda: "another cpu")
    assert key != verdict_key(spec, LlamaCppOptions())
    cache = VerdictCache(tmp_path / "v.json")
    for index in range(MAX_VERDICTS + 5):
        cache.put(f"k{index}", "ok")
    kept = cache.read()
    assert len(kept) == MAX_VERDICTS and "k0" not in kept and f"k{MAX_VERDICTS + 4}" in kept
    (tmp_path / "v.json").write_text("{not json")
    assert cache.get("k1") is None


def test_server_survives_a_crashing_native_engine(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, app_client: Any
) -> None:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed: the check runs only for it")
    monkeypatch.setenv(FAULT_ENV, "segv")  # both modes crash, as a fault that safe mode does not avoid
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    client = app_client([{"id": "native", "engine": "llamacpp", "source": str(gguf)}, FAKE])
    wait_ready(client, "fake-chat")

    def native() -> dict[str, Any]:
        cards = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
        return cards["native"]  # type: ignore[no-any-return]

    assert wait_for(lambda: native()["state"] == "failed", timeout=120)
    assert "SIGSEGV" in native()["error"] and "safe mode" in native()["error"]
    response = client.post("/v1/chat/completions", json={"model": "native", "messages": USER})
    assert response.status_code == 503 and response.json()["error"]["code"] == "model_load_failed"
    assert (
        client.post("/v1/chat/completions", json={"model": "fake-chat", "messages": USER}).status_code == 200
    )
    assert not (tmp_path / "home" / VERDICTS_FILE).exists()  # a simulated fault is never cached


@pytest.mark.slow
def test_real_llamacpp_runs_in_safe_mode_when_repacked_weights_crash(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture, tmp_path: Path
) -> None:
    """The AMX case: the repacked child crashes, the safe child loads the real model; the server answers."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (make install-llamacpp)")
    from starlette.testclient import TestClient

    from ai_stack.app import create_app
    from ai_stack.config import default_config_path, load_config

    monkeypatch.setenv(FAULT_ENV, "segv-repack")
    home = load_config(default_config_path()).server.home  # where `make install` put the embedded model
    model = {
        "id": "native",
        "engine": "llamacpp",
        "source": "embedded:qwen2.5-coder-0.5b-instruct",
        "context_length": 512,
        "options": {"parallel": 1},
    }
    config = Config.model_validate(
        {"server": {"home": str(home)}, "models": [model], "base_dir": str(tmp_path)}
    )
    caplog.set_level(logging.WARNING, logger="ai_stack.engines.probe")
    with TestClient(create_app(config)) as client:
        wait_ready(client, "native", timeout=600)
        body = {"model": "native", "messages": USER, "max_tokens": 4, "temperature": 0}
        assert client.post("/v1/chat/completions", json=body).status_code == 200
    assert any("safe mode" in record.getMessage() for record in caplog.records)


@pytest.mark.parametrize(
    ("returncode", "crashed", "words"),
    [(-11, True, "SIGSEGV"), (-6, True, "SIGABRT"), (-9, False, "SIGKILL"), (1, True, "exit status 1")],
)
def test_how_a_child_ended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, returncode: int, crashed: bool, words: str
) -> None:
    """Faults count against the engine; a kill from outside (the OOM killer) is no verdict."""
    import subprocess

    config = native_config(tmp_path)
    ended = subprocess.CompletedProcess([], returncode, stdout="", stderr="")
    monkeypatch.setattr(probe.subprocess, "run", lambda *a, **k: ended)
    result = run_probe(config.models[0], config, LlamaCppOptions())
    assert not result.ok and result.crashed is crashed and words in result.detail
