"""ai-stack: a local AI inference server with OpenAI-compatible chat completions and speech."""

from __future__ import annotations

__version__ = "0.1.0"
