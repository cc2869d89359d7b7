"""A/B: raw llama_cpp.Llama.create_completion vs ai-stack HTTP (llamacpp engine), same GGUF, alternated."""

import json
import os
import pathlib
import statistics
import subprocess
import sys
import threading
import time

import httpx
import llama_cpp
from transformers import AutoTokenizer

HOME = os.path.expanduser("~/.cache/ai-stack")
GGUF = HOME + "/embedded/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
HF = HOME + "/converted/qwen2.5-coder-0.5b-instruct-1d9614638d18"
PARALLEL = int(os.environ.get("PARALLEL", "8"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
MAXTOK = int(os.environ.get("MAXTOK", "64"))
MESSAGES = [{"role": "user", "content": "Write a long story about a brave dragon who learns to code."}]
PORT = 8931
THREADS = int(os.environ.get("THREADS", "2"))
INVARIANT = os.environ.get("BATCH_INVARIANT", "false")  # the engine default
cfg = f"""[server]
home = "{HOME}"
log_level = "warning"
[[models]]
id = "m"
engine = "llamacpp"
source = "embedded:qwen2.5-coder-0.5b-instruct"
context_length = 4096
options = {{ parallel = {PARALLEL}, n_threads = {THREADS}, batch_invariant = {INVARIANT} }}
"""
pathlib.Path("/tmp/bench_llama.toml").write_text(cfg)
server_log = open("/tmp/bench_server.log", "w")  # noqa: SIM115 - open for the server's whole life
server = subprocess.Popen(
    [sys.executable, "-m", "ai_stack", "serve", "--config", "/tmp/bench_llama.toml", "--port", str(PORT)],
    stdout=server_log,
    stderr=subprocess.STDOUT,
)
url = f"http://127.0.0.1:{PORT}"
try:
    tok = AutoTokenizer.from_pretrained(HF)
    prompt = tok.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    llm = llama_cpp.Llama(
        GGUF,
        n_ctx=4096,
        n_batch=512,
        n_threads=THREADS,
        n_threads_batch=THREADS,
        flash_attn=False,
        verbose=False,
    )
    while True:
        try:
            if httpx.get(url + "/health/ready", timeout=2).status_code == 200:
                break
        except httpx.TransportError:
            pass
        time.sleep(0.5)

    def raw() -> tuple[float, float, int]:
        llm.reset()  # no prompt-prefix reuse: ours prefills every request too
        t0 = time.perf_counter()
        first = last = None
        n = 0
        for _chunk in llm.create_completion(prompt, max_tokens=MAXTOK, temperature=0, stream=True):
            now = time.perf_counter()
            if first is None:
                first = now
            last = now
            n += 1
        return first - t0, (n - 1) / (last - first), n

    def ours(client: httpx.Client) -> tuple[float, float, int]:
        body = {
            "model": "m",
            "messages": MESSAGES,
            "max_tokens": MAXTOK,
            "temperature": 0,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        t0 = time.perf_counter()
        first = last = None
        n = 0
        with client.stream("POST", "/v1/chat/completions", json=body) as r:
            for line in r.iter_lines():
                if not line.startswith("data: {"):
                    continue
                ev = json.loads(line[6:])
                if ev.get("usage"):
                    n = ev["usage"]["completion_tokens"]
                if ev["choices"] and ev["choices"][0]["delta"].get("content"):
                    now = time.perf_counter()
                    if first is None:
                        first = now
                    last = now
        return first - t0, (n - 1) / (last - first), n

    def aggregate(client: httpx.Client, streams: int) -> float:
        body = {"model": "m", "messages": MESSAGES, "max_tokens": MAXTOK, "temperature": 0}
        counts = [0] * streams

        def one(i):
            counts[i] = client.post("/v1/chat/completions", json=body).json()["usage"]["completion_tokens"]

        t0 = time.perf_counter()
        ts = [threading.Thread(target=one, args=(i,)) for i in range(streams)]
        [t.start() for t in ts]
        [t.join() for t in ts]
        return sum(counts) / (time.perf_counter() - t0)

    with httpx.Client(base_url=url, timeout=600, limits=httpx.Limits(max_connections=32)) as client:
        raw()
        ours(client)  # warm-up
        R, OURS, A1, A8, loads = [], [], [], [], []
        for i in range(ROUNDS):
            loads.append(os.getloadavg()[0])
            R.append(raw())
            OURS.append(ours(client))
            A1.append(aggregate(client, 1))
            A8.append(aggregate(client, 8))
            print(
                f"round {i}: raw ttft {R[-1][0] * 1000:.0f} ms {R[-1][1]:.1f} tok/s ({R[-1][2]}) | "
                f"ours ttft {OURS[-1][0] * 1000:.0f} ms {OURS[-1][1]:.1f} tok/s ({OURS[-1][2]}) | "
                f"agg1 {A1[-1]:.1f} agg8 {A8[-1]:.1f} | load {loads[-1]:.2f}",
                flush=True,
            )
        med = statistics.median
        r_rate, o_rate = med(x[1] for x in R), med(x[1] for x in OURS)
        r_ttft, o_ttft = med(x[0] for x in R), med(x[0] for x in OURS)
        print(f"median decode: raw {r_rate:.1f} tok/s, ours {o_rate:.1f} tok/s, ratio {o_rate / r_rate:.3f}")
        print(
            f"median TTFT: raw {r_ttft * 1000:.0f} ms, ours {o_ttft * 1000:.0f} ms, "
            f"diff {(o_ttft - r_ttft) * 1000:+.0f} ms"
        )
        print(
            f"median aggregate: 1 stream {med(A1):.1f} tok/s, 8 streams {med(A8):.1f} tok/s, "
            f"ratio {med(A8) / med(A1):.2f}; load avg {os.getloadavg()}"
        )
finally:
    server.terminate()
    server.wait(30)
