"""The llama.cpp engine on the real embedded default model GGUF: rendering, the chat API, batching, cancel."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from transformers import AutoTokenizer

from ai_stack.app import create_app
from ai_stack.config import Config, default_config_path, load_config
from ai_stack.engines.base import Piece, SamplingParams
from ai_stack.engines.catalog import resolve_engine
from ai_stack.sources import EMBEDDED, assemble_embedded, converted_dir, parse_source
from tests.conftest import LiveServer, wait_for

llama_cpp = pytest.importorskip(
    "llama_cpp", reason="llama-cpp-python is not installed (make install-llamacpp); llama.cpp engine untested"
)

pytestmark = pytest.mark.slow
NAME = "qwen2.5-coder-0.5b-instruct"
MODEL = "llama-default"
FRANCE = [{"role": "user", "content": "What is the capital of France? Answer in one word."}]
WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}


def _home() -> Path:
    """The default config's cache home, where `make install` assembled (and converted) the embedded model."""
    return load_config(default_config_path()).server.home


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """One uvicorn server (in a thread) for the whole module, serving the embedded model through llama.cpp.

    Its home is the default one, where `make install` put the embedded model (the load assembles it if not).
    """
    config = Config.model_validate(
        {
            "server": {"home": str(_home())},
            "models": [
                {
                    "id": MODEL,
                    "engine": "llamacpp",
                    "source": f"embedded:{NAME}",
                    "context_length": 4096,  # keeps the 4 slots' KV cache small for the tests
                    "options": {"parallel": 4},
                }
            ],
            "base_dir": str(tmp_path_factory.mktemp("llamacpp")),
        }
    )
    server = LiveServer(create_app(config))
    server.__enter__()
    try:
        with httpx.Client(base_url=server.url, timeout=600) as client:
            assert wait_for(lambda: client.get("/health/ready").status_code == 200, timeout=300)
        yield server
    finally:
        server.__exit__()


@pytest.fixture(scope="module")
def client(live: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, timeout=600) as http:
        yield http


@pytest.fixture(scope="module")
def engine(live: LiveServer) -> Any:
    return live.app.state.registry.entries[MODEL].engine


