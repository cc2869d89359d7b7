"""The transformers engine (ai_stack/engines/transformers.py) on tiny random Qwen3, Llama, Mistral."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from transformers import AutoTokenizer

from ai_stack.engines.base import Piece, SamplingParams
from ai_stack.engines.torch_device import PackedFP16Linear, cpu_packs_fp16
from ai_stack.engines.transformers import load_transformers
from tests.conftest import wait_for, wait_ready

ARCHS = ["qwen3", "llama", "mistral"]
MESSAGES = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Say hello to the world"},
]


@pytest.fixture(scope="module")
def tiny_dirs(tiny_model: Callable[[str], Path]) -> dict[str, Path]:
    return {arch: tiny_model(arch) for arch in ARCHS}


@pytest.mark.parametrize("arch", ARCHS)
def test_engine_renders_the_models_template_and_generates(tiny_dirs: dict[str, Path], arch: str) -> None:
    engine = load_transformers(str(tiny_dirs[arch]), dtype="float32")
    assert (
        type(engine.model).__name__
        == {"qwen3": "Qwen3ForCausalLM", "llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM"}[arch]
    )
    assert engine.context_length == 2048
    prompt = engine.render(MESSAGES, {})
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_dirs[arch]))
    expected = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert prompt.text == expected
    assert prompt.token_ids == tokenizer(expected, add_special_tokens=False)["input_ids"]
    # continue_final_message: the last assistant message is left open, no new turn is started.
    partial = [*MESSAGES, {"role": "assistant", "content": "The capital of France is"}]
    going_on = engine.render(partial, {"continue_final_message": True})
    assert going_on.text.endswith("The capital of France is")
    open_turn = tokenizer.apply_chat_template(partial, continue_final_message=True, tokenize=False)
    assert going_on.text == open_turn
    pieces: list[Piece] = []
    params = SamplingParams(max_tokens=8, temperature=0.0)
    result = engine.generate(prompt, params, threading.Event(), pieces.append)
    assert result.completion_tokens == sum(p.tokens for p in pieces)
    assert result.finish_reason in ("length", "stop")
    again: list[Piece] = []
    engine.generate(prompt, params, threading.Event(), again.append)
    assert [p.text for p in again] == [p.text for p in pieces]  # greedy is deterministic
    engine.close()


def test_cancel_stops_generation_at_the_next_token(tiny_dirs: dict[str, Path]) -> None:
    engine = load_transformers(str(tiny_dirs["llama"]), dtype="float32")
    cancel = threading.Event()
    seen: list[Piece] = []

    def emit(piece: Piece) -> None:
        seen.append(piece)
        if len(seen) == 3:
            cancel.set()

    # Suppress EOS so only max_tokens or cancel can end it.
    prompt = engine.render(MESSAGES, {})
    engine.eos_ids = set()
    result = engine.generate(prompt, SamplingParams(max_tokens=200, temperature=0.0), cancel, emit)
    assert result.finish_reason == "stop"
    assert result.completion_tokens <= 5


def test_qwen3_template_kwargs_reach_the_template(tiny_dirs: dict[str, Path]) -> None:
    engine = load_transformers(str(tiny_dirs["qwen3"]), dtype="float32")
    off = engine.render(MESSAGES, {"enable_thinking": False})
    assert off.text.endswith("<think>\n\n</think>\n\n")
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    assert "get_weather" in engine.render(MESSAGES, {"tools": tools}).text


def test_mistral_template_refusal_is_a_value_error(tiny_dirs: dict[str, Path]) -> None:
    engine = load_transformers(str(tiny_dirs["mistral"]), dtype="float32")
    with pytest.raises(ValueError, match="chat template refused"):
        engine.render([{"role": "user", "content": "a"}, {"role": "user", "content": "b"}], {})


@pytest.mark.parametrize("arch", ARCHS)
def test_tiny_models_through_the_app_full_and_streamed(
    app_client: Any, tiny_dirs: dict[str, Path], arch: str
) -> None:
    client = app_client([{"id": arch, "source": str(tiny_dirs[arch]), "dtype": "float32"}])
    wait_ready(client, arch, timeout=60)
    body = {"model": arch, "messages": MESSAGES, "temperature": 0, "max_tokens": 12}
    full = client.post("/v1/chat/completions", json=body).json()
    assert full["object"] == "chat.completion"
    choice = full["choices"][0]
    events = client.post(
        "/v1/chat/completions", json={**body, "stream": True, "stream_options": {"include_usage": True}}
    ).text
    chunks = [json.loads(b[6:]) for b in events.split("\n\n") if b.startswith("data: {")]
    streamed = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert streamed == choice["message"]["content"]
    usage = chunks[-1]["usage"]
    # The same prompt again: its whole 64-token blocks (all but its last token) come from the prefix cache.
    assert full["usage"]["prompt_tokens_details"] == {"cached_tokens": 0}
    whole_blocks = (full["usage"]["prompt_tokens"] - 1) // 64 * 64
    assert usage["prompt_tokens_details"] == {"cached_tokens": whole_blocks}
    assert {**usage, "prompt_tokens_details": {"cached_tokens": 0}} == full["usage"]
    finish = [
        c["choices"][0]["finish_reason"] for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]
    ]
    assert finish == [choice["finish_reason"]]
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_dirs[arch]))
    rendered = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True, tokenize=False)
    assert full["usage"]["prompt_tokens"] == len(tokenizer(rendered, add_special_tokens=False)["input_ids"])
    if choice["finish_reason"] == "length":
        assert full["usage"]["completion_tokens"] == 12


def test_sampling_settings_are_accepted(app_client: Any, tiny_dirs: dict[str, Path]) -> None:
    client = app_client([{"id": "q", "source": str(tiny_dirs["qwen3"]), "dtype": "float32"}])
    wait_ready(client, "q", timeout=60)
    body = {
        "model": "q",
        "messages": MESSAGES,
        "max_tokens": 6,
        "temperature": 0.8,
        "top_p": 0.9,
        "seed": 7,
        "presence_penalty": 0.5,
        "frequency_penalty": 0.5,
        "top_k": 20,
        "min_p": 0.05,
        "repetition_penalty": 1.1,
    }
    first = client.post("/v1/chat/completions", json=body)
    second = client.post("/v1/chat/completions", json=body)
    assert first.status_code == 200
    assert first.json()["choices"][0]["message"] == second.json()["choices"][0]["message"]  # same seed


def test_int8_without_cuda_fails_with_a_clear_reason(app_client: Any, tiny_dirs: dict[str, Path]) -> None:
    # nf4/fp4 run on CPU too: tests/test_transformers_4bit.py
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA; the refusal path is for CPU-only machines")
    client = app_client([{"id": "q8", "source": str(tiny_dirs["qwen3"]), "quantization": "int8"}])
    assert wait_for(lambda: client.get("/v1/models").json()["data"][0]["state"] == "failed")
    error = client.get("/v1/models").json()["data"][0]["error"]
    assert "needs an NVIDIA GPU with CUDA" in error and 'quantization = "none"' in error


def test_unreachable_hub_id_fails_while_others_serve(
    app_client: Any, tiny_dirs: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    client = app_client(
        [
            {"id": "hub", "source": "hf:Qwen/Qwen3-8B"},
            {"id": "tiny", "source": str(tiny_dirs["llama"]), "dtype": "float32"},
        ]
    )
    wait_ready(client, "tiny", timeout=60)
    cards = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert cards["hub"]["state"] == "failed" and "Qwen/Qwen3-8B" in cards["hub"]["error"]
    ok = client.post("/v1/chat/completions", json={"model": "tiny", "messages": MESSAGES, "max_tokens": 2})
    assert ok.status_code == 200


needs_fbgemm = pytest.mark.skipif(not cpu_packs_fp16(), reason="fbgemm fp16 GEMM needs an x86 CPU with AVX2")


@needs_fbgemm
def test_float16_on_cpu_packs_every_linear_and_answers_like_float32(tiny_dirs: dict[str, Path]) -> None:
    reference = load_transformers(str(tiny_dirs["qwen3"]), dtype="float32")
    packed = load_transformers(str(tiny_dirs["qwen3"]), dtype="float16")
    try:
        modules = list(packed.model.modules())
        assert not any(type(m) is torch.nn.Linear for m in modules)
        assert sum(type(m) is PackedFP16Linear for m in modules) > 0
        assert all(p.dtype == torch.float32 for p in packed.model.parameters())
        assert packed.vocab_size == reference.vocab_size
        ids = torch.tensor([reference.render([{"role": "user", "content": "Hello there"}], {}).token_ids])
        with torch.inference_mode():
            want = reference.model(input_ids=ids).logits
            got = packed.model(input_ids=ids).logits
        assert torch.allclose(got, want, atol=2e-2), (got - want).abs().max()
    finally:
        reference.close()
        packed.close()


@needs_fbgemm
def test_float16_model_serves_chat_and_batches(app_client: Any, tiny_dirs: dict[str, Path]) -> None:
    client = app_client([{"id": "q", "source": str(tiny_dirs["llama"]), "dtype": "float16"}])
    wait_ready(client, "q", timeout=60)
    body = {"model": "q", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 12, "temperature": 0}
    results: list[Any] = [None] * 4

    def one(i: int) -> None:
        results[i] = client.post("/v1/chat/completions", json=body)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(r.status_code == 200 for r in results), [r.text for r in results]
    assert all(r.json()["usage"]["completion_tokens"] > 0 for r in results)
    engine = client.app.state.registry.entries["q"].engine
    assert isinstance(engine.model.model.layers[0].mlp.up_proj, PackedFP16Linear)
    # Straight to the engine: four requests released together share decode steps.
    engine.peak_batch = 0
    start = threading.Barrier(4)
    counts: list[int] = [0] * 4

    def direct(i: int) -> None:
        prompt = engine.render([{"role": "user", "content": f"Count to {i + 3}"}], {})
        start.wait()
        params = SamplingParams(max_tokens=40, temperature=0.0)
        counts[i] = engine.generate(prompt, params, threading.Event(), lambda piece: None).completion_tokens

    threads = [threading.Thread(target=direct, args=(i,)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(count > 0 for count in counts) and engine.peak_batch >= 2
