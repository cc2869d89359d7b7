"""The remote engine's gateway hop (issue 16): added latency vs calling a node directly, and 1 vs 2 replicas.

Standalone: `python -m bench.gateway [--requests N] [--seconds S] [--out FILE]`. Real `ai-stack serve`
processes on 127.0.0.1 with the fake chat engine (no model time, so what is measured is the HTTP path):
- `latency`: sequential requests to a node directly and through a gateway in front of it; p50/p99 of the
  whole answer (full), and of the first content byte and the whole answer (streamed). The hop's cost is the
  difference.
- `throughput`: many concurrent clients on a gateway with 1 and then 2 upstream replicas whose fake engine
  paces its tokens (a node that generates at a fixed speed); answers per second and tokens per second.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

RESULTS = Path(__file__).parent / "results"
MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    """An `ai-stack serve` subprocess."""

    def __init__(self, folder: Path, name: str, config: str) -> None:
        self.path = folder / f"{name}.toml"
        self.path.write_text(config)
        self.log = folder / f"{name}.log"
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        command = [
            sys.executable,
            "-m",
            "ai_stack",
            "serve",
            "--config",
            str(self.path),
            "--port",
            str(self.port),
        ]
        self.proc = subprocess.Popen(command, stdout=self.log.open("w"), stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.log.read_text()[-2000:]
            try:
                ready = httpx.get(f"{self.url}/health/ready", timeout=2)
                if ready.status_code == 200 and ready.json()["status"] == "ok":
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.path.name} did not start: {self.log.read_text()[-2000:]}")

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(15)


def node_config(token_delay: float, reply: str, max_running: int = 64) -> str:
    """A node serving the fake chat engine."""
    return (
        f'[server]\nmax_running = {max_running}\nlog_level = "warning"\n\n'
        f'[[models]]\nid = "fake-chat"\nengine = "fake"\nsource = "fake:"\n'
        f"options = {{ token_delay = {token_delay}, reply = {json.dumps(reply)} }}\n"
    )


def gateway_config(nodes: list[Server]) -> str:
    """A gateway with one remote model over the nodes."""
    upstreams = ", ".join(json.dumps(f"{n.url}/v1") for n in nodes)
    return (
        '[server]\nlog_level = "warning"\nmax_running = 256\nmax_queue = 1024\n\n'
        '[[models]]\nid = "chat"\nengine = "remote"\n'
        f'options = {{ upstreams = [{upstreams}], model = "fake-chat", max_concurrency = 64 }}\n'
    )


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _full(client: httpx.AsyncClient, url: str, model: str) -> float:
    started = time.perf_counter()
    response = await client.post(f"{url}/v1/chat/completions", json={"model": model, "messages": MESSAGES})
    response.raise_for_status()
    return time.perf_counter() - started


async def _stream(client: httpx.AsyncClient, url: str, model: str) -> tuple[float, float, int]:
    started, first, tokens = time.perf_counter(), 0.0, 0
    body = {"model": model, "messages": MESSAGES, "stream": True}
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if line.startswith("data: {") and '"content": "' in line and '"content": ""' not in line:
                tokens += 1
                if not first:
                    first = time.perf_counter() - started
    return first, time.perf_counter() - started, tokens


async def latency(folder: Path, requests: int) -> dict[str, Any]:
    """Sequential requests, direct vs through the gateway (alternating, so load drifts hit both alike)."""
    reply = "The capital of France is Paris."
    with (
        Server(folder, "node", node_config(0.0, reply)) as node,
        Server(folder, "gateway", gateway_config([node])) as gateway,
    ):
        targets = {"direct": (node.url, "fake-chat"), "gateway": (gateway.url, "chat")}
        full: dict[str, list[float]] = {k: [] for k in targets}
        first: dict[str, list[float]] = {k: [] for k in targets}
        whole: dict[str, list[float]] = {k: [] for k in targets}
        async with httpx.AsyncClient(timeout=60) as client:
            for _ in range(10):  # warm connections and code paths
                for url, model in targets.values():
                    await _full(client, url, model)
                    await _stream(client, url, model)
            for _ in range(requests):
                for name, (url, model) in targets.items():
                    full[name].append(await _full(client, url, model))
                    ttft, total, _ = await _stream(client, url, model)
                    first[name].append(ttft)
                    whole[name].append(total)
    rows = {}
    for label, series in (("full", full), ("stream first token", first), ("stream whole", whole)):
        rows[label] = {
            name: {
                "p50_ms": 1000 * _pct(v, 0.5),
                "p99_ms": 1000 * _pct(v, 0.99),
                "mean_ms": 1000 * statistics.mean(v),
            }
            for name, v in series.items()
        }
    return {"requests": requests, "rows": rows}


async def throughput(
    folder: Path, seconds: float, clients: int, token_delay: float, tokens: int
) -> dict[str, Any]:
    """Answers per second through the gateway with 1, then 2 replicas, `clients` streaming at once."""
    reply = " ".join(["word"] * tokens)
    out: dict[str, Any] = {
        "clients": clients,
        "seconds": seconds,
        "token_delay": token_delay,
        "tokens": tokens,
    }
    a_config, b_config = node_config(token_delay, reply, 8), node_config(token_delay, reply, 8)
    with Server(folder, "node-a", a_config) as a, Server(folder, "node-b", b_config) as b:
        for replicas in (1, 2):
            nodes = [a, b][:replicas]
            with Server(folder, f"gateway-{replicas}", gateway_config(nodes)) as gateway:
                done, streamed = 0, 0
                stop = time.perf_counter() + seconds

                async def worker(client: httpx.AsyncClient, stop: float = stop) -> None:
                    nonlocal done, streamed
                    while time.perf_counter() < stop:
                        _, _, count = await _stream(client, gateway.url, "chat")
                        done += 1
                        streamed += count

                limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
                async with httpx.AsyncClient(timeout=120, limits=limits) as client:
                    started = time.perf_counter()
                    await asyncio.gather(*(worker(client) for _ in range(clients)))
                    elapsed = time.perf_counter() - started
                out[f"{replicas} replica(s)"] = {
                    "answers_per_s": done / elapsed,
                    "tokens_per_s": streamed / elapsed,
                    "answers": done,
                }
    return out


def report(result: dict[str, Any]) -> str:
    """The Markdown of the results."""
    lat, thr = result["latency"], result["throughput"]
    lines = [
        "# Gateway hop: remote engine vs calling the node directly (issue 16)",
        "",
        f"Machine: {result['machine']}; load average at start {result['load']}. "
        "`python -m bench.gateway`; real `ai-stack serve` processes on 127.0.0.1, fake chat engine (no "
        "model time: the HTTP path is what is measured). One run, one shared machine: read differences, "
        "not absolutes.",
        "",
        f"## Added latency ({lat['requests']} sequential requests per arm, alternating direct/gateway)",
        "",
        "| measure | direct p50 | gateway p50 | added p50 | direct p99 | gateway p99 | added p99 |",
        "|---|---|---|---|---|---|---|",
    ]
    for label, arms in lat["rows"].items():
        d, g = arms["direct"], arms["gateway"]
        lines.append(
            f"| {label} | {d['p50_ms']:.1f} ms | {g['p50_ms']:.1f} ms | "
            f"{g['p50_ms'] - d['p50_ms']:+.1f} ms | {d['p99_ms']:.1f} ms | {g['p99_ms']:.1f} ms | "
            f"{g['p99_ms'] - d['p99_ms']:+.1f} ms |"
        )
    lines += [
        "",
        f"## Throughput, 1 vs 2 replicas ({thr['clients']} streaming clients, {thr['seconds']:g} s each; "
        f"nodes pace {thr['tokens']} tokens at {1000 * thr['token_delay']:g} ms per token, 8 running per "
        "node)",
        "",
        "| upstreams | answers/s | tokens/s | answers |",
        "|---|---|---|---|",
    ]
    for replicas in (1, 2):
        row = thr[f"{replicas} replica(s)"]
        lines.append(
            f"| {replicas} | {row['answers_per_s']:.2f} | {row['tokens_per_s']:.0f} | {row['answers']} |"
        )
    one, two = thr["1 replica(s)"]["answers_per_s"], thr["2 replica(s)"]["answers_per_s"]
    lines += ["", f"2 replicas give {two / one:.2f}× the answers per second of 1.", ""]
    return "\n".join(lines)


def main() -> None:
    """Run both parts and write the results file."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--out", type=Path, default=RESULTS / "2026-12-01-gateway.md")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        result: dict[str, Any] = {
            "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
            "load": ", ".join(f"{x:.1f}" for x in os.getloadavg()),
            "latency": asyncio.run(latency(folder, args.requests)),
            "throughput": asyncio.run(throughput(folder, args.seconds, args.clients, 0.02, 50)),
        }
    text = report(result)
    args.out.write_text(text)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    print(text)


if __name__ == "__main__":
    main()
