"""The sentence splitter that paces speech synthesis: one engine call, and one audio chunk, per sentence."""

from __future__ import annotations

import re

# A sentence ends at . ! ? ; (or a run of them, with closing quotes/brackets) followed by whitespace
# or the end, at the CJK full stop, exclamation and question marks (no space needed), or at a line break.
_CLOSERS = "\"'\u201d\u2019\u00bb)\\]"
_CJK_CLOSERS = "\u300d\u300f\u201d\u2019)\uff09"
_BOUNDARY = re.compile(rf"[.!?;]+[{_CLOSERS}]*(?=\s|$)|[\u3002\uff01\uff1f]+[{_CJK_CLOSERS}]*|\n")
# Clause marks: , : (ASCII and full-width), the ideographic comma and the em dash.
_CLAUSE_MARKS = ",:\uff0c\u3001\uff1a\u2014"
_CLAUSE = re.compile(rf"[^{_CLAUSE_MARKS}]*(?:[{_CLAUSE_MARKS}]+[{_CLOSERS}]*\s*|$)")
_MIN_CHARS = 10
_MAX_CHARS = 300


def _split_long(piece: str, max_chars: int) -> list[str]:
    """Cut a piece longer than max_chars at clause marks, then at spaces, so no chunk holds audio back."""
    if len(piece) <= max_chars:
        return [piece]
    parts: list[str] = []
    current = ""
    for clause in (m.group(0) for m in _CLAUSE.finditer(piece)):
        if current and len(current) + len(clause) > max_chars:
            parts.append(current)
            current = ""
        current += clause
    if current:
        parts.append(current)
    out: list[str] = []
    for part in parts:
        while len(part) > max_chars:
            cut = part.rfind(" ", 0, max_chars)
            cut = cut if cut > 0 else max_chars
            out.append(part[:cut])
            part = part[cut:]
        out.append(part)
    return [p.strip() for p in out if p.strip()]


def split_sentences(text: str, min_chars: int = _MIN_CHARS, max_chars: int = _MAX_CHARS) -> list[str]:
    """Split text into sentences, punctuation kept; pieces under min_chars join a neighbour; none is empty."""
    pieces: list[str] = []
    start = 0
    for match in _BOUNDARY.finditer(text):
        pieces.append(text[start : match.end()])
        start = match.end()
    pieces.append(text[start:])
    # Whitespace runs (line breaks included) become one space: engines read them alike.
    cleaned = [" ".join(p.split()) for p in pieces]
    merged: list[str] = []
    pending = ""
    for piece in cleaned:
        if not piece:
            continue
        pending = f"{pending} {piece}" if pending else piece
        if len(pending) >= min_chars:
            merged.append(pending)
            pending = ""
    if pending:
        if merged:
            merged[-1] = f"{merged[-1]} {pending}"
        else:
            merged.append(pending)
    return [part for piece in merged for part in _split_long(piece, max_chars)]
