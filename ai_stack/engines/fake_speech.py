"""A fake speech engine: a tone per sentence, for speech API tests and demos without a voice model."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from ai_stack.engines.base import Audio, VoiceInfo
from ai_stack.engines.catalog import FakeSpeechOptions
from ai_stack.engines.voices import check_speed, parse_voice_blend, unknown_voice
from ai_stack.sentences import split_sentences

if TYPE_CHECKING:
    from ai_stack.config import Config, ModelSpec

SECONDS_PER_CHAR = 0.02  # at speed 1


class FakeSpeechEngine:
    """Speaks each sentence as a sine tone of 20 ms per character; each voice has its own pitch."""

    blends = True

    def __init__(self, options: FakeSpeechOptions) -> None:
        self.sample_rate = options.sample_rate
        self._voices = list(options.voices)
        self.sentence_delay = options.sentence_delay
        self.spoken: list[str] = []  # sentences synthesized, for tests
        self.closed = False

    def voices(self) -> list[VoiceInfo]:
        """The configured voice names."""
        return [VoiceInfo(v, v, "en-US", "fake voice (a tone)") for v in self._voices]

    def pitch(self, voice: str) -> float:
        """The tone of a voice, or the weighted mean of a blend's tones."""
        parts = parse_voice_blend(voice)
        for name, _ in parts:
            if name not in self._voices:
                raise unknown_voice(name, self._voices)
        total = sum(w for _, w in parts)
        return sum(220.0 * (1 + self._voices.index(n)) * w / total for n, w in parts)

    def synthesize(self, text: str, voice: str, speed: float, cancel: threading.Event) -> Iterator[Audio]:
        """One tone per sentence, shorter as speed rises."""
        check_speed(speed)
        return self._sentences(text, self.pitch(voice), speed, cancel)

    def _sentences(self, text: str, pitch: float, speed: float, cancel: threading.Event) -> Iterator[Audio]:
        for sentence in split_sentences(text):
            if cancel.is_set() or self.closed:
                return
            if self.sentence_delay:
                cancel.wait(self.sentence_delay)
                if cancel.is_set():
                    return
            self.spoken.append(sentence)
            count = max(1, int(len(sentence) * SECONDS_PER_CHAR / speed * self.sample_rate))
            t = np.arange(count, dtype=np.float32) / self.sample_rate
            yield (0.3 * np.sin(2 * np.pi * pitch * t)).astype(np.float32)

    def close(self) -> None:
        """Nothing to release."""
        self.closed = True


def list_voices(spec: ModelSpec, config: Config, options: FakeSpeechOptions) -> list[VoiceInfo]:
    """The configured voices, as the loaded engine lists them."""
    return FakeSpeechEngine(options).voices()


def load(spec: ModelSpec, config: Config, options: FakeSpeechOptions) -> FakeSpeechEngine:
    """Build a fake speech engine; load_delay and fail_load simulate slow and failing loads."""
    if options.load_delay:
        time.sleep(options.load_delay)
    if options.fail_load:
        raise RuntimeError(options.fail_load)
    return FakeSpeechEngine(options)
