"""Head-of-line blocking by a long prompt (issue 13 part 3), on both chat engines of the default model.

For each engine (transformers, and llama.cpp when installed), one server with the prefix cache off (so that
no step reuses another's prompt), and three measurements of a short request (a 4-token answer):
- `alone`: nothing else running (the baseline of this run);
- `after abandoned`: a ~4k-token prompt is sent and its client leaves after 5 s (mid-prefill); the short
  request is sent at once. Before chunked, cancellable prefill it waited for the whole abandoned prompt
  (55 s vs 3.4 s);
- `beside running`: the long prompt keeps running (its client stays); the short request is sent 1 s later.
  With prefill in chunks between decode steps it finishes long before the long prompt's first token.
Figures are ratios against `alone` measured in the same run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import statistics
import time
from typing import Any

import httpx

from bench.baselines import llama_cpp_missing
from bench.client import stream_chat
from bench.context import Run
from bench.server import CHAT, ServerProcess

SHORT = [{"role": "user", "content": "Say hi."}]
ABANDON_AFTER_S = 5.0
BESIDE_DELAY_S = 1.0


def long_messages(tokens: int = 4000) -> list[dict[str, Any]]:
    """A user message of about `tokens` tokens of varied English words."""
    words = ["river", "stone", "cloud", "lamp", "forest", "glass", "tiger", "orbit", "copper", "violin"]
    words += ["garden", "harbor", "pepper", "signal", "canyon", "marble", "falcon", "lantern", "meadow"]
    text = " ".join(f"{words[(i * 7) % len(words)]}{i % 10}" for i in range(tokens * 2 // 3))
    return [{"role": "user", "content": f"Summarise this text in one line:\n{text}"}]


async def _short(client: httpx.AsyncClient, url: str) -> dict[str, Any]:
    return await stream_chat(client, url, SHORT, max_tokens=4)


async def _alone(url: str, repetitions: int) -> list[float]:
    async with httpx.AsyncClient(timeout=3600) as client:
        await _short(client, url)  # warm up
        return [(await _short(client, url))["total_s"] for _ in range(repetitions)]


async def _after_abandoned(url: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=3600) as client:
        long = asyncio.create_task(stream_chat(client, url, long_messages(), max_tokens=8))
        await asyncio.sleep(ABANDON_AFTER_S)
        long.cancel()  # the client leaves mid-prefill: the connection closes
        with contextlib.suppress(asyncio.CancelledError):
            await long
        short = await _short(client, url)
    return {"short_total_s": short["total_s"], "short_ttft_s": short["ttft_s"]}


async def _beside_running(url: str) -> dict[str, Any]:
    async with httpx.AsyncClient(timeout=3600) as client:
        long_sent = time.perf_counter()
        long = asyncio.create_task(stream_chat(client, url, long_messages(), max_tokens=8))
        await asyncio.sleep(BESIDE_DELAY_S)
        short = await _short(client, url)
        short_done = time.perf_counter()
        result = await long
        long_first = result["ttft_s"]
    return {
        "short_total_s": short["total_s"],
        "long_ttft_s": long_first,
        "long_prompt_tokens": result["prompt_tokens"],
        "short_done_before_long_first_token": short_done < long_sent + long_first,
    }


def _engine_arm(run: Run, engine: str, repetitions: int) -> dict[str, Any]:
    spec = {**CHAT, "engine": engine, "options": {"prefix_cache": False}, "context_length": 8192}
    if engine == "llamacpp":
        spec.pop("dtype", None)
    with ServerProcess([spec]).start() as server:
        alone = asyncio.run(_alone(server.url, repetitions))
        base = statistics.median(alone)
        abandoned = asyncio.run(_after_abandoned(server.url))
        beside = asyncio.run(_beside_running(server.url))
    out = {
        "alone_total_s": alone,
        "alone_median_s": base,
        "after_abandoned": abandoned,
        "beside_running": beside,
        "after_abandoned_vs_alone": abandoned["short_total_s"] / base,
        "beside_running_vs_alone": beside["short_total_s"] / base,
        "load_average": os.getloadavg(),
    }
    run.log(
        f"head of line {engine}: alone {base:.2f} s; after an abandoned 4k prompt "
        f"{abandoned['short_total_s']:.2f} s ({out['after_abandoned_vs_alone']:.2f}×); beside a running one "
        f"{beside['short_total_s']:.2f} s ({out['beside_running_vs_alone']:.2f}×, long TTFT "
        f"{beside['long_ttft_s']:.1f} s)"
    )
    return out


def run_head_of_line(run: Run) -> dict[str, Any]:
    """The section's entry point (`python -m bench --only head_of_line`)."""
    repetitions = 5 if run.settings.mode == "full" else 3
    engines = ["transformers"] + ([] if llama_cpp_missing() else ["llamacpp"])
    result: dict[str, Any] = {"engines": {}}
    for engine in engines:
        result["engines"][engine] = run.guarded(engine, lambda e=engine: _engine_arm(run, e, repetitions))
        (run.out / f"{run.stem}-head-of-line-partial.json").write_text(json.dumps(result, indent=1))
    return result


def report_lines(section: dict[str, Any]) -> list[str]:
    """The Markdown of the section's results."""
    lines = [
        "A short request (4 tokens) alone, right after a ~4k-token prompt whose client left after 5 s, and "
        "1 s after a ~4k-token prompt that keeps running (prefix cache off). Ratios against `alone` in the "
        "same run.",
        "",
        "| engine | alone (s) | after abandoned (s) | ratio | beside running (s) | ratio | long TTFT (s) |",
        "|---|---|---|---|---|---|---|",
    ]
    for engine, arm in section.get("engines", {}).items():
        if "alone_median_s" not in arm:
            lines.append(f"| {engine} | failed: {arm.get('error', arm)} | | | | | |")
            continue
        lines.append(
            f"| {engine} | {arm['alone_median_s']:.2f} | {arm['after_abandoned']['short_total_s']:.2f} | "
            f"{arm['after_abandoned_vs_alone']:.2f}× | {arm['beside_running']['short_total_s']:.2f} | "
            f"{arm['beside_running_vs_alone']:.2f}× | {arm['beside_running']['long_ttft_s']:.1f} |"
        )
    return [*lines, ""]
