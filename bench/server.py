"""A real `ai-stack serve` (or any HTTP server) in a subprocess: generated config, timings, RSS, stop."""

from __future__ import annotations

import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
from ai_stack.config import default_config_path, load_config

CHAT_ID = "qwen2.5-coder-0.5b-instruct"
CHAT_SOURCE = f"embedded:{CHAT_ID}"
PIPER = {
    "id": "piper-joe",
    "kind": "speech",
    "engine": "piper",
    "source": "embedded:en_US-joe-medium",
    "options": {"noise_scale": 0.0, "noise_w": 0.0},
}
KOKORO = {"id": "kokoro-ja", "kind": "speech", "engine": "kokoro-onnx", "source": "embedded:kokoro-v1.0-int8"}
CHAT = {
    "id": CHAT_ID,
    "aliases": ["default"],
    "kind": "chat",
    "engine": "transformers",
    "source": CHAT_SOURCE,
    "dtype": "bfloat16",  # the baselines (bench/worker.py) run bf16 too; `auto` packs fp16 on AVX2-only CPUs
}
FAKE = {
    "id": "fake-chat",
    "aliases": ["fake"],
    "kind": "chat",
    "engine": "fake",
    "source": "fake:",
    "options": {"reply": "Hello there, friend.", "token_delay": 0.0},
}


def default_home() -> Path:
    """The cache the default config uses (AI_STACK_HOME or the user cache dir): warm, no conversion."""
    return load_config(default_config_path()).server.home


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def render_config(models: list[dict[str, Any]], home: Path, **server: Any) -> str:
    """A TOML config with [server] home (and more keys) and the given [[models]] entries."""
    lines = ["[server]", f"home = {_toml_value(str(home))}"]
    lines += [f"{key} = {_toml_value(value)}" for key, value in server.items()]
    for model in models:
        lines += ["", "[[models]]"] + [f"{key} = {_toml_value(value)}" for key, value in model.items()]
    return "\n".join(lines) + "\n"


class ServerProcess:
    """`python -m ai_stack serve` with a generated config; records start → HTTP up → ready; always stopped."""

    def __init__(
        self,
        models: list[dict[str, Any]],
        home: Path | None = None,
        workdir: Path | None = None,
        log_level: str = "warning",
        command: list[str] | None = None,
    ) -> None:
        self.models = models
        self.home = home or default_home()
        self._tmp = None if workdir else tempfile.TemporaryDirectory(prefix="ai-stack-bench-")
        self.workdir = workdir or Path(self._tmp.name)  # type: ignore[union-attr]
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_level = log_level
        self.command = command
        self.proc: subprocess.Popen[bytes] | None = None
        self.timings: dict[str, float] = {}
        self.rss: dict[str, int] = {}

    def start(self, wait_ready: bool = True, timeout: float = 900.0) -> ServerProcess:
        """Spawn the server, wait for /health (and /health/ready when asked)."""
        config = self.workdir / "bench.toml"
        config.write_text(render_config(self.models, self.home, log_level=self.log_level))
        self.log_path = self.workdir / "serve.log"
        command = self.command or [
            sys.executable,
            "-m",
            "ai_stack",
            "serve",
            "--config",
            str(config),
            "--port",
            str(self.port),
        ]
        self._log = self.log_path.open("wb")
        started = time.perf_counter()
        self.proc = subprocess.Popen(command, stdout=self._log, stderr=subprocess.STDOUT)
        self._wait("/health", started, timeout)
        self.timings["http_up_s"] = time.perf_counter() - started
        self.rss["http_up"] = self.rss_now()
        if wait_ready:
            self.wait_ready(started, timeout)
        return self

    def wait_ready(self, started: float | None = None, timeout: float = 900.0) -> None:
        """Wait until /health/ready is 200 (no model loading); fail if a model failed to load."""
        started = started or time.perf_counter()
        self._wait("/health/ready", started, timeout)
        self.timings["ready_s"] = time.perf_counter() - started
        self.rss["ready"] = self.rss_now()
        models = httpx.get(f"{self.url}/v1/models", timeout=10).json()["data"]
        failed = [(m["id"], m.get("error")) for m in models if m["state"] == "failed"]
        if failed:
            raise RuntimeError(f"models failed to load: {failed}; log {self.log_path}")

    def _wait(self, path: str, started: float, timeout: float) -> None:
        assert self.proc is not None
        while time.perf_counter() - started < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited with {self.proc.returncode}: {self.log_tail()}")
            try:
                if httpx.get(f"{self.url}{path}", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.02)
        raise TimeoutError(f"{self.url}{path} not 200 after {timeout} s: {self.log_tail()}")

    def load_model(self, model_id: str, timeout: float = 600.0) -> float:
        """POST /v1/models/{id}/load and wait until it is ready; the seconds it took."""
        started = time.perf_counter()
        httpx.post(f"{self.url}/v1/models/{model_id}/load", timeout=timeout)
        while time.perf_counter() - started < timeout:
            state = httpx.get(f"{self.url}/v1/models/{model_id}", timeout=10).json()
            if state["state"] == "ready":
                return time.perf_counter() - started
            if state["state"] == "failed":
                raise RuntimeError(f"{model_id} failed to load: {state.get('error')}")
            time.sleep(0.05)
        raise TimeoutError(f"{model_id} did not load in {timeout} s")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def rss_now(self) -> int:
        """The server's resident set size in bytes (children included)."""
        try:
            proc = psutil.Process(self.pid)
            return int(proc.memory_info().rss + sum(c.memory_info().rss for c in proc.children(True)))
        except psutil.Error:
            return 0

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def stop(self) -> None:
        """Terminate (then kill) the server and remove its temporary folder."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if getattr(self, "_log", None):
            self._log.close()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class RssSampler:
    """Samples a process's RSS in a thread; .peak is the largest value seen."""

    def __init__(self, server: ServerProcess, interval: float = 0.1) -> None:
        self.server, self.interval, self.peak = server, interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.server.rss_now())
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
