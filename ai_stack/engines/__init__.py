"""Engines: one module per backend, imported only when a model of that engine is loaded."""

from __future__ import annotations

from typing import Any

from ai_stack.config import Config, ModelSpec, resolve_path
from ai_stack.sources import parse_source, prepare_source


def load_engine(spec: ModelSpec, config: Config) -> Any:
    """Load the engine a model spec names (blocking; call from a worker thread)."""
    if spec.engine == "fake":
        from ai_stack.engines.fake import load_fake

        return load_fake(spec.options)
    if spec.engine == "transformers":
        from ai_stack.engines.transformers import load_transformers

        location = prepare_source(parse_source(spec.source, config.base_dir), config.server.home)
        return load_transformers(
            location,
            device=spec.device,
            dtype=spec.dtype,
            quantization=spec.quantization,
            context_length=spec.context_length,
        )
    if spec.engine in ("piper", "kokoro-onnx"):
        return load_speech_engine(spec, config)
    if spec.engine == "kokoro":
        return load_kokoro_torch_engine(spec, config)
    raise ValueError(f"engine {spec.engine!r} is not available in this build")


# Embedded speech sources: `embedded:NAME` for each engine's packaged default voice or model.
EMBEDDED_SPEECH: dict[str, set[str]] = {
    "piper": {"en_US-joe-medium"},
    "kokoro-onnx": {"kokoro-v1.0-int8"},
}


def _speech_path(config: Config, value: Any, what: str) -> str | None:
    """A local file path from the config (relative to the config's folder), or None when not set."""
    if value is None:
        return None
    if not isinstance(value, str) or not value:
        raise ValueError(f"{what} must be a non-empty path string")
    return str(resolve_path(config, value))


def load_speech_engine(spec: ModelSpec, config: Config) -> Any:
    """Load a Piper or Kokoro ONNX model: the embedded default (`embedded:NAME`) or local files."""
    from ai_stack.engines.speech import load_kokoro_onnx, load_piper

    embedded = spec.source.removeprefix("embedded:") if spec.source.startswith("embedded:") else None
    if embedded is not None and embedded not in EMBEDDED_SPEECH[spec.engine]:
        known = ", ".join(sorted(EMBEDDED_SPEECH[spec.engine]))
        raise ValueError(f"unknown embedded {spec.engine} model {embedded!r}; known: {known}")
    model_path = None if embedded is not None else _speech_path(config, spec.source, "source")
    if spec.engine == "piper":
        voice_id = spec.options.get("voice_id")
        return load_piper(
            model_path,
            _speech_path(config, spec.options.get("config"), "options.config"),
            voice_id=str(voice_id) if voice_id else (embedded if embedded else None),
            noise_scale=_optional_float(spec.options.get("noise_scale")),
            noise_w=_optional_float(spec.options.get("noise_w")),
        )
    lang = spec.options.get("lang", "en-us")
    return load_kokoro_onnx(
        model_path,
        _speech_path(config, spec.options.get("voices"), "options.voices"),
        cache_dir=config.server.home / "kokoro",
        lang=str(lang),
    )


def load_kokoro_torch_engine(spec: ModelSpec, config: Config) -> Any:
    """Load Kokoro-82M (PyTorch) from local files: source = the .pth, options config and voices_dir."""
    from ai_stack.engines.speech import load_kokoro_torch

    if spec.source.startswith("embedded:"):
        raise ValueError("engine 'kokoro' has no embedded model; set source to a local kokoro-v1_0.pth")
    voices_dir = _speech_path(config, spec.options.get("voices_dir"), "options.voices_dir")
    if voices_dir is None:
        raise ValueError("engine 'kokoro' needs options.voices_dir, a folder of voice .pt files")
    model_path = _speech_path(config, spec.source, "source")
    assert model_path is not None
    return load_kokoro_torch(
        model_path,
        _speech_path(config, spec.options.get("config"), "options.config"),
        voices_dir,
        lang=str(spec.options.get("lang", "en-us")),
        device=spec.device,
    )


def _optional_float(value: object) -> float | None:
    """An optional numeric engine option."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"expected a number, got {value!r}")
    return float(value)
