"""The Piper engine (ai_stack/engines/piper.py) on the embedded en_US-joe-medium voice."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from ai_stack.engines.piper import PiperEngine, load_piper
from tests.speech_helpers import THREE_SENTENCES, rms, seconds, speak


def test_piper_voice_from_the_embedded_package(piper: PiperEngine) -> None:
    """The default voice is named after its model file, with the language of its JSON config."""
    assert piper.sample_rate == 22050
    [voice] = piper.voices()
    assert voice.id == "en_US-joe-medium"
    assert voice.language == "en-US"
    assert voice.name == "Joe"


def test_piper_speaks_one_chunk_per_sentence(piper: PiperEngine) -> None:
    """Three sentences give three float32 chunks of real (non-silent) audio."""
    chunks = speak(piper, THREE_SENTENCES, "en_US-joe-medium")
    assert len(chunks) == 3
    assert all(c.dtype == np.float32 and c.ndim == 1 and len(c) > 0 for c in chunks)
    assert rms(chunks) > 0.02
    assert 3.0 < seconds(chunks, piper.sample_rate) < 15.0


def test_piper_duration_grows_with_text_and_shrinks_with_speed(piper: PiperEngine) -> None:
    """More text takes longer; speed=2 takes clearly less time than speed=1."""
    short = seconds(speak(piper, "Hello there.", "en_US-joe-medium"), piper.sample_rate)
    long = seconds(speak(piper, THREE_SENTENCES, "en_US-joe-medium"), piper.sample_rate)
    fast = seconds(speak(piper, THREE_SENTENCES, "en_US-joe-medium", speed=2.0), piper.sample_rate)
    assert long > 2 * short
    assert fast < 0.75 * long


def test_piper_unknown_voice_lists_the_voices(piper: PiperEngine) -> None:
    """An unknown voice is refused at the call, naming the valid ones."""
    with pytest.raises(ValueError, match=r"unknown voice 'alloy'; available voices: en_US-joe-medium"):
        piper.synthesize("Hello.", "alloy", 1.0, threading.Event())


def test_piper_refuses_a_config_without_its_model() -> None:
    """A config path alone is a mistake, not a request for the default voice."""
    with pytest.raises(ValueError, match="model_path"):
        load_piper(config_path="voice.json")
    with pytest.raises(FileNotFoundError, match=r"missing\.onnx"):
        load_piper(model_path="missing.onnx")
