"""Fault isolation for native engines: a new llama.cpp configuration runs first in a short-lived child.

A fault in native code (a SIGSEGV in llama.cpp's CPU backend, such as the AMX kernels of its weight-repack
path on Sapphire Rapids) would end the whole server: chat, speech and the UI. So before the server loads a
llama.cpp configuration it has not seen on this build and CPU, a child process loads it and decodes one token.
A child that crashes is tried again in llama.cpp's safe mode (no repacked weight layouts, `repack = false`);
when that crashes too the model fails with the reason (and `engine = "auto"` serves it with transformers).
The verdict is kept per llama-cpp-python build, CPU and configuration in `<home>/native-probe.json`, so later
starts pay nothing.

The child is `python -m ai_stack.engines.probe_child`: the job comes as JSON on stdin, one JSON line out.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import platform
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ai_stack.engines.base import EngineLoadError

if TYPE_CHECKING:
    from ai_stack.config import Config, ModelSpec
    from ai_stack.engines.catalog import LlamaCppOptions

log = logging.getLogger(__name__)

VERDICTS_FILE = "native-probe.json"
MAX_VERDICTS = 64  # configurations remembered; the oldest verdicts go first
PROBE_TIMEOUT = 600.0  # seconds for the child to load the model and decode one token
# Makes the child crash as a native fault would, to check that the server survives it: "segv" always,
# "segv-repack" only with repacked weights (llama.cpp's default), the way the AMX fault does.
FAULT_ENV = "AI_STACK_PROBE_FAULT"
ERROR_EXIT = 3  # the child's exit status for a Python error (reported as JSON), as opposed to a crash
# Signals from outside (the OOM killer, a stopping machine) say nothing about the engine: no verdict.
_NOT_FAULTS = {signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGHUP}


class NativeEngineFault(EngineLoadError):
    """A native engine configuration crashed in its child process, in its safe mode too."""


@dataclass(frozen=True)
class ProbeResult:
    """How one child run ended: ok, a crash (a signal or an abnormal exit), or a Python error or timeout."""

    ok: bool
    crashed: bool
    detail: str


def cpu_fingerprint() -> str:
    """A hash of the CPU's model name and feature flags (what decides which native kernels run)."""
    text = f"{platform.machine()} {platform.processor()}"
    with contextlib.suppress(OSError):
        lines = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines()
        wanted = ("model name", "flags", "features", "cpu implementer", "cpu part")
        seen = [line for line in lines if line.split(":", 1)[0].strip().lower() in wanted]
        text += "\n" + "\n".join(dict.fromkeys(seen))  # the first core's lines; the others repeat them
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def build_fingerprint() -> str:
    """llama-cpp-python's version and native libraries (a rebuild with other CMAKE_ARGS is a new build)."""
    try:
        version = importlib.metadata.version("llama_cpp_python")
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    spec = importlib.util.find_spec("llama_cpp")
    parts = [version]
    if spec is not None and spec.origin is not None:
        for library in sorted((Path(spec.origin).parent / "lib").glob("*")):
            with contextlib.suppress(OSError):
                stat = library.stat()
                parts.append(f"{library.name}:{stat.st_size}:{int(stat.st_mtime)}")
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def verdict_key(spec: ModelSpec, options: LlamaCppOptions) -> str:
    """The cache key of a configuration: build, CPU, the model's source, device, context and options."""
    config = {
        "build": build_fingerprint(),
        "cpu": cpu_fingerprint(),
        "source": spec.source,
        "device": spec.device,
        "context_length": spec.context_length,
        "options": options.model_dump(mode="json"),
    }
    return hashlib.sha256(json.dumps(config, sort_keys=True).encode()).hexdigest()


class VerdictCache:
    """Verdicts kept in one small JSON file: key -> {"verdict": ok|safe|failed, "reason", "at"}."""

    def __init__(self, path: Path, enabled: bool = True) -> None:
        self.path, self.enabled = path, enabled

    def read(self) -> dict[str, dict[str, Any]]:
        """Every stored verdict (an unreadable file is an empty cache)."""
        if not self.enabled:
            return {}
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}
        return {k: v for k, v in data.items() if isinstance(v, dict)} if isinstance(data, dict) else {}

    def get(self, key: str) -> dict[str, Any] | None:
        """The verdict for a key, if one is stored."""
        return self.read().get(key)

    def put(self, key: str, verdict: str, reason: str = "") -> None:
        """Store a verdict, dropping the oldest beyond MAX_VERDICTS; written atomically; failures logged."""
        if not self.enabled:
            return
        data = self.read()
        data[key] = {"verdict": verdict, "reason": reason, "at": time.time()}
        if len(data) > MAX_VERDICTS:
            newest = sorted(data.items(), key=lambda item: float(item[1].get("at", 0)), reverse=True)
            data = dict(newest[:MAX_VERDICTS])
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            partial = self.path.with_name(f".{self.path.name}.{os.getpid()}.{threading.get_ident()}")
            partial.write_text(json.dumps(data, indent=1), encoding="utf-8")
            os.replace(partial, self.path)
        except OSError as exc:
            log.warning("cannot store the native engine verdict in %s: %s", self.path, exc)


