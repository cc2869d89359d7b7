"""The Kokoro ONNX engine (ai_stack/engines/kokoro_onnx.py): embedded v1.0 int8 model, Japanese voices."""

from __future__ import annotations

import hashlib
import io
import os
import tempfile
import threading
from pathlib import Path

import av
import numpy as np
import pytest

from ai_stack.audio import AudioEncoder
from ai_stack.engines import kokoro_onnx
from ai_stack.engines.kokoro_onnx import (
    KOKORO_JA_MODEL_SHA256,
    KokoroOnnxEngine,
    assemble_kokoro_ja_model,
    load_kokoro_onnx,
)
from tests.speech_helpers import rms, seconds, speak

KOKORO_VOICES = ["jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo"]


def test_kokoro_model_is_assembled_verified_and_reused(kokoro: KokoroOnnxEngine, kokoro_cache: Path) -> None:
    """The four part packages join into one file with the pinned sha256; a second load reuses it."""
    model = kokoro_cache / "kokoro-v1.0.int8.onnx"
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    assert digest == KOKORO_JA_MODEL_SHA256
    mtime = model.stat().st_mtime_ns
    assert assemble_kokoro_ja_model(kokoro_cache) == model
    assert model.stat().st_mtime_ns == mtime
    assert [p.name for p in kokoro_cache.iterdir()] == [model.name]  # no temp file left behind


def test_kokoro_assembly_writes_a_temp_file_a_later_start_can_clean(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The temp file carries this process's pid (`.NAME.partial-PID-`): clean_stale_partials removes it if
    the process is killed mid-write."""
    names: list[str] = []
    real = tempfile.mkstemp

    def spy(*args: object, **kwargs: object) -> tuple[int, str]:
        fd, name = real(*args, **kwargs)  # type: ignore[call-overload]
        names.append(name)
        return fd, name

    monkeypatch.setattr(kokoro_onnx.tempfile, "mkstemp", spy)
    model = assemble_kokoro_ja_model(tmp_path / "kokoro")
    assert len(names) == 1 and Path(names[0]).name.startswith(f".{model.name}.partial-{os.getpid()}-")
    assert not Path(names[0]).exists()


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
