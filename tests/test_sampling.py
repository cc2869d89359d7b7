"""Token-level sampling helpers (ai_stack/engines/sampling.py): the detokenizer and the OpenAI penalties."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import GenerationConfig

from ai_stack.engines.base import SamplingParams
from ai_stack.engines.sampling import Detokenizer, OpenAIPenalties, sampling_processors


def test_streamer_holds_back_incomplete_characters() -> None:
    class ByteTokenizer:
        def decode(self, ids: list[int], **kwargs: Any) -> str:
            return bytes(ids).decode("utf-8", errors="replace")

    detok = Detokenizer(ByteTokenizer())
    pieces = [p for p in (detok.add(byte) for byte in "héllo €".encode()) if p is not None]
    pieces += [p for p in [detok.flush()] if p is not None]
    assert "".join(p.text for p in pieces) == "héllo €"
    assert all("\ufffd" not in p.text for p in pieces)
    assert sum(p.tokens for p in pieces) == len("héllo €".encode())


def test_openai_penalties_lower_repeated_tokens() -> None:
    processor = OpenAIPenalties(prompt_length=1, presence=1.0, frequency=0.5)
    ids = torch.tensor([[9, 2, 2, 3]])
    scores = processor(ids, torch.zeros(1, 5))  # type: ignore[arg-type]
    assert scores[0].tolist() == [0.0, 0.0, -2.0, -1.5, 0.0]


@pytest.mark.parametrize("temperature", [0.0, 1e-38, 5e-324, 9e-6])
def test_temperatures_near_zero_are_greedy(temperature: float) -> None:
    """Dividing logits by a denormal temperature overflows to inf/NaN: such temperatures mean greedy."""
    do_sample, warpers = sampling_processors(
        SamplingParams(max_tokens=1, temperature=temperature), GenerationConfig(do_sample=True)
    )
    assert not do_sample and len(warpers) == 0
    assert sampling_processors(SamplingParams(max_tokens=1, temperature=0.01), GenerationConfig())[0]
