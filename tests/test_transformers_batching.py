"""Continuous batching in the transformers engine: requests decoded together answer as they do alone."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ai_stack.engines.base import Generation, GenerationCancelled, Piece, Prompt, SamplingParams
from ai_stack.engines.prefix_cache import common_prefix
from ai_stack.engines.transformers import TransformersChatEngine, load_transformers
from tests.conftest import wait_for, wait_ready

ARCHS = ["llama", "qwen3"]
QUESTIONS = [
    "Hi",
    "Say hello to the world",
    "Write a poem about the sea, the moon and the quiet sound of waves breaking on the sandy shore.",
    "Numbers like one, two, three",
]


@pytest.fixture(scope="module")
def tiny_dirs(tiny_model: Callable[[str], Path]) -> dict[str, Path]:
    return {arch: tiny_model(arch) for arch in ARCHS}


@pytest.fixture(scope="module")
def engines(tiny_dirs: dict[str, Path]) -> Iterator[dict[str, TransformersChatEngine]]:
    # Without the prefix cache: a request repeated here must be computed again, as its reference was
    # (batching together with the cache is tested below, with engines of their own).
    loaded = {
        arch: load_transformers(str(tiny_dirs[arch]), dtype="float32", prefix_cache=False) for arch in ARCHS
    }
    for engine in loaded.values():
        engine.lltokenizer()  # built with the model's EOS, before it is suppressed
        engine.eos_ids = set()  # only max_tokens, the grammar or cancel end a generation
    yield loaded
    for engine in loaded.values():
        engine.close()


@dataclass
class Run:
    """One request: what to send, and what came back."""

    question: str
    params: SamplingParams
    cancel_after: int | None = None  # set cancel once this many pieces arrived
    pieces: list[Piece] = field(default_factory=list)
    result: Generation | BaseException | None = None
    cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def text(self) -> str:
        return "".join(p.text for p in self.pieces)

    @property
    def tokens(self) -> int:
        return sum(p.tokens for p in self.pieces)


def emitter(run: Run, hook: Callable[[], None] | None = None) -> Callable[[Piece], None]:
    def emit(piece: Piece) -> None:
        run.pieces.append(piece)
        if hook is not None:
            hook()
        if run.cancel_after is not None and len(run.pieces) >= run.cancel_after:
            run.cancel.set()

    return emit


def run_alone(engine: TransformersChatEngine, run: Run) -> Run:
    prompt = engine.render([{"role": "user", "content": run.question}], {})
    run.result = engine.generate(prompt, run.params, run.cancel, emitter(run))
    return run


def run_together(
    engine: TransformersChatEngine, runs: list[Run], before_release: Callable[[], None] | None = None
) -> list[Run]:
    """Start runs[0], hold the scheduler in its first emit until all others wait, then let them all go."""
    release = threading.Event()

    def hold() -> None:
        release.wait(30)

    def work(run: Run, first: bool) -> None:
        prompt = engine.render([{"role": "user", "content": run.question}], {})
        try:
            run.result = engine.generate(
                prompt, run.params, run.cancel, emitter(run, hold if first else None)
            )
        except BaseException as exc:
            run.result = exc

    engine.peak_batch = 0
    threads = [threading.Thread(target=work, args=(runs[0], True))]
    threads[0].start()
    assert wait_for(lambda: len(runs[0].pieces) > 0 or runs[0].result is not None, 30)
    threads += [threading.Thread(target=work, args=(run, False)) for run in runs[1:]]
    for thread in threads[1:]:
        thread.start()
    assert wait_for(lambda: len(engine._waiting) == len(runs) - 1, 30)
    if before_release is not None:
        before_release()
    release.set()
    for thread in threads:
        thread.join(120)
    return runs


def fresh(run: Run) -> Run:
    return Run(run.question, run.params, run.cancel_after)


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_batch_equals_each_request_alone(
    engines: dict[str, TransformersChatEngine], arch: str
) -> None:
    engine = engines[arch]
    runs = [
        Run(q, SamplingParams(max_tokens=n, temperature=0.0))
        for q, n in zip(QUESTIONS, [12, 20, 7, 16], strict=True)
    ]
    alone = [run_alone(engine, fresh(run)) for run in runs]
    together = run_together(engine, runs)
    assert engine.peak_batch == 4
    for a, t in zip(alone, together, strict=True):
        assert isinstance(t.result, Generation), t.result
        assert t.text == a.text
        assert t.result == a.result == Generation("length", t.params.max_tokens)  # max_tokens per row
        assert t.tokens == t.params.max_tokens


def test_a_cancelled_row_stops_while_the_others_finish(engines: dict[str, TransformersChatEngine]) -> None:
    engine = engines["llama"]
    runs = [Run(q, SamplingParams(max_tokens=24, temperature=0.0)) for q in QUESTIONS[:3]]
    runs[1].cancel_after = 3
    alone = [run_alone(engine, fresh(run)) for run in (runs[0], runs[2])]
    together = run_together(engine, runs)
    cancelled = together[1].result
    assert isinstance(cancelled, Generation) and cancelled.finish_reason == "stop"
    assert cancelled.completion_tokens < 24 and together[1].tokens == cancelled.completion_tokens
    for a, t in zip(alone, (together[0], together[2]), strict=True):
        assert t.text == a.text and t.result == a.result


def test_cancelled_before_admission_raises(engines: dict[str, TransformersChatEngine]) -> None:
    engine = engines["llama"]
    runs = [Run(q, SamplingParams(max_tokens=6, temperature=0.0)) for q in QUESTIONS[:2]]
    together = run_together(engine, runs, runs[1].cancel.set)  # cancelled while it waits
    assert isinstance(together[1].result, GenerationCancelled)
    assert isinstance(together[0].result, Generation) and together[0].tokens == 6


def test_grammar_and_logprobs_rows_beside_plain_ones(engines: dict[str, TransformersChatEngine]) -> None:
    import llguidance

    engine = engines["qwen3"]
    grammar = str(llguidance.LLMatcher.grammar_from_json_schema({"type": "object"}))
    runs = [
        Run(QUESTIONS[0], SamplingParams(max_tokens=10, temperature=0.0)),
        Run(QUESTIONS[1], SamplingParams(max_tokens=40, temperature=0.0, grammar=grammar)),
        Run(QUESTIONS[2], SamplingParams(max_tokens=8, temperature=0.0, logprobs=2)),
        Run(QUESTIONS[3], SamplingParams(max_tokens=14, temperature=0.0)),
    ]
    alone = [run_alone(engine, fresh(run)) for run in runs]
    together = run_together(engine, runs)
    assert engine.peak_batch == 4
    for a, t in zip(alone, together, strict=True):
        assert t.text == a.text and t.result == a.result
    assert together[1].text.startswith("{")
    entries = [e for p in together[2].pieces for e in p.logprobs]
    expected = [e for p in alone[2].pieces for e in p.logprobs]
    assert len(entries) == 8 and [e.token for e in entries] == [e.token for e in expected]
    assert all(len(e.top) == 2 for e in entries)
    for e, x in zip(entries, expected, strict=True):
        assert e.logprob == pytest.approx(x.logprob, abs=1e-4)


def test_seeded_sampling_in_a_batch_is_reproducible(engines: dict[str, TransformersChatEngine]) -> None:
    engine = engines["llama"]
    sampled = SamplingParams(max_tokens=12, temperature=0.9, top_p=0.95, seed=11, presence_penalty=0.3)
    runs = [
        Run(QUESTIONS[1], SamplingParams(max_tokens=16, temperature=0.0)),
        Run(QUESTIONS[2], sampled),
        Run(QUESTIONS[0], SamplingParams(max_tokens=9, temperature=1.0, seed=5, repetition_penalty=1.2)),
    ]
    alone = [run_alone(engine, fresh(run)) for run in runs]
    together = run_together(engine, runs)
    for a, t in zip(alone, together, strict=True):
        assert t.text == a.text and t.result == a.result


def test_max_batch_bounds_the_batch(tiny_dirs: dict[str, Path]) -> None:
    engine = load_transformers(str(tiny_dirs["llama"]), dtype="float32", max_batch=2, prefix_cache=False)
    engine.eos_ids = set()
    try:
        runs = [Run(q, SamplingParams(max_tokens=5, temperature=0.0)) for q in QUESTIONS]
        alone = [run_alone(engine, fresh(run)) for run in runs]
        together = run_together(engine, runs)
        assert engine.peak_batch == 2
        for a, t in zip(alone, together, strict=True):
            assert t.text == a.text and t.result == a.result
    finally:
        engine.close()


def test_concurrent_streams_through_the_app(app_client: Any, tiny_dirs: dict[str, Path]) -> None:
    client = app_client([{"id": "q", "source": str(tiny_dirs["qwen3"]), "dtype": "float32"}])
    wait_ready(client, "q", timeout=60)
    bodies = [
        {"model": "q", "messages": [{"role": "user", "content": q}], "temperature": 0, "max_tokens": n}
        for q, n in zip(QUESTIONS, [10, 14, 6, 12], strict=True)
    ]
    alone = [client.post("/v1/chat/completions", json=body).json() for body in bodies]
    streamed: list[str] = [""] * len(bodies)

    def stream(index: int) -> None:
        body = {**bodies[index], "stream": True, "stream_options": {"include_usage": True}}
        streamed[index] = client.post("/v1/chat/completions", json=body).text

    threads = [threading.Thread(target=stream, args=(i,)) for i in range(len(bodies))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for full, events in zip(alone, streamed, strict=True):
        chunks = [json.loads(b[6:]) for b in events.split("\n\n") if b.startswith("data: {")]
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        assert text == full["choices"][0]["message"]["content"]
        assert chunks[-1]["usage"] == full["usage"]
        assert events.rstrip().endswith("data: [DONE]")


def test_a_single_request_takes_the_plain_path(engines: dict[str, TransformersChatEngine]) -> None:
    """Alone, a request decodes without a mask or positions, exactly as before batching."""
    engine = engines["llama"]
    calls: list[dict[str, Any]] = []
    forward = engine.model.forward

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        return forward(*args, **kwargs)

    engine.model.forward = spy
    try:
        run = run_alone(engine, Run(QUESTIONS[1], SamplingParams(max_tokens=5, temperature=0.0)))
    finally:
        del engine.model.forward
    assert run.tokens == 5 and len(calls) == 5  # one prefill, four decode steps
    assert calls[0].get("logits_to_keep") == 1
    assert all("attention_mask" not in c and "position_ids" not in c for c in calls[1:])


def test_the_scheduler_thread_ends_when_idle_and_restarts(
    engines: dict[str, TransformersChatEngine], monkeypatch: pytest.MonkeyPatch
) -> None:
    import ai_stack.engines.transformers as module

    engine = engines["qwen3"]
    monkeypatch.setattr(module, "IDLE_EXIT_S", 0.01)
    first = run_alone(engine, Run(QUESTIONS[0], SamplingParams(max_tokens=4, temperature=0.0)))
    assert wait_for(lambda: engine._thread is None, 10)
    second = run_alone(engine, fresh(first))
    assert second.text == first.text and second.result == first.result


class LoggedPieces(list[Piece]):
    """A run's pieces that also record, in one shared list, which run emitted each piece, in order."""

    def __init__(self, name: str, events: list[tuple[str, int]]) -> None:
        super().__init__()
        self.name, self.events = name, events

    def append(self, piece: Piece) -> None:
        self.events.append((self.name, piece.tokens))
        super().append(piece)


