"""The llama.cpp engine's prefix cache: on vs off vs raw llama-cpp-python on the same GGUF (issue 19).

Three patterns, each run in this order for every arm so that the ratios come from one run:
- `conversation`: an 8-turn chat with scripted answers (the prompt grows to ~1.5k tokens); time to first token
  of each turn. Raw `llama_cpp.Llama` keeps its previous KV and reuses the longest common prefix by itself.
- `openwebui`: Open WebUI's pattern: 36 tools sent with every request (~6.6k prompt tokens), a title request
  (no tools) between the turns; time to first token of turn 1, the title and turn 2.
- `shared_system`: 8 clients with one system prompt, all at once, two rounds.
Then `memory`: RSS of the cache-on server over many varied short requests.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import httpx

from bench.baselines import llama_cpp_missing, model_files
from bench.client import stream_chat
from bench.context import Run
from bench.server import CHAT, RssSampler, ServerProcess

CONTEXT = 8192
PARALLEL = 4
ON, OFF, RAW = "cache on", "cache off", "raw llama-cpp-python"

WORDS = [
    *("river", "stone", "cloud", "lamp", "forest", "glass", "tiger", "orbit", "copper", "violin", "garden"),
    *("harbor", "pepper", "signal", "canyon", "marble", "falcon", "lantern", "meadow", "engine", "prism"),
    *("velvet", "anchor", "summit", "ember"),
]


def _answer(turn: int) -> str:
    """A scripted assistant answer of ~150 tokens, different every turn."""
    return " ".join(f"{WORDS[(turn * 7 + i) % len(WORDS)]}" for i in range(120)) + "."


def conversation_turns(turns: int = 8) -> list[list[dict[str, Any]]]:
    """The message lists of each turn of a scripted conversation."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": "You are a helpful assistant. Answer in detail."}
    ]
    out = []
    for turn in range(turns):
        messages = [
            *messages,
            {"role": "user", "content": f"Tell me more about topic {turn}: {WORDS[turn]}."},
        ]
        out.append(messages)
        messages = [*messages, {"role": "assistant", "content": _answer(turn)}]
    return out


def openwebui_tools(count: int = 36) -> list[dict[str, Any]]:
    """`count` tool definitions shaped like Open WebUI's built-in tools (~6.6k prompt tokens with 36)."""
    tools = []
    for i in range(count):
        properties = {
            f"{WORDS[(i + k) % len(WORDS)]}_{k}": {
                "type": "string",
                "description": f"The {WORDS[(i * 3 + k) % len(WORDS)]} to use for step {k} of tool {i}; "
                "leave empty to use the default of the workspace.",
            }
            for k in range(3)
        }
        tools.append(
            {
                "type": "function",
                "function": {
                    "name": f"tool_{i}_{WORDS[i % len(WORDS)]}",
                    "description": f"Tool {i}: searches, reads or updates the {WORDS[i % len(WORDS)]} "
                    "records of the user's workspace, and returns what it found as JSON.",
                    "parameters": {
                        "type": "object",
                        "properties": properties,
                        "required": [next(iter(properties))],
                    },
                },
            }
        )
    return tools


def title_messages(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Open WebUI's title task: the chat history inside one user message, no tools."""
    chat = "\n".join(f"{m['role'].upper()}: {m['content']}" for m in history if m["role"] != "system")
    return [
        {
            "role": "user",
            "content": "### Task:\nGenerate a concise, 3-5 word title with an emoji summarizing the chat "
            f"history.\n### Chat History:\n<chat_history>\n{chat}\n</chat_history>",
        }
    ]


async def _stream(
    client: httpx.AsyncClient, url: str, messages: list[dict[str, Any]], max_tokens: int, **extra: Any
) -> dict[str, Any]:
    """One streamed greedy request: time to the first token and the usage (with cached_tokens)."""
    result = await stream_chat(client, url, messages, max_tokens, **extra)
    return {
        # With max_tokens = 1 (every pattern here) the whole request is the time to the first token.
        "ttft_s": result["total_s"] if max_tokens == 1 else result["ttft_s"],
        "total_s": result["total_s"],
        "prompt_tokens": result["prompt_tokens"],
        "cached_tokens": result["cached_tokens"],
        "text": result["text"],
    }


def _one(url: str, messages: list[dict[str, Any]], max_tokens: int = 1, **extra: Any) -> dict[str, Any]:
    async def go() -> dict[str, Any]:
        async with httpx.AsyncClient(timeout=3600) as client:
            return await _stream(client, url, messages, max_tokens, **extra)

    return asyncio.run(go())


class RawLlama:
    """llama_cpp.Llama on the same GGUF and token ids; it reuses the longest prefix of its last run."""

    def __init__(self, gguf: Path, folder: Path, threads: int) -> None:
        from llama_cpp import Llama
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(folder))
        self.llm = Llama(
            model_path=str(gguf),
            n_ctx=CONTEXT,
            n_batch=512,
            n_threads=threads,
            n_threads_batch=threads,
            verbose=False,
        )

    def ttft(self, messages: list[dict[str, Any]], max_tokens: int = 1, **kwargs: Any) -> dict[str, Any]:
        """Time to the first token of a greedy completion of the rendered prompt (and its text)."""
        text = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, tokenize=False, **kwargs
        )
        ids = list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
        started = time.perf_counter()
        first = None
        pieces = []
        stream = self.llm.create_completion(ids, max_tokens=max_tokens, temperature=0.0, stream=True)
        for chunk in stream:
            if first is None:
                first = time.perf_counter() - started
            pieces.append(chunk["choices"][0]["text"])  # type: ignore[index]
        return {
            "ttft_s": first if first is not None else time.perf_counter() - started,
            "total_s": time.perf_counter() - started,
            "prompt_tokens": len(ids),
            "text": "".join(pieces),
        }


