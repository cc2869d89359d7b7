"""Mistral tool calls: ``[TOOL_CALLS]`` then a JSON array, a JSON object, or ``name[ARGS]{...}`` (v11+)."""

from __future__ import annotations

import json
import re

from ai_stack.serving.tool_parsers.base import WS, ParsedDelta, ToolCall, ToolParser, _JsonScanner

MISTRAL_TOOL_CALLS = "[TOOL_CALLS]"
MISTRAL_ARGS = "[ARGS]"
MISTRAL_CALL_ID = "[CALL_ID]"

# A v11+ Mistral call header: ``name[ARGS]`` or ``name[CALL_ID]id[ARGS]``.
_HEADER = re.compile(r"([A-Za-z0-9_.\-]+)(?:\[CALL_ID\][A-Za-z0-9_\-]*)?\[ARGS\]")
# What a header may look like while it is still arriving.
_HEADER_PREFIX = re.compile(r"[A-Za-z0-9_.\-]*(?:\[CALL_ID\][A-Za-z0-9_\-]*)?(?:\[[A-Z_]*)?")


class MistralToolParser(ToolParser):
    """Calls after ``[TOOL_CALLS]``, or a bare ``[{...}, ...]`` array as the whole answer."""

    def __init__(self, tool_names: set[str] | None = None, parallel_tool_calls: bool = True) -> None:
        """Set up a parser that accepts only ``tool_names`` (any name when None)."""
        super().__init__(tool_names, parallel_tool_calls)
        self._stage = ""  # "start" | "array" | "header" | "args" | "object"
        self._call_name = ""

    def _scan_text(self, out: ParsedDelta, final: bool) -> bool:
        """Outside a call: a bare call array first thing, or content up to the next ``[TOOL_CALLS]``."""
        if self._fresh:
            buf = self._buf
            rest = buf.lstrip(WS)
            if rest.startswith("["):
                after = rest[1:].lstrip(WS)
                if after.startswith("{"):
                    self._open_call(buf[: len(buf) - len(rest)], "", rest)
                    self._stage = "array"
                    return True
                if not after and not final:
                    return False  # "[" and whitespace: wait
        if self._scan_marker(out, final, MISTRAL_TOOL_CALLS):
            self._stage = "start"
            return True
        return False

    def _read_call(self, out: ParsedDelta, final: bool) -> bool:
        """Inside a call: ``[{...}, ...]`` array, ``{...}`` object, or ``name[ARGS]{...}``."""
        stage = self._stage
        if stage == "start":
            rest = self._buf.lstrip(WS)
            if not rest:
                return False
            if rest[0] == "[":
                self._stage = "array"
            elif rest[0] == "{":
                self._stage = "object"
            else:
                self._stage = "header"
            return True
        if stage == "header":
            return self._read_header(out, final)
        return self._read_json_calls(out, lambda text: self._calls(stage, text))

    def _read_header(self, out: ParsedDelta, final: bool) -> bool:
        """Read ``name[ARGS]`` (or ``name[CALL_ID]id[ARGS]``); the arguments object follows."""
        rest = self._buf.lstrip(WS)
        m = _HEADER.match(rest)
        if m is None:
            if not final and _HEADER_PREFIX.fullmatch(rest):
                return False
            self._fail_call(out, "")
            return True
        self._raw += self._buf[: len(self._buf) - len(rest) + m.end()]
        self._call_name = m.group(1)
        self._buf = rest[m.end() :]
        self._stage = "args"
        self._scanner = _JsonScanner()
        return True

    def _calls(self, stage: str, text: str) -> list[ToolCall] | None:
        """The calls in the JSON text read at ``stage``, or None when any of them is not a valid call."""
        if stage == "args":
            call = self._named_call(self._call_name, text) if text.startswith("{") else None
            return [call] if call is not None else None
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            obj = None
        if stage == "object":
            call = self._make_call(obj, need_args=False)
            return [call] if call is not None else None
        if isinstance(obj, list) and obj:
            made = [self._make_call(item, need_args=False) for item in obj]
            calls = [c for c in made if c is not None]
            return calls if len(calls) == len(made) else None
        return None