def test_a_long_prompt_is_prefilled_in_chunks_between_decode_steps(tiny_dirs: dict[str, Path]) -> None:
    # Without the prefix cache: the long prompt, asked alone first, must go in cold again.
    engine = load_transformers(str(tiny_dirs["llama"]), dtype="float32", prefill_chunk=8, prefix_cache=False)
    engine.eos_ids = set()
    try:
        question = "Tell me about " + ", ".join(f"item {i}" for i in range(40))
        length = len(engine.render([{"role": "user", "content": question}], {}).token_ids)
        assert length > 64
        alone = run_alone(engine, Run(question, SamplingParams(max_tokens=4, temperature=0.0)))
        events: list[tuple[str, int]] = []
        short = Run("Hi", SamplingParams(max_tokens=length, temperature=0.0))
        long = Run(question, SamplingParams(max_tokens=4, temperature=0.0))
        short.pieces = LoggedPieces("short", events)
        long.pieces = LoggedPieces("long", events)
        run_together(engine, [short, long])
        assert isinstance(long.result, Generation) and long.result == Generation("length", 4)
        assert long.text == alone.text  # chunked prefill answers as a prompt fed at once
        # While the long prompt went in, 8 tokens at a time, the short request kept streaming: one decode
        # step after each chunk, so about length / 8 of its tokens came before the long one's first token.
        first_long = next(i for i, (name, _) in enumerate(events) if name == "long")
        before = sum(tokens for _, tokens in events[1:first_long])  # after the one emitted before release
        assert before >= length // 8 - 1, (before, length)
        assert engine.peak_batch == 2
    finally:
        engine.close()


