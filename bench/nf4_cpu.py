"""4-bit weights on CPU (bitsandbytes NF4/FP4) against bf16, fp16-packed and llama.cpp, on the default model.

`python -m bench.nf4_cpu [--arms bf16,fp16-packed,nf4,fp4,...] [--tokens 128] [--out FILE]`

Each arm loads the converted default model (unless `--model` names another folder) in a child process of its
own, so load time and resident memory are its own, and measures: load time, RSS after load and at the end,
single-stream greedy decode (tokens/s after the first token), 8 concurrent streams (all tokens / wall time),
the time to first token of a ~1k-token prompt (prefix cache off), and quality against the converted bf16
weights computed in float32 (the `ref` arm): over a fixed ~480-token text of prose, code, JSON, numbers and
French, the share of positions whose top-1 next token agrees with the reference, and the mean
KL(reference || arm) in nats. `nf4-unfused` forces bitsandbytes' path for CPUs without AVX512-BF16
(de-quantize each weight per call, then a bf16 matmul) on this CPU. `llamacpp` runs the same GGUF in the
llama.cpp engine (speed only). The arms run one after another in one invocation: compare their ratios, since
the absolute figures move with what else the machine runs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import psutil

ARMS: dict[str, dict[str, Any]] = {
    "ref": {"dtype": "float32", "quantization": "none"},
    "bf16": {"dtype": "bfloat16", "quantization": "none"},
    "fp16-packed": {"dtype": "float16", "quantization": "none"},
    "nf4": {"dtype": "auto", "quantization": "nf4"},
    "nf4-dq": {"dtype": "auto", "quantization": "nf4", "double_quant": True},
    "fp4": {"dtype": "auto", "quantization": "fp4"},
    "nf4-unfused": {"dtype": "auto", "quantization": "nf4", "unfused": True},
    "llamacpp": {},
}
DEFAULT_ARMS = "ref,bf16,fp16-packed,nf4,nf4-dq,fp4,nf4-unfused,llamacpp"

QUALITY_TEXT = """\
The old lighthouse keeper climbed the spiral stairs every evening at dusk, carrying a tin of oil and a \
notebook in which he recorded the wind, the colour of the sea and the ships that passed. In forty years \
he had missed only three nights: two storms and the birth of his daughter.

def merge_sorted(a: list[int], b: list[int]) -> list[int]:
    \"\"\"Merge two sorted lists into one sorted list in linear time.\"\"\"
    i, j, out = 0, 0, []
    while i < len(a) and j < len(b):
        if a[i] <= b[j]:
            out.append(a[i]); i += 1
        else:
            out.append(b[j]); j += 1
    return out + a[i:] + b[j:]

{"id": 4172, "name": "Ada Lovelace", "born": 1815, "languages": ["English", "French"], "active": false}

To convert 72 degrees Fahrenheit to Celsius, subtract 32 and multiply by 5/9: (72 - 32) * 5 / 9 = 22.2.
The sum of the first ten primes, 2 + 3 + 5 + 7 + 11 + 13 + 17 + 19 + 23 + 29, is 129.

La ville de Lyon se trouve au confluent du Rhône et de la Saône. On y mange bien, et les traboules du \
Vieux Lyon permettent de traverser les immeubles d'une rue à l'autre.

SELECT customer_id, COUNT(*) AS orders, SUM(total) AS revenue
FROM orders WHERE created_at >= '2024-01-01'
GROUP BY customer_id HAVING COUNT(*) > 3 ORDER BY revenue DESC LIMIT 10;

Q: Why does ice float on water? A: Because water expands as it freezes, so ice is less dense than the \
liquid water around it, and anything less dense than the fluid it sits in floats.
"""
STREAM_QUESTIONS = [
    "Write a Python function that checks whether a string is a palindrome.",
    "Explain what a hash map is in three sentences.",
    "List five European capitals and one fact about each.",
    "Write a haiku about autumn rain.",
    "How do I reverse a linked list in C?",
    "What is the difference between TCP and UDP?",
    "Give me a bash one-liner that counts lines in all .py files.",
    "Describe the water cycle for a ten-year-old.",
]


def rss_mb() -> float:
    """This process's resident memory now, in MB."""
    return float(psutil.Process().memory_info().rss) / 1e6