def chat(client: httpx.Client, **body: Any) -> dict[str, Any]:
    response = client.post("/v1/chat/completions", json={"model": MODEL, **body})
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def stream_events(client: httpx.Client, **body: Any) -> list[dict[str, Any]]:
    events = []
    with client.stream("POST", "/v1/chat/completions", json={"model": MODEL, "stream": True, **body}) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: {"):
                events.append(json.loads(line[6:]))
    return events


def assert_cells_match_kept(engine: Any) -> None:
    """Every free sequence holds the KV cells of positions 0..n-1 of the n tokens it keeps, and no others."""
    memory = llama_cpp.llama_get_memory(engine._ctx)
    for seq, tokens in enumerate(engine.kept_tokens()):
        assert len(tokens) <= engine.context_length
        assert llama_cpp.llama_memory_seq_pos_max(memory, seq) == len(tokens) - 1
        assert llama_cpp.llama_memory_seq_pos_min(memory, seq) == (0 if tokens else -1)


def generate(engine: Any, messages: list[dict[str, Any]], **params: Any) -> tuple[str, Any]:
    pieces: list[Piece] = []
    prompt = engine.render(messages, {})
    result = engine.generate(prompt, SamplingParams(**params), threading.Event(), pieces.append)
    return "".join(p.text for p in pieces), result


def test_models_card_names_the_engine_and_auto_resolves(client: httpx.Client, tmp_path: Path) -> None:
    card = client.get(f"/v1/models/{MODEL}").json()
    assert card["engine"] == "llamacpp" and card["state"] == "ready" and card["context_length"] == 4096
    config = Config.model_validate(
        {"models": [{"id": "a", "engine": "auto", "source": f"embedded:{NAME}"}], "base_dir": str(tmp_path)}
    )
    assert resolve_engine(config.models[0], config) == "llamacpp"
    folder = Config.model_validate(
        {"models": [{"id": "b", "engine": "auto", "source": str(tmp_path)}], "base_dir": str(tmp_path)}
    )
    assert resolve_engine(folder.models[0], folder) == "transformers"


def test_render_matches_the_hf_template_and_llama_cpp_tokens(engine: Any) -> None:
    folder = converted_dir(parse_source(f"embedded:{NAME}", Path.cwd()), _home())
    tokenizer = AutoTokenizer.from_pretrained(str(folder)) if folder.exists() else engine.tokenizer
    for messages, kwargs in [
        (FRANCE, {}),
        ([{"role": "system", "content": "Be terse."}, *FRANCE], {}),
        (FRANCE, {"tools": [WEATHER_TOOL]}),
    ]:
        prompt = engine.render(messages, kwargs)
        expected = tokenizer.apply_chat_template(
            messages, tools=kwargs.get("tools"), add_generation_prompt=True, tokenize=False
        )
        assert prompt.text == expected
        assert prompt.token_ids == tokenizer(expected, add_special_tokens=False)["input_ids"]
        assert prompt.token_ids == engine.llama_tokenize(prompt.text)  # llama.cpp's tokenizer agrees


def test_greedy_answer_and_stream_equals_full(client: httpx.Client) -> None:
    full = chat(client, messages=FRANCE, temperature=0, max_tokens=16)
    assert "Paris" in full["choices"][0]["message"]["content"]
    assert full["choices"][0]["finish_reason"] == "stop"
    events = stream_events(
        client, messages=FRANCE, temperature=0, max_tokens=16, stream_options={"include_usage": True}
    )
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert text == full["choices"][0]["message"]["content"]
    # The same usage, except that the second request found its prompt in the prefix cache.
    streamed = events[-1]["usage"]
    assert streamed.pop("prompt_tokens_details") == {"cached_tokens": streamed["prompt_tokens"] - 1}
    assert streamed == {k: v for k, v in full["usage"].items() if k != "prompt_tokens_details"}


def test_stop_strings_and_max_tokens(client: httpx.Client) -> None:
    messages = [{"role": "user", "content": "Count from 1 to 20, separated by commas."}]
    whole = chat(client, messages=messages, temperature=0, max_tokens=30)["choices"][0]["message"]["content"]
    assert "5" in whole
    cut = chat(client, messages=messages, temperature=0, max_tokens=30, stop=["5"])
    assert cut["choices"][0]["message"]["content"] == whole[: whole.index("5")]
    assert cut["choices"][0]["finish_reason"] == "stop"
    short = chat(client, messages=messages, temperature=0, max_tokens=4)
    assert short["choices"][0]["finish_reason"] == "length" and short["usage"]["completion_tokens"] == 4


def test_seed_reproduces_a_sampled_answer(client: httpx.Client) -> None:
    body = {"messages": [{"role": "user", "content": "Name a colour."}], "temperature": 1.0, "max_tokens": 8}
    first = chat(client, **body, seed=11)["choices"][0]["message"]["content"]
    again = chat(client, **body, seed=11)["choices"][0]["message"]["content"]
    assert first == again
    penalised = chat(client, **body, seed=11, presence_penalty=1.5, frequency_penalty=1.0, top_k=5)
    assert penalised["usage"]["completion_tokens"] >= 1


def test_logprobs_and_logit_bias(client: httpx.Client, engine: Any) -> None:
    result = chat(client, messages=FRANCE, temperature=0, max_tokens=5, logprobs=True, top_logprobs=3)
    entries = result["choices"][0]["logprobs"]["content"]
    assert len(entries) == result["usage"]["completion_tokens"]
    for entry in entries:
        assert entry["logprob"] <= 0 and len(entry["top_logprobs"]) == 3
        assert entry["top_logprobs"][0]["logprob"] >= entry["top_logprobs"][-1]["logprob"]
        assert bytes(entry["bytes"]).decode(errors="replace") == entry["token"]
    assert "".join(e["token"] for e in entries) == result["choices"][0]["message"]["content"]
    paris = engine.tokenizer("Paris", add_special_tokens=False)["input_ids"][0]
    banned = chat(client, messages=FRANCE, temperature=0, max_tokens=5, logit_bias={str(paris): -100})
    assert not banned["choices"][0]["message"]["content"].startswith("Paris")


def test_json_schema_and_forced_tool_call(client: httpx.Client) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
        "required": ["city", "country"],
        "additionalProperties": False,
    }
    result = chat(
        client,
        messages=[{"role": "user", "content": "Where is the Eiffel Tower?"}],
        response_format={"type": "json_schema", "json_schema": {"name": "place", "schema": schema}},
        temperature=0,
        max_tokens=60,
    )
    assert result["choices"][0]["finish_reason"] == "stop"
    jsonschema.validate(json.loads(result["choices"][0]["message"]["content"]), schema)
    forced = chat(
        client,
        messages=[{"role": "user", "content": "Hello!"}],
        tools=[WEATHER_TOOL],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        temperature=0,
        max_tokens=60,
    )
    choice = forced["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    [call] = choice["message"]["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert isinstance(json.loads(call["function"]["arguments"]), dict)


def test_context_overflow_is_a_400(client: httpx.Client) -> None:
    response = client.post(
        "/v1/chat/completions", json={"model": MODEL, "messages": FRANCE, "max_tokens": 5000}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "context_length_exceeded"


def test_client_disconnect_frees_the_sequence(client: httpx.Client, engine: Any) -> None:
    assert wait_for(lambda: engine.busy_sequences() == 0)
    before = dict(engine.stats)
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Write a very long story about a dragon."}],
        "max_tokens": 2000,
        "temperature": 0,
        "stream": True,
    }
    with client.stream("POST", "/v1/chat/completions", json=body) as response:
        lines = response.iter_lines()
        seen = 0
        while seen < 3:
            if next(lines).startswith('data: {"id"'):
                seen += 1
    # The client went away after a few chunks: the sequence ends and its KV cells are freed.
    assert wait_for(lambda: engine.busy_sequences() == 0, timeout=120)
    assert engine.stats["admitted"] == before["admitted"] + 1
    assert engine.stats["freed"] == before["freed"] + 1
    # Each sequence holds exactly the KV cells of the tokens it keeps for the prefix cache, no more.
    assert_cells_match_kept(engine)
    # Far fewer than the 2000 tokens asked for were decoded for nobody.
    assert engine.stats["decodes"] - before["decodes"] < 1000


def test_engine_cancel_stops_at_the_next_token(engine: Any) -> None:
    cancel = threading.Event()
    seen: list[Piece] = []

    def emit(piece: Piece) -> None:
        seen.append(piece)
        if len(seen) == 3:
            cancel.set()

    prompt = engine.render([{"role": "user", "content": "Write a long poem about the sea."}], {})
    result = engine.generate(prompt, SamplingParams(max_tokens=500, temperature=0.0), cancel, emit)
    assert result.finish_reason == "stop" and result.completion_tokens <= 4
    assert engine.busy_sequences() == 0


def run_together(engine: Any, requests: list[list[dict[str, Any]]]) -> list[str]:
    """Run greedy requests at once (released by a barrier) and return their answers."""
    together: list[str] = [""] * len(requests)
    start = threading.Barrier(len(requests))

    def run(index: int) -> None:
        start.wait()
        together[index] = generate(engine, requests[index], max_tokens=24, temperature=0.0)[0]

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(requests))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return together


