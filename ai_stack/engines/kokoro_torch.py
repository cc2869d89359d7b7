"""Kokoro-82M through the PyTorch `kokoro` package: misaki's espeak G2P, local `.pt` voices, 24 kHz."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from ai_stack.engines.base import Audio, VoiceInfo
from ai_stack.engines.catalog import KokoroOptions
from ai_stack.engines.voices import (
    KOKORO_SAMPLE_RATE,
    check_speed,
    config_path,
    kokoro_voice_info,
    parse_voice_blend,
    unknown_voice,
)
from ai_stack.sentences import split_sentences

if TYPE_CHECKING:
    from ai_stack.config import Config, ModelSpec

_PHONEME_BREAKS: Final = ".!?;:,—…"


def split_phonemes(phonemes: str, limit: int) -> list[str]:
    """Split a phoneme string into pieces of at most limit symbols: after punctuation, else at a space."""
    pieces: list[str] = []
    rest = phonemes.strip()
    while len(rest) > limit:
        window = rest[: limit + 1]
        cut = max((i + 1 for i, ch in enumerate(window[:limit]) if ch in _PHONEME_BREAKS), default=0)
        if cut == 0:
            cut = window.rfind(" ")
        if cut <= 0:
            cut = limit  # one unbroken word longer than the model's context: cut it
        piece, rest = rest[:cut].strip(), rest[cut:].strip()
        if piece:
            pieces.append(piece)
    if rest:
        pieces.append(rest)
    return pieces


class KokoroTorchEngine:
    """Kokoro-82M through the PyTorch `kokoro` package: misaki's espeak G2P, local `.pt` voices, 24 kHz."""

    sample_rate: int = KOKORO_SAMPLE_RATE
    blends = True

    def __init__(
        self, model: Any, g2p: Callable[[str], Any], voices: dict[str, Any], lang: str = "en-us"
    ) -> None:
        if not voices:
            raise ValueError("a Kokoro model needs at least one voice")
        self._model: Any = model
        self._g2p = g2p
        self._voices: dict[str, Any] = dict(sorted(voices.items()))
        self.lang = lang
        self._vocab: dict[str, int] = dict(model.vocab)
        # KModel wraps the phonemes in two boundary tokens within its context (512 for Kokoro v1.0).
        self.max_phonemes: int = int(model.context_length) - 2
        self._g2p_lock = threading.Lock()  # espeak-ng keeps process-global state

    def voices(self) -> list[VoiceInfo]:
        """The voice packs in the voices folder (blends of them are accepted too)."""
        return [kokoro_voice_info(v, self.lang) for v in self._voices]

    def voice_pack(self, voice: str) -> Any:
        """The (510, 1, 256) style pack of a voice, or the weighted average of a blend 'a(2)+b(1)'."""
        self._loaded()
        parts = parse_voice_blend(voice)
        for name, _ in parts:
            if name not in self._voices:
                raise unknown_voice(name, list(self._voices))
        total = sum(w for _, w in parts)
        return sum(self._voices[n] * (w / total) for n, w in parts)

    def phonemize(self, sentence: str) -> str:
        """Kokoro phonemes for a sentence (espeak-ng through misaki), keeping only symbols in the vocab."""
        with self._g2p_lock:
            result = self._g2p(sentence)
        phonemes = result[0] if isinstance(result, tuple) else result
        return "".join(p for p in str(phonemes or "") if p in self._vocab).strip()

    def synthesize(self, text: str, voice: str, speed: float, cancel: threading.Event) -> Iterator[Audio]:
        """Speak text sentence by sentence; speed scales the predicted durations."""
        check_speed(speed)
        pack = self.voice_pack(voice)
        return self._sentences(text, pack, float(speed), cancel)

    def _sentences(self, text: str, pack: Any, speed: float, cancel: threading.Event) -> Iterator[Audio]:
        """The generator behind synthesize: one chunk per sentence, however many model calls it takes."""
        import torch

        for sentence in split_sentences(text):
            if cancel.is_set():
                return
            phonemes = self.phonemize(sentence)
            if not any(p.isalpha() for p in phonemes):
                continue  # punctuation only: nothing to say
            parts: list[Audio] = []
            for piece in split_phonemes(phonemes, self.max_phonemes):
                if cancel.is_set():
                    return
                with torch.inference_mode():
                    # The pack holds one style per phoneme count; Kokoro picks it by the piece's length.
                    audio = self._loaded()(piece, pack[len(piece) - 1], speed)
                parts.append(audio.detach().float().cpu().numpy().reshape(-1).astype(np.float32, copy=False))
            if parts:
                yield np.concatenate(parts)

    def _loaded(self) -> Any:
        """The KModel, or an error once closed."""
        if self._model is None:
            raise RuntimeError("speech engine is closed")
        return self._model

    def close(self) -> None:
        """Drop the model and voices."""
        self._model = None
        self._voices = {}