def _arms(tmp: Path) -> tuple[dict[str, ServerProcess], RawLlama, dict[str, Any]]:
    from ai_stack.engines.llamacpp import physical_cores

    home = ServerProcess([]).home
    folder, gguf = model_files(home)
    threads = physical_cores()
    spec = {**CHAT, "engine": "llamacpp", "context_length": CONTEXT}
    servers: dict[str, ServerProcess] = {}
    for arm, cache in ((ON, True), (OFF, False)):
        (tmp / arm.replace(" ", "-")).mkdir(parents=True, exist_ok=True)
        options = {"parallel": PARALLEL, "n_threads": threads, "prefix_cache": cache}
        servers[arm] = ServerProcess([{**spec, "options": options}], workdir=tmp / arm.replace(" ", "-"))
    info = {
        "gguf": str(gguf),
        "context_length": CONTEXT,
        "parallel": PARALLEL,
        "threads": threads,
        "cpus": os.cpu_count(),
    }
    for server in servers.values():
        server.start()
    raw = RawLlama(gguf, folder, threads)
    return servers, raw, info


def _conversation(run: Run, servers: dict[str, ServerProcess], raw: RawLlama) -> dict[str, Any]:
    turns = conversation_turns(8)
    out: dict[str, list[dict[str, Any]]] = {ON: [], OFF: [], RAW: []}
    for index, messages in enumerate(turns):
        for arm in (ON, OFF, RAW):
            sample = raw.ttft(messages) if arm == RAW else _one(servers[arm].url, messages)
            out[arm].append(sample)
        run.log(
            f"prefix cache: conversation turn {index + 1}: "
            + ", ".join(f"{arm} {out[arm][-1]['ttft_s']:.2f} s" for arm in out)
            + f" ({out[ON][-1]['prompt_tokens']} tok, cached {out[ON][-1]['cached_tokens']})"
        )
    last = {arm: samples[-1]["ttft_s"] for arm, samples in out.items()}
    return {
        "turns": out,
        "last_turn_ttft_s": last,
        "last_turn_on_vs_raw": last[ON] / last[RAW],
        "last_turn_off_vs_on": last[OFF] / last[ON],
    }


def _openwebui(run: Run, servers: dict[str, ServerProcess], raw: RawLlama) -> dict[str, Any]:
    tools = openwebui_tools(36)
    system = {"role": "system", "content": "You are a helpful assistant with tools."}
    turn1 = [system, {"role": "user", "content": "What can you do for me today?"}]
    history = [*turn1, {"role": "assistant", "content": _answer(1)}]
    turn2 = [*history, {"role": "user", "content": "Then summarise my river records."}]
    steps = [("turn 1", turn1, True), ("title", title_messages(history), False), ("turn 2", turn2, True)]
    out: dict[str, dict[str, Any]] = {ON: {}, OFF: {}, RAW: {}}
    for arm in (ON, OFF, RAW):
        for name, messages, with_tools in steps:
            if arm == RAW:
                sample = raw.ttft(messages, **({"tools": tools} if with_tools else {}))
            else:
                extra = {"tools": tools} if with_tools else {}  # tool_choice "auto", as Open WebUI
                sample = _one(servers[arm].url, messages, **extra)
            out[arm][name] = sample
            run.log(
                f"prefix cache: open webui {arm} {name}: {sample['ttft_s']:.2f} s "
                f"({sample['prompt_tokens']} tok, cached {sample.get('cached_tokens')})"
            )
    return {"steps": out, "turn2_ttft_s": {arm: out[arm]["turn 2"]["ttft_s"] for arm in out}}


