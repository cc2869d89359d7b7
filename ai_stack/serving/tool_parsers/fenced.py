"""A tool call written as a Markdown code block: the whole answer is one fenced JSON call (or array of calls).

Small models asked a natural question with tools offered often answer with a ```json block holding
``{"name": ..., "arguments": {...}}`` instead of their template's format. Such an answer is a call when the
fence holds nothing but a JSON object (or an array of them) naming offered tools, with arguments valid
against their schemas, and only whitespace surrounds the fence. Anything else is text, and it streams
promptly: the answer is held back only while what has come so far can still become such a call.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ai_stack.serving.tool_parsers.base import (
    WS,
    ToolCall,
    _JsonScanner,
    _normalise_arguments,
    new_tool_call_id,
)

FENCE = "```"
_INLINE_WS = " \t"
_LANGUAGES = ("", "json")  # the info string of a fence that may hold a call (case does not matter)
_NAME_KEY = '"name"'
# How far into the answer the first call's name must be known, and how much may follow its JSON (whitespace
# and the closing fence): beyond these the answer is text, so no run of whitespace is rescanned without end.
HEAD_LIMIT = 256
TAIL_LIMIT = 64


class _More(Exception):
    """The text ends before it can be decided."""


class _No(Exception):
    """The text cannot be a fenced call."""


@dataclass
class _Cursor:
    text: str
    pos: int = 0

    def skip(self, chars: str) -> None:
        """Skip characters of `chars`; the text must go on after them."""
        while self.pos < len(self.text) and self.text[self.pos] in chars:
            self.pos += 1
        if self.pos == len(self.text):
            raise _More

    def literal(self, expected: str) -> None:
        """Read `expected` exactly."""
        got = self.text[self.pos : self.pos + len(expected)]
        if not expected.startswith(got):
            raise _No
        if len(got) < len(expected):
            raise _More
        self.pos += len(expected)

    def word(self) -> str:
        """Read ASCII letters; the text must go on after them."""
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos].isascii() and self.text[self.pos].isalpha():
            self.pos += 1
        if self.pos == len(self.text):
            if not any(lang.startswith(self.text[start:].lower()) for lang in _LANGUAGES):
                raise _No
            raise _More
        return self.text[start : self.pos]


class FencedCallReader:
    """Decides, as the answer streams, whether it is one fenced tool call; passes everything else on.

    ``feed`` and ``finish`` return ``(text, calls)``: text to hand on unchanged (to the format's own parser),
    and the calls when the whole answer turned out to be a fenced call (only ever from ``finish``).
    """

    def __init__(
        self,
        tool_names: set[str] | None,
        tool_schemas: dict[str, dict[str, Any] | None] | None = None,
        parallel_tool_calls: bool = True,
    ) -> None:
        """Set up for one answer; calls must name one of `tool_names` (any name when None)."""
        self.tool_names = tool_names
        self.tool_schemas = tool_schemas or {}
        self.parallel_tool_calls = parallel_tool_calls
        self._buf = ""
        self._deciding = True
        self._json_start: int | None = None  # where the JSON starts once its head named an offered tool
        self._scanner = _JsonScanner()
        self._json_end: int | None = None

    def feed(self, text: str) -> tuple[str, list[ToolCall]]:
        """Take the next piece of the answer's content."""
        if not self._deciding:
            return text, []
        self._buf += text
        if self._state() == "no":
            return self._give_up(), []
        return "", []

    def finish(self) -> tuple[str, list[ToolCall]]:
        """At the end of the answer: its calls when it was one fenced call, else what was held back."""
        if not self._deciding:
            return "", []
        calls = self._calls() if self._state() == "closed" else None
        if calls is None:
            return self._give_up(), []
        self._deciding = False
        self._buf = ""
        return "", calls

    def _give_up(self) -> str:
        self._deciding = False
        text, self._buf = self._buf, ""
        return text

    def _state(self) -> str:
        """``closed`` (one whole fenced call so far), ``more`` (it may still become one) or ``no``."""
        try:
            if self._json_start is None:
                try:
                    self._json_start = self._head(_Cursor(self._buf[:HEAD_LIMIT]))
                except _More:
                    if len(self._buf) >= HEAD_LIMIT:
                        return "no"
                    raise
            if self._json_end is None:
                end = self._scanner.end(self._buf[self._json_start :])
                if end is None:
                    return "more"
                self._json_end = self._json_start + end
            if len(self._buf) - self._json_end > TAIL_LIMIT:
                return "no"
            tail = _Cursor(self._buf, self._json_end)
            tail.skip(WS)
            tail.literal(FENCE)
            if tail.text[tail.pos :].strip(WS):
                return "no"  # something follows the closing fence
            return "closed"
        except _More:
            return "more"
        except _No:
            return "no"

    def _head(self, cur: _Cursor) -> int:
        """Read up to the first call's name; return where the JSON starts. Raises _More or _No."""
        cur.skip(WS)
        cur.literal(FENCE)
        cur.skip(_INLINE_WS)
        if cur.word().lower() not in _LANGUAGES:
            raise _No
        cur.skip(_INLINE_WS)
        cur.literal("\n")
        cur.skip(WS)
        start = cur.pos
        if cur.text[cur.pos] == "[":
            cur.pos += 1
            cur.skip(WS)
        cur.literal("{")
        cur.skip(WS)
        cur.literal(_NAME_KEY)
        cur.skip(WS)
        cur.literal(":")
        cur.skip(WS)
        cur.literal('"')
        end = cur.text.find('"', cur.pos)
        name = cur.text[cur.pos : None if end < 0 else end]
        if "\\" in name:
            raise _No
        if self.tool_names is not None:
            names = self.tool_names if end >= 0 else {n[: len(name)] for n in self.tool_names}
            if name not in names:
                raise _No
        if end < 0:
            raise _More
        return start

    def _calls(self) -> list[ToolCall] | None:
        """The calls of a complete fenced answer, or None when any of them is not a valid call."""
        if self._json_start is None or self._json_end is None:
            return None
        try:
            value = json.loads(self._buf[self._json_start : self._json_end])
        except (json.JSONDecodeError, RecursionError):
            return None
        items = value if isinstance(value, list) else [value]
        calls = [self._call(item) for item in items]
        if not calls or any(call is None for call in calls):
            return None
        valid = [call for call in calls if call is not None]
        return valid if self.parallel_tool_calls else valid[:1]

    def _call(self, item: object) -> ToolCall | None:
        """One call from a JSON object with ``name`` and ``arguments`` (or ``parameters``), or None."""
        if not isinstance(item, dict) or not set(item) <= {"name", "arguments", "parameters"}:
            return None
        name = item.get("name")
        if not isinstance(name, str) or (self.tool_names is not None and name not in self.tool_names):
            return None
        raw = item.get("arguments", item.get("parameters", {}))
        arguments = _normalise_arguments(raw if raw is not None else {})
        if arguments is None or not _valid(json.loads(arguments), self.tool_schemas.get(name)):
            return None
        return ToolCall(id=new_tool_call_id(), name=name, arguments=arguments)


def _valid(arguments: dict[str, Any], schema: dict[str, Any] | None) -> bool:
    """Whether `arguments` satisfy the tool's parameter schema (a schema that cannot be used allows all)."""
    if not schema:
        return True
    import jsonschema

    try:
        validator = jsonschema.validators.validator_for(schema)(schema)
        return bool(validator.is_valid(arguments))
    except RecursionError:
        return False
    except Exception:  # a broken schema (bad pattern, unresolvable $ref) cannot judge the call
        return True
