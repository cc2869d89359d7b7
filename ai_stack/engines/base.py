"""The interfaces every chat and speech engine implements, and the values that cross them."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

FinishReason = Literal["stop", "length"]
Audio = npt.NDArray[np.float32]


class EngineLoadError(Exception):
    """A model that cannot be loaded, with a message meant for the user."""


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens; None means the model's own default."""

    max_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    seed: int | None = None
    logit_bias: dict[int, float] | None = None
    # None: no log-probabilities; k >= 0: each token's log-probability and its k most likely alternatives.
    logprobs: int | None = None
    # A compiled llguidance grammar (JSON string) the output must follow, or None.
    grammar: str | None = None
    # Token ids that end the generation like EOS (special tokens the detokenizer drops, e.g. FIM end tokens).
    stop_token_ids: frozenset[int] = frozenset()


@dataclass(frozen=True)
class TokenLogprob:
    """One generated token's log-probability and its most likely alternatives (OpenAI's logprobs entry)."""

    token: str
    logprob: float
    bytes: list[int]
    top: list[tuple[str, float, list[int]]] = field(default_factory=list)

    def to_openai(self) -> dict[str, Any]:
        """The entry as OpenAI's choices[].logprobs.content[] item."""
        return {
            "token": self.token,
            "logprob": self.logprob,
            "bytes": self.bytes,
            "top_logprobs": [{"token": t, "logprob": lp, "bytes": b} for t, lp, b in self.top],
        }


@dataclass(frozen=True)
class Piece:
    """Text decoded from newly generated tokens (may be empty while a character is incomplete)."""

    text: str
    tokens: int = 1
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass
class Generation:
    """What a finished generation reports."""

    finish_reason: FinishReason
    completion_tokens: int
    # Prompt tokens whose KV came from the engine's prefix cache instead of being computed.
    cached_tokens: int = 0


@dataclass(frozen=True)
class Prompt:
    """A rendered prompt: its token ids and the text they came from."""

    token_ids: list[int]
    text: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


class GrammarError(ValueError):
    """A grammar (JSON schema, tool grammar) the engine cannot compile."""


class GenerationCancelled(Exception):
    """Raised inside an engine when the request was cancelled before generation began."""


class ChatEngine(Protocol):
    """A loaded chat model: renders prompts and generates text in the calling (worker) thread."""

    engine_kind: str  # the engine that serves the model, as /v1/models reports it
    context_length: int
    device: str

    @property
    def chat_template(self) -> str | None:
        """The chat template's source, from which tool-call and reasoning formats are detected."""
        ...

    @property
    def vocab_size(self) -> int | None:
        """The number of token ids the model scores, or None when it has no fixed vocabulary."""
        ...

    def token_id(self, text: str) -> int | None:
        """The id of the single (special) token spelled `text`, or None."""
        ...

    def render(self, messages: list[dict[str, Any]], template_kwargs: dict[str, Any]) -> Prompt:
        """Apply the model's chat template and tokenize; ValueError on a message the template refuses."""
        ...

    def encode(self, text: str) -> Prompt:
        """Tokenize raw text as a prompt (no chat template; the model's BOS token when it wants one)."""
        ...

    def decode(self, token_ids: list[int]) -> str:
        """The text of token ids (special tokens spelled out); ValueError for ids outside the vocabulary."""
        ...

    def generate(
        self,
        prompt: Prompt,
        params: SamplingParams,
        cancel: threading.Event,
        emit: Callable[[Piece], None],
    ) -> Generation:
        """Generate, calling emit for each piece, until EOS, max_tokens or cancel is set; blocking."""
        ...

    def close(self) -> None:
        """Release the model's memory."""
        ...


@dataclass(frozen=True)
class VoiceInfo:
    """A voice an engine can speak with."""

    id: str
    name: str
    language: str
    description: str = ""


class SpeechEngine(Protocol):
    """A loaded text-to-speech model; synthesize runs in the calling (worker) thread."""

    sample_rate: int

    @property
    def blends(self) -> bool:
        """Whether the engine speaks weighted voice blends such as 'jf_alpha(2)+jm_kumo(1)'."""
        ...

    def voices(self) -> list[VoiceInfo]:
        """The voices this engine accepts."""
        ...

    def synthesize(self, text: str, voice: str, speed: float, cancel: threading.Event) -> Iterator[Audio]:
        """Yield float32 mono chunks, one per sentence; once cancel is set, no further sentence starts."""
        ...

    def close(self) -> None:
        """Release the model's memory."""
        ...
