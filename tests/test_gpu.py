"""CUDA paths on tiny random models: bitsandbytes NF4 and int8, bf16, batching, grammars, logprobs, seeds.

Every test here needs an NVIDIA GPU and skips elsewhere; `make gpu-check` runs this file on a CUDA machine.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from ai_stack.engines.base import Piece, SamplingParams
from ai_stack.engines.transformers import TransformersChatEngine, load_transformers
from tests.conftest import wait_ready

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU with CUDA"),
]
MESSAGES = [{"role": "user", "content": "Say hello to the world"}]


def generate(engine: TransformersChatEngine, params: SamplingParams) -> tuple[str, list[Piece]]:
    pieces: list[Piece] = []
    engine.generate(engine.render(MESSAGES, {}), params, threading.Event(), pieces.append)
    return "".join(p.text for p in pieces), pieces


@pytest.mark.parametrize("quantization", ["nf4", "int8"])
def test_bitsandbytes_loads_and_generates(tiny_model: Callable[[str], Path], quantization: str) -> None:
    pytest.importorskip("bitsandbytes")
    engine = load_transformers(str(tiny_model("qwen3")), device="cuda", quantization=quantization)
    try:
        assert engine.device == "cuda"
        assert next(engine.model.parameters()).device.type == "cuda"
        text, pieces = generate(engine, SamplingParams(max_tokens=4, temperature=0.0))
        assert sum(p.tokens for p in pieces) >= 1
        again, _ = generate(engine, SamplingParams(max_tokens=4, temperature=0.0))
        assert again == text  # greedy is repeatable
    finally:
        engine.close()


def test_auto_device_and_dtype_pick_cuda_bf16(tiny_model: Callable[[str], Path]) -> None:
    engine = load_transformers(str(tiny_model("llama")))
    try:
        assert engine.device == "cuda"
        expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        assert next(engine.model.parameters()).dtype == expected
    finally:
        engine.close()


def test_batched_rows_logprobs_seeds_and_bias_on_cuda(tiny_model: Callable[[str], Path]) -> None:
    """Per-row sampling state lives on the GPU: seeds repeat, logprobs come back, a bias forces a token."""
    engine = load_transformers(str(tiny_model("qwen3")), device="cuda", dtype="float32")
    try:
        seeded = SamplingParams(max_tokens=6, temperature=1.0, seed=11)
        assert generate(engine, seeded)[0] == generate(engine, seeded)[0]
        _, pieces = generate(engine, SamplingParams(max_tokens=3, temperature=0.0, logprobs=2))
        entries = [e for p in pieces for e in p.logprobs]
        assert len(entries) == 3 and all(len(e.top) == 2 and e.logprob <= 0 for e in entries)
        token = engine.tokenizer.convert_tokens_to_ids("hello") or 100
        _, forced = generate(engine, SamplingParams(max_tokens=2, temperature=0.0, logit_bias={token: 100.0}))
        assert engine.tokenizer.decode([token]) in "".join(p.text for p in forced)
        results: list[str] = []
        threads = [
            threading.Thread(target=lambda: results.append(generate(engine, seeded)[0])) for _ in range(3)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)
        assert len(results) == 3 and len(set(results)) == 1  # batched rows keep their own generators
    finally:
        engine.close()


def test_json_schema_through_the_app_on_cuda(app_client: Any, tiny_model: Callable[[str], Path]) -> None:
    """The grammar mask is applied to logits on the GPU; the answer parses and follows the schema."""
    client = app_client([{"id": "q", "source": str(tiny_model("qwen3")), "device": "cuda"}])
    wait_ready(client, "q", timeout=120)
    schema = {"type": "object", "properties": {"n": {"type": "integer"}}, "required": ["n"]}
    response = client.post(
        "/v1/chat/completions",
        json={
            "model": "q",
            "messages": MESSAGES,
            "max_tokens": 24,
            "response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}},
        },
    )
    assert response.status_code == 200, response.text
    choice = response.json()["choices"][0]
    if choice["finish_reason"] == "stop":
        assert isinstance(json.loads(choice["message"]["content"])["n"], int)
    assert client.get("/v1/models/q").json()["device"] == "cuda"
