"""4-bit NF4/FP4 weights (bitsandbytes) on CPU in the transformers engine, on tiny random models.

Batching, chunked prefill, the prefix cache, grammars, logprobs and seeds run on the quantized model as on
any other; a 4-bit load that fails falls back to the unquantized model with an error in the log.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from ai_stack.engines import transformers as hf_engine
from ai_stack.engines.base import Generation, SamplingParams
from ai_stack.engines.torch_device import PackedFP16Linear, bitsandbytes_problem, cpu_packs_fp16
from ai_stack.engines.transformers import TransformersChatEngine, load_transformers
from tests.conftest import wait_for, wait_ready
from tests.test_transformers_batching import QUESTIONS, Run, fresh, run_alone, run_together

pytestmark = pytest.mark.skipif(
    bitsandbytes_problem("cpu") is not None, reason=f"bitsandbytes on CPU: {bitsandbytes_problem('cpu')}"
)


def linear4bit_layers(engine: TransformersChatEngine) -> list[Any]:
    import bitsandbytes as bnb

    return [m for m in engine.model.modules() if isinstance(m, bnb.nn.Linear4bit)]


@pytest.fixture(scope="module")
def nf4(tiny_model: Callable[[str], Path]) -> Iterator[TransformersChatEngine]:
    # float32 outside the 4-bit layers: exact sums, so batched rows can be compared with rows alone.
    # No prefix cache: a request repeated here is computed again, as its reference was.
    engine = load_transformers(
        str(tiny_model("llama")), device="cpu", dtype="float32", quantization="nf4", prefix_cache=False
    )
    engine.lltokenizer()  # built with the model's EOS, before it is suppressed
    engine.eos_ids = set()  # only max_tokens, the grammar or cancel end a generation
    yield engine
    engine.close()


@pytest.mark.parametrize("quant_type", ["nf4", "fp4"])
def test_4bit_weights_load_on_cpu_and_generate(tiny_model: Callable[[str], Path], quant_type: str) -> None:
    engine = load_transformers(str(tiny_model("qwen3")), device="cpu", quantization=quant_type)
    try:
        layers = linear4bit_layers(engine)
        assert len(layers) == 2 * 7  # q, k, v, o, gate, up, down in each of the 2 layers
        assert {layer.weight.quant_state.quant_type for layer in layers} == {quant_type}
        assert all(layer.weight.dtype == torch.uint8 for layer in layers)  # packed 4-bit values
        assert not any(layer.weight.quant_state.nested for layer in layers)  # no double quant on CPU
        if cpu_packs_fp16():  # dtype auto: the LM head (left unquantized) goes to fbgemm in fp16
            assert isinstance(engine.model.lm_head, PackedFP16Linear)
        prompt = engine.render([{"role": "user", "content": "Say hello"}], {})
        params = SamplingParams(max_tokens=6, temperature=0.0)
        first: list[str] = []
        result = engine.generate(prompt, params, threading.Event(), lambda p: first.append(p.text))
        assert isinstance(result, Generation) and result.completion_tokens >= 1
        again: list[str] = []
        engine.generate(prompt, params, threading.Event(), lambda p: again.append(p.text))
        assert again == first  # greedy is repeatable
    finally:
        engine.close()


def test_4bit_logits_stay_close_to_the_unquantized_model(tiny_model: Callable[[str], Path]) -> None:
    """Quantization changes the weights a little, not the model: the logits stay highly correlated."""
    full = load_transformers(str(tiny_model("llama")), device="cpu", dtype="float32")
    quantized = load_transformers(str(tiny_model("llama")), device="cpu", dtype="float32", quantization="nf4")
    try:
        ids = torch.tensor([full.render([{"role": "user", "content": QUESTIONS[2]}], {}).token_ids])
        with torch.inference_mode():
            a = full.model(input_ids=ids).logits.flatten()
            b = quantized.model(input_ids=ids).logits.flatten()
        assert not torch.equal(a, b)  # the 4-bit layers really ran
        assert torch.corrcoef(torch.stack([a, b]))[0, 1] > 0.9
    finally:
        full.close()
        quantized.close()


def test_double_quant_is_an_option(tiny_model: Callable[[str], Path]) -> None:
    engine = load_transformers(
        str(tiny_model("llama")), device="cpu", dtype="float32", quantization="nf4", double_quant=True
    )
    try:
        text: list[str] = []
        prompt = engine.render([{"role": "user", "content": "Hi"}], {})
        engine.generate(prompt, SamplingParams(max_tokens=4, temperature=0.0), threading.Event(), text.append)
        assert text
        states = [layer.weight.quant_state for layer in linear4bit_layers(engine)]
        # bitsandbytes' fused CPU kernel expands nested scales once, at the first forward pass
        assert all(s.nested or getattr(s, "original_nested", False) for s in states)
    finally:
        engine.close()


def test_batched_rows_answer_as_alone_with_grammar_logprobs_and_seeds(nf4: TransformersChatEngine) -> None:
    import llguidance

    grammar = str(llguidance.LLMatcher.grammar_from_json_schema({"type": "object"}))
    runs = [
        Run(QUESTIONS[0], SamplingParams(max_tokens=10, temperature=0.0)),
        Run(QUESTIONS[1], SamplingParams(max_tokens=40, temperature=0.0, grammar=grammar)),
        Run(QUESTIONS[2], SamplingParams(max_tokens=8, temperature=0.0, logprobs=2)),
        Run(QUESTIONS[3], SamplingParams(max_tokens=12, temperature=0.9, top_p=0.95, seed=11)),
    ]
    alone = [run_alone(nf4, fresh(run)) for run in runs]
    together = run_together(nf4, runs)
    assert nf4.peak_batch == 4
    for a, t in zip(alone, together, strict=True):
        assert isinstance(t.result, Generation), t.result
        assert t.text == a.text and t.result == a.result
    assert together[1].text.startswith("{")
    entries = [e for p in together[2].pieces for e in p.logprobs]
    assert len(entries) == 8 and all(len(e.top) == 2 and e.logprob <= 0 for e in entries)
    again = run_alone(nf4, fresh(runs[3]))
    assert again.text == together[3].text  # the same seed, the same sample


def test_chunked_prefill_and_prefix_cache_in_4bit(tiny_model: Callable[[str], Path]) -> None:
    engine = load_transformers(
        str(tiny_model("llama")),
        device="cpu",
        dtype="float32",
        quantization="nf4",
        prefill_chunk=8,
        prefix_cache_block=16,
    )
    engine.eos_ids = set()
    try:
        question = "Tell me about " + ", ".join(f"item {i}" for i in range(40))
        params = SamplingParams(max_tokens=6, temperature=0.0)
        cold = run_alone(engine, Run(question, params))
        warm = run_alone(engine, Run(question, params))  # its prompt's blocks are cached now
        assert isinstance(cold.result, Generation) and isinstance(warm.result, Generation)
        assert cold.result.cached_tokens == 0 and warm.result.cached_tokens >= 16
        assert warm.text == cold.text
        long, short = (
            Run(question + " again", params),
            Run("Hi", SamplingParams(max_tokens=30, temperature=0.0)),
        )
        run_together(engine, [short, long])
        assert long.result == Generation("length", 6, long.result.cached_tokens)  # type: ignore[union-attr]
        assert engine.peak_batch == 2
    finally:
        engine.close()


def test_a_failing_4bit_load_falls_back_with_an_error_line(
    tiny_model: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def broken(quantization: str, device: str, dtype: torch.dtype, double_quant: bool | None = None) -> Any:
        if quantization == "none":
            return None
        raise RuntimeError("illegal instruction in a 4-bit kernel")

    monkeypatch.setattr(hf_engine, "quantization_config", broken)
    with caplog.at_level(logging.ERROR, logger="ai_stack.engines.transformers"):
        engine = load_transformers(
            str(tiny_model("llama")), device="cpu", dtype="float32", quantization="nf4"
        )
    try:
        assert not linear4bit_layers(engine)
        assert any(
            "nf4 4-bit weights failed on cpu" in r.message
            and "illegal instruction" in r.message
            and "without quantization" in r.message
            for r in caplog.records
        )
        text: list[str] = []
        prompt = engine.render([{"role": "user", "content": "Hi"}], {})
        engine.generate(prompt, SamplingParams(max_tokens=3, temperature=0.0), threading.Event(), text.append)
        assert text
    finally:
        engine.close()


def test_nf4_model_serves_through_the_app_and_int8_on_cpu_is_refused(
    app_client: Any, tiny_model: Callable[[str], Path]
) -> None:
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; int8 is refused only off CUDA")
    source = str(tiny_model("qwen3"))
    client = app_client(
        [
            {"id": "q4", "source": source, "device": "cpu", "quantization": "nf4"},
            {"id": "q8", "source": source, "device": "cpu", "quantization": "int8"},
        ]
    )
    wait_ready(client, "q4")
    body = {"model": "q4", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4, "temperature": 0}
    response = client.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    assert response.json()["usage"]["completion_tokens"] >= 1
    assert wait_for(lambda: client.get("/v1/models/q8").json()["state"] == "failed")
    error = client.get("/v1/models/q8").json()["error"]
    assert "needs an NVIDIA GPU with CUDA" in error and '"nf4"' in error and 'quantization = "none"' in error
