"""How long a streaming request stalls when a long prompt arrives: the largest gap between its tokens.

One greedy request streams 160 tokens; after its 10th token a second request with a ~1000-token prompt
arrives. Arms: `prefill_chunk` = 256 (the default: the long prompt goes in chunks between decode steps) and
one huge chunk (the whole prompt in one forward pass, as before chunked prefill). Default model, dtype auto.
"""

import os
import statistics
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
import itertools

from ai_stack.engines.base import SamplingParams
from ai_stack.engines.transformers import load_transformers

MODEL = os.path.expanduser("~/.cache/ai-stack/converted/qwen2.5-coder-0.5b-instruct-1d9614638d18")
CHUNKS = [int(c) for c in os.environ.get("CHUNKS", "256,100000").split(",")]
REPS = int(os.environ.get("REPS", 2))
engine = load_transformers(MODEL, dtype=os.environ.get("DTYPE", "auto"))
engine.eos_ids = set()
short = engine.render([{"role": "user", "content": "Write a story about a lighthouse keeper."}], {})
code = "\n".join(f"def f{i}(x):\n    return x * {i} + {i * 7} - len(str(x))" for i in range(48))
long = engine.render([{"role": "user", "content": f"Explain this code:\n{code}"}], {})
print(f"long prompt: {len(long.token_ids)} tokens")


def one(chunk: int) -> tuple[float, float]:
    engine.prefill_chunk = chunk
    times: list[float] = []
    started = threading.Event()
    first_long: list[float] = []

    def emit_short(piece: object) -> None:
        times.append(time.perf_counter())
        if len(times) == 10:
            started.set()

    def run_long() -> None:
        started.wait()
        sent = time.perf_counter()

        def emit_long(piece: object) -> None:
            if not first_long:
                first_long.append(time.perf_counter() - sent)

        engine.generate(long, SamplingParams(max_tokens=8, temperature=0.0), threading.Event(), emit_long)

    other = threading.Thread(target=run_long)
    other.start()
    engine.generate(short, SamplingParams(max_tokens=160, temperature=0.0), threading.Event(), emit_short)
    other.join()
    gaps = [b - a for a, b in itertools.pairwise(times)]
    return max(gaps), first_long[0]


one(CHUNKS[0])  # warm up
results: dict[int, list[tuple[float, float]]] = {c: [] for c in CHUNKS}
for rep in range(REPS):
    for chunk in CHUNKS if rep % 2 == 0 else list(reversed(CHUNKS)):
        gap, ttft = one(chunk)
        results[chunk].append((gap, ttft))
        print(
            f"rep {rep} prefill_chunk={chunk}: longest gap of the streaming request {gap:.2f} s, "
            f"long request TTFT {ttft:.2f} s",
            flush=True,
        )
for chunk, values in results.items():
    print(
        f"prefill_chunk={chunk}: median longest gap {statistics.median(v[0] for v in values):.2f} s, "
        f"median long TTFT {statistics.median(v[1] for v in values):.2f} s"
    )
engine.close()