QUESTIONS = [
    "What is the capital of France? Answer in one word.",
    "Write a Python function that adds two numbers.",
    "Name three primary colours.",
    "What is 12 times 12?",
]


def test_concurrent_requests_share_decode_steps(engine: Any) -> None:
    """The default (batch_invariant = false): requests run together share llama_decode calls and stay sane."""
    requests = [[{"role": "user", "content": q}] for q in QUESTIONS]
    before = engine.stats["max_batch_seqs"]
    engine.stats["max_batch_seqs"] = 0
    together = run_together(engine, requests)
    assert engine.stats["max_batch_seqs"] >= 2
    engine.stats["max_batch_seqs"] = max(before, engine.stats["max_batch_seqs"])
    assert "Paris" in together[0] and "def " in together[1] and "144" in together[3], together
    assert engine.busy_sequences() == 0


def test_batch_invariant_answers_run_together_equal_answers_run_alone(engine: Any) -> None:
    """With batch_invariant = true, batched greedy answers are the very answers each request gets alone."""
    from ai_stack.engines.llamacpp import load_llamacpp

    hf = converted_dir(parse_source(f"embedded:{NAME}", Path.cwd()), _home())
    gguf = assemble_embedded(EMBEDDED[NAME], _home(), progress=False)
    invariant = load_llamacpp(
        str(gguf),
        str(hf) if hf.is_dir() else None,
        {"parallel": 4, "batch_invariant": True},
        context_length=1024,
    )
    try:
        requests = [[{"role": "user", "content": q}] for q in QUESTIONS]
        alone = [generate(invariant, messages, max_tokens=24, temperature=0.0)[0] for messages in requests]
        together = run_together(invariant, requests)
        assert together == alone
        # They really shared decode steps: some llama_decode call carried several sequences.
        assert invariant.stats["max_batch_seqs"] >= 2
    finally:
        invariant.close()


