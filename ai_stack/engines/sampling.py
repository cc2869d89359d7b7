"""Token picking shared by the chat engines: penalties, warpers, logit bias, grammars, logprobs, detokenizing.

Both engines hand each request's raw logits (a 1 x vocab torch tensor) to its `RowSampler`, so temperature,
top-p/top-k/min-p, penalties, seeds, logit bias, logprobs and llguidance grammars behave alike on both.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from transformers import (
    LogitsProcessor,
    LogitsProcessorList,
    MinPLogitsWarper,
    RepetitionPenaltyLogitsProcessor,
    TemperatureLogitsWarper,
    TopKLogitsWarper,
    TopPLogitsWarper,
)

from ai_stack.engines.base import FinishReason, GrammarError, Piece, SamplingParams, TokenLogprob

GREEDY_BELOW = 1e-5  # temperatures below this pick the most likely token


class OpenAIPenalties(LogitsProcessor):
    """OpenAI's presence and frequency penalties over the tokens generated so far."""

    def __init__(self, prompt_length: int, presence: float, frequency: float) -> None:
        self.prompt_length, self.presence, self.frequency = prompt_length, presence, frequency

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids[:, self.prompt_length :]
        if generated.shape[1] == 0:
            return scores
        counts = torch.zeros_like(scores).scatter_add_(
            1, generated, torch.ones_like(generated, dtype=scores.dtype)
        )
        penalised = scores - self.frequency * counts - self.presence * (counts > 0).to(scores.dtype)
        return penalised  # type: ignore[return-value]


class Detokenizer:
    """Turns generated token ids into text pieces, holding back incomplete characters."""

    def __init__(self, tokenizer: Any) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.prefix_offset = 0
        self.read_offset = 0
        self.pending_tokens = 0
        self.pending_logprobs: list[TokenLogprob] = []

    def _decode(self, ids: list[int]) -> str:
        return str(self.tokenizer.decode(ids, skip_special_tokens=True, clean_up_tokenization_spaces=False))

    def add(self, token: int, logprob: TokenLogprob | None = None) -> Piece | None:
        """Take the next token; return a piece once it completes some text."""
        self.ids.append(token)
        self.pending_tokens += 1
        if logprob is not None:
            self.pending_logprobs.append(logprob)
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        full = self._decode(self.ids[self.prefix_offset :])
        if len(full) > len(prefix) and not full.endswith("\ufffd"):
            piece = Piece(full[len(prefix) :], self.pending_tokens, tuple(self.pending_logprobs))
            self.pending_tokens, self.pending_logprobs = 0, []
            self.prefix_offset, self.read_offset = self.read_offset, len(self.ids)
            return piece
        return None

    def flush(self) -> Piece | None:
        """Whatever tokens produced no text yet (so token counts stay right)."""
        if not self.pending_tokens:
            return None
        full = self._decode(self.ids[self.prefix_offset :])
        prefix = self._decode(self.ids[self.prefix_offset : self.read_offset])
        piece = Piece(full[len(prefix) :], self.pending_tokens, tuple(self.pending_logprobs))
        self.pending_tokens, self.pending_logprobs = 0, []
        return piece


class TokenTexts:
    """Exact bytes of each token id (llguidance's view of the tokenizer), for logprobs entries."""

    def __init__(self, tokenizer: Any, lltokenizer: Any) -> None:
        self.tokenizer, self.lltokenizer = tokenizer, lltokenizer
        self.cache: dict[int, tuple[str, list[int]]] = {}

    def get(self, token: int) -> tuple[str, list[int]]:
        """The token's text and bytes."""
        hit = self.cache.get(token)
        if hit is None:
            if self.lltokenizer is not None and not self.lltokenizer.is_special_token(token):
                raw = bytes(self.lltokenizer.decode_bytes([token]))
                hit = (raw.decode("utf-8", errors="replace"), list(raw))
            else:
                text = str(self.tokenizer.convert_ids_to_tokens(token))
                hit = (text, list(text.encode()))
            self.cache[token] = hit
        return hit

    def logprob(self, logits: torch.Tensor, token: int, top: int) -> TokenLogprob:
        """The chosen token's log-probability under raw `logits` (one row), with its `top` alternatives."""
        logprobs = torch.log_softmax(logits, dim=-1)
        alternatives: list[tuple[str, float, list[int]]] = []
        if top:
            values, indexes = torch.topk(logprobs, top)
            for value, index in zip(values.tolist(), indexes.tolist(), strict=True):
                text, raw = self.get(int(index))
                alternatives.append((text, float(value), raw))
        text, raw = self.get(token)
        return TokenLogprob(text, float(logprobs[token]), raw, alternatives)


def sampling_processors(params: SamplingParams, config: Any) -> tuple[bool, LogitsProcessorList]:
    """Whether to sample, and the warpers (temperature, top-k, top-p, min-p) the request asks for."""
    warpers = LogitsProcessorList()
    # A temperature this close to 0 would overflow the scaled logits: it means greedy, as in vLLM.
    if (params.temperature is not None and params.temperature < GREEDY_BELOW) or (
        params.temperature is None and not config.do_sample
    ):
        return False, warpers
    temperature = params.temperature if params.temperature is not None else config.temperature
    top_k = params.top_k if params.top_k is not None else config.top_k
    top_p = params.top_p if params.top_p is not None else config.top_p
    min_p = params.min_p if params.min_p is not None else config.min_p
    if temperature is not None and temperature != 1.0:
        warpers.append(TemperatureLogitsWarper(float(temperature)))
    if top_k:
        warpers.append(TopKLogitsWarper(int(top_k)))
    if top_p is not None and top_p < 1.0:
        warpers.append(TopPLogitsWarper(float(top_p)))
    if min_p:
        warpers.append(MinPLogitsWarper(float(min_p)))
    return True, warpers


