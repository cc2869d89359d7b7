"""Helpers for the speech engine tests (not a test module): one synthesis as a list, duration and level."""

from __future__ import annotations

import threading

import numpy as np
import numpy.typing as npt

from ai_stack.engines.base import SpeechEngine

THREE_SENTENCES = "The weather is lovely today. Shall we go for a walk in the park? I will bring some tea."


def speak(engine: SpeechEngine, text: str, voice: str, speed: float = 1.0) -> list[npt.NDArray[np.float32]]:
    """All chunks of one synthesis."""
    return list(engine.synthesize(text, voice, speed, threading.Event()))


def seconds(chunks: list[npt.NDArray[np.float32]], rate: int) -> float:
    """Total duration of chunks."""
    return sum(len(c) for c in chunks) / rate


def rms(chunks: list[npt.NDArray[np.float32]]) -> float:
    """Root mean square level of the joined chunks."""
    return float(np.sqrt(np.mean(np.square(np.concatenate(chunks), dtype=np.float64))))