def test_cancel_during_a_chunked_prefill(tiny_dirs: dict[str, Path]) -> None:
    engine = load_transformers(str(tiny_dirs["llama"]), dtype="float32", prefill_chunk=4)
    engine.eos_ids = set()
    try:
        question = "Tell me about " + ", ".join(f"item {i}" for i in range(40))
        short = Run("Hi", SamplingParams(max_tokens=60, temperature=0.0))
        long = Run(question, SamplingParams(max_tokens=8, temperature=0.0))

        def cancel_long_soon() -> None:
            threading.Timer(0.05, long.cancel.set).start()

        run_together(engine, [short, long], before_release=cancel_long_soon)
        assert isinstance(short.result, Generation) and short.result.completion_tokens == 60
        assert isinstance(long.result, (Generation, GenerationCancelled)), long.result
        if isinstance(long.result, Generation):
            assert long.result.completion_tokens < 8
        assert not engine._prefills and not engine._rows
    finally:
        engine.close()


class SlowModel:
    """The model, each forward pass slowed down and counted (prompt chunks are then easy to catch)."""

    def __init__(self, model: Any, delay: float) -> None:
        self.model, self.delay, self.calls = model, delay, 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        time.sleep(self.delay)
        return self.model(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.model, name)


def test_a_short_prompt_is_not_held_behind_a_long_prompt_being_read(tiny_dirs: dict[str, Path]) -> None:
    """Prompts being read take turns, a chunk each, even while nothing decodes: a short one that comes while a
    long one is read answers before the long one's first token; a cancelled long prompt stops being read."""
    engine = load_transformers(str(tiny_dirs["llama"]), dtype="float32", prefill_chunk=8, prefix_cache=False)
    engine.eos_ids = set()
    slow = SlowModel(engine.model, 0.02)
    engine.model = slow
    try:
        question = "Tell me about " + ", ".join(f"item {i}" for i in range(80))
        chunks = len(engine.render([{"role": "user", "content": question}], {}).token_ids) // 8
        assert chunks > 30
        alone = run_alone(engine, Run(question, SamplingParams(max_tokens=3, temperature=0.0)))
        events: list[tuple[str, int]] = []
        long = Run(question, SamplingParams(max_tokens=3, temperature=0.0))
        short = Run("Hi", SamplingParams(max_tokens=3, temperature=0.0))
        long.pieces, short.pieces = LoggedPieces("long", events), LoggedPieces("short", events)

        def reading() -> bool:
            return any(p.fed > 0 for p in list(engine._prefills))

        worker = threading.Thread(target=run_alone, args=(engine, long))
        worker.start()
        assert wait_for(reading, 30)
        run_alone(engine, short)
        worker.join(60)
        assert [name for name, _ in events][:3] == ["short"] * 3, events
        assert long.text == alone.text  # read in turns, answered as when read alone
        # Cancelled while read (nothing decoding): it stops at the next chunk.
        cancelled = Run(question, SamplingParams(max_tokens=3, temperature=0.0))
        calls = slow.calls
        worker = threading.Thread(target=run_alone, args=(engine, cancelled))
        worker.start()
        assert wait_for(reading, 30)
        cancelled.cancel.set()
        worker.join(60)
        assert not cancelled.pieces and slow.calls - calls < chunks // 2
        assert not engine._prefills and not engine._rows
    finally:
        engine.close()