def test_a_short_prompt_is_not_held_behind_a_long_prompt_being_read() -> None:
    """Prompts being read take turns, a chunk each: a short one that comes while a long one is read answers
    before the long one's first token; a long prompt whose request is cancelled stops being read."""
    engine = load_engine(n_batch=32, parallel=2, prefix_cache=False)
    events: list[str] = []
    try:
        words = " ".join(f"item{i}" for i in range(200))  # ~720 tokens of the 1024 per sequence
        long_prompt = engine.render([{"role": "user", "content": f"Sort these: {words}"}], {})
        short_prompt = engine.render([{"role": "user", "content": "Say hi."}], {})
        assert len(long_prompt.token_ids) > 20 * 32

        def run(prompt: Any, name: str, cancel: threading.Event) -> None:
            params = SamplingParams(max_tokens=2, temperature=0.0)
            engine.generate(prompt, params, cancel, lambda piece: events.append(name))

        def reading() -> bool:  # the long prompt is in and partly read
            return any(0 < r.fed < len(r.prompt) for r in list(engine._active.values()))

        long = threading.Thread(target=run, args=(long_prompt, "long", threading.Event()))
        long.start()
        assert wait_for(reading, 60)
        run(short_prompt, "short", threading.Event())
        long.join(300)
        assert events[:2] == ["short", "short"] and events.count("long") == 2, events
        # Cancelled while read: it stops at the next chunk, not at the end of the prompt.
        cancel = threading.Event()
        again = threading.Thread(target=run, args=(long_prompt, "again", cancel))
        decodes = engine.stats["decodes"]
        again.start()
        assert wait_for(reading, 60)
        cancel.set()
        again.join(60)
        assert "again" not in events
        assert engine.stats["decodes"] - decodes < len(long_prompt.token_ids) // 32
        assert engine.busy_sequences() == 0
    finally:
        engine.close()


# --- the prefix cache ---------------------------------------------------------------------------------------

SYSTEM = {"role": "system", "content": "You are a careful assistant who answers briefly. " * 12}


