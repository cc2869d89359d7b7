"""Speech engines on the real embedded models: Piper en_US-joe-medium and Kokoro v1.0 int8 ONNX."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt
import pytest

from ai_stack.audio import AudioEncoder
from ai_stack.engines.base import SpeechEngine
from ai_stack.engines.catalog import ENGINES, load_engine
from ai_stack.engines.kokoro_onnx import (
    KOKORO_JA_MODEL_SHA256,
    KokoroOnnxEngine,
    assemble_kokoro_ja_model,
    load_kokoro_onnx,
)
from ai_stack.engines.piper import PiperEngine, load_piper
from ai_stack.engines.voices import parse_voice_blend

THREE_SENTENCES = "The weather is lovely today. Shall we go for a walk in the park? I will bring some tea."
KOKORO_VOICES = ["jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo"]


@pytest.fixture(scope="module")
def piper() -> Iterator[PiperEngine]:
    """The embedded Piper voice, loaded once for this module."""
    engine = load_piper()
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def kokoro_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder holding the assembled Kokoro model."""
    return tmp_path_factory.mktemp("kokoro-cache")


@pytest.fixture(scope="module")
def kokoro(kokoro_cache: Path) -> Iterator[KokoroOnnxEngine]:
    """The embedded Kokoro ONNX model with its Japanese voices, loaded once for this module."""
    engine = load_kokoro_onnx(cache_dir=kokoro_cache)
    yield engine
    engine.close()


def speak(engine: SpeechEngine, text: str, voice: str, speed: float = 1.0) -> list[npt.NDArray[np.float32]]:
    """All chunks of one synthesis."""
    return list(engine.synthesize(text, voice, speed, threading.Event()))


def seconds(chunks: list[npt.NDArray[np.float32]], rate: int) -> float:
    """Total duration of chunks."""
    return sum(len(c) for c in chunks) / rate


def rms(chunks: list[npt.NDArray[np.float32]]) -> float:
    """Root mean square level of the joined chunks."""
    return float(np.sqrt(np.mean(np.square(np.concatenate(chunks), dtype=np.float64))))


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


# ------------------------------------------------------------------------------------------ Piper


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


# ------------------------------------------------------------------------------------------ cancel


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


# ------------------------------------------------------------------------------------------ Kokoro


def test_kokoro_model_is_assembled_verified_and_reused(kokoro: KokoroOnnxEngine, kokoro_cache: Path) -> None:
    """The four part packages join into one file with the pinned sha256; a second load reuses it."""
    model = kokoro_cache / "kokoro-v1.0.int8.onnx"
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    assert digest == KOKORO_JA_MODEL_SHA256
    mtime = model.stat().st_mtime_ns
    assert assemble_kokoro_ja_model(kokoro_cache) == model
    assert model.stat().st_mtime_ns == mtime
    assert [p.name for p in kokoro_cache.iterdir()] == [model.name]  # no temp file left behind


def test_kokoro_needs_a_cache_dir_for_the_embedded_model() -> None:
    """Assembling the embedded model needs somewhere to put it."""
    with pytest.raises(ValueError, match="cache_dir"):
        load_kokoro_onnx()


def test_kokoro_lists_its_japanese_voices(kokoro: KokoroOnnxEngine) -> None:
    """The five shipped voices are Japanese, and say that English text is spoken with them."""
    voices = kokoro.voices()
    assert [v.id for v in voices] == KOKORO_VOICES
    assert {v.language for v in voices} == {"ja"}
    assert all("Japanese" in v.description and "English text" in v.description for v in voices)
    assert voices[0].name == "Alpha"
    assert "male" in voices[-1].description


def test_kokoro_speaks_english_at_24khz(kokoro: KokoroOnnxEngine) -> None:
    """English text gives one chunk per sentence of real audio at 24 kHz."""
    assert kokoro.sample_rate == 24000
    chunks = speak(kokoro, "Hello there, my friend. How are you today?", "jf_alpha")
    assert len(chunks) == 2
    assert all(c.dtype == np.float32 and c.ndim == 1 for c in chunks)
    assert rms(chunks) > 0.02
    assert 1.5 < seconds(chunks, 24000) < 8.0


def test_kokoro_speed_and_blend(kokoro: KokoroOnnxEngine) -> None:
    """A blend of voices speaks; speed 2 is shorter, and a speed past kokoro-onnx's range is clamped."""
    text = "Shall we go for a walk in the park?"
    normal = seconds(speak(kokoro, text, "jf_alpha(2)+jm_kumo(1)"), 24000)
    fast = seconds(speak(kokoro, text, "jf_alpha(2)+jm_kumo(1)", speed=2.0), 24000)
    fastest = seconds(speak(kokoro, text, "jf_alpha(2)+jm_kumo(1)", speed=4.0), 24000)
    assert normal > 1.0
    assert fast < 0.75 * normal
    assert fastest == pytest.approx(fast, rel=0.1)