def test_config_batching_options_reach_the_engine(app_client: Any, tiny_dirs: dict[str, Path]) -> None:
    spec = {"id": "q", "source": str(tiny_dirs["llama"]), "dtype": "float32"}
    client = app_client([{**spec, "options": {"max_batch": 3, "prefill_chunk": 32}}, {**spec, "id": "d"}])
    wait_ready(client, "q", timeout=60)
    wait_ready(client, "d", timeout=60)
    entries = client.app.state.registry.entries
    assert (entries["q"].engine.max_batch, entries["q"].engine.prefill_chunk) == (3, 32)
    assert (entries["d"].engine.max_batch, entries["d"].engine.prefill_chunk) == (8, 256)  # defaults


# -- the prefix cache ----------------------------------------------------------------------------------------

BLOCK = 8
SYSTEM = "You are a helpful assistant. Answer the question briefly and politely, say when you do not know."
FOLLOW_UPS = ["Why is that?", "Say it with numbers like one, two, three.", "And the weather in Paris?"]


@pytest.fixture(scope="module")
def cache_pairs(tiny_dirs: dict[str, Path]) -> Iterator[dict[str, tuple[TransformersChatEngine, ...]]]:
    """Per arch: an engine with a prefix cache of 8-token blocks that prefills in chunks of 8, and one
    without a cache (the cold reference)."""
    pairs = {
        arch: (
            load_transformers(
                str(tiny_dirs[arch]), dtype="float32", prefill_chunk=8, prefix_cache_block=BLOCK
            ),
            load_transformers(str(tiny_dirs[arch]), dtype="float32", prefix_cache=False),
        )
        for arch in ARCHS
    }
    for pair in pairs.values():
        for engine in pair:
            engine.lltokenizer()
            engine.eos_ids = set()
    yield pairs
    for pair in pairs.values():
        for engine in pair:
            engine.close()


