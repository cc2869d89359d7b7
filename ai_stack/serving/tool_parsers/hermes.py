"""Hermes tool calls (Qwen, Hermes): ``<tool_call>{"name": ..., "arguments": ...}</tool_call>``."""

from __future__ import annotations

import json

from ai_stack.serving.tool_parsers.base import WS, ParsedDelta, ToolCall, ToolParser

HERMES_OPEN = "<tool_call>"
HERMES_CLOSE = "</tool_call>"


class HermesToolParser(ToolParser):
    """Calls between ``<tool_call>`` tags, or one bare JSON call object as the whole answer."""

    def __init__(self, tool_names: set[str] | None = None, parallel_tool_calls: bool = True) -> None:
        """Set up a parser that accepts only ``tool_names`` (any name when None)."""
        super().__init__(tool_names, parallel_tool_calls)
        self._tagged = False  # the call being read opened with <tool_call> (else it is a bare object)

    def _scan_text(self, out: ParsedDelta, final: bool) -> bool:
        """Outside a call: a bare call object first thing, or content up to the next ``<tool_call>``."""
        if self._fresh:
            # Small Qwen models often answer a bare {"name": ..., "arguments": ...} without the tags.
            buf = self._buf
            rest = buf.lstrip(WS)
            if rest.startswith("{"):
                self._tagged = False
                self._open_call(buf[: len(buf) - len(rest)], "", rest)
                return True
            if not rest and not final:
                return False
        if self._scan_marker(out, final, HERMES_OPEN):
            self._tagged = True
            return True
        return False

    def _read_call(self, out: ParsedDelta, final: bool) -> bool:
        """Inside a call: read up to ``</tool_call>`` (or one bare JSON object)."""
        if not self._tagged:
            return self._read_json_call(out, final)
        idx = self._buf.find(HERMES_CLOSE)
        if idx < 0:
            if final:
                call = self._parse(self._buf)
                if call is not None:  # unterminated but complete JSON: accept, as vLLM does
                    self._accept(out, [call])
                    self._buf = ""
                    return True
            return False
        inner = self._buf[:idx]
        consumed = inner + HERMES_CLOSE
        self._buf = self._buf[idx + len(HERMES_CLOSE) :]
        call = self._parse(inner)
        if call is None:
            self._fail_call(out, consumed)
        else:
            self._accept(out, [call])
        return True

    def _parse(self, inner: str) -> ToolCall | None:
        """The call inside ``<tool_call>…</tool_call>``, or None."""
        try:
            obj = json.loads(inner)
        except json.JSONDecodeError:
            return None
        return self._make_call(obj, need_args=False)
