"""Kokoro-82M through the PyTorch `kokoro` package, on a random-weight model built from Kokoro's own config.

The real kokoro-v1_0.pth and English voices are not available offline, so the model here speaks noise; the
tests check the plumbing: local files only, espeak-ng phonemes, 24 kHz float32 chunks, blends, cancel.
"""

from __future__ import annotations

import importlib.resources
import json
import math
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("kokoro")
pytest.importorskip("misaki")

from ai_stack.config import Config, ModelSpec  # noqa: E402
from ai_stack.engines.catalog import ENGINES, load_engine  # noqa: E402
from ai_stack.engines.kokoro_torch import (  # noqa: E402
    KokoroTorchEngine,
    load_kokoro_torch,
    split_phonemes,
)
from tests.conftest import wait_ready  # noqa: E402

VOICE_A, VOICE_B = "af_test", "am_test"
# Each phoneme gets sigmoid(bias) * max_dur frames (one frame = 600 samples at 24 kHz): 0.05 s.
_FRAMES_PER_PHONEME = 2


def kokoro_config() -> dict[str, object]:
    """Kokoro v1.0's config.json (istftnet, plbert, n_token 178, phoneme vocab), as kokoro-onnx ships it."""
    text = (importlib.resources.files("kokoro_onnx") / "config.json").read_text(encoding="utf-8")
    config: dict[str, object] = json.loads(text)
    return config


@pytest.fixture(scope="module")
def kokoro_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    """A random-weight Kokoro .pth, its config.json and a folder with two random voice packs."""
    from kokoro.model import KModel

    root = tmp_path_factory.mktemp("kokoro")
    config = kokoro_config()
    config_path = root / "config.json"
    config_path.write_text(json.dumps(config), encoding="utf-8")
    empty = root / "empty.pth"
    torch.save({}, empty)  # KModel loads its weights from a file; an empty one leaves the random init
    torch.manual_seed(0)
    model = KModel(repo_id="hexgrad/Kokoro-82M", config=config, model=str(empty))
    # Fixed, short durations keep the noise brief and make audio length proportional to phoneme count.
    proj = model.predictor.duration_proj
    max_dur = int(config["max_dur"])  # type: ignore[call-overload]
    with torch.no_grad():
        for name, param in proj.named_parameters():
            param.zero_()
            if name.endswith("bias"):
                p = _FRAMES_PER_PHONEME / max_dur
                param.fill_(math.log(p / (1 - p)))
    model_path = root / "kokoro-random.pth"
    torch.save({name: getattr(model, name).state_dict() for name, _ in model.named_children()}, model_path)
    voices = root / "voices"
    voices.mkdir()
    for name in (VOICE_A, VOICE_B):
        torch.save(torch.randn(510, 1, 256), voices / f"{name}.pt")
    (voices / "notes.txt").write_text("not a voice", encoding="utf-8")
    return model_path, config_path, voices


@pytest.fixture(scope="module")
def engine(kokoro_files: tuple[Path, Path, Path]) -> Iterator[KokoroTorchEngine]:
    """The engine loaded through load_kokoro_torch, once for this module."""
    model_path, config_path, voices = kokoro_files
    loaded = load_kokoro_torch(str(model_path), str(config_path), str(voices))
    yield loaded
    loaded.close()


def test_registered_as_kokoro() -> None:
    info = ENGINES["kokoro"]
    assert info.kind == "speech" and info.loader == "ai_stack.engines.kokoro_torch:load"


def test_loaded_weights_come_from_the_file(
    engine: KokoroTorchEngine, kokoro_files: tuple[Path, Path, Path]
) -> None:
    saved = torch.load(kokoro_files[0], map_location="cpu", weights_only=True)
    model = engine._loaded()
    for name, tensor in saved["decoder"].items():
        assert torch.equal(model.decoder.state_dict()[name], tensor), name


def test_voices_are_the_pt_files(engine: KokoroTorchEngine) -> None:
    voices = engine.voices()
    assert [v.id for v in voices] == [VOICE_A, VOICE_B]
    assert voices[0].language == "en-US" and "female" in voices[0].description
    assert engine.sample_rate == 24000


