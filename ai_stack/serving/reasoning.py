"""The reasoning layer of model output: text inside ``<think>…</think>`` is reasoning, the rest is content.

Pure Python, no engine or web dependencies. Text arrives in arbitrary pieces; a partial ``</think>`` is held
back until it is disambiguated, so the result does not depend on how the text was split.
"""

from __future__ import annotations

from ai_stack.serving.tool_parsers.base import WS, partial_suffix

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


def detect_reasoning(chat_template: str | None) -> bool:
    """Whether a chat template belongs to a model that reasons inside ``<think>…</think>``."""
    return chat_template is not None and THINK_OPEN in chat_template


def prompt_opens_reasoning(prompt_text: str) -> bool:
    """Whether a rendered prompt ends inside an open ``<think>`` (only whitespace after the last one)."""
    start = prompt_text.rfind(THINK_OPEN)
    if start < 0:
        return False
    return prompt_text[start + len(THINK_OPEN) :].strip(WS) == ""


class ReasoningParser:
    """Routes streamed output to reasoning or passes it on as content.

    ``feed`` and ``finish`` return ``(reasoning, content)``. A ``<think>`` is only recognised at the very
    start of the output (and only when ``reasoning`` is True); with ``in_reasoning`` the output starts inside
    the block. If generation ends before ``</think>``, the reasoning stays reasoning (as vLLM does). Newlines
    right after ``<think>``, right before ``</think>`` and right after ``</think>`` are dropped.
    """

    def __init__(self, reasoning: bool, in_reasoning: bool = False) -> None:
        """Set up the layer for one choice of one request."""
        self._buf = ""  # text not yet routed
        self._reasoning = in_reasoning
        self._think_possible = reasoning and not in_reasoning  # a <think> may still open the output
        self._strip_reasoning_nl = in_reasoning  # drop newlines at the start of reasoning
        self._held_nl = ""  # newlines at the end of reasoning, held in case </think> follows
        self._strip_content_nl = False  # drop newlines right after </think>
        self._last_reasoning = in_reasoning

    @property
    def in_reasoning(self) -> bool:
        """Whether the text fed last went (at least partly) to reasoning; use it to count reasoning tokens."""
        return self._last_reasoning

    def feed(self, text: str) -> tuple[str, str]:
        """Take the next piece of output; return the (reasoning, content) that can be emitted now."""
        was = self._reasoning
        self._buf += text
        routed = self._route(final=False)
        self._last_reasoning = was or self._reasoning
        return routed

    def finish(self) -> tuple[str, str]:
        """Flush everything held back at the end of generation, as (reasoning, content)."""
        return self._route(final=True)

    def _route(self, final: bool) -> tuple[str, str]:
        """Send buffered text to reasoning or to content."""
        reasoning = ""
        content = ""
        while self._buf:
            if self._reasoning:
                idx = self._buf.find(THINK_CLOSE)
                if idx >= 0:
                    reasoning += self._take_reasoning(self._buf[:idx], closing=True)
                    self._buf = self._buf[idx + len(THINK_CLOSE) :]
                    self._reasoning = False
                    self._held_nl = ""
                    self._strip_content_nl = True
                    continue
                hold = 0 if final else partial_suffix(self._buf, THINK_CLOSE)
                reasoning += self._take_reasoning(self._buf[: len(self._buf) - hold], closing=False)
                self._buf = self._buf[len(self._buf) - hold :]
                if final:
                    reasoning += self._held_nl
                    self._held_nl = ""
                return reasoning, content
            if self._think_possible:
                rest = self._buf.lstrip(WS)
                if rest.startswith(THINK_OPEN):
                    self._buf = rest[len(THINK_OPEN) :]
                    self._think_possible = False
                    self._reasoning = True
                    self._strip_reasoning_nl = True
                    continue
                if not final and THINK_OPEN.startswith(rest):
                    return reasoning, content  # whitespace only, or a partial <think>
                self._think_possible = False
            text = self._buf
            self._buf = ""
            if self._strip_content_nl:
                text = text.lstrip("\n")
                if not text:
                    continue
                self._strip_content_nl = False
            content += text
        if final and self._reasoning:
            reasoning += self._held_nl
            self._held_nl = ""
        return reasoning, content

    def _take_reasoning(self, text: str, closing: bool) -> str:
        """Reasoning text to emit, dropping newlines right after ``<think>`` and right before ``</think>``."""
        if self._strip_reasoning_nl:
            text = text.lstrip("\n")
            if not text:
                return ""
            self._strip_reasoning_nl = False
        text = self._held_nl + text
        if closing:
            self._held_nl = ""
            return text.rstrip("\n")
        body = text.rstrip("\n")
        self._held_nl = text[len(body) :]
        return body
