"""Chat through the real HTTP server vs plain transformers generate and llama-cpp-python, alternating."""

from __future__ import annotations

import asyncio
import shutil
import statistics
import tempfile
from pathlib import Path
from typing import Any

from bench.baselines import WorkerProcess, llama_cpp_missing, model_files
from bench.client import SHORT, STORY, concurrent_streams, long_messages, one_stream
from bench.context import Run
from bench.profile import profile_during
from bench.server import CHAT, RssSampler, ServerProcess
from bench.stats import alternation, decode_rate, ratio_summary, summarize

AI = "ai-stack"
AI32 = "ai-stack fp32"
AI16 = "ai-stack fp16 packed"  # dtype float16 on CPU: fbgemm fp16 GEMM (what `auto` picks on AVX2-only CPUs)
AILL = "ai-stack llama.cpp"  # the llama.cpp engine on the GGUF
ENGINE_ARMS = (AI16, AILL)


def _sample(result: dict[str, Any]) -> dict[str, Any]:
    """Keep the raw numbers of one request, without the text."""
    return {k: v for k, v in result.items() if k != "text"}


def run_chat(run: Run) -> dict[str, Any]:
    s = run.settings
    home = ServerProcess([]).home
    folder, gguf = model_files(home)
    tmp = Path(tempfile.mkdtemp(prefix="ai-stack-bench-chat-"))
    result: dict[str, Any] = {"model": CHAT["id"], "converted_folder": str(folder), "gguf": str(gguf)}
    server = ServerProcess([CHAT], workdir=tmp)
    servers: dict[str, ServerProcess] = {AI: server}
    if s.fp32_arm:
        (tmp / "fp32").mkdir()
        servers[AI32] = ServerProcess([{**CHAT, "dtype": "float32"}], workdir=tmp / "fp32")
    missing = llama_cpp_missing()
    if s.engine_arms:
        (tmp / "fp16").mkdir()
        servers[AI16] = ServerProcess([{**CHAT, "dtype": "float16"}], workdir=tmp / "fp16")
        if missing is None:
            (tmp / "llamacpp").mkdir()
            llama_spec = {
                **CHAT,
                "engine": "llamacpp",
                "context_length": 4096,
                "options": {"parallel": max(s.sweep_levels)},
            }
            servers[AILL] = ServerProcess([llama_spec], workdir=tmp / "llamacpp")
    workers: dict[str, WorkerProcess] = {}
    try:
        run.log(f"chat: starting the ai-stack servers ({', '.join(servers)}) and the baseline workers")
        for each in servers.values():
            each.start()
        workers["transformers"] = WorkerProcess("transformers", folder, tmp / "transformers.log")
        if missing is None:
            workers["llama.cpp"] = WorkerProcess("llama", gguf, tmp / "llama.log")
        else:
            result["llama_cpp_skipped"] = missing
        result["workers"] = {name: w.ready for name, w in workers.items()}
        arms = [*servers, *workers]
        long = long_messages(s.long_functions)

        def call(arm: str, messages: list[dict[str, Any]], max_tokens: int) -> dict[str, Any]:
            if arm in servers:
                return one_stream(servers[arm].url, messages, max_tokens)
            return workers[arm].call(op="generate", messages=messages, max_tokens=max_tokens)

        for arm in arms:  # warm every path once (first HTTP connection, tokenizer caches)
            call(arm, SHORT, 2)
        raw: dict[str, dict[str, list[Any]]] = {arm: {"ttft_long": [], "decode": []} for arm in arms}
        for rep, arm in alternation(arms, s.repetitions):
            run.log(f"chat: repetition {rep + 1}/{s.repetitions}, {arm}")
            # The decode request's prompt is the short one: its first token is the short-prompt TTFT.
            longer, decode = call(arm, long, s.ttft_tokens), call(arm, STORY, s.decode_tokens)
            short = decode
            run.log(
                f"chat:   ttft short {short['ttft_s']:.2f} s ({short['prompt_tokens']} tok), long "
                f"{longer['ttft_s']:.2f} s ({longer['prompt_tokens']} tok), decode "
                f"{decode_rate(decode['piece_times_s'], decode['completion_tokens']):.2f} tok/s "
                f"({decode['completion_tokens']} tok, {decode['total_s']:.1f} s)"
            )
            raw[arm]["ttft_long"].append(_sample(longer))
            raw[arm]["decode"].append(_sample(decode))
        metrics: dict[str, dict[str, list[float]]] = {}
        for arm in arms:
            decode = raw[arm]["decode"]
            metrics[arm] = {
                "ttft_short_s": [r["ttft_s"] for r in decode],
                "ttft_long_s": [r["ttft_s"] for r in raw[arm]["ttft_long"]],
                "decode_tok_s": [decode_rate(r["piece_times_s"], r["completion_tokens"]) for r in decode],
                "request_s": [r["total_s"] for r in decode],
            }
        result["raw"] = raw
        result["prompt_tokens"] = {
            "short": raw[AI]["decode"][0]["prompt_tokens"],
            "long": raw[AI]["ttft_long"][0]["prompt_tokens"],
            "decode": raw[AI]["decode"][0]["prompt_tokens"],
        }
        result["summary"] = {arm: {k: summarize(v) for k, v in m.items()} for arm, m in metrics.items()}
        # Every ratio reads "ai-stack's speed relative to the baseline": > 1 means ai-stack is faster.
        result["ratios"] = {
            base: {
                "ttft_short": ratio_summary(metrics[base]["ttft_short_s"], metrics[AI]["ttft_short_s"]),
                "ttft_long": ratio_summary(metrics[base]["ttft_long_s"], metrics[AI]["ttft_long_s"]),
                "decode_tok_s": ratio_summary(metrics[AI]["decode_tok_s"], metrics[base]["decode_tok_s"]),
                "request": ratio_summary(metrics[base]["request_s"], metrics[AI]["request_s"]),
            }
            for base in arms[1:]
        }
        # Each engine arm against the plain library it wraps (same file, same run): > 1 means ai-stack faster.
        pairs = [(AILL, "llama.cpp")] if AILL in metrics and "llama.cpp" in metrics else []
        result["engine_ratios"] = {
            f"{arm} vs {base}": {
                "decode_tok_s": ratio_summary(metrics[arm]["decode_tok_s"], metrics[base]["decode_tok_s"]),
                "ttft_short": ratio_summary(metrics[base]["ttft_short_s"], metrics[arm]["ttft_short_s"]),
                "ttft_short_diff_s": statistics.median(metrics[arm]["ttft_short_s"])
                - statistics.median(metrics[base]["ttft_short_s"]),
                "ttft_long": ratio_summary(metrics[base]["ttft_long_s"], metrics[arm]["ttft_long_s"]),
            }
            for arm, base in pairs
        }
        result["sweep"] = run.guarded("chat sweep", lambda: _sweep(run, server, workers.get("transformers")))
        engines = {arm: servers[arm] for arm in ENGINE_ARMS if arm in servers}
        if engines:
            result["engine_sweep"] = run.guarded("chat engine sweep", lambda: _engine_sweep(run, engines))
        result["profile"] = run.guarded("chat profile", lambda: _profile(run, server, tmp))
    finally:
        for worker in workers.values():
            worker.stop()
        for each in servers.values():
            each.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    return result