def load_engine(**options: Any) -> Any:
    """A separate llama.cpp engine on the embedded model with the given options (1024-token slots)."""
    from ai_stack.engines.llamacpp import load_llamacpp

    hf = converted_dir(parse_source(f"embedded:{NAME}", Path.cwd()), _home())
    gguf = assemble_embedded(EMBEDDED[NAME], _home(), progress=False)
    return load_llamacpp(str(gguf), str(hf) if hf.is_dir() else None, options, context_length=1024)


def greedy(engine: Any, messages: list[dict[str, Any]], max_tokens: int = 10, **kwargs: Any) -> Any:
    """A greedy answer with each token's two best log-probabilities: (tokens with logprobs, cached tokens)."""
    pieces: list[Piece] = []
    prompt = engine.render(messages, kwargs)
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0, logprobs=2)
    result = engine.generate(prompt, params, threading.Event(), pieces.append)
    return [lp for piece in pieces for lp in piece.logprobs], result.cached_tokens


def text_of(tokens: list[Any]) -> str:
    return "".join(t.token for t in tokens)


def test_cached_tokens_in_usage_streamed_usage_and_metrics(client: httpx.Client) -> None:
    messages = [SYSTEM, {"role": "user", "content": "Name a fruit."}]
    first = chat(client, messages=messages, temperature=0, max_tokens=6)
    messages += [
        {"role": "assistant", "content": first["choices"][0]["message"]["content"]},
        {"role": "user", "content": "And a vegetable?"},
    ]
    second = chat(client, messages=messages, temperature=0, max_tokens=6)
    usage = second["usage"]
    # The system prompt, the first question and the answer (as the template renders it) came from the cache.
    assert first["usage"]["prompt_tokens"] <= usage["prompt_tokens_details"]["cached_tokens"]
    assert usage["prompt_tokens_details"]["cached_tokens"] < usage["prompt_tokens"]
    events = stream_events(
        client, messages=messages, temperature=0, max_tokens=6, stream_options={"include_usage": True}
    )
    streamed = events[-1]["usage"]
    # The very same prompt again: all of it but the last token (decoded again for its logits) is cached.
    assert streamed["prompt_tokens_details"]["cached_tokens"] == streamed["prompt_tokens"] - 1
    metrics = client.get("/metrics").text
    cached = computed = 0.0
    for line in metrics.splitlines():
        if line.startswith(f'ai_stack_prompt_tokens_cached_total{{model="{MODEL}"}}'):
            cached = float(line.split()[-1])
        if line.startswith(f'ai_stack_prompt_tokens_computed_total{{model="{MODEL}"}}'):
            computed = float(line.split()[-1])
    assert cached >= usage["prompt_tokens_details"]["cached_tokens"] + streamed["prompt_tokens"] - 1
    assert computed >= 1


def test_batch_invariant_cached_answers_equal_uncached_answers() -> None:
    """batch_invariant = true: each turn of a conversation gives the very answer (tokens and logprobs)
    of an engine without the cache, while reusing whole prompt chunks."""
    options = {"parallel": 2, "batch_invariant": True, "n_batch": 32}
    cached, plain = load_engine(**options), load_engine(**options, prefix_cache=False)
    try:
        conversation = [SYSTEM, {"role": "user", "content": "Name three fruits."}]
        reused = []
        for turn in range(3):
            (with_cache, hits), (without, none) = greedy(cached, conversation), greedy(plain, conversation)
            assert with_cache == without and none == 0
            reused.append(hits)
            conversation += [
                {"role": "assistant", "content": text_of(with_cache)},
                {"role": "user", "content": f"And {turn + 2} more?"},
            ]
        assert reused[0] == 0 and reused[1] >= 64 and reused[2] >= reused[1]
        assert all(hits % 32 == 0 for hits in reused)  # whole prompt chunks only
        # Another client with the same system prompt, then the conversation again: still the same answers.
        other = [SYSTEM, {"role": "user", "content": "What is 2 + 2?"}]
        (with_cache, hits), (without, _) = greedy(cached, other), greedy(plain, other)
        assert with_cache == without and hits % 32 == 0
        assert greedy(cached, conversation)[0] == greedy(plain, conversation)[0]
        assert plain.kept_tokens() == [[], []] and plain.stats["cached_tokens"] == 0
        assert_cells_match_kept(cached)
        assert_cells_match_kept(plain)
    finally:
        cached.close()
        plain.close()