def ask(engine: TransformersChatEngine, prompt: Prompt, params: SamplingParams) -> Run:
    run = Run("", params)
    run.result = engine.generate(prompt, params, run.cancel, emitter(run))
    return run


def blocks_of(tokens: int) -> int:
    """The tokens that whole blocks cover."""
    return tokens // BLOCK * BLOCK


@pytest.mark.parametrize("arch", ARCHS)
def test_a_cached_prefix_answers_as_a_cold_prefill(
    cache_pairs: dict[str, tuple[TransformersChatEngine, ...]], arch: str
) -> None:
    """Turn after turn of a chat: the next prompt starts from the cached KV of the last prompt and answer."""
    cached, cold = cache_pairs[arch]
    assert cached.prefix_cache is not None and cold.prefix_cache is None
    cached.prefix_cache.clear()
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTIONS[2]}]
    params = SamplingParams(max_tokens=12, temperature=0.0)
    previous: list[int] = []
    for turn, follow_up in enumerate(FOLLOW_UPS):
        prompt = cached.render(messages, {})
        expected, answer = ask(cold, prompt, params), ask(cached, prompt, params)
        assert answer.text == expected.text and isinstance(answer.result, Generation)
        assert answer.result.completion_tokens == 12 and expected.result == Generation("length", 12)
        length = len(prompt.token_ids)
        if turn == 0:
            assert answer.result.cached_tokens == 0
        else:  # at least the last prompt's blocks, never the prompt's last token
            shared = min(common_prefix(previous, prompt.token_ids), length - 1)
            assert blocks_of(shared) <= answer.result.cached_tokens <= length - 1
            assert answer.result.cached_tokens % BLOCK == 0 and answer.result.cached_tokens > 0
        again = ask(cached, prompt, params)  # the same prompt again: all its whole blocks but the last token
        assert again.text == expected.text and again.result == Generation("length", 12, blocks_of(length - 1))
        previous = prompt.token_ids
        messages += [{"role": "assistant", "content": answer.text}, {"role": "user", "content": follow_up}]