def _sweep(run: Run, server: ServerProcess, transformers: WorkerProcess | None) -> dict[str, Any]:
    s = run.settings
    levels: list[dict[str, Any]] = []
    batches: list[dict[str, Any]] = []
    with RssSampler(server) as rss:
        for index, clients in enumerate(s.sweep_levels):
            arms = ["ai", "batch"] if index % 2 == 0 else ["batch", "ai"]
            for arm in arms:
                if arm == "ai":
                    run.log(f"chat sweep: {clients} concurrent streaming clients")
                    level = asyncio.run(concurrent_streams(server.url, clients, STORY, s.sweep_tokens))
                    run.log(
                        f"chat sweep:   {level['aggregate_tok_s']:.2f} tok/s, wall {level['wall_s']:.1f} s"
                    )
                    level["latency"] = summarize(level["latency_s"])
                    level["ttft"] = summarize(level["ttft_s"])
                    levels.append(level)
                elif transformers is not None and clients in s.batch_levels:
                    run.log(f"chat sweep: transformers generate, padded batch of {clients}")
                    batches.append(
                        transformers.call(op="batch", messages=STORY, n=clients, max_tokens=s.sweep_tokens)
                    )
    return {
        "max_tokens": s.sweep_tokens,
        "levels": levels,
        "transformers_batch": batches,
        "peak_rss_bytes": rss.peak,
        "rss_before_bytes": server.rss.get("ready", 0),
    }


def _engine_sweep(run: Run, servers: dict[str, ServerProcess]) -> dict[str, Any]:
    """The concurrency sweep against the other engines' servers, levels alternated across arms."""
    s = run.settings
    levels: dict[str, list[dict[str, Any]]] = {arm: [] for arm in servers}
    for index, clients in enumerate(s.sweep_levels):
        order = list(servers) if index % 2 == 0 else list(reversed(servers))
        for arm in order:
            run.log(f"chat engine sweep: {arm}, {clients} concurrent streaming clients")
            level = asyncio.run(concurrent_streams(servers[arm].url, clients, STORY, s.sweep_tokens))
            run.log(f"chat engine sweep:   {level['aggregate_tok_s']:.2f} tok/s, wall {level['wall_s']:.1f}s")
            level["ttft"] = summarize(level["ttft_s"])
            levels[arm].append(level)
    return {"max_tokens": s.sweep_tokens, "levels": levels}


def _profile(run: Run, server: ServerProcess, tmp: Path) -> dict[str, Any]:
    s = run.settings
    clients = s.profile_level
    run.log(f"chat profile: py-spy on the server during {clients} concurrent clients (not a measured pass)")

    def load() -> dict[str, Any]:
        return asyncio.run(concurrent_streams(server.url, clients, STORY, s.sweep_tokens))

    return profile_during(
        server.pid, load, s.profile_seconds, run.out / f"{run.stem}-profile.collapsed.txt.gz", tmp
    )
