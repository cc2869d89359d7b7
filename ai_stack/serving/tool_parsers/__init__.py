"""Streaming tool-call parsers, one module per output format, and how to tell a template's format.

Pure Python, no engine or web dependencies. Text arrives in arbitrary pieces; the result does not depend on
how it was split.
"""

from __future__ import annotations

from typing import Literal

from ai_stack.serving.tool_parsers.base import ToolParser
from ai_stack.serving.tool_parsers.hermes import HERMES_OPEN, HermesToolParser
from ai_stack.serving.tool_parsers.llama3_json import PYTHON_TAG, Llama3JsonToolParser
from ai_stack.serving.tool_parsers.mistral import MISTRAL_TOOL_CALLS, MistralToolParser

ToolFormat = Literal["hermes", "llama3_json", "mistral"]

TOOL_PARSERS: dict[str, type[ToolParser]] = {
    "hermes": HermesToolParser,
    "llama3_json": Llama3JsonToolParser,
    "mistral": MistralToolParser,
}

__all__ = [
    "TOOL_PARSERS",
    "HermesToolParser",
    "Llama3JsonToolParser",
    "MistralToolParser",
    "ToolFormat",
    "ToolParser",
    "detect_tool_format",
]


def detect_tool_format(chat_template: str | None) -> ToolFormat | None:
    """The tool-call output format a chat template teaches its model, or None when it shows none."""
    if not chat_template:
        return None
    if MISTRAL_TOOL_CALLS in chat_template:
        return "mistral"
    if HERMES_OPEN in chat_template:
        return "hermes"
    if (
        PYTHON_TAG in chat_template
        or "Given the following functions" in chat_template
        or '"parameters"' in chat_template
    ):
        return "llama3_json"
    return None