def test_concurrent_requests_with_one_long_prefix_compute_it_once(
    cache_pairs: dict[str, tuple[TransformersChatEngine, ...]],
) -> None:
    """Four requests share a long prefix: the first computes it, the others join the batch from its KV."""
    import llguidance

    engine, cold = cache_pairs["qwen3"]
    assert engine.prefix_cache is not None
    engine.prefix_cache.clear()
    grammar = str(llguidance.LLMatcher.grammar_from_json_schema({"type": "object"}))
    shared = f"{SYSTEM} {SYSTEM} "
    runs = [
        Run(shared + QUESTIONS[0], SamplingParams(max_tokens=40, temperature=0.0)),
        Run(shared + QUESTIONS[1], SamplingParams(max_tokens=30, temperature=0.0, grammar=grammar)),
        Run(shared + QUESTIONS[2], SamplingParams(max_tokens=24, temperature=0.0, logprobs=2)),
        Run(shared + QUESTIONS[3], SamplingParams(max_tokens=24, temperature=0.9, seed=3)),
    ]
    prompts = [engine.render([{"role": "user", "content": run.question}], {}).token_ids for run in runs]
    alone = [run_alone(cold, fresh(run)) for run in runs]
    prefilled: list[int] = []
    forward = engine.model.forward

    def spy(*args: Any, **kwargs: Any) -> Any:
        if kwargs.get("logits_to_keep") == 1:  # a prefill chunk
            prefilled.append(int(kwargs["input_ids"].shape[1]))
        return forward(*args, **kwargs)

    engine.model.forward = spy
    try:
        together = run_together(engine, runs)
    finally:
        del engine.model.forward
    # The rows join one after the other (their uncached rest goes in 8-token chunks between decode steps);
    # the grammar's row may have closed its JSON object before the last one joined.
    assert engine.peak_batch >= 3
    for a, t in zip(alone, together, strict=True):
        assert isinstance(t.result, Generation) and isinstance(a.result, Generation)
        assert t.text == a.text and t.result.completion_tokens == a.result.completion_tokens
    results = [t.result for t in together]
    assert isinstance(results[0], Generation) and results[0].cached_tokens == 0
    for prompt, result in zip(prompts[1:], results[1:], strict=True):
        assert isinstance(result, Generation)
        assert result.cached_tokens >= blocks_of(common_prefix(prompts[0], prompt)) >= 40
    # Exactly the tokens not served from the cache went through the model, in chunks of at most 8 tokens
    # for the requests that joined while the first one streamed.
    computed = [len(p) - t.result.cached_tokens for p, t in zip(prompts, together, strict=True)]
    assert sum(prefilled) == sum(computed)
    assert max(prefilled[1:]) <= 8


