"""Engines: one module per backend, imported only when a model of that engine is loaded."""

from __future__ import annotations

import importlib.util
from typing import Any

from ai_stack.config import Config, ModelSpec, resolve_path
from ai_stack.sources import (
    EMBEDDED,
    assemble_embedded,
    converted_dir,
    is_converted,
    parse_source,
    prepare_source,
)


def llamacpp_available() -> bool:
    """Whether llama-cpp-python is installed (`make install-llamacpp`)."""
    return importlib.util.find_spec("llama_cpp") is not None


def resolve_engine(spec: ModelSpec, config: Config) -> str:
    """The engine that serves a spec: `auto` is llamacpp for GGUF sources when llama_cpp is installed."""
    if spec.engine != "auto":
        return spec.engine
    source = parse_source(spec.source, config.base_dir)
    return "llamacpp" if source.kind in ("embedded", "gguf") and llamacpp_available() else "transformers"


def load_engine(spec: ModelSpec, config: Config) -> Any:
    """Load the engine a model spec names (blocking; call from a worker thread)."""
    if spec.engine == "fake":
        from ai_stack.engines.fake import load_fake

        return load_fake(spec.options)
    engine = resolve_engine(spec, config)
    if engine == "llamacpp":
        loaded: Any = load_llamacpp_engine(spec, config)
    elif engine == "transformers":
        from ai_stack.engines.transformers import load_transformers

        location = prepare_source(parse_source(spec.source, config.base_dir), config.server.home)
        # Batching options given in the config; the engine's own defaults stand for the rest.
        batching = {k: int(spec.options[k]) for k in ("max_batch", "prefill_chunk") if k in spec.options}
        loaded = load_transformers(
            location,
            device=spec.device,
            dtype=spec.dtype,
            quantization=spec.quantization,
            context_length=spec.context_length,
            **batching,
        )
    else:
        loaded = None
    if loaded is not None:
        loaded.engine_kind = engine  # what /v1/models reports for an `auto` spec
        return loaded
    if spec.engine in ("piper", "kokoro-onnx"):
        return load_speech_engine(spec, config)
    if spec.engine == "kokoro":
        return load_kokoro_torch_engine(spec, config)
    raise ValueError(f"engine {spec.engine!r} is not available in this build")


def load_llamacpp_engine(spec: ModelSpec, config: Config) -> Any:
    """A GGUF source (embedded or a .gguf file) through llama.cpp; the HF tokenizer renders its prompts."""
    from ai_stack.engines.llamacpp import load_llamacpp

    source = parse_source(spec.source, config.base_dir)
    if source.kind == "embedded":
        gguf = assemble_embedded(EMBEDDED[source.value], config.server.home, progress=False)
    elif source.kind == "gguf":
        gguf = source.path
        if not gguf.exists():
            raise ValueError(f"GGUF file {gguf} does not exist")
    else:
        raise ValueError(
            f"engine 'llamacpp' needs a GGUF source (embedded: or a .gguf file), not {spec.source!r}"
        )
    # The bf16 conversion folder (made by `ai-stack prepare`) holds the tokenizer files; else read the GGUF's.
    folder = converted_dir(source, config.server.home)
    return load_llamacpp(
        str(gguf),
        str(folder) if is_converted(folder) else None,
        spec.options,
        device=spec.device,
        context_length=spec.context_length,
    )


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