def test_phonemes_come_from_espeak_offline(engine: KokoroTorchEngine) -> None:
    phonemes = engine.phonemize("Hello there, how are you today?")
    # espeak-ng US English in Kokoro's symbols (O for the diphthong)
    assert phonemes.startswith("həlˈO")  # noqa: RUF001
    assert all(p in engine._vocab for p in phonemes)


def test_synthesize_one_float32_chunk_per_sentence(engine: KokoroTorchEngine) -> None:
    text = "The weather is lovely. Shall we go for a walk in the park this afternoon?"
    chunks = list(engine.synthesize(text, VOICE_A, 1.0, threading.Event()))
    assert len(chunks) == 2
    for chunk in chunks:
        assert chunk.dtype == np.float32 and chunk.ndim == 1 and chunk.size > 0
        assert np.isfinite(chunk).all()
    assert chunks[1].size > chunks[0].size  # the longer sentence lasts longer
    # 0.05 s of audio per phoneme with the fixed durations above
    expected = len(engine.phonemize("The weather is lovely.")) * _FRAMES_PER_PHONEME * 600
    assert 0.5 * expected < chunks[0].size < 2 * expected


def test_audio_grows_with_text(engine: KokoroTorchEngine) -> None:
    short = np.concatenate(list(engine.synthesize("Hi there.", VOICE_A, 1.0, threading.Event())))
    long = np.concatenate(
        list(engine.synthesize("Hi there. It is a fine morning for a walk.", VOICE_A, 1.0, threading.Event()))
    )
    assert long.size > short.size


def test_speed_reaches_the_model(engine: KokoroTorchEngine) -> None:
    normal = next(engine.synthesize("Good morning everyone.", VOICE_A, 1.0, threading.Event()))
    fast = next(engine.synthesize("Good morning everyone.", VOICE_A, 2.0, threading.Event()))
    assert fast.size < normal.size
    with pytest.raises(ValueError, match="speed"):
        engine.synthesize("Hi.", VOICE_A, 0.0, threading.Event())


def test_blends_average_the_packs(engine: KokoroTorchEngine) -> None:
    a, b = engine.voice_pack(VOICE_A), engine.voice_pack(VOICE_B)
    blend = engine.voice_pack(f"{VOICE_A}(3)+{VOICE_B}(1)")
    assert blend.shape == (510, 1, 256)
    assert torch.allclose(blend, 0.75 * a + 0.25 * b, atol=1e-6)
    chunks = list(engine.synthesize("A blended voice.", f"{VOICE_A}+{VOICE_B}", 1.0, threading.Event()))
    assert len(chunks) == 1 and chunks[0].size > 0


def test_unknown_voice_lists_the_voices(engine: KokoroTorchEngine) -> None:
    with pytest.raises(ValueError, match=f"unknown voice 'nobody'.*{VOICE_A}, {VOICE_B}"):
        engine.synthesize("Hello.", "nobody", 1.0, threading.Event())
    with pytest.raises(ValueError, match="unknown voice 'nobody'"):
        engine.voice_pack(f"{VOICE_A}+nobody(2)")


def test_cancel_stops_between_sentences(engine: KokoroTorchEngine) -> None:
    cancel = threading.Event()
    sentences = engine.synthesize("One. Two. Three. Four.", VOICE_A, 1.0, cancel)
    first = next(sentences)
    assert first.size > 0
    cancel.set()
    assert list(sentences) == []
    already = threading.Event()
    already.set()
    assert list(engine.synthesize("One. Two.", VOICE_A, 1.0, already)) == []


def test_punctuation_only_says_nothing(engine: KokoroTorchEngine) -> None:
    assert list(engine.synthesize("... !!", VOICE_A, 1.0, threading.Event())) == []


def test_long_phonemes_are_split_within_the_context() -> None:
    phonemes = "ðə kˈæt sˈæt, ˈɑn ðə mˈæt. " * 40  # noqa: RUF001
    pieces = split_phonemes(phonemes, 510)
    assert len(pieces) > 1
    assert all(0 < len(p) <= 510 for p in pieces)
    assert pieces[0].endswith((".", ","))  # broken at punctuation, not mid-word
    assert "".join(pieces).replace(" ", "") == phonemes.replace(" ", "")
    assert split_phonemes("x" * 25, 10) == ["x" * 10, "x" * 10, "x" * 5]


