"""Streaming parsers for model output: reasoning (``<think>``) and tool calls (hermes, llama3_json, mistral).

Pure Python, no engine or web dependencies. Text arrives in arbitrary pieces; the final result does not
depend on how the text was split. Partial markers are held back until they are disambiguated, and nothing
that is not a tool call or reasoning is ever lost or duplicated from ``content``. The reasoning layer
(``reasoning.py``) runs first; what it passes on as content goes through the tool parser of the format
(``tool_parsers/``), after a check for an answer that is one tool call in a Markdown code block
(``tool_parsers/fenced.py``). This module combines them and re-exports their public names.
"""

from __future__ import annotations

from typing import Any

from ai_stack.serving.reasoning import (
    THINK_CLOSE,
    THINK_OPEN,
    ReasoningParser,
    detect_reasoning,
    prompt_opens_reasoning,
)
from ai_stack.serving.tool_parsers import TOOL_PARSERS, ToolFormat, ToolParser, detect_tool_format
from ai_stack.serving.tool_parsers.base import ParsedDelta, ToolCall, new_tool_call_id
from ai_stack.serving.tool_parsers.fenced import FencedCallReader
from ai_stack.serving.tool_parsers.hermes import HERMES_CLOSE, HERMES_OPEN
from ai_stack.serving.tool_parsers.llama3_json import PYTHON_TAG
from ai_stack.serving.tool_parsers.mistral import MISTRAL_ARGS, MISTRAL_CALL_ID, MISTRAL_TOOL_CALLS

__all__ = [
    "HERMES_CLOSE",
    "HERMES_OPEN",
    "MISTRAL_ARGS",
    "MISTRAL_CALL_ID",
    "MISTRAL_TOOL_CALLS",
    "PYTHON_TAG",
    "THINK_CLOSE",
    "THINK_OPEN",
    "OutputParser",
    "ParsedDelta",
    "ToolCall",
    "ToolFormat",
    "detect_reasoning",
    "detect_tool_format",
    "new_tool_call_id",
    "prompt_opens_reasoning",
]


class OutputParser:
    """Splits streamed model output into content, reasoning and tool calls.

    Feed the decoded text piece by piece with ``feed`` and call ``finish`` once at the end. Each call returns
    what can be emitted now. Reasoning is the text between ``<think>`` and ``</think>`` (a ``<think>`` is
    only recognised at the very start of the output); when ``in_reasoning`` is True the output starts inside
    the block. If generation ends before ``</think>``, the reasoning stays reasoning (as vLLM does) and there
    is no content. Tool calls are never parsed inside reasoning. A malformed tool call (bad JSON, no name,
    unknown name, unterminated) never raises: its raw text comes out as content. Whitespace right before and
    after a tool call is not content. With a tool format, an answer that is one Markdown-fenced JSON call (or
    array of calls) of offered tools, with arguments valid against ``tool_schemas``, is a call too; it is
    held back only while it may still become one.
    """

    def __init__(
        self,
        tool_format: str | None,
        reasoning: bool,
        in_reasoning: bool = False,
        tool_names: set[str] | None = None,
        parallel_tool_calls: bool = True,
        tool_schemas: dict[str, dict[str, Any] | None] | None = None,
    ) -> None:
        """Set up a parser for one choice of one request."""
        if tool_format is not None and tool_format not in TOOL_PARSERS:
            raise ValueError(f"unknown tool format {tool_format!r}")
        self.tool_format = tool_format
        self.tool_names = tool_names
        self.parallel_tool_calls = parallel_tool_calls
        self._think = ReasoningParser(reasoning, in_reasoning)
        self._tools: ToolParser | None = (
            None if tool_format is None else TOOL_PARSERS[tool_format](tool_names, parallel_tool_calls)
        )
        self._fence = (
            None if tool_format is None else FencedCallReader(tool_names, tool_schemas, parallel_tool_calls)
        )
        self._finished = False

    @property
    def in_reasoning(self) -> bool:
        """Whether the text fed last went (at least partly) to reasoning; use it to count reasoning tokens."""
        return self._think.in_reasoning

    def feed(self, text: str) -> ParsedDelta:
        """Take the next piece of output and return what can be emitted now."""
        if self._finished:
            raise RuntimeError("feed() after finish()")
        out = ParsedDelta()
        out.reasoning, content = self._think.feed(text)
        if content:
            self._pass_on(out, content)
        return out

    def finish(self) -> ParsedDelta:
        """Flush everything held back at the end of generation."""
        out = ParsedDelta()
        if self._finished:
            return out
        self._finished = True
        out.reasoning, content = self._think.finish()
        if content:
            self._pass_on(out, content)
        if self._fence is not None:
            held, calls = self._fence.finish()
            out.tool_calls.extend(calls)
            if held:
                self._to_tools(out, held)
        if self._tools is not None:
            _merge(out, self._tools.finish())
        return out

    def _pass_on(self, out: ParsedDelta, content: str) -> None:
        """Content from the reasoning layer goes through the fence check and the tool parser, if any."""
        if self._fence is not None:
            content, calls = self._fence.feed(content)
            out.tool_calls.extend(calls)
        if content:
            self._to_tools(out, content)

    def _to_tools(self, out: ParsedDelta, content: str) -> None:
        if self._tools is None:
            out.content += content
        else:
            _merge(out, self._tools.feed(content))


def _merge(out: ParsedDelta, delta: ParsedDelta) -> None:
    """Append a tool parser's content and calls to ``out``."""
    out.content += delta.content
    out.tool_calls.extend(delta.tool_calls)
