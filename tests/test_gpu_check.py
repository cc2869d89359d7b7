"""bench/gpu_check.py off a GPU: arguments, the loud CUDA failure, phases, results, a dry run."""

from __future__ import annotations

import json
import math
from pathlib import Path
from threading import Event

import pytest
import torch

from ai_stack.engines.base import Piece, SamplingParams
from ai_stack.engines.transformers import load_transformers
from bench import gpu_check

no_cuda = pytest.mark.skipif(
    torch.cuda.is_available(), reason="checks the behaviour of a machine without CUDA"
)


def test_arguments_and_dry_run_defaults() -> None:
    args = gpu_check.parse_args([])
    assert (args.tokens, args.streams, args.long, args.budget_s) == (64, [8, 32], 44, 480.0)
    assert args.variants == ["bf16", "nf4", "int8"]
    dry = gpu_check.parse_args(["--dry-run", "--streams", "2,3", "--skip", "tests,tiny"])
    assert (dry.tokens, dry.streams, dry.long, dry.skip) == (8, [2, 3], 4, ["tests", "tiny"])
    with pytest.raises(SystemExit):
        gpu_check.parse_args(["--variants", "bf16,fp8"])


@no_cuda
def test_a_claimed_but_unusable_gpu_fails_loudly(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Where the machine says it has a GPU but torch sees none, exit 2 and write why, without measuring."""
    monkeypatch.setenv("AI_STACK_EXPECT_CUDA", "1")
    assert gpu_check.main(["--out", str(tmp_path)]) == 2
    assert "FAILED: this machine has an NVIDIA GPU (AI_STACK_EXPECT_CUDA=1)" in capsys.readouterr().err
    (written,) = tmp_path.glob("*-gpu-check-*.json")
    results = json.loads(written.read_text())
    assert results["phases"] == {"cuda": {"status": "failed", "error": results["phases"]["cuda"]["error"]}}
    assert "torch.cuda.is_available() is False" in results["phases"]["cuda"]["error"]
    assert "| cuda | failed |" in written.with_suffix(".md").read_text()


@no_cuda
def test_no_gpu_without_dry_run_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AI_STACK_EXPECT_CUDA", raising=False)
    monkeypatch.setattr(gpu_check, "cuda_claimed", lambda: None)
    assert gpu_check.main(["--out", str(tmp_path)]) == 2


def test_phases_record_failures_and_the_budget(tmp_path: Path) -> None:
    check = gpu_check.Check(gpu_check.parse_args(["--dry-run", "--out", str(tmp_path), "--budget-s", "100"]))

    def boom() -> dict[str, object]:
        raise ValueError("no such kernel")

    assert check.phase("a", 10, boom) == {
        "status": "failed",
        "error": "ValueError: no such kernel",
        "seconds": 0.0,
    }
    assert check.phase("b", 10, lambda: {"x": 1})["status"] == "ok"
    skipped = check.phase("c", 1000, lambda: {})
    assert skipped["status"] == "skipped" and "out of time" in skipped["reason"]
    saved = json.loads((tmp_path / f"{check.stem}.json").read_text())
    assert [saved["phases"][k]["status"] for k in "abc"] == ["failed", "ok", "skipped"]
    report = (tmp_path / f"{check.stem}.md").read_text()
    assert "| a | failed |" in report and "no such kernel" in report


def test_dry_run_does_not_ask_for_bitsandbytes() -> None:
    assert "bitsandbytes" not in gpu_check.missing_needs(dry_run=True)


def test_dry_run_measures_a_tiny_model_through_the_server(tmp_path: Path) -> None:
    """The whole pipeline on the CPU: a server per variant, TTFT, decode, concurrent streams, tiny models."""
    assert gpu_check.main(["--dry-run", "--out", str(tmp_path), "--skip", "tests"]) == 0
    (written,) = tmp_path.glob("*-gpu-check-dry-run-cpu.json")
    phases = json.loads(written.read_text())["phases"]
    assert phases["tests"]["status"] == "skipped"
    variant = phases["default"]["variants"]["float32-cpu"]
    assert variant["status"] == "ok" and variant["completion_tokens"] == 8
    # A tiny model's 8 tokens may reach the client in one batched chunk: then no rate can be measured (NaN).
    assert variant["decode_tok_s"] > 0 or math.isnan(variant["decode_tok_s"])
    assert variant["concurrent"][0]["clients"] == 2 and variant["concurrent"][0]["tokens"] == 16
    assert {k: v["ok"] for k, v in phases["tiny"]["models"].items()} == {
        "qwen3": True,
        "llama": True,
        "mistral": True,
    }
    assert "| float32-cpu |" in written.with_suffix(".md").read_text()


def test_shaped_stand_in_has_the_default_models_shape() -> None:
    """Where the default model cannot be installed, random weights of its shape stand in (one layer here)."""
    from transformers import AutoConfig, AutoTokenizer

    folder = gpu_check.build_shaped(layers=1)
    config = AutoConfig.from_pretrained(folder)
    assert (config.model_type, config.hidden_size, config.vocab_size) == ("qwen2", 896, 151936)
    assert AutoTokenizer.from_pretrained(folder).chat_template
    engine = load_transformers(str(folder), dtype="float32")
    try:
        pieces: list[Piece] = []
        params = SamplingParams(max_tokens=4, temperature=0.0)
        result = engine.generate(
            engine.render([{"role": "user", "content": "hi"}], {}), params, Event(), pieces.append
        )
        assert result.completion_tokens == 4 and len(pieces) == 4  # every token streams as text
    finally:
        engine.close()
