"""What every speech engine does alike (Piper and Kokoro ONNX, embedded models); the engine table."""

from __future__ import annotations

import subprocess
import sys
import threading

import pytest

from ai_stack.engines.base import SpeechEngine
from ai_stack.engines.catalog import ENGINES, load_engine
from ai_stack.engines.kokoro_onnx import KokoroOnnxEngine
from ai_stack.engines.piper import PiperEngine
from tests.speech_helpers import THREE_SENTENCES, speak


def test_importing_the_modules_loads_no_backend() -> None:
    """Importing audio and speech modules stays cheap: no torch, onnxruntime, piper, kokoro or PyAV."""
    heavy = ["torch", "onnxruntime", "piper", "kokoro_onnx", "av", "soxr", "phonemizer"]
    imports = (
        "import sys, ai_stack.audio, ai_stack.sentences, ai_stack.engines.catalog, ai_stack.engines.piper, "
        "ai_stack.engines.kokoro_onnx, ai_stack.engines.kokoro_torch, ai_stack.config"
    )
    code = f"{imports}; print([m for m in {heavy!r} if m in sys.modules])"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_engine_table_names_the_loaders() -> None:
    """Speech engines are found by name in the one engine table, each with its module's loader."""
    speech = {name: info.loader for name, info in ENGINES.items() if info.kind == "speech"}
    assert speech == {
        "piper": "ai_stack.engines.piper:load",
        "kokoro-onnx": "ai_stack.engines.kokoro_onnx:load",
        "kokoro": "ai_stack.engines.kokoro_torch:load",
        "fake-speech": "ai_stack.engines.fake_speech:load",
    }
    assert load_engine.__module__ == "ai_stack.engines.catalog"


@pytest.mark.parametrize("engine_name", ["piper", "kokoro"])
def test_cancel_stops_after_the_current_sentence(engine_name: str, request: pytest.FixtureRequest) -> None:
    """Setting cancel while a sentence is being delivered ends the stream there."""
    engine: SpeechEngine = request.getfixturevalue(engine_name)
    voice = engine.voices()[0].id
    cancel = threading.Event()
    received = []
    for chunk in engine.synthesize(THREE_SENTENCES, voice, 1.0, cancel):
        received.append(chunk)
        cancel.set()
    assert len(received) == 1


def test_speed_must_be_positive(piper: PiperEngine, kokoro: KokoroOnnxEngine) -> None:
    """Zero or negative speed is refused by every engine."""
    for engine in (piper, kokoro):
        with pytest.raises(ValueError, match="speed"):
            engine.synthesize("Hello.", engine.voices()[0].id, 0.0, threading.Event())


@pytest.mark.parametrize("engine_name", ["piper", "kokoro"])
def test_punctuation_only_sentences_are_skipped(engine_name: str, request: pytest.FixtureRequest) -> None:
    """A sentence with nothing to pronounce yields no chunk rather than a breath or noise."""
    engine: SpeechEngine = request.getfixturevalue(engine_name)
    voice = engine.voices()[0].id
    assert speak(engine, "... !!! ???", voice) == []
    assert len(speak(engine, "Hello there, friend. ... !!! ??? Goodbye, my friend.", voice)) == 2
