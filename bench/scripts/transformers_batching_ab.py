"""A/B: plain model.generate vs the batching engine, 1 and 2/4/8 concurrent requests; greedy, 64 tokens."""

import json
import os
import statistics
import sys
import threading
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from ai_stack.engines.base import SamplingParams
from ai_stack.engines.transformers import load_transformers
from bench.scripts.prompts import PROMPTS

MODEL = os.path.expanduser("~/.cache/ai-stack/converted/qwen2.5-coder-0.5b-instruct-1d9614638d18")
N = int(os.environ.get("MAXTOK", 64))
REPS = int(os.environ.get("REPS", 3))
CONC = [int(c) for c in os.environ.get("CONC", "2,4,8").split(",") if c]
QUESTIONS = PROMPTS
engine = load_transformers(MODEL, dtype=os.environ.get("DTYPE", "auto"))
engine.eos_ids = set()
model, tok = engine.model, engine.tokenizer
prompts = [engine.render([{"role": "user", "content": q}], {}) for q in QUESTIONS]
params = SamplingParams(max_tokens=N, temperature=0.0)


def plain() -> float:
    ids = torch.tensor([prompts[0].token_ids])
    t = time.perf_counter()
    with torch.inference_mode():
        out = model.generate(
            ids, attention_mask=torch.ones_like(ids), max_new_tokens=N, min_new_tokens=N, do_sample=False
        )
    dt = time.perf_counter() - t
    assert out.shape[1] - ids.shape[1] == N
    return N / dt


def conc(c: int) -> float:
    done = []

    def work(i: int) -> None:
        g = engine.generate(prompts[i % len(prompts)], params, threading.Event(), lambda p: None)
        done.append(g.completion_tokens)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(c)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    dt = time.perf_counter() - t
    assert sum(done) == N * c, done
    return sum(done) / dt


plain()
conc(1)  # warm up
res: dict[str, list[float]] = {}
loads = []
for rep in range(REPS):
    loads.append(os.getloadavg()[0])
    for name, fn in [("plain_generate", plain), ("engine_c1", lambda: conc(1))] + [
        (f"engine_c{c}", lambda c=c: conc(c)) for c in CONC
    ]:
        v = fn()
        res.setdefault(name, []).append(v)
        print(f"rep{rep} {name}: {v:.2f} tok/s  load={os.getloadavg()[0]:.2f}", flush=True)
print("peak_batch", engine.peak_batch)
med = {k: statistics.median(v) for k, v in res.items()}
for k, v in med.items():
    print(f"{k:16s} median {v:6.2f} tok/s  runs {[round(x, 2) for x in res[k]]}")
print(f"engine_c1 / plain = {med['engine_c1'] / med['plain_generate']:.2f}x")
for c in CONC:
    print(f"engine_c{c} / engine_c1 = {med[f'engine_c{c}'] / med['engine_c1']:.2f}x")
print("load averages at rep start", loads, "end", os.getloadavg())
with open(os.environ.get("OUT", "/tmp/ab-result.json"), "w") as out:
    json.dump({"medians": med, "runs": res, "loads": loads}, out)
