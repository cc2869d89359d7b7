"""The state of one benchmark run: mode, settings, output folder, progress log."""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass
class Settings:
    """Sizes of each section; --quick shrinks them (about 15-20 min on a busy 2-core CPU)."""

    mode: str
    repetitions: int
    decode_tokens: int
    ttft_tokens: int
    long_functions: int
    fp32_arm: bool
    engine_arms: bool  # also serve the fp16-packed and llama.cpp engines (chat table + their own sweep)
    sweep_levels: list[int]
    sweep_tokens: int
    batch_levels: list[int]
    profile_level: int
    profile_seconds: float
    gateway_seconds: float
    gateway_concurrency: int
    gateway_repetitions: int
    speech_formats: list[str]
    speech_repetitions: int
    speech_concurrency: list[int]
    startup_repetitions: int
    cold_start: bool

    def override(self, assignments: list[str]) -> Settings:
        """Apply KEY=VALUE overrides (values parsed as JSON, else kept as text), e.g. sweep_tokens=16."""
        import dataclasses
        import json

        known = {f.name for f in dataclasses.fields(self)}
        changes: dict[str, Any] = {}
        for assignment in assignments:
            key, _, text = assignment.partition("=")
            if key not in known or key == "mode":
                raise ValueError(f"unknown setting {key!r}; known: {', '.join(sorted(known - {'mode'}))}")
            try:
                changes[key] = json.loads(text)
            except json.JSONDecodeError:
                changes[key] = text
        return dataclasses.replace(self, **changes)

    @classmethod
    def for_mode(cls, quick: bool) -> Settings:
        if quick:
            return cls(
                mode="quick",
                repetitions=2,
                decode_tokens=16,
                ttft_tokens=1,
                long_functions=4,
                fp32_arm=True,
                engine_arms=True,
                sweep_levels=[1, 2, 4],
                sweep_tokens=8,
                batch_levels=[1, 2, 4],
                profile_level=4,
                profile_seconds=8,
                gateway_seconds=2.0,
                gateway_concurrency=8,
                gateway_repetitions=2,
                speech_formats=["wav", "mp3"],
                speech_repetitions=2,
                speech_concurrency=[1, 2],
                startup_repetitions=1,
                cold_start=False,
            )
        return cls(
            mode="full",
            repetitions=3,
            decode_tokens=64,
            ttft_tokens=1,
            long_functions=33,
            fp32_arm=True,
            engine_arms=True,
            sweep_levels=[1, 2, 4, 8, 16],
            sweep_tokens=48,
            batch_levels=[1, 2, 4, 8],
            profile_level=8,
            profile_seconds=20,
            gateway_seconds=5.0,
            gateway_concurrency=16,
            gateway_repetitions=3,
            speech_formats=["wav", "pcm", "mp3", "flac", "opus", "aac"],
            speech_repetitions=3,
            speech_concurrency=[1, 2, 4],
            startup_repetitions=2,
            cold_start=True,
        )


@dataclass
class Run:
    """What every section gets: settings, where to write, a log, and a place for artefacts."""

    settings: Settings
    out: Path
    stem: str
    started: float = field(default_factory=time.perf_counter)
    artefacts: dict[str, Any] = field(default_factory=dict)

    def guarded(self, name: str, fn: Callable[[], Any]) -> Any:
        """fn(), or {"error": ...} when it raises: a failing part must not lose the other results."""
        try:
            return fn()
        except Exception as exc:  # recorded in the results and the report
            self.log(f"{name} failed: {type(exc).__name__}: {exc}")
            return {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}

    def log(self, message: str) -> None:
        print(f"[bench {time.perf_counter() - self.started:7.1f}s] {message}", file=sys.stderr, flush=True)