def peak_rss_mb() -> float:
    """This process's peak resident memory, in MB."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e3


def timed_generate(engine: Any, prompt: Any, max_tokens: int) -> tuple[float, list[float], str]:
    """Greedy generation: seconds to the first piece, the time of each token after it, and the text."""
    from ai_stack.engines.base import Piece, SamplingParams

    stamps: list[float] = []
    text: list[str] = []

    def emit(piece: Piece) -> None:
        stamps.extend([time.perf_counter()] * max(piece.tokens, 1))
        text.append(piece.text)

    ends = {engine.tokenizer.eos_token_id, *engine.eos_ids} - {None}
    # End tokens banned: every arm decodes exactly max_tokens tokens.
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, logit_bias={t: -100.0 for t in ends})
    started = time.perf_counter()
    engine.generate(prompt, params, threading.Event(), emit)
    return stamps[0] - started, stamps, "".join(text)


def decode_rate(stamps: list[float]) -> float:
    """Tokens per second after the first token."""
    return (len(stamps) - 1) / (stamps[-1] - stamps[0]) if len(stamps) > 1 else 0.0


def concurrent_streams(engine: Any, tokens: int) -> float:
    """Aggregate tokens/s of 8 concurrent greedy requests of `tokens` tokens each."""
    prompts = [engine.render([{"role": "user", "content": q}], {}) for q in STREAM_QUESTIONS]
    counts = [0] * len(prompts)
    barrier = threading.Barrier(len(prompts) + 1)

    def run(index: int) -> None:
        barrier.wait()
        counts[index] = len(timed_generate(engine, prompts[index], tokens)[1])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(prompts))]
    for thread in threads:
        thread.start()
    barrier.wait()
    started = time.perf_counter()
    for thread in threads:
        thread.join()
    return sum(counts) / (time.perf_counter() - started)


def long_prompt(engine: Any, target: int = 1000) -> Any:
    """A chat prompt of `target` tokens or a few more: numbered copies of the quality text, cut to size."""
    text = "\n".join(f"Part {i + 1}.\n{QUALITY_TEXT}" for i in range(target // 300 + 1))
    ids = engine.tokenizer(text, add_special_tokens=False)["input_ids"]
    overhead = len(engine.render([{"role": "user", "content": "Summarize this."}], {}).token_ids)
    cut = engine.tokenizer.decode(ids[: target - overhead])
    return engine.render([{"role": "user", "content": cut + "\nSummarize this."}], {})


def quality_logprobs(engine: Any) -> Any:
    """Log-probabilities (float32, [tokens, vocab]) of the model over the quality text, teacher-forced."""
    import torch

    ids = engine.tokenizer(QUALITY_TEXT, add_special_tokens=False, return_tensors="pt")["input_ids"]
    with torch.inference_mode():
        logits = engine.model(input_ids=ids.to(engine.model.device)).logits[0].float()
    return torch.log_softmax(logits, dim=-1)


def in_own_thread(fn: Any) -> Any:
    """fn() in a thread that ends with it, as the server loads models (ai_stack/threads.py).

    A thread that runs torch's parallel regions keeps its OpenMP worker team until it exits; with a second
    team alive (the engine's scheduler thread has its own), libgomp throttles its spin-waits once its threads
    outnumber the cores, and every decode step pays for it (here fp16-packed 28 vs 36-42 tok/s).
    """
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if "error" in box:
        raise box["error"]
    return box["result"]


def run_arm(arm: str, model: str, gguf: str | None, tokens: int, ref_path: Path) -> dict[str, Any]:
    """Load one arm and measure it (run in a child process)."""
    import torch

    spec = ARMS[arm]
    before = rss_mb()
    started = time.perf_counter()
    if arm == "llamacpp":
        from ai_stack.engines.llamacpp import load_llamacpp

        options = {"parallel": 8, "prefix_cache": False}
        engine: Any = in_own_thread(lambda: load_llamacpp(str(gguf), model, options, device="cpu"))
    else:
        if spec.get("unfused"):
            import bitsandbytes.nn.modules as bnb_modules

            bnb_modules.has_avx512bf16 = lambda: False  # what Linear4bit asks at construction
        from ai_stack.engines.transformers import load_transformers

        engine = in_own_thread(
            lambda: load_transformers(
                model,
                device="cpu",
                dtype=spec["dtype"],
                quantization=spec["quantization"],
                double_quant=spec.get("double_quant"),
                prefix_cache=False,
            )
        )
    from ai_stack.registry import release_free_memory

    release_free_memory()  # what the load's thread freed, as the server does after a load
    result: dict[str, Any] = {"arm": arm, "load_s": time.perf_counter() - started}
    result["rss_after_load_mb"] = rss_mb()
    result["rss_growth_mb"] = result["rss_after_load_mb"] - before
    try:
        if arm != "llamacpp":

            def quality() -> dict[str, Any]:
                logprobs = quality_logprobs(engine)
                if arm == "ref":
                    torch.save(logprobs, ref_path)
                    return {}
                ref = torch.load(ref_path)
                n = min(len(ref), len(logprobs))
                ref, logprobs = ref[:n], logprobs[:n]
                kl = (ref.exp() * (ref - logprobs)).sum(-1)
                return {
                    "quality_tokens": n,
                    "top1_agreement": float((ref.argmax(-1) == logprobs.argmax(-1)).float().mean()),
                    "mean_kl_nats": float(kl.mean()),
                }

            result.update(in_own_thread(quality))  # torch's work off the main thread (see in_own_thread)
        if arm == "ref":
            return result
        prompt = engine.render([{"role": "user", "content": "Write a short story about a lighthouse."}], {})
        timed_generate(engine, prompt, 8)  # warm the decode path
        _, stamps, _ = timed_generate(engine, prompt, tokens)
        result["single_stream_tok_s"] = decode_rate(stamps)
        france = engine.render([{"role": "user", "content": "What is the capital of France?"}], {})
        result["france"] = timed_generate(engine, france, 12)[2]
        result["streams8_tok_s"] = concurrent_streams(engine, tokens // 2)
        big = long_prompt(engine)
        result["prefill_prompt_tokens"] = len(big.token_ids)
        result["ttft_1k_s"] = statistics.median(timed_generate(engine, big, 1)[0] for _ in range(2))
        result["rss_end_mb"] = rss_mb()
        result["peak_rss_mb"] = peak_rss_mb()
    finally:
        engine.close()
    return result


def machine() -> dict[str, Any]:
    """What ran the benchmark."""
    import torch

    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = line
                break
    except OSError:
        pass
    name = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if "model name" in ln
        ),
        platform.processor(),
    )
    info: dict[str, Any] = {
        "cpu": name,
        "cores": os.cpu_count(),
        "avx512_bf16": "avx512_bf16" in flags,
        "amx": "amx_tile" in flags,
        "torch": torch.__version__,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "load_average_start": os.getloadavg(),
    }
    try:
        from ai_stack.engines.torch_device import import_bitsandbytes

        info["bitsandbytes"] = import_bitsandbytes().__version__
    except ImportError:
        info["bitsandbytes"] = None
    return info


def main() -> None:
    """Run every arm in its own child process, print and save the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arms", default=DEFAULT_ARMS)
    parser.add_argument("--tokens", type=int, default=128, help="single-stream tokens (8 streams: half)")
    parser.add_argument("--model", help="a transformers folder (default: the converted default model)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--gguf", help=argparse.SUPPRESS)
    parser.add_argument(
        "--ref", type=Path, default=Path("/tmp/ai-stack-nf4-bench-ref.pt"), help=argparse.SUPPRESS
    )
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_arm(args.child, args.model, args.gguf, args.tokens, args.ref)))
        return
    from ai_stack.config import default_config_path, load_config
    from ai_stack.sources import EMBEDDED, assemble_embedded, converted_dir, parse_source

    config = load_config(default_config_path())
    spec = next(s for s in config.models if s.kind == "chat")
    source = parse_source(spec.source, config.base_dir)
    model = args.model or str(converted_dir(source, config.server.home))
    gguf = str(assemble_embedded(EMBEDDED[source.value], config.server.home, progress=False))
    report: dict[str, Any] = {"machine": machine(), "model": model, "tokens": args.tokens, "arms": []}
    for arm in args.arms.split(","):
        if arm not in ARMS:
            raise SystemExit(f"unknown arm {arm!r}; known: {', '.join(ARMS)}")
        command = [sys.executable, "-m", "bench.nf4_cpu", "--child", arm, "--model", model, "--gguf", gguf]
        command += ["--tokens", str(args.tokens), "--ref", str(args.ref)]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
        if done.returncode != 0 or not lines:
            row: dict[str, Any] = {"arm": arm, "error": done.stderr.strip().splitlines()[-3:]}
        else:
            row = json.loads(lines[-1])
        row["load_average"] = os.getloadavg()[0]
        report["arms"].append(row)
        print(json.dumps(row), flush=True)
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