ANSWER_TOKENS = 48


def _openwebui_answered(run: Run, servers: dict[str, ServerProcess], raw: RawLlama) -> dict[str, Any]:
    """The Open WebUI pattern as it happens: turn 2 carries the model's own answer to turn 1 (which the engine
    keeps with the prompt), not a scripted one, so only the new user message is new."""
    tools = openwebui_tools(36)
    system = {"role": "system", "content": "You are a helpful assistant with tools."}
    turn1 = [system, {"role": "user", "content": "What can you do for me today? Answer in two sentences."}]
    out: dict[str, dict[str, Any]] = {}
    for arm in (ON, RAW):
        if arm == RAW:
            first = raw.ttft(turn1, max_tokens=ANSWER_TOKENS, tools=tools)
        else:
            first = _one(servers[arm].url, turn1, max_tokens=ANSWER_TOKENS, tools=tools)
        answer = first["text"] or _answer(1)  # a tool call instead of text: the scripted answer
        history = [*turn1, {"role": "assistant", "content": answer}]
        turn2 = [*history, {"role": "user", "content": "Then summarise my river records."}]
        if arm == RAW:
            title = raw.ttft(title_messages(history))
            second = raw.ttft(turn2, tools=tools)
        else:
            title = _one(servers[arm].url, title_messages(history))
            second = _one(servers[arm].url, turn2, tools=tools)
        out[arm] = {"turn 1": first, "title": title, "turn 2": second, "own_answer": bool(first["text"])}
        run.log(
            f"prefix cache: open webui (own answer) {arm}: turn 2 {second['ttft_s']:.2f} s "
            f"({second['prompt_tokens']} tok, cached {second.get('cached_tokens')})"
        )
    return {"steps": out, "turn2_ttft_s": {arm: out[arm]["turn 2"]["ttft_s"] for arm in out}}


def _shared_system(run: Run, servers: dict[str, ServerProcess]) -> dict[str, Any]:
    system = {"role": "system", "content": "You are the support assistant of a shop. " + _answer(3)}
    out: dict[str, Any] = {}
    for arm in (ON, OFF):
        url = servers[arm].url
        histories = [
            [system, {"role": "user", "content": f"Client {i}: where is order {i}?"}] for i in range(8)
        ]

        async def round_of(messages: list[list[dict[str, Any]]], url: str = url) -> list[dict[str, Any]]:
            limits = httpx.Limits(max_connections=16)
            async with httpx.AsyncClient(timeout=3600, limits=limits) as client:
                return list(await asyncio.gather(*(_stream(client, url, m, 1) for m in messages)))

        first = asyncio.run(round_of(histories))
        second_messages = [
            [
                *h,
                {"role": "assistant", "content": "It ships tomorrow."},
                {"role": "user", "content": "Thanks!"},
            ]
            for h in histories
        ]
        started = time.perf_counter()
        second = asyncio.run(round_of(second_messages))
        out[arm] = {"round1": first, "round2": second, "round2_wall_s": time.perf_counter() - started}
        run.log(
            f"prefix cache: 8 clients {arm}: round 2 mean TTFT "
            f"{sum(r['ttft_s'] for r in second) / 8:.2f} s, cached "
            f"{[r['cached_tokens'] for r in second]}"
        )
    return out


def _memory(run: Run, server: ServerProcess, requests: int) -> dict[str, Any]:
    before = server.rss_now()
    with RssSampler(server) as sampler:
        for i in range(requests):
            words = " ".join(WORDS[(i * k + 3) % len(WORDS)] for k in range(1 + i % 40))
            system = [{"role": "system", "content": "Be brief. " * (1 + i % 7)}] if i % 3 else []
            _one(server.url, [*system, {"role": "user", "content": f"{i}: {words}"}], max_tokens=1 + i % 3)
    after = server.rss_now()
    run.log(f"prefix cache: {requests} varied requests: RSS {before / 1e6:.0f} → {after / 1e6:.0f} MB")
    return {"requests": requests, "rss_before": before, "rss_after": after, "rss_peak": sampler.peak}