def test_kokoro_blend_is_the_weighted_average_of_styles(kokoro: KokoroOnnxEngine) -> None:
    """'a(2)+b(1)' is two thirds of a's style vectors and one third of b's."""
    alpha, kumo = kokoro.style("jf_alpha"), kokoro.style("jm_kumo")
    assert alpha.shape == (510, 1, 256)
    np.testing.assert_allclose(
        kokoro.style("jf_alpha(2)+jm_kumo(1)"), (2 * alpha + kumo) / 3, rtol=1e-5, atol=1e-6
    )


def test_kokoro_unknown_voice_lists_the_voices(kokoro: KokoroOnnxEngine) -> None:
    """An unknown voice, alone or inside a blend, names the valid ones."""
    listing = "available voices: " + ", ".join(KOKORO_VOICES)
    for voice in ("af_heart", "jf_alpha(1)+af_heart(1)"):
        with pytest.raises(ValueError, match=f"unknown voice 'af_heart'; {listing}"):
            kokoro.synthesize("Hello.", voice, 1.0, threading.Event())


def test_kokoro_reads_japanese_text(kokoro: KokoroOnnxEngine) -> None:
    """Japanese script goes through pyopenjtalk (optional) rather than espeak's 'Chinese letter'."""
    pytest.importorskip("pyopenjtalk")
    phonemes = kokoro.phonemize("こんにちは。")
    assert phonemes.startswith("ko")
    assert "letter" not in phonemes
    assert rms(speak(kokoro, "こんにちは。今日はいい天気です。", "jf_nezumi")) > 0.02


def test_kokoro_stream_through_an_encoder(kokoro: KokoroOnnxEngine) -> None:
    """Engine chunks fed to one mp3 encoder decode as one file as long as the audio."""
    chunks = speak(kokoro, "Good morning. See you later.", "jm_kumo")
    encoder = AudioEncoder("mp3", kokoro.sample_rate)
    data = b"".join([encoder.encode(c) for c in chunks] + [encoder.finish()])
    with av.open(io.BytesIO(data), mode="r") as container:
        decoded = sum(f.samples for f in container.decode(audio=0))
    assert 0 <= decoded / 24000 - seconds(chunks, 24000) < 0.1


def test_closed_engine_refuses_work(kokoro_cache: Path) -> None:
    """After close() an engine raises instead of crashing in native code."""
    engine = load_kokoro_onnx(cache_dir=kokoro_cache)
    engine.close()
    with pytest.raises(RuntimeError, match="closed"):
        list(engine.synthesize("Hello.", "jf_alpha", 1.0, threading.Event()))


# ------------------------------------------------------------------------------------------ blends


def test_parse_voice_blend() -> None:
    """Names with optional positive weights joined by '+'; a bare name weighs 1."""
    assert parse_voice_blend("jf_alpha") == [("jf_alpha", 1.0)]
    assert parse_voice_blend("jf_alpha(2)+jm_kumo(1)") == [("jf_alpha", 2.0), ("jm_kumo", 1.0)]
    assert parse_voice_blend(" jf_alpha ( 0.5 ) + jm_kumo ") == [("jf_alpha", 0.5), ("jm_kumo", 1.0)]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "voice is empty"),
        ("jf_alpha+", "bad voice term ''"),
        ("jf_alpha(2", "bad voice term 'jf_alpha\\(2'"),
        ("jf_alpha(2))", "bad voice term"),
        ("jf alpha", "bad voice term 'jf alpha'"),
        ("jf_alpha(x)", "bad weight 'x' for voice 'jf_alpha'"),
        ("jf_alpha()", "bad weight '' for voice 'jf_alpha'"),
        ("jf_alpha(0)", "must be a positive number"),
        ("jf_alpha(-1)+jm_kumo", "must be a positive number"),
        ("jf_alpha(inf)", "must be a positive number"),
    ],
)
def test_parse_voice_blend_errors(spec: str, message: str) -> None:
    """Bad blends say what is wrong."""
    with pytest.raises(ValueError, match=message):
        parse_voice_blend(spec)


@pytest.mark.parametrize("engine_name", ["piper", "kokoro"])
def test_punctuation_only_sentences_are_skipped(engine_name: str, request: pytest.FixtureRequest) -> None:
    """A sentence with nothing to pronounce yields no chunk rather than a breath or noise."""
    engine: SpeechEngine = request.getfixturevalue(engine_name)
    voice = engine.voices()[0].id
    assert speak(engine, "... !!! ???", voice) == []
    assert len(speak(engine, "Hello there, friend. ... !!! ??? Goodbye, my friend.", voice)) == 2
