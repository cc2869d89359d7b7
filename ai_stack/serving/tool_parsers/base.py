"""What every streaming tool-call parser shares: call records, JSON scanning, content emission, call state.

A format is a subclass of ``ToolParser`` that says where calls start in plain text (``_scan_text``) and how
one of its calls is read (``_read_call``). The base class streams the content around the calls, holds back
whitespace that may belong to a call, and turns a malformed call back into content.
"""

from __future__ import annotations

import json
import secrets
import string
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field

# Whitespace as JSON defines it; also what may surround a call or a <think> without being content.
WS = " \t\r\n"

_ID_ALPHABET = string.ascii_letters + string.digits


def new_tool_call_id() -> str:
    """A fresh OpenAI-style tool call id: ``call_`` and 24 random alphanumeric characters."""
    return "call_" + "".join(secrets.choice(_ID_ALPHABET) for _ in range(24))


@dataclass
class ToolCall:
    """One complete tool call; ``arguments`` is a JSON object serialised as a string."""

    id: str
    name: str
    arguments: str


@dataclass
class ParsedDelta:
    """What a piece of model output turned into: visible content, reasoning text and complete tool calls."""

    content: str = ""
    reasoning: str = ""
    tool_calls: list[ToolCall] = field(default_factory=list)


def partial_suffix(text: str, marker: str) -> int:
    """Length of the longest proper suffix of ``text`` that is a prefix of ``marker``."""
    for n in range(min(len(text), len(marker) - 1), 0, -1):
        if marker.startswith(text[-n:]):
            return n
    return 0


class _JsonScanner:
    """Incrementally finds where a JSON object or array that starts at index 0 of a growing string ends."""

    def __init__(self) -> None:
        self.pos = 0
        self.depth = 0
        self.in_string = False
        self.escape = False

    def end(self, text: str) -> int | None:
        """Index just past the closing bracket of the value, or None while it is still open."""
        i = self.pos
        n = len(text)
        while i < n:
            c = text[i]
            i += 1
            if self.in_string:
                if self.escape:
                    self.escape = False
                elif c == "\\":
                    self.escape = True
                elif c == '"':
                    self.in_string = False
            elif c == '"':
                self.in_string = True
            elif c in "{[":
                self.depth += 1
            elif c in "}]":
                self.depth -= 1
                if self.depth <= 0:
                    self.pos = i
                    return i
        self.pos = i
        return None


def _normalise_arguments(args: object) -> str | None:
    """Arguments as a JSON object string; accepts an object or a string that encodes one; else None."""
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError:
            return None
    if not isinstance(args, dict):
        return None
    return json.dumps(args, ensure_ascii=False)