def run_prefix_cache(run: Run) -> dict[str, Any]:
    """The section's entry point (`python -m bench --only prefix_cache`)."""
    import tempfile

    missing = llama_cpp_missing()
    if missing is not None:
        return {"skipped": missing}
    tmp = Path(tempfile.mkdtemp(prefix="ai-stack-bench-prefix-"))
    # BENCH_PREFIX_PARTS=openwebui,memory reruns some parts; the others are kept from the results file.
    default_parts = "conversation,openwebui,openwebui_answered,shared_system,memory"
    parts = os.environ.get("BENCH_PREFIX_PARTS", default_parts).split(",")
    previous = run.out / f"{run.stem}.json"
    kept = (
        json.loads(previous.read_text()).get("sections", {}).get("prefix_cache", {})
        if previous.exists()
        else {}
    )
    partial = run.out / f"{run.stem}-prefix-cache-partial.json"
    servers, raw, info = _arms(tmp)
    result: dict[str, Any] = {**kept, "setup": info, "parts_run": parts}
    requests = 500 if run.settings.mode == "full" else 100
    steps: dict[str, Any] = {
        "conversation": lambda: _conversation(run, servers, raw),
        "openwebui": lambda: _openwebui(run, servers, raw),
        "openwebui_answered": lambda: _openwebui_answered(run, servers, raw),
        "shared_system": lambda: _shared_system(run, servers),
        "memory": lambda: _memory(run, servers[ON], requests),
    }
    try:
        for name in parts:
            result[name] = {**run.guarded(name, steps[name]), "load_average": os.getloadavg()}
            partial.write_text(json.dumps(result, indent=1))  # what is done survives an interrupted run
    finally:
        for server in servers.values():
            server.stop()
    return result


def _openwebui_table(title: str, arms: dict[str, dict[str, Any]]) -> list[str]:
    """The Markdown table of an Open WebUI pattern's steps per arm."""
    lines = [title, "", "| arm | turn 1 | title | turn 2 | turn 2 cached tokens |", "|---|---|---|---|---|"]
    for arm, steps in arms.items():
        first, title_step, second = steps["turn 1"], steps["title"], steps["turn 2"]
        lines.append(
            f"| {arm} | {first['ttft_s']:.2f} ({first['prompt_tokens']} tok) | {title_step['ttft_s']:.2f} | "
            f"{second['ttft_s']:.2f} ({second['prompt_tokens']} tok) | {second.get('cached_tokens', '-')} |"
        )
    return [*lines, ""]


def report_lines(section: dict[str, Any]) -> list[str]:
    """The Markdown of the section's results."""
    lines: list[str] = []
    conv = section.get("conversation", {})
    if "turns" in conv:
        lines += ["8-turn conversation, time to first token (s) per turn:", ""]
        lines += [
            "| turn | prompt tokens | cached | cache on | cache off | raw llama-cpp-python |",
            "|---|---|---|---|---|---|",
        ]
        for i, (on, off, raw) in enumerate(
            zip(conv["turns"][ON], conv["turns"][OFF], conv["turns"][RAW], strict=True)
        ):
            lines.append(
                f"| {i + 1} | {on['prompt_tokens']} | {on['cached_tokens']} | {on['ttft_s']:.2f} | "
                f"{off['ttft_s']:.2f} | {raw['ttft_s']:.2f} |"
            )
        lines += [
            "",
            f"Last turn: cache on ÷ raw llama.cpp = {conv['last_turn_on_vs_raw']:.2f}× the time "
            "(goal ≤ 1.2); "
            f"cache off ÷ cache on = {conv['last_turn_off_vs_on']:.2f}×.",
            "",
        ]
    web = section.get("openwebui", {})
    if "steps" in web:
        lines += _openwebui_table("Open WebUI pattern (36 tools), time to first token (s):", web["steps"])
    answered = section.get("openwebui_answered", {})
    if "steps" in answered:
        title = (
            "Open WebUI pattern, the model's own answer to turn 1 (48 tokens) in turn 2's history, time to "
            "first token (s):"
        )
        lines += _openwebui_table(title, answered["steps"])
    shared = section.get("shared_system", {})
    if ON in shared:
        lines += ["8 clients, one system prompt, two rounds at once: mean time to first token (s):", ""]
        lines += ["| arm | round 1 | round 2 | round 2 cached tokens |", "|---|---|---|---|"]
        for arm in (ON, OFF):
            rounds = shared[arm]
            mean1 = sum(r["ttft_s"] for r in rounds["round1"]) / len(rounds["round1"])
            mean2 = sum(r["ttft_s"] for r in rounds["round2"]) / len(rounds["round2"])
            cached = [r["cached_tokens"] for r in rounds["round2"]]
            lines.append(f"| {arm} | {mean1:.2f} | {mean2:.2f} | {cached} |")
        lines.append("")
    memory = section.get("memory", {})
    if "requests" in memory:
        lines += [
            f"Memory over {memory['requests']} varied requests (cache on): "
            f"RSS {memory['rss_before'] / 1e6:.0f} MB "
            f"before, {memory['rss_after'] / 1e6:.0f} MB after, peak {memory['rss_peak'] / 1e6:.0f} MB.",
            "",
        ]
    return lines