def _crash_report(stderr: str) -> str:
    """The gist of a crashed child's stderr: faulthandler's fatal line and innermost frames, else its end."""
    lines = [line.strip() for line in stderr.strip().splitlines() if line.strip()]
    fatal = next((i for i, line in enumerate(lines) if line.startswith("Fatal Python error")), None)
    if fatal is None:
        kept = lines[-6:]
    else:
        frames = [line for line in lines[fatal + 1 :] if line.startswith("File ")][:3]
        kept = [lines[fatal], *frames]
    return " | ".join(kept)[-800:]


def run_probe(
    spec: ModelSpec, config: Config, options: LlamaCppOptions, timeout: float = PROBE_TIMEOUT
) -> ProbeResult:
    """Load the model with these options in a child process and decode one token; how the child ended."""
    job = {
        "config": config.model_dump(mode="json"),
        "spec": spec.model_dump(mode="json"),
        "options": options.model_dump(mode="json"),
    }
    try:
        done = subprocess.run(
            [sys.executable, "-m", "ai_stack.engines.probe_child"],
            input=json.dumps(job),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return ProbeResult(False, False, f"the check did not finish in {timeout:.0f} s")
    except OSError as exc:
        return ProbeResult(False, False, f"the check could not start: {exc}")
    if done.returncode == 0:
        return ProbeResult(True, False, "ok")
    last = done.stdout.strip().splitlines()[-1:] if done.stdout.strip() else []
    if done.returncode == ERROR_EXIT and last:
        with contextlib.suppress(ValueError):
            return ProbeResult(False, False, str(json.loads(last[0]).get("error", "failed")))
    if done.returncode < 0:
        try:
            how = f"killed by {signal.Signals(-done.returncode).name}"
        except ValueError:
            how = f"killed by signal {-done.returncode}"
        if -done.returncode in _NOT_FAULTS:
            return ProbeResult(False, False, how)
    else:
        how = f"exit status {done.returncode}"
    stderr = _crash_report(done.stderr)
    return ProbeResult(False, True, how + (f"; stderr: {stderr}" if stderr else ""))


def checked_llamacpp_options(spec: ModelSpec, config: Config, options: LlamaCppOptions) -> LlamaCppOptions:
    """The options to load a llama.cpp model with here: as configured, or its safe mode, or NativeEngineFault.

    The first time, a child process runs them (blocking: call from a worker thread); the verdict is cached.
    """
    if not config.server.native_probe:
        return options
    # A simulated fault (FAULT_ENV) is not this machine's verdict: nothing is read from the cache or kept.
    cache = VerdictCache(config.server.home / VERDICTS_FILE, enabled=not os.environ.get(FAULT_ENV))
    key = verdict_key(spec, options)
    safe = options.model_copy(update={"repack": False})
    known = cache.get(key)
    if known is not None:
        verdict = known.get("verdict")
        if verdict == "ok":
            return options
        if verdict == "safe":
            return safe
        if verdict == "failed":
            raise NativeEngineFault(str(known.get("reason") or "llama.cpp crashed with this model"))
    log.info("checking llama.cpp with model %s in a child process (once per build, CPU, config)", spec.id)
    first = run_probe(spec, config, options)
    if first.ok:
        cache.put(key, "ok")
        return options
    if not first.crashed:  # a Python error or a timeout is no native fault: the load here reports it itself
        log.warning("the llama.cpp check of model %s was inconclusive: %s", spec.id, first.detail)
        return options
    log.error("llama.cpp crashed with model %s (%s)", spec.id, first.detail)
    if options.repack:
        second = run_probe(spec, config, safe)
        if second.ok:
            log.warning(
                "model %s runs on llama.cpp in safe mode (repack = false): repacked weights crashed (%s)",
                spec.id,
                first.detail,
            )
            cache.put(key, "safe", first.detail)
            return safe
        if not second.crashed:
            return safe
        first = second
    reason = (
        f"llama.cpp crashed running this model on this CPU ({first.detail}), in its safe mode (no repacked "
        "weights) too; it was not loaded into the server"
    )
    cache.put(key, "failed", reason)
    raise NativeEngineFault(reason)