class GrammarMask:
    """An llguidance matcher for one request: masks the logits, then follows the chosen tokens."""

    def __init__(self, lltokenizer: Any, grammar: str) -> None:
        import llguidance
        import llguidance.torch

        self.matcher = llguidance.LLMatcher(lltokenizer, grammar)
        if self.matcher.is_error():
            raise GrammarError(self.matcher.get_error())
        self._fill = llguidance.torch.fill_next_token_bitmask
        self.bitmask = llguidance.torch.allocate_token_bitmask(1, lltokenizer.vocab_size)
        self.shifts = torch.arange(32, dtype=torch.int32)

    def apply(self, scores: torch.Tensor) -> None:
        """Set every token the grammar forbids to -inf, in place (scores: 1 x vocab)."""
        self._fill(self.matcher, self.bitmask, 0)
        allowed = ((self.bitmask[0].unsqueeze(1) >> self.shifts) & 1).reshape(-1).bool()
        vocab = scores.shape[-1]
        if allowed.shape[0] < vocab:
            allowed = torch.cat([allowed, torch.zeros(vocab - allowed.shape[0], dtype=torch.bool)])
        scores.masked_fill_(~allowed[:vocab].to(scores.device).unsqueeze(0), float("-inf"))

    def advance(self, token: int) -> bool:
        """Consume the chosen token; True when the grammar has finished."""
        self.matcher.consume_token(token)
        return bool(self.matcher.is_stopped() or self.matcher.is_error())


class RowSampler:
    """One request's token picking and stop checks: bias, penalties, grammar, warpers, its own generator.

    `step` takes the raw logits of the request's next position and returns why it ended, or None with the
    chosen token in `token`; text goes to `emit` as soon as it is complete.
    """

    def __init__(
        self,
        params: SamplingParams,
        prompt_ids: list[int],
        *,
        generation_config: Any,
        vocab_size: int,
        eos_ids: set[int],
        tokenizer: Any,
        emit: Callable[[Piece], None],
        grammar: GrammarMask | None = None,
        texts: TokenTexts | None = None,
        device: torch.device | str = "cpu",
    ) -> None:
        self.params, self.grammar, self.texts, self.emit, self.eos_ids = params, grammar, texts, emit, eos_ids
        self.do_sample, self.warpers = sampling_processors(params, generation_config)
        self.penalties = LogitsProcessorList()
        if params.repetition_penalty is not None and params.repetition_penalty != 1.0:
            self.penalties.append(RepetitionPenaltyLogitsProcessor(params.repetition_penalty))
        if params.presence_penalty or params.frequency_penalty:
            self.penalties.append(
                OpenAIPenalties(len(prompt_ids), params.presence_penalty, params.frequency_penalty)
            )
        self.bias: torch.Tensor | None = None
        if params.logit_bias:
            self.bias = torch.zeros(vocab_size, dtype=torch.float32, device=device)
            for token, value in params.logit_bias.items():
                self.bias[token] = value
        self.generator: torch.Generator | None = None
        if self.do_sample:
            self.generator = torch.Generator(device=device)
            if params.seed is not None:
                self.generator.manual_seed(params.seed)
            else:
                self.generator.seed()
        # Prompt and generated ids, kept up to date only where a penalty reads them.
        self.ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
        self.detok = Detokenizer(tokenizer)
        self.produced = 0
        self.token = -1

    def pick(self, logits: torch.Tensor) -> int:
        """The next token for raw logits (1 x vocab): bias, penalties, grammar mask, greedy or sampled."""
        scores = logits if self.bias is None else logits + self.bias
        if self.penalties:
            scores = self.penalties(self.ids, scores)  # type: ignore[arg-type]
        if self.grammar is not None:
            scores = scores.clone() if scores is logits else scores
            self.grammar.apply(scores)
        if self.do_sample:
            scores = self.warpers(self.ids, scores)  # type: ignore[arg-type]
            probs = torch.softmax(scores, dim=-1)
            return int(torch.multinomial(probs, 1, generator=self.generator)[0, 0])
        return int(torch.argmax(scores, dim=-1)[0])

    def step(self, logits: torch.Tensor) -> FinishReason | None:
        """Pick, emit and check the stop conditions: EOS, the grammar's end, max_tokens."""
        token = self.pick(logits)
        if token in self.eos_ids or token in self.params.stop_token_ids:
            return "stop"
        self.produced += 1
        logprob = None
        if self.params.logprobs is not None and self.texts is not None:
            logprob = self.texts.logprob(logits[0], token, self.params.logprobs)
        piece = self.detok.add(token, logprob)
        if piece is not None:
            self.emit(piece)
        if self.grammar is not None and self.grammar.advance(token):
            return "stop"
        if self.produced >= self.params.max_tokens:
            return "length"
        self.token = token
        if self.penalties:
            self.ids = torch.cat([self.ids, self.ids.new_full((1, 1), token)], dim=1)
        return None

    def flush(self) -> None:
        """Emit the text held back for an incomplete character, once the request has ended."""
        tail = self.detok.flush()
        if tail is not None:
            self.emit(tail)
