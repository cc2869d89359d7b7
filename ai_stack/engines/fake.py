"""A fake chat engine: scripted or echoed replies, word by word, for tests and demos without a model."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ai_stack.engines.base import Generation, Piece, Prompt, SamplingParams, TokenLogprob
from ai_stack.engines.catalog import FakeOptions

if TYPE_CHECKING:
    from ai_stack.config import Config, ModelSpec

_WORDS = re.compile(r"\s*\S+|\s+")


def fake_tokens(text: str) -> list[str]:
    """Split text into the fake engine's tokens: words with their leading space."""
    return _WORDS.findall(text)


class FakeChatEngine:
    """Replies with options['reply'] (or echoes the last user message), one word per token."""

    engine_kind = "fake"
    device = "cpu"
    vocab_size: int | None = None  # words, not token ids: any logit_bias key is accepted and ignored

    def __init__(self, options: FakeOptions) -> None:
        self.reply = options.reply
        self.token_delay = options.token_delay
        self.context_length = options.context_length
        # A chat template source, only so that tool-call and reasoning formats can be detected from it.
        self.chat_template: str | None = options.chat_template
        self.active = 0
        self.cancelled = 0
        self.finished = 0
        self._lock = threading.Lock()

    def render(self, messages: list[dict[str, Any]], template_kwargs: dict[str, Any]) -> Prompt:
        """Render 'role: content' lines and split them into word tokens (the last one left open to go on)."""
        text = "".join(f"{m['role']}: {m.get('content') or ''}\n" for m in messages) + "assistant:"
        if template_kwargs.get("continue_final_message"):
            text = text.removesuffix("\nassistant:")
        last_user = next((m.get("content") or "" for m in reversed(messages) if m["role"] == "user"), "")
        return Prompt(
            token_ids=list(range(len(fake_tokens(text)))), text=text, extra={"last_user": last_user}
        )

    def encode(self, text: str) -> Prompt:
        """Split raw text into word tokens; the reply echoes the whole text."""
        return Prompt(token_ids=list(range(len(fake_tokens(text)))), text=text, extra={"last_user": text})

    def decode(self, token_ids: list[int]) -> str:
        """Fake tokens are words without a vocabulary: ids cannot be read back."""
        raise ValueError("the fake engine has no token vocabulary; send the prompt as text")

    def generate(
        self,
        prompt: Prompt,
        params: SamplingParams,
        cancel: threading.Event,
        emit: Callable[[Piece], None],
    ) -> Generation:
        """Emit the reply word by word, honouring max_tokens and cancel."""
        text = self.reply if self.reply is not None else f"You said: {prompt.extra.get('last_user', '')}"
        tokens = fake_tokens(text)
        with self._lock:
            self.active += 1
        produced = 0
        try:
            for token in tokens:
                if produced >= params.max_tokens:
                    return Generation("length", produced)
                if self.token_delay:
                    cancel.wait(self.token_delay)
                if cancel.is_set():
                    with self._lock:
                        self.cancelled += 1
                    return Generation("stop", produced)
                produced += 1
                emit(Piece(token, 1, self._certain(token) if params.logprobs is not None else ()))
            return Generation("stop", produced)
        finally:
            with self._lock:
                self.active -= 1
                self.finished += 1

    @staticmethod
    def _certain(token: str) -> tuple[TokenLogprob, ...]:
        """A scripted token is certain: log-probability 0."""
        raw = list(token.encode())
        return (TokenLogprob(token, 0.0, raw, [(token, 0.0, raw)]),)

    def token_id(self, text: str) -> int | None:
        """No special tokens: tool grammars spell their markers as text."""
        return None

    def close(self) -> None:
        """Nothing to release."""


def load(spec: ModelSpec, config: Config, options: FakeOptions) -> FakeChatEngine:
    """Build a fake engine; options load_delay and fail_load simulate slow and failing loads."""
    if options.load_delay:
        time.sleep(options.load_delay)
    if options.fail_load:
        raise RuntimeError(options.fail_load)
    return FakeChatEngine(options)
