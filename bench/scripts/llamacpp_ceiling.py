"""The llama.cpp compute ceiling: one llama_decode of N tokens (N sequences, one token each), N = 1..256.

Shows how far batching can lift the aggregate on this CPU, whatever the server around it does.
"""

import os
import sys
import time

import llama_cpp

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from ai_stack.engines.llamacpp import load_llamacpp

HOME = os.path.expanduser("~/.cache/ai-stack")
GGUF = HOME + "/embedded/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
HF = HOME + "/converted/qwen2.5-coder-0.5b-instruct-1d9614638d18"
THREADS = int(os.environ.get("THREADS", "2"))

for invariant in (False, True):
    engine = load_llamacpp(
        GGUF, HF, {"parallel": 8, "n_threads": THREADS, "batch_invariant": invariant}, context_length=1024
    )
    single = None
    for n in (1, 2, 4, 8, 16, 64, 256):
        best = float("inf")
        for _ in range(3):
            llama_cpp.llama_memory_clear(engine._memory, True)
            batch = engine._batch
            batch.n_tokens = n
            for i in range(n):
                engine._put(i, 100 + i, i // 8, i % 8, True)
            start = time.perf_counter()
            assert llama_cpp.llama_decode(engine._ctx, batch) == 0
            best = min(best, time.perf_counter() - start)
        single = single or 1 / best
        print(
            f"batch_invariant={invariant} {n:3d} tokens per llama_decode: {best * 1000:7.1f} ms = "
            f"{n / best:5.0f} tok/s ({n / best / single:.2f}x one token)",
            flush=True,
        )
    engine.close()