class ToolParser(ABC):
    """Splits streamed content into plain content and complete tool calls, for one tool-call format.

    Feed the content piece by piece with ``feed`` and call ``finish`` once at the end; each returns what can
    be emitted now (``reasoning`` stays empty). A malformed tool call (bad JSON, no name, unknown name,
    unterminated) never raises: its raw text comes out as content. Whitespace right before and after a tool
    call is not content. Without ``parallel_tool_calls`` only the first call overall is emitted.
    """

    def __init__(self, tool_names: set[str] | None = None, parallel_tool_calls: bool = True) -> None:
        """Set up a parser that accepts only ``tool_names`` (any name when None)."""
        self.tool_names = tool_names
        self.parallel_tool_calls = parallel_tool_calls
        self._buf = ""  # content not yet processed
        self._in_call = False
        self._raw = ""  # raw text of the call being read, for giving it back as content
        self._scanner = _JsonScanner()
        self._pending_ws = ""  # trailing whitespace of content, held in case a call follows
        self._fresh = True  # no content emitted since the start or the last call
        self._after_call = False
        self._n_calls = 0

    # ------------------------------------------------------------------ public

    def feed(self, text: str) -> ParsedDelta:
        """Take the next piece of content and return what can be emitted now."""
        out = ParsedDelta()
        self._buf += text
        self._process(out, final=False)
        return out

    def finish(self) -> ParsedDelta:
        """Flush everything held back at the end of generation."""
        out = ParsedDelta()
        self._process(out, final=True)
        return out

    # ------------------------------------------------------------- format hooks

    @abstractmethod
    def _scan_text(self, out: ParsedDelta, final: bool) -> bool:
        """Outside a call: emit content up to the next call; True when a call started."""

    @abstractmethod
    def _read_call(self, out: ParsedDelta, final: bool) -> bool:
        """Inside a call: read on; True when the call is done (accepted or failed), False to wait."""

    # ---------------------------------------------------------------- driver

    def _process(self, out: ParsedDelta, final: bool) -> None:
        """Consume buffered content: stream plain text, hold partial markers, read calls."""
        while True:
            if self._in_call:
                if not self._read_call(out, final):
                    break
                continue
            if not self._buf:
                break
            if not self._scan_text(out, final):
                break
        if final:
            if self._in_call:
                self._fail_call(out, self._buf)
                self._buf = ""
            if self._buf:
                self._emit_content(out, self._buf)
                self._buf = ""
            self._flush_ws(out)

    def _scan_marker(self, out: ParsedDelta, final: bool, marker: str) -> bool:
        """Emit content up to ``marker`` and start a call after it; hold back a partial marker at the end."""
        buf = self._buf
        idx = buf.find(marker)
        if idx >= 0:
            self._emit_content(out, buf[:idx])
            self._start_call(marker)
            self._buf = buf[idx + len(marker) :]
            return True
        hold = 0 if final else partial_suffix(buf, marker)
        self._emit_content(out, buf[: len(buf) - hold])
        self._buf = buf[len(buf) - hold :]
        return False

    # --------------------------------------------------------------- content

    def _emit_content(self, out: ParsedDelta, text: str) -> None:
        """Emit content, holding trailing whitespace (a call may follow) and dropping it after a call."""
        if not text:
            return
        core = text.rstrip(WS)
        if not core:  # only whitespace: held on (a long run of it is never scanned again)
            self._pending_ws += text
            return
        trailing = text[len(core) :]
        core = self._pending_ws + core
        self._pending_ws = trailing
        if self._after_call:
            core = core.lstrip(WS)
            self._after_call = False
        out.content += core
        self._fresh = False

    def _flush_ws(self, out: ParsedDelta) -> None:
        """At the end: held whitespace is content unless it trails a tool call."""
        if self._pending_ws and not self._after_call:
            out.content += self._pending_ws
        self._pending_ws = ""

    # ----------------------------------------------------------- call state

    def _start_call(self, marker: str) -> None:
        """Enter a call; the whitespace held before it becomes part of its raw text."""
        self._in_call = True
        self._raw = self._pending_ws + marker
        self._pending_ws = ""
        self._scanner = _JsonScanner()

    def _open_call(self, skipped: str, marker: str, rest: str) -> None:
        """Start a call after ``skipped`` (held like whitespace) and ``marker``; ``rest`` is what follows."""
        self._pending_ws += skipped
        self._start_call(marker)
        self._buf = rest

    def _fail_call(self, out: ParsedDelta, consumed: str) -> None:
        """A call turned out malformed: its raw text goes out as content."""
        raw = self._raw + consumed
        self._in_call = False
        self._raw = ""
        self._after_call = False
        core = raw.rstrip(WS)
        out.content += core
        self._pending_ws = raw[len(core) :]
        self._fresh = False

    def _accept(self, out: ParsedDelta, calls: list[ToolCall]) -> None:
        """Calls were read completely: emit them (only the first one overall without parallel calls)."""
        for call in calls:
            if self._n_calls == 0 or self.parallel_tool_calls:
                out.tool_calls.append(call)
            self._n_calls += 1
        self._in_call = False
        self._raw = ""
        self._after_call = True
        self._fresh = True
        self._pending_ws = ""

    # ------------------------------------------------------------ call content

    def _make_call(self, obj: object, need_args: bool) -> ToolCall | None:
        """A ToolCall from a parsed JSON object, or None when it is not a valid call."""
        if not isinstance(obj, dict):
            return None
        name = obj.get("name")
        if not isinstance(name, str) or not name:
            return None
        if self.tool_names is not None and name not in self.tool_names:
            return None
        key = "arguments" if "arguments" in obj else "parameters" if "parameters" in obj else None
        if key is None:
            if need_args:
                return None
            args: str | None = "{}"
        else:
            args = _normalise_arguments(obj[key]) if obj[key] is not None else "{}"
        if args is None:
            return None
        return ToolCall(id=new_tool_call_id(), name=name, arguments=args)

    def _named_call(self, name: str, args_text: str) -> ToolCall | None:
        """A ToolCall from a name and the JSON text of its arguments, or None."""
        if self.tool_names is not None and name not in self.tool_names:
            return None
        try:
            args = _normalise_arguments(json.loads(args_text))
        except json.JSONDecodeError:
            return None
        if args is None:
            return None
        return ToolCall(id=new_tool_call_id(), name=name, arguments=args)

    def _read_json_value(self) -> tuple[str, str] | None:
        """Read one JSON object/array from the start of the buffer: (text, leading whitespace), or None."""
        buf = self._buf
        rest = buf.lstrip(WS)
        if not rest:
            return None
        lead = buf[: len(buf) - len(rest)]
        if self._scanner.pos == 0 and rest[0] not in "{[":
            return ("", lead)  # not JSON at all
        end = self._scanner.end(rest)
        if end is None:
            return None
        self._buf = rest[end:]
        return (rest[:end], lead)

    def _read_json_calls(self, out: ParsedDelta, to_calls: Callable[[str], list[ToolCall] | None]) -> bool:
        """Read one JSON value and accept the calls `to_calls` makes of its text (None: give it back)."""
        got = self._read_json_value()
        if got is None:
            return False
        text, lead = got
        if not text:
            self._fail_call(out, "")
            return True
        calls = to_calls(text)
        if calls is None:
            self._fail_call(out, lead + text)
        else:
            self._accept(out, calls)
        return True

    def _read_json_call(self, out: ParsedDelta, final: bool) -> bool:
        """Read a bare ``{"name": ..., "arguments": ...}`` call; same contract as ``_read_call``."""
        return self._read_json_calls(out, self._object_call)

    def _object_call(self, text: str) -> list[ToolCall] | None:
        """The call a JSON object with ``name`` and ``arguments`` (or ``parameters``) spells, or None."""
        try:
            obj = json.loads(text)
        except json.JSONDecodeError:
            obj = None
        call = self._make_call(obj, need_args=True)
        return None if call is None else [call]
