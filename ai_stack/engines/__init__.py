"""Engines: one module per backend, imported only when a model of that engine is loaded."""

from __future__ import annotations

from typing import Any

from ai_stack.config import Config, ModelSpec
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
    raise ValueError(f"engine {spec.engine!r} is not available in this build")
