"""What the speech engines share: voice names, weighted blends, Kokoro voice descriptions, config paths."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Final

import numpy as np

from ai_stack.engines.base import VoiceInfo

if TYPE_CHECKING:
    from ai_stack.config import Config

KOKORO_SAMPLE_RATE: Final = 24000
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
_BLEND_PART = re.compile(r"^\s*([A-Za-z0-9_.-]+)\s*(?:\(\s*([^()]*?)\s*\))?\s*$")


def unknown_voice(voice: str, valid: list[str]) -> ValueError:
    """The error for a voice an engine does not have, naming the ones it has."""
    return ValueError(f"unknown voice {voice!r}; available voices: {', '.join(valid)}")


def check_speed(speed: float) -> None:
    """Refuse a speed no engine can honour."""
    if not speed > 0:
        raise ValueError(f"speed must be positive, got {speed}")


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


def kokoro_voice_info(voice_id: str, text_language: str) -> VoiceInfo:
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


def config_path(config: Config, value: str | None, what: str) -> str | None:
    """A local file path from the config (relative to the config's folder), or None when not set."""
    if value is None:
        return None
    if not value:
        raise ValueError(f"{what} must be a non-empty path string")
    from ai_stack.config import resolve_path

    return str(resolve_path(config, value))


def embedded_name(source: str, engine: str, known: set[str]) -> str | None:
    """The NAME of an `embedded:NAME` source (checked against the engine's packaged ones), else None."""
    if not source.startswith("embedded:"):
        return None
    name = source.removeprefix("embedded:")
    if name not in known:
        raise ValueError(f"unknown embedded {engine} model {name!r}; known: {', '.join(sorted(known))}")
    return name
