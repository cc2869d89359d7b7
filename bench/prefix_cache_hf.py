"""Prefix cache of the transformers engine: time to first token per turn of a chat, cache on vs off.

`python -m bench.prefix_cache_hf [--turns 8] [--answer-tokens 64] [--tools 36] [--dtype auto] [--out FILE]`

One engine (the converted default model unless `--model` names another folder) answers an 8-turn
conversation greedily. Each turn's prompt is timed twice: with the prefix cache (it holds the last turn's
prompt and answer) and without it (the cache detached: a cold prefill of the whole history). The history is
the cached arm's own answers, so both arms see the same prompt. Then a tools scenario: a system prompt with
`--tools` function definitions (Open WebUI sends its 36 built-in tools with every request) and three
different questions: the first pays the whole prefill, the next reuse the tools block. Goal of issue 19:
last-turn TTFT cached ≤ 0.25× the cold one.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path
from typing import Any

from ai_stack.engines.base import Piece, Prompt, SamplingParams
from ai_stack.engines.transformers import TransformersChatEngine, load_transformers

SYSTEM = (
    "You are a careful senior software engineer. Answer in plain English, show short code where it helps, "
    "and say when you are not sure. Prefer the standard library. Keep answers under a page."
)
QUESTIONS = [
    "How do I read a CSV file in Python and sum one column?",
    "Now skip rows whose value is empty.",
    "How would I do the same with pandas?",
    "Which of the two is faster for a 2 GB file, and why?",
    "Write a function that streams the file and yields running totals.",
    "Add type hints and a docstring to it.",
    "How do I test it with pytest without a real file?",
    "Summarize everything we discussed in five bullet points.",
]


def first_token_time(
    engine: TransformersChatEngine, prompt: Prompt, max_tokens: int
) -> tuple[float, str, int]:
    """Seconds to the first token, the answer's text and its cached prompt tokens (greedy)."""
    first: list[float] = []
    pieces: list[str] = []

    def emit(piece: Piece) -> None:
        if not first:
            first.append(time.perf_counter())
        pieces.append(piece.text)

    started = time.perf_counter()
    result = engine.generate(
        prompt, SamplingParams(max_tokens=max_tokens, temperature=0.0), threading.Event(), emit
    )
    return first[0] - started, "".join(pieces), result.cached_tokens


def cold_time(engine: TransformersChatEngine, prompt: Prompt) -> float:
    """TTFT of the prompt with the engine's prefix cache detached: a prefill of every token."""
    cache, engine.prefix_cache = engine.prefix_cache, None
    try:
        return first_token_time(engine, prompt, 1)[0]
    finally:
        engine.prefix_cache = cache


def conversation(engine: TransformersChatEngine, turns: int, answer_tokens: int) -> list[dict[str, Any]]:
    """TTFT per turn, cached and cold, over one growing conversation."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": SYSTEM}]
    rows = []
    for turn in range(turns):
        messages.append({"role": "user", "content": QUESTIONS[turn % len(QUESTIONS)]})
        prompt = engine.render(messages, {})
        cold = cold_time(engine, prompt)
        cached, answer, hit = first_token_time(engine, prompt, answer_tokens)
        rows.append(
            {"turn": turn + 1, "prompt_tokens": len(prompt.token_ids), "cached_tokens": hit, "cold_s": cold}
            | {"cached_s": cached, "ratio": cached / cold}
        )
        print(
            f"turn {turn + 1}: {len(prompt.token_ids):5d} tokens ({hit:5d} cached)  "
            f"cold {cold * 1000:7.0f} ms  cached {cached * 1000:7.0f} ms  ×{cached / cold:.2f}",
            flush=True,
        )
        messages.append({"role": "assistant", "content": answer})
    return rows


def tools_block(count: int) -> list[dict[str, Any]]:
    """`count` function definitions shaped like a chat UI's built-in tools."""
    return [
        {
            "type": "function",
            "function": {
                "name": f"tool_{index}_lookup",
                "description": f"Look up record kind {index} in the knowledge base and return the matches, "
                "newest first, with their titles, dates and a short summary of each.",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "query": {"type": "string", "description": "what to search for"},
                        "limit": {"type": "integer", "description": "the most results to return"},
                        "since": {"type": "string", "description": "an ISO date; older records are skipped"},
                    },
                    "required": ["query"],
                },
            },
        }
        for index in range(count)
    ]


def tools_scenario(engine: TransformersChatEngine, count: int) -> list[dict[str, Any]]:
    """TTFT of three different questions behind one long tools block: cached vs cold."""
    tools = tools_block(count)
    rows = []
    for question in QUESTIONS[:3]:
        prompt = engine.render([{"role": "user", "content": question}], {"tools": tools})
        cold = cold_time(engine, prompt)
        cached, _, hit = first_token_time(engine, prompt, 1)
        rows.append(
            {"prompt_tokens": len(prompt.token_ids), "cached_tokens": hit, "cold_s": cold}
            | {"cached_s": cached}
        )
        print(
            f"tools: {len(prompt.token_ids):5d} tokens ({hit:5d} cached)  "
            f"cold {cold * 1000:7.0f} ms  cached {cached * 1000:7.0f} ms",
            flush=True,
        )
    return rows


def default_model() -> str:
    """The converted folder of the default chat model in the usual cache home."""
    from bench.baselines import model_files

    return str(model_files(Path("~/.cache/ai-stack").expanduser())[0])


def main() -> None:
    """Run both scenarios and print (and optionally save) the timings."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default=None, help="a local HF folder (default: the converted default model)"
    )
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--turns", type=int, default=8)
    parser.add_argument("--answer-tokens", type=int, default=64)
    parser.add_argument(
        "--tools", type=int, default=36, help="tool definitions in the tools scenario; 0: skip"
    )
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here")
    args = parser.parse_args()
    engine = load_transformers(args.model or default_model(), dtype=args.dtype)
    first_token_time(engine, engine.render([{"role": "user", "content": "Hi"}], {}), 2)  # warm-up
    results: dict[str, Any] = {"model": args.model or "default", "dtype": args.dtype}
    results["conversation"] = conversation(engine, args.turns, args.answer_tokens)
    if args.tools:
        results["tools"] = tools_scenario(engine, args.tools)
    last = results["conversation"][-1]
    print(f"last turn: cached TTFT = {last['ratio']:.2f}× the cold prefill (goal ≤ 0.25×)")
    engine.close()
    if args.out is not None:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