def test_template_kwargs_that_change_the_tokens_share_only_the_common_prefix(
    cache_pairs: dict[str, tuple[TransformersChatEngine, ...]],
) -> None:
    engine, cold = cache_pairs["qwen3"]
    assert engine.prefix_cache is not None
    engine.prefix_cache.clear()
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTIONS[1]}]
    thinking, plain = engine.render(messages, {}), engine.render(messages, {"enable_thinking": False})
    shared = common_prefix(thinking.token_ids, plain.token_ids)
    assert shared < len(plain.token_ids) - 1  # the rendered prompts differ before plain's last token
    one = SamplingParams(max_tokens=1, temperature=0.0)  # nothing fed after the prompt: only it is cached
    ask(engine, thinking, one)
    params = SamplingParams(max_tokens=10, temperature=0.0)
    answer, expected = ask(engine, plain, params), ask(cold, plain, params)
    assert answer.text == expected.text
    assert answer.result == Generation("length", 10, blocks_of(shared))


def test_a_small_budget_evicts_and_still_answers_right(tiny_dirs: dict[str, Path]) -> None:
    engine = load_transformers(
        str(tiny_dirs["llama"]), dtype="float32", prefix_cache_block=BLOCK, prefix_cache_bytes=10**9
    )
    cold = load_transformers(str(tiny_dirs["llama"]), dtype="float32", prefix_cache=False)
    try:
        engine.eos_ids = cold.eos_ids = set()
        cache = engine.prefix_cache
        assert cache is not None
        # Raw prompts (no template): they differ from their second token on.
        prompts = [engine.encode(f"{q} {SYSTEM} {SYSTEM}") for q in QUESTIONS]
        assert min(len(p.token_ids) for p in prompts) > 5 * BLOCK
        assert max(common_prefix(p.token_ids, prompts[0].token_ids) for p in prompts[1:]) < BLOCK
        params = SamplingParams(max_tokens=6, temperature=0.0)
        ask(engine, prompts[0], SamplingParams(max_tokens=1, temperature=0.0))
        block_bytes = cache.bytes // len(cache)
        cache.max_bytes = 5 * block_bytes  # fewer blocks than one prompt has
        cache.clear()
        for prompt in prompts + prompts[:2]:
            answer, expected = ask(engine, prompt, params), ask(cold, prompt, params)
            assert answer.text == expected.text and isinstance(answer.result, Generation)
            assert cache.bytes <= cache.max_bytes and len(cache) == 5
        assert cache.evicted > 0
        # The last prompt asked is cached (its first 5 blocks); an evicted one is not.
        again = ask(engine, prompts[1], params)
        assert isinstance(again.result, Generation) and again.result.cached_tokens == 5 * BLOCK
        assert ask(engine, prompts[3], params).result == Generation("length", 6, 0)
    finally:
        engine.close()
        cold.close()


