"""A Hugging Face tokenizer's side of a chat engine: chat template, special tokens, llguidance tokenizer."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from ai_stack.engines.base import Piece, Prompt, SamplingParams
from ai_stack.engines.sampling import GrammarMask, RowSampler, TokenTexts


def eos_ids_of(generation_config: Any, tokenizer: Any) -> set[int]:
    """Every token id that ends a generation: the generation config's EOS ids and the tokenizer's."""
    eos = generation_config.eos_token_id
    eos_list = eos if isinstance(eos, list) else [eos]
    ids = {int(e) for e in eos_list if e is not None}
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


class HFTextMixin:
    """Chat template, special tokens and llguidance tokenizer from a Hugging Face tokenizer."""

    tokenizer: Any
    generation_config: Any
    vocab_size: int
    eos_ids: set[int]
    _lltokenizer: Any = None
    _lltokenizer_lock: threading.Lock
    _texts: TokenTexts | None = None

    @property
    def chat_template(self) -> str | None:
        """The model's chat template source."""
        template = getattr(self.tokenizer, "chat_template", None)
        return template if isinstance(template, str) else None

    def token_id(self, text: str) -> int | None:
        """The id of a single (special) token spelled `text`, or None."""
        ids = self.tokenizer.convert_tokens_to_ids([text])
        unk = self.tokenizer.unk_token_id
        return int(ids[0]) if ids and ids[0] is not None and ids[0] != unk else None

    def lltokenizer(self) -> Any:
        """llguidance's tokenizer for this model (built once, ~2 s for a 150k vocabulary)."""
        with self._lltokenizer_lock:
            if self._lltokenizer is None:
                import llguidance.hf

                self._lltokenizer = llguidance.hf.from_tokenizer(
                    self.tokenizer, n_vocab=self.vocab_size, eos_token=sorted(self.eos_ids)
                )
            return self._lltokenizer

    def request_grammar(self, params: SamplingParams) -> GrammarMask | None:
        """Compile a request's grammar in the caller's thread (GrammarError there); logprob texts once."""
        grammar = GrammarMask(self.lltokenizer(), params.grammar) if params.grammar else None
        if params.logprobs is not None and self._texts is None:
            self._texts = TokenTexts(self.tokenizer, self.lltokenizer())
        return grammar

    def row_sampler(
        self,
        params: SamplingParams,
        prompt_ids: list[int],
        emit: Callable[[Piece], None],
        grammar: GrammarMask | None,
        device: Any = "cpu",
    ) -> RowSampler:
        """A request's sampler with this model's defaults, EOS ids, vocabulary, tokenizer, logprob texts."""
        return RowSampler(
            params,
            prompt_ids,
            generation_config=self.generation_config,
            vocab_size=self.vocab_size,
            eos_ids=self.eos_ids,
            tokenizer=self.tokenizer,
            emit=emit,
            grammar=grammar,
            texts=self._texts,
            device=device,
        )

    def render(self, messages: list[dict[str, Any]], template_kwargs: dict[str, Any]) -> Prompt:
        """Apply the model's own chat template, then tokenize without adding special tokens twice."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError("this model has no chat template; it cannot serve chat completions")
        kwargs = dict(template_kwargs)
        tools = kwargs.pop("tools", None)
        go_on = bool(kwargs.pop("continue_final_message", False))  # the last assistant message stays open
        try:
            text = self.tokenizer.apply_chat_template(
                messages,
                tools=tools,
                add_generation_prompt=not go_on,
                continue_final_message=go_on,
                tokenize=False,
                **kwargs,
            )
        except Exception as exc:  # jinja2 raises TemplateError (or its own exception) for refused messages
            raise ValueError(f"the model's chat template refused these messages: {exc}") from None
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return Prompt(token_ids=list(ids), text=str(text))

    def encode(self, text: str) -> Prompt:
        """Tokenize raw text (special tokens parsed); BOS added when the tokenizer adds one by default."""
        ids = self.tokenizer(text, add_special_tokens=True)["input_ids"]
        return Prompt(token_ids=list(ids), text=text)

    def decode(self, token_ids: list[int]) -> str:
        """The text of token ids, special tokens spelled out."""
        known = min(len(self.tokenizer), self.vocab_size)
        if any(not 0 <= token < known for token in token_ids):
            raise ValueError(f"token ids must be between 0 and {known - 1}")
        return str(self.tokenizer.decode(token_ids, skip_special_tokens=False))