def assert_near(with_cache: list[Any], without: list[Any]) -> None:
    """Greedy answers agree token by token, and where they part the two best tokens were nearly tied."""
    for a, b in zip(with_cache, without, strict=False):
        if a.token != b.token:
            assert abs(b.top[0][1] - b.top[1][1]) < 0.5, (a, b)  # a near tie, flipped by rounding
            return
        assert abs(a.logprob - b.logprob) < 0.25, (a, b)


def test_default_cached_answers_match_uncached_up_to_near_ties() -> None:
    """The default engine reuses any prefix, and copies a shared system prompt into another client's sequence;
    where answers part from uncached ones, the two best tokens were nearly tied."""
    cached, plain = load_engine(parallel=2), load_engine(parallel=1, prefix_cache=False)
    try:
        # A first question longer than the system prompt: the conversation is more than the shared prefix.
        question = "Write a haiku about rain. " + "Think of drops, clouds, puddles and umbrellas. " * 12
        conversation = [SYSTEM, {"role": "user", "content": question}]
        first, _ = greedy(cached, conversation, max_tokens=16)
        assert_near(first, greedy(plain, conversation, max_tokens=16)[0])
        conversation += [
            {"role": "assistant", "content": text_of(first)},
            {"role": "user", "content": "Now one about snow."},
        ]
        with_cache, hits = greedy(cached, conversation, max_tokens=16)
        assert hits > len(cached.render(conversation[:2], {}).token_ids)
        assert_near(with_cache, greedy(plain, conversation, max_tokens=16)[0])
        # A second client with the same system prompt: the empty sequence, with the prefix copied into it.
        other = [SYSTEM, {"role": "user", "content": "What is 2 + 2?"}]
        with_cache, hits = greedy(cached, other)
        assert cached.stats["prefix_copies"] == 1 and hits >= 100
        assert_near(with_cache, greedy(plain, other)[0])
        assert greedy(cached, conversation)[1] > hits  # the conversation is still cached
        assert_cells_match_kept(cached)
    finally:
        cached.close()
        plain.close()


def test_reuse_is_token_level_and_memory_stays_bounded() -> None:
    """One sequence: cached tokens are exactly the common prefix with what it holds (so a different template
    rendering or tool list reuses only what is identical); over many varied requests the KV cells always match
    the kept tokens and never exceed the slot."""
    from ai_stack.engines.prefix_cache import common_prefix

    engine = load_engine(parallel=1)
    try:
        words = ["apple", "river", "stone", "cloud", "lamp", "forest", "glass", "tiger"]
        requests: list[tuple[list[dict[str, Any]], dict[str, Any]]] = []
        for i in range(24):
            user = " ".join(words[(i * k) % len(words)] for k in range(1, 2 + i % 5))
            system = [SYSTEM] if i % 3 else []
            kwargs = {"tools": [WEATHER_TOOL]} if i % 4 == 0 else {}
            requests.append(([*system, {"role": "user", "content": f"Repeat: {user}"}], kwargs))
        requests.append(([{"role": "user", "content": "Long: " + "word " * 900}], {}))  # near the 1024 slot
        total = 0
        for messages, kwargs in requests:
            [kept] = engine.kept_tokens()
            prompt = engine.render(messages, kwargs).token_ids
            _, hits = greedy(engine, messages, max_tokens=2, **kwargs)
            assert hits == min(common_prefix(kept, prompt), len(prompt) - 1)
            total += len(prompt)
            assert_cells_match_kept(engine)
        assert engine.stats["cached_tokens"] + engine.stats["computed_tokens"] == total
        assert engine.stats["cached_tokens"] > 0
    finally:
        engine.close()
