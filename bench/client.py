"""HTTP clients for the benchmarks: one streamed chat request with per-piece timestamps, concurrent sweeps."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx

SHORT = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
STORY = [{"role": "user", "content": "Write a long, detailed story about a lighthouse keeper and a storm."}]


def long_messages(functions: int = 44) -> list[dict[str, str]]:
    """A ~1000-token prompt (deterministic Python code) asking for a one-line summary."""
    code = "\n".join(
        f"def scale_{i}(values, factor={i}):\n"
        f"    return [v * factor + {i * 7 % 13} for v in values if v > {i}]\n"
        for i in range(functions)
    )
    return [{"role": "user", "content": f"Summarize what this code does in one sentence.\n\n{code}"}]


async def stream_chat(
    client: httpx.AsyncClient,
    url: str,
    messages: list[dict[str, Any]],
    max_tokens: int,
    model: str = "default",
    **extra: Any,
) -> dict[str, Any]:
    """One streamed chat completion (greedy): time to the first content piece, of each piece, of the end."""
    body = {
        "model": model,
        "messages": messages,
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
        **extra,
    }
    started = time.perf_counter()
    times: list[float] = []
    usage: dict[str, Any] = {}
    text = []
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[6:])
            if "error" in event:
                raise RuntimeError(f"stream error: {event['error']}")
            if event.get("usage"):
                usage = event["usage"]
            for choice in event.get("choices", []):
                content = choice.get("delta", {}).get("content")
                if content:
                    times.append(time.perf_counter() - started)
                    text.append(content)
    total = time.perf_counter() - started
    return {
        "ttft_s": times[0] if times else float("nan"),
        "total_s": total,
        "piece_times_s": [round(t, 5) for t in times],
        "completion_tokens": int(usage.get("completion_tokens", len(times))),
        "prompt_tokens": int(usage.get("prompt_tokens", 0)),
        "cached_tokens": (usage.get("prompt_tokens_details") or {}).get("cached_tokens"),
        "text": "".join(text),
    }


async def concurrent_streams(
    url: str, clients: int, messages: list[dict[str, Any]], max_tokens: int
) -> dict[str, Any]:
    """`clients` streamed requests started together; aggregate tokens/s and each request's timings."""
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=3600, limits=limits) as client:
        started = time.perf_counter()
        results = await asyncio.gather(
            *(stream_chat(client, url, messages, max_tokens) for _ in range(clients))
        )
        wall = time.perf_counter() - started
    tokens = sum(r["completion_tokens"] for r in results)
    return {
        "clients": clients,
        "wall_s": wall,
        "tokens": tokens,
        "aggregate_tok_s": tokens / wall,
        "latency_s": [r["total_s"] for r in results],
        "ttft_s": [r["ttft_s"] for r in results],
        "tokens_per_request": [r["completion_tokens"] for r in results],
    }


def one_stream(url: str, messages: list[dict[str, Any]], max_tokens: int) -> dict[str, Any]:
    """A single streamed request from synchronous code."""

    async def run() -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=3600) as client:
            return await stream_chat(client, url, messages, max_tokens)

    return asyncio.run(run())