def test_overlong_sentence_is_one_chunk(engine: KokoroTorchEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    # split_sentences caps sentences at 300 characters; without it, one sentence outgrows the 510 symbols.
    monkeypatch.setattr("ai_stack.engines.kokoro_torch.split_sentences", lambda text: [text])
    sentence = "and then the cat sat on the mat, " * 20 + "and that was all."
    assert len(engine.phonemize(sentence)) > engine.max_phonemes
    calls: list[int] = []
    model = engine._loaded()
    real_forward = model.forward

    def counting_forward(phonemes: str, ref_s: object, speed: float = 1) -> object:
        calls.append(len(phonemes))
        return real_forward(phonemes, ref_s, speed)

    monkeypatch.setattr(model, "forward", counting_forward)
    chunks = list(engine.synthesize(sentence, VOICE_A, 1.0, threading.Event()))
    assert len(chunks) == 1 and chunks[0].size > 0
    assert len(calls) > 1 and all(n <= engine.max_phonemes for n in calls)


def test_closed_engine_refuses(kokoro_files: tuple[Path, Path, Path]) -> None:
    model_path, config_path, voices = kokoro_files
    engine = load_kokoro_torch(str(model_path), str(config_path), str(voices))
    engine.close()
    with pytest.raises(RuntimeError, match="closed"):
        engine.synthesize("Hello.", VOICE_A, 1.0, threading.Event())


def test_missing_files_are_reported(kokoro_files: tuple[Path, Path, Path], tmp_path: Path) -> None:
    model_path, config_path, voices = kokoro_files
    with pytest.raises(FileNotFoundError, match="nope"):
        load_kokoro_torch(str(model_path), str(tmp_path / "nope.json"), str(voices))
    with pytest.raises(FileNotFoundError, match="no Kokoro voice files"):
        load_kokoro_torch(str(model_path), str(config_path), str(tmp_path))


def test_load_engine_resolves_paths_against_the_config(kokoro_files: tuple[Path, Path, Path]) -> None:
    model_path, config_path, voices = kokoro_files
    base = model_path.parent
    spec = ModelSpec(
        id="kokoro-en",
        kind="speech",
        engine="kokoro",
        source=model_path.name,
        device="cpu",
        options={"config": config_path.name, "voices_dir": voices.name},
    )
    config = Config(models=[spec], base_dir=base)
    engine = load_engine(spec, config)
    try:
        assert isinstance(engine, KokoroTorchEngine)
        assert [v.id for v in engine.voices()] == [VOICE_A, VOICE_B]
    finally:
        engine.close()
    with pytest.raises(ValueError, match="voices_dir"):
        load_engine(spec.model_copy(update={"options": {"config": config_path.name}}), config)
    with pytest.raises(ValueError, match="kind"):
        ModelSpec(id="k", kind="chat", engine="kokoro", source="x.pth")


def test_blends_through_the_speech_api(
    app_client: Callable[..., Any], kokoro_files: tuple[Path, Path, Path]
) -> None:
    """A weighted blend works through /v1/audio/speech on the PyTorch engine too; an unknown part is a 400."""
    model_path, config_path, voices = kokoro_files
    spec = {
        "id": "kokoro-en",
        "kind": "speech",
        "engine": "kokoro",
        "source": str(model_path),
        "device": "cpu",
        "options": {"config": str(config_path), "voices_dir": str(voices)},
    }
    client = app_client([spec])
    wait_ready(client, "kokoro-en", timeout=120)
    body = {"model": "kokoro-en", "input": "Hello there.", "response_format": "pcm"}
    response = client.post("/v1/audio/speech", json={**body, "voice": f"{VOICE_A}(3)+{VOICE_B}(1)"})
    assert response.status_code == 200, response.text
    assert len(response.content) > 2 * 2400  # more than 0.1 s of 24 kHz s16 audio
    response = client.post("/v1/audio/speech", json={**body, "voice": f"{VOICE_A}+nobody(2)"})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["param"] == "voice" and "'nobody'" in error["message"]
