"""The benchmark suite's pure parts: statistics, ratios, alternation, results naming and report rendering."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from bench.context import Settings
from bench.machine import machine_slug
from bench.profile import parse_collapsed, short_frame, summarize_stacks
from bench.report import write_report
from bench.server import render_config
from bench.stats import (
    alternation,
    decode_rate,
    fmt_ratio,
    paired_ratios,
    percentile,
    ratio_summary,
    summarize,
)


def test_percentile_interpolates_and_handles_edges() -> None:
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile([5], 99) == 5
    assert percentile([10, 0], 0) == 0 and percentile([10, 0], 100) == 10
    assert math.isnan(percentile([], 50))


def test_summarize_gives_median_spread_and_tails() -> None:
    summary = summarize([3.0, 1.0, 2.0, 100.0])
    assert summary["n"] == 4 and summary["median"] == 2.5
    assert summary["min"] == 1.0 and summary["max"] == 100.0
    assert summary["p25"] <= summary["p50"] <= summary["p75"] <= summary["p95"] <= summary["p99"]
    assert summarize([]) == {"n": 0}


def test_ratios_are_paired_per_repetition() -> None:
    assert paired_ratios([2, 4, 9], [1, 2, 3]) == [2, 2, 3]
    assert paired_ratios([1, 1], [0, 2]) == [0.5]  # a zero baseline is dropped, not a crash
    summary = ratio_summary([2, 4, 9], [1, 2, 3])
    assert summary["median"] == 2 and summary["min"] == 2 and summary["max"] == 3 and summary["n"] == 3
    assert summary["of_medians"] == 2
    assert ratio_summary([], []) == {"n": 0}
    assert fmt_ratio(summary) == "2.00\u00d7 (2.00\u20133.00, n=3)"
    assert fmt_ratio({"n": 0}) == "-"


def test_alternation_reverses_every_other_repetition() -> None:
    order = list(alternation(["A", "B", "C"], 3))
    assert [arm for _, arm in order] == list("ABCCBAABC")
    assert [rep for rep, _ in order] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    firsts = [arm for rep, arm in order if order.index((rep, arm)) % 3 == 0]
    assert firsts == ["A", "C", "A"]


def test_decode_rate_excludes_time_to_first_token() -> None:
    assert decode_rate([1.0, 1.5, 2.0, 2.5], 4) == pytest.approx(2.0)
    assert math.isnan(decode_rate([1.0], 1))


def test_quick_settings_are_smaller_than_full() -> None:
    quick, full = Settings.for_mode(True), Settings.for_mode(False)
    assert quick.decode_tokens < full.decode_tokens and max(quick.sweep_levels) < max(full.sweep_levels)
    assert full.sweep_levels == [1, 2, 4, 8, 16] and not quick.cold_start and full.cold_start


def test_machine_slug_is_file_name_safe() -> None:
    info = {"cpu": "AMD EPYC 7B13 64-Core Processor", "cores_logical": 2, "ram_gb": 23.4, "gpu": None}
    assert machine_slug(info) == "amd-epyc-7b13-2c-23gb"
    info["gpu"] = {"name": "NVIDIA H100 80GB HBM3"}
    assert machine_slug(info).endswith("-nvidia-h100-80gb-hbm3")


def test_generated_config_is_valid_toml(tmp_path: Path) -> None:
    import tomllib

    text = render_config(
        [
            {
                "id": "x",
                "engine": "fake",
                "source": "fake:",
                "options": {"reply": 'say "hi"', "token_delay": 0.0},
            }
        ],
        tmp_path,
        log_level="warning",
    )
    parsed = tomllib.loads(text)
    assert parsed["server"]["log_level"] == "warning"
    assert parsed["models"][0]["options"] == {"reply": 'say "hi"', "token_delay": 0.0}


def test_collapsed_stacks_summary() -> None:
    lines = [
        "thread (11): MainThread;run (/v/lib/python3.11/asyncio/runners.py:118) 3",
        "thread (12): generate;work (/w/ai_stack/serving/chat.py:135);"
        "forward (/v/site-packages/torch/nn/modules/linear.py:134) 4",
        "thread (13): generate;work (/w/ai_stack/serving/chat.py:135);"
        "forward (/v/site-packages/torch/nn/modules/linear.py:136) 3",
    ]
    summary = summarize_stacks(parse_collapsed(lines))
    assert summary["samples"] == 10
    assert summary["threads"][0] == {"frame": "generate", "samples": 7, "share": 0.7}
    assert summary["self"][0] == {"frame": "forward (torch/nn/modules/linear.py)", "samples": 7, "share": 0.7}
    assert short_frame("work (/w/ai_stack/serving/chat.py:135)") == "work (ai_stack/serving/chat.py:135)"
    assert any(row["frame"].startswith("work") for row in summary["inclusive_ai_stack_torch"])


def fake_results() -> dict[str, Any]:
    def s(x: float) -> dict[str, float]:
        return summarize([x * 0.9, x, x * 1.1])

    return {
        "date": "2026-01-01",
        "mode": "quick",
        "machine_slug": "cpu-2c-8gb",
        "machine": {
            "cpu": "Test CPU",
            "cores_logical": 2,
            "cores_physical": 2,
            "ram_gb": 8.0,
            "gpu": None,
            "cpu_flags": ["avx2"],
            "os": "Linux",
            "versions": {"python": "3.11", "torch": "2.13.0"},
        },
        "settings": {"mode": "quick", "repetitions": 3},
        "load_average": {"start": [1.0, 1.0, 1.0], "end": [2.0, 1.5, 1.0]},
        "sections": {
            "chat": {
                "prompt_tokens": {"short": 30, "long": 1000, "decode": 40},
                "summary": {
                    "ai-stack": {
                        "ttft_short_s": s(0.2),
                        "ttft_long_s": s(3.0),
                        "decode_tok_s": s(10.0),
                        "request_s": s(5.0),
                    },
                    "transformers": {
                        "ttft_short_s": s(0.3),
                        "ttft_long_s": s(3.1),
                        "decode_tok_s": s(9.0),
                        "request_s": s(5.5),
                    },
                },
                "ratios": {
                    "transformers": {
                        k: ratio_summary([1.1, 1.2], [1.0, 1.0])
                        for k in ("ttft_short", "ttft_long", "decode_tok_s", "request")
                    }
                },
                "sweep": {
                    "max_tokens": 12,
                    "peak_rss_bytes": 2e9,
                    "rss_before_bytes": 1.5e9,
                    "levels": [
                        {
                            "clients": c,
                            "aggregate_tok_s": 10.0,
                            "latency_s": [1.0 * c] * c,
                            "latency": summarize([1.0 * c] * c),
                            "ttft": summarize([0.2] * c),
                            "wall_s": c,
                            "tokens": 12 * c,
                        }
                        for c in (1, 2, 4)
                    ],
                    "transformers_batch": [{"clients": c, "aggregate_tok_s": 9.0 * c} for c in (1, 2)],
                },
                "engine_sweep": {
                    "max_tokens": 12,
                    "levels": {
                        "ai-stack llama.cpp": [
                            {"clients": c, "aggregate_tok_s": 40.0 + 7.0 * c, "ttft": summarize([0.3] * c)}
                            for c in (1, 8)
                        ]
                    },
                },
                "profile": {"skipped": "py-spy is not installed"},
                "llama_cpp_skipped": "not installed",
            },
            "gpu": {"skipped": "no CUDA"},
            "speech": {"error": "RuntimeError: boom", "traceback": "..."},
        },
    }


def test_report_renders_tables_plots_and_skips(tmp_path: Path) -> None:
    path = write_report(fake_results(), tmp_path, "2026-01-01-cpu-2c-8gb-quick")
    text = path.read_text()
    assert path.name == "2026-01-01-cpu-2c-8gb-quick.md"
    assert "Test CPU" in text and "1.15\u00d7" in text
    assert "no CUDA" in text and "boom" in text and "not installed" in text
    assert "| ai-stack llama.cpp | 8 | 96.00 | 0.30 | 2.04\u00d7 |" in text  # engine sweep: 96 / 47
    pngs = sorted(p.name for p in tmp_path.glob("*.png"))
    assert pngs and all(name.startswith("2026-01-01-cpu-2c-8gb-quick") for name in pngs)
    for name in pngs:
        assert f"({name})" in text