def test_memory_stays_within_the_budget_over_500_varied_requests(tiny_dirs: dict[str, Path]) -> None:
    """Varied lengths, shared and unshared prefixes, 4 at a time: the stored bytes never pass the budget,
    they are what the stored tensors hold (copies, not views of a batch's KV), and the batch is freed."""
    import random

    budget = 150_000
    engine = load_transformers(
        str(tiny_dirs["llama"]), dtype="float32", prefix_cache_block=BLOCK, prefix_cache_bytes=budget
    )
    engine.eos_ids = set()
    cache = engine.prefix_cache
    assert cache is not None
    assert engine.reserved_bytes == budget  # what the registry's memory budget counts on top of the load
    rng = random.Random(7)
    words = f"{SYSTEM} {QUESTIONS[2]}".split()
    heads = [" ".join(rng.choice(words) for _ in range(rng.randint(5, 40))) for _ in range(6)]
    jobs = [
        (
            f"{rng.choice(heads)} {' '.join(rng.choice(words) for _ in range(rng.randint(0, 30)))}",
            rng.randint(1, 3),
        )
        for _ in range(500)
    ]
    peak: list[int] = []
    failures: list[BaseException] = []
    lock = threading.Lock()

    def worker(mine: list[tuple[str, int]]) -> None:
        for text, max_tokens in mine:
            try:
                prompt = engine.render([{"role": "user", "content": text}], {})
                engine.generate(
                    prompt,
                    SamplingParams(max_tokens=max_tokens, temperature=0.0),
                    threading.Event(),
                    lambda _: None,
                )
            except BaseException as exc:
                failures.append(exc)
            with lock:
                peak.append(cache.bytes)

    try:
        threads = [threading.Thread(target=worker, args=(jobs[i::4],)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(300)
        assert not failures and len(peak) == 500
        assert max(peak) <= budget and cache.evicted > 0 and engine.peak_batch > 1
        tensors = [t for block in cache._blocks.values() for layer in block.payload for t in layer]
        held = sum(t.untyped_storage().nbytes() for t in tensors)
        assert held == cache.bytes == sum(t.numel() * t.element_size() for t in tensors) > budget // 2
        assert wait_for(lambda: engine._kv.cache is None and not engine._rows, 10)
    finally:
        engine.close()
    assert cache.bytes == 0 and len(cache) == 0  # unloading the model drops its cache


def test_n_choices_usage_metrics_and_the_per_model_switch_through_the_app(
    app_client: Any, tiny_dirs: dict[str, Path]
) -> None:
    spec = {"source": str(tiny_dirs["llama"]), "dtype": "float32"}
    client = app_client(
        [
            {**spec, "id": "on", "options": {"prefix_cache_block": BLOCK}},
            {**spec, "id": "twin", "options": {"prefix_cache_block": BLOCK}},
            {**spec, "id": "off", "options": {"prefix_cache": False}},
        ]
    )
    for model in ("on", "twin", "off"):
        wait_ready(client, model, timeout=60)
    engines = {name: entry.engine for name, entry in client.app.state.registry.entries.items()}
    assert engines["on"].prefix_cache.block_size == BLOCK and engines["off"].prefix_cache is None
    assert engines["twin"].prefix_cache is not engines["on"].prefix_cache
    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTIONS[2]}]
    body = {"messages": messages, "temperature": 0, "max_tokens": 8}
    reference = client.post("/v1/chat/completions", json={**body, "model": "off"}).json()
    prompt_tokens = reference["usage"]["prompt_tokens"]
    assert reference["usage"]["prompt_tokens_details"]["cached_tokens"] == 0
    # n = 3: one choice computes the prompt, the two others reuse it; usage counts the shared prompt once.
    three = client.post("/v1/chat/completions", json={**body, "model": "on", "n": 3}).json()
    assert [c["message"]["content"] for c in three["choices"]] == [
        reference["choices"][0]["message"]["content"]
    ] * 3
    assert three["usage"]["prompt_tokens"] == prompt_tokens
    assert three["usage"]["prompt_tokens_details"]["cached_tokens"] == blocks_of(prompt_tokens - 1)

    def streamed_usage(model: str) -> dict[str, Any]:
        stream = {**body, "model": model, "stream": True, "stream_options": {"include_usage": True}}
        events = client.post("/v1/chat/completions", json=stream).text
        chunks = [json.loads(b[6:]) for b in events.split("\n\n") if b.startswith("data: {")]
        text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
        assert text == reference["choices"][0]["message"]["content"]
        usage: dict[str, Any] = chunks[-1]["usage"]
        return usage

    assert streamed_usage("twin")["prompt_tokens_details"]["cached_tokens"] == 0  # another model's cache
    assert streamed_usage("on")["prompt_tokens_details"]["cached_tokens"] == blocks_of(prompt_tokens - 1)
    assert streamed_usage("off")["prompt_tokens_details"]["cached_tokens"] == 0
    metrics = client.get("/metrics").text
    # Per choice: two of n = 3 and the streamed request came from the cache; "off" computed both prompts.
    assert (
        f'ai_stack_prompt_tokens_cached_total{{model="on"}} {3.0 * blocks_of(prompt_tokens - 1)}' in metrics
    )
    assert f'ai_stack_prompt_tokens_computed_total{{model="off"}} {2.0 * prompt_tokens}' in metrics
