"""Llama 3 JSON tool calls: ``{"name": ..., "parameters": ...}``, optionally after ``<|python_tag|>``."""

from __future__ import annotations

from ai_stack.serving.tool_parsers.base import WS, ParsedDelta, ToolParser

PYTHON_TAG = "<|python_tag|>"


class Llama3JsonToolParser(ToolParser):
    """Calls only at the very start of the output or right after another call (``;`` may separate them)."""

    def __init__(self, tool_names: set[str] | None = None, parallel_tool_calls: bool = True) -> None:
        """Set up a parser that accepts only ``tool_names`` (any name when None)."""
        super().__init__(tool_names, parallel_tool_calls)
        self._open = True  # a call may still start

    def _scan_text(self, out: ParsedDelta, final: bool) -> bool:
        """Outside a call: start one if the text opens with JSON or the python tag, else it is all content."""
        buf = self._buf
        if not self._open:
            out.content += self._pending_ws + buf
            self._pending_ws = ""
            self._buf = ""
            return False
        lead = len(buf) - len(buf.lstrip(WS + (";" if self._after_call else "")))
        rest = buf[lead:]
        if not rest:
            self._pending_ws += buf
            self._buf = ""
            return False
        if rest.startswith("{"):
            self._open_call(buf[:lead], "", rest)
            return True
        if rest.startswith(PYTHON_TAG):
            self._open_call(buf[:lead], PYTHON_TAG, rest[len(PYTHON_TAG) :])
            return True
        if PYTHON_TAG.startswith(rest) and not final:
            return False
        self._open = False
        if self._after_call:
            buf = rest  # separators and whitespace after a call are not content
            self._pending_ws = ""
            self._after_call = False
        out.content += self._pending_ws + buf
        self._pending_ws = ""
        self._buf = ""
        self._fresh = False
        return False

    def _read_call(self, out: ParsedDelta, final: bool) -> bool:
        """Inside a call: one bare JSON call object."""
        return self._read_json_call(out, final)

    def _fail_call(self, out: ParsedDelta, consumed: str) -> None:
        """A malformed call is content, and content ends the chance of any later call."""
        super()._fail_call(out, consumed)
        self._open = False