def _load_voice_pack(path: Path) -> Any:
    """A Kokoro voice pack from a `.pt` file: float32 (N, 1, 256) on the CPU."""
    import torch

    pack = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(pack, torch.Tensor) or pack.numel() == 0 or pack.shape[-1] != 256:
        shape = tuple(pack.shape) if isinstance(pack, torch.Tensor) else type(pack).__name__
        raise ValueError(f"{path} is not a Kokoro voice pack (expected a (510, 1, 256) tensor, got {shape})")
    return pack.detach().float().reshape(-1, 1, 256)


def load_kokoro_torch(
    model_path: str,
    config_path: str | None,
    voices_dir: str,
    lang: str = "en-us",
    device: str = "cpu",
) -> KokoroTorchEngine:
    """Load Kokoro-82M (PyTorch) from a local .pth, its config.json and a folder of `.pt` voices (no hub).

    config_path None means the config.json beside the model. Phonemes come from misaki's espeak-ng G2P
    (offline), not KPipeline's English G2P, which would fetch a spaCy model at run time.
    """
    if config_path is None:
        config_path = str(Path(model_path).with_name("config.json"))
    for path in (model_path, config_path):
        if not Path(path).is_file():
            raise FileNotFoundError(f"Kokoro file not found: {path}")
    folder = Path(voices_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"Kokoro voices folder not found: {voices_dir}")
    voice_files = sorted(folder.glob("*.pt"))
    if not voice_files:
        raise FileNotFoundError(f"no Kokoro voice files (*.pt) in {voices_dir}")

    import torch
    from kokoro.model import KModel
    from misaki.espeak import EspeakG2P

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    voices = {p.stem: _load_voice_pack(p) for p in voice_files}
    model = KModel(repo_id="hexgrad/Kokoro-82M", config=config_path, model=model_path).to(device).eval()
    return KokoroTorchEngine(model, EspeakG2P(language=lang), voices, lang=lang)


# Engine name (as a model spec's `engine`) -> loader; a new backend adds its loader here.


def list_voices(spec: ModelSpec, config: Config, options: KokoroOptions) -> list[VoiceInfo]:
    """The `.pt` voices in options.voices_dir, as the loaded engine lists them (nothing is read)."""
    voices_dir = config_path(config, options.voices_dir, "options.voices_dir")
    if voices_dir is None or not Path(voices_dir).is_dir():
        raise FileNotFoundError(f"Kokoro voices folder not found: {voices_dir}")
    return [kokoro_voice_info(p.stem, options.lang) for p in sorted(Path(voices_dir).glob("*.pt"))]


def load(spec: ModelSpec, config: Config, options: KokoroOptions) -> KokoroTorchEngine:
    """The catalog's loader: Kokoro-82M from local files (source = the .pth, options voices_dir, config)."""
    if spec.source.startswith("embedded:"):
        raise ValueError("engine 'kokoro' has no embedded model; set source to a local kokoro-v1_0.pth")
    voices_dir = config_path(config, options.voices_dir, "options.voices_dir")
    if voices_dir is None:
        raise ValueError("engine 'kokoro' needs options.voices_dir, a folder of voice .pt files")
    model_path = config_path(config, spec.source, "source")
    assert model_path is not None
    return load_kokoro_torch(
        model_path,
        config_path(config, options.config, "options.config"),
        voices_dir,
        lang=options.lang,
        device=spec.device,
    )
