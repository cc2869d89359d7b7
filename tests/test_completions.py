"""OpenAI's legacy /v1/completions, llama.cpp's /infill and /completion (ai_stack/surfaces/completions.py).

Most tests run over the fake engine (which echoes its prompt, so the FIM prompt it was given shows); the
ones marked slow use the real default model (Qwen2.5-Coder) through the official openai SDK and raw HTTP.
"""

from __future__ import annotations

import ast
import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from starlette.testclient import TestClient

from ai_stack.engines.fake import FakeChatEngine
from tests.conftest import FAKE, assert_error, wait_for, wait_ready

QWEN_FIM = {
    "<|endoftext|>": 151643,
    "<|fim_prefix|>": 151659,
    "<|fim_middle|>": 151660,
    "<|fim_suffix|>": 151661,
    "<|fim_pad|>": 151662,
    "<|repo_name|>": 151663,
    "<|file_sep|>": 151664,
}
SLOW = {**FAKE, "options": {"reply": "word " * 500, "token_delay": 0.05}}


@pytest.fixture
def fim_fake(monkeypatch: pytest.MonkeyPatch) -> None:
    """Give the fake engine Qwen2.5-Coder's FIM tokens."""
    monkeypatch.setattr(FakeChatEngine, "token_id", lambda self, text: QWEN_FIM.get(text))


def llama_error(response: httpx.Response, status: int, words: str) -> dict[str, Any]:
    """Check llama.cpp server's error shape: {"error": {"code": int, "message", "type"}}."""
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"code", "message", "type"} and error["code"] == status
    assert words in error["message"], error
    return error  # type: ignore[no-any-return]


def sse(text: str) -> list[Any]:
    """The JSON payloads of an SSE body ([DONE] as the string)."""
    out = []
    for line in text.splitlines():
        if line.startswith("data: "):
            out.append(line[6:] if line == "data: [DONE]" else json.loads(line[6:]))
    return out


# ----------------------------------------------------------------------------------------- /v1/completions


def test_legacy_shape_no_chat_template_and_default_max_tokens(client: TestClient) -> None:
    prompt = " ".join(f"w{i}" for i in range(30))
    body = client.post("/v1/completions", json={"model": "fake", "prompt": prompt}).json()
    assert body["object"] == "text_completion" and body["id"].startswith("cmpl-")
    assert body["model"] == "fake-chat"
    [choice] = body["choices"]
    # The raw prompt reaches the engine (the fake echoes it): no "user:" / "assistant:" template around it.
    assert choice["text"] == "You said: " + " ".join(f"w{i}" for i in range(14))  # OpenAI's default of 16
    assert choice["finish_reason"] == "length" and choice["logprobs"] is None and choice["index"] == 0
    assert body["usage"] == {"prompt_tokens": 30, "completion_tokens": 16, "total_tokens": 46}


def test_prompt_list_gives_one_group_of_n_choices_per_prompt(client: TestClient) -> None:
    body = client.post("/v1/completions", json={"model": "fake", "prompt": ["a b", "c"], "n": 2}).json()
    texts = [(c["index"], c["text"]) for c in body["choices"]]
    assert texts == [(0, "You said: a b"), (1, "You said: a b"), (2, "You said: c"), (3, "You said: c")]
    assert body["usage"]["prompt_tokens"] == 3 and body["usage"]["completion_tokens"] == 14


def test_stop_and_echo_and_max_tokens_zero(client: TestClient) -> None:
    body = client.post("/v1/completions", json={"model": "fake", "prompt": "x y z", "stop": " y"}).json()
    assert body["choices"][0]["text"] == "You said: x" and body["choices"][0]["finish_reason"] == "stop"
    body = client.post("/v1/completions", json={"model": "fake", "prompt": "x y", "echo": True}).json()
    assert body["choices"][0]["text"] == "x yYou said: x y"
    body = client.post(
        "/v1/completions", json={"model": "fake", "prompt": "x y", "echo": True, "max_tokens": 0}
    )
    assert body.json()["choices"][0] == {
        "text": "x y",
        "index": 0,
        "logprobs": None,
        "finish_reason": "length",
    }
    assert body.json()["usage"]["completion_tokens"] == 0


def test_legacy_logprobs_shape_with_echo(client: TestClient) -> None:
    body = client.post(
        "/v1/completions",
        json={"model": "fake", "prompt": "hi there", "echo": True, "logprobs": 1, "max_tokens": 3},
    ).json()
    choice = body["choices"][0]
    logprobs = choice["logprobs"]
    # The fake engine has no vocabulary: the echoed prompt is one unscored entry.
    assert logprobs["tokens"] == ["hi there", "You", " said:", " hi"]
    assert logprobs["token_logprobs"] == [None, 0.0, 0.0, 0.0]
    assert logprobs["top_logprobs"] == [None, {"You": 0.0}, {" said:": 0.0}, {" hi": 0.0}]
    assert logprobs["text_offset"] == [0, 8, 11, 17]
    assert "".join(logprobs["tokens"]) == choice["text"]


def test_best_of_generates_more_and_returns_n(client: TestClient) -> None:
    body = client.post("/v1/completions", json={"model": "fake", "prompt": "a", "best_of": 3, "n": 2}).json()
    assert [c["index"] for c in body["choices"]] == [0, 1]
    assert all(c["logprobs"] is None for c in body["choices"])  # ranked by logprobs, not asked for them
    assert body["usage"]["completion_tokens"] == 9  # every best_of candidate was generated


def test_streamed_chunks_then_usage_then_done(client: TestClient) -> None:
    response = client.post(
        "/v1/completions",
        json={
            "model": "fake",
            "prompt": "a b",
            "stream": True,
            "echo": True,
            "logprobs": 0,
            "stream_options": {"include_usage": True},
        },
    )
    assert response.headers["content-type"].startswith("text/event-stream")
    events = sse(response.text)
    assert events[-1] == "[DONE]"
    chunks = events[:-1]
    assert all(c["object"] == "text_completion" for c in chunks)
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4
    texts = "".join(c["choices"][0]["text"] for c in chunks[:-1])
    assert texts == "a bYou said: a b"
    assert chunks[-2]["choices"][0]["finish_reason"] == "stop"
    offsets = [
        o
        for c in chunks[:-1]
        if c["choices"][0]["logprobs"]
        for o in c["choices"][0]["logprobs"]["text_offset"]
    ]
    assert offsets == [0, 3, 6, 12, 14]
    assert all(c["usage"] is None for c in chunks[:-1])


def test_suffix_builds_the_models_fim_prompt(fim_fake: None, client: TestClient) -> None:
    body = client.post(
        "/v1/completions",
        json={"model": "fake", "prompt": "def f():", "suffix": " return 1", "max_tokens": 50},
    ).json()
    assert (
        body["choices"][0]["text"] == "You said: <|fim_prefix|>def f():<|fim_suffix|> return 1<|fim_middle|>"
    )


def test_a_middle_that_runs_into_the_suffix_is_cut_there(fim_fake: None, app_client: Any) -> None:
    client = app_client([{**FAKE, "options": {"reply": "y = 2 * x\n    return y\n\ndef other():"}}])
    wait_ready(client, "fake-chat")
    fim = {"prompt": "def f(x):\n    ", "suffix": "\n    return y\n", "max_tokens": 50}
    body = client.post("/v1/completions", json={"model": "fake", **fim}).json()
    assert body["choices"][0] == {"text": "y = 2 * x", "index": 0, "logprobs": None, "finish_reason": "stop"}
    infill = {"input_prefix": fim["prompt"], "input_suffix": fim["suffix"], "stop": ["never"]}
    assert client.post("/infill", json=infill).json()["content"] == "y = 2 * x"


def test_suffix_on_a_model_without_fim_tokens_is_a_400(client: TestClient) -> None:
    response = client.post("/v1/completions", json={"model": "fake", "prompt": "a", "suffix": "b"})
    error = assert_error(response, 400, "invalid_request", "suffix")
    assert "fill-in-the-middle" in error["message"]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "fake"}, "prompt"),
        ({"model": "fake", "prompt": 5}, None),
        ({"model": "fake", "prompt": []}, None),
        ({"model": "fake", "prompt": [[]]}, None),
        ({"model": "fake", "prompt": ["a"] * 17}, None),
        ({"model": "fake", "prompt": "a", "max_tokens": -1}, "max_tokens"),
        ({"model": "fake", "prompt": "a", "logprobs": 21}, "logprobs"),
        ({"model": "fake", "prompt": "a", "best_of": 1, "n": 2}, None),
        ({"model": "fake", "prompt": "a", "best_of": 2, "stream": True}, None),
        ({"model": "fake", "prompt": "a", "echo": True, "suffix": "b"}, None),
        ({"model": "fake", "prompt": "a", "temperature": 3}, "temperature"),
        ({"model": "fake", "prompt": "a", "logit_bias": {"x": 1}}, "logit_bias"),
        ({"model": "fake", "prompt": [1, 2]}, "prompt"),  # the fake engine has no vocabulary
    ],
)
def test_bad_legacy_input_is_an_openai_400(
    client: TestClient, body: dict[str, Any], param: str | None
) -> None:
    response = client.post("/v1/completions", json=body)
    assert response.status_code == 400, response.text
    error = assert_error(response, 400, response.json()["error"]["code"])
    if param is not None:
        assert error["param"] == param


def test_unknown_model_and_bad_json_keep_the_openai_shape(client: TestClient) -> None:
    assert_error(
        client.post("/v1/completions", json={"model": "nope", "prompt": "a"}), 404, "model_not_found"
    )
    bad = client.post("/v1/completions", content=b"{", headers={"content-type": "application/json"})
    assert bad.status_code == 400 and set(bad.json()["error"]) == {"message", "type", "param", "code"}


def test_prompt_too_long_for_the_context_is_a_400(app_client: Any) -> None:
    client = app_client([{**FAKE, "options": {"context_length": 8}}])
    wait_ready(client, "fake-chat")
    response = client.post(
        "/v1/completions", json={"model": "fake", "prompt": "a b c d e f g", "max_tokens": 4}
    )
    assert_error(response, 400, "context_length_exceeded")


def test_openai_sdk_completions_streamed_and_errors(live_server: Any) -> None:
    live = live_server()
    sdk = openai.OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=0)
    assert wait_for(lambda: httpx.get(f"{live.url}/health/ready").status_code == 200)
    done = sdk.completions.create(model="fake", prompt="one two", max_tokens=5, logprobs=1, echo=True)
    assert done.choices[0].text == "one twoYou said: one two"
    assert done.choices[0].logprobs is not None and done.choices[0].logprobs.tokens[1:] == [
        "You",
        " said:",
        " one",
        " two",
    ]
    assert done.usage is not None and done.usage.completion_tokens == 4
    streamed = sdk.completions.create(
        model="fake", prompt="one", stream=True, stream_options={"include_usage": True}
    )
    chunks = list(streamed)
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "You said: one"
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 4
    with pytest.raises(openai.BadRequestError) as raised:
        sdk.completions.create(model="fake", prompt="a", suffix="b")
    assert raised.value.param == "suffix"


# ---------------------------------------------------------------------------------------------- llama.cpp


def test_infill_places_extra_files_and_the_typed_prompt(fim_fake: None, client: TestClient) -> None:
    response = client.post(
        "/infill",
        json={
            "input_prefix": "x = ",
            "input_suffix": "\n",
            "input_extra": [{"filename": "a.py", "text": "A = 1"}],
            "prompt": "hel",
            "n_predict": 64,
            "cache_prompt": True,
            "t_max_predict_ms": 500,
        },
    )
    body = response.json()
    assert body["content"] == (
        "You said: <|file_sep|>a.py\nA = 1\n<|file_sep|>filename\n"
        "<|fim_prefix|>x = <|fim_suffix|>\n<|fim_middle|>hel"
    )
    assert body["stop"] is True and body["model"] == "fake-chat" and body["stop_type"] == "eos"
    assert body["tokens_predicted"] == len(body["content"].split())


def test_infill_drops_the_oldest_context_files_to_fit(fim_fake: None, app_client: Any) -> None:
    client = app_client([{**FAKE, "options": {"context_length": 40, "reply": "ok"}}])
    wait_ready(client, "fake-chat")
    extra = [{"filename": f"f{i}.py", "text": " ".join(["w"] * 10)} for i in range(5)]
    body = client.post(
        "/infill", json={"input_prefix": "p", "input_suffix": "s", "input_extra": extra, "n_predict": 4}
    )
    assert body.status_code == 200 and body.json()["content"] == "ok"
    assert body.json()["tokens_evaluated"] + 4 <= 40
    too_big = {"input_prefix": " ".join(["w"] * 50), "input_suffix": "s", "n_predict": 4}
    llama_error(client.post("/infill", json=too_big), 400, "context length")


def test_completion_full_streamed_and_n_probs(client: TestClient) -> None:
    body = client.post("/completion", json={"prompt": "a b c", "n_predict": 2, "n_probs": 1}).json()
    assert body["content"] == "You said:" and body["stop_type"] == "limit"
    assert body["tokens_predicted"] == 2 and body["tokens_evaluated"] == 3
    assert [p["token"] for p in body["completion_probabilities"]] == ["You", " said:"]
    response = client.post(
        "/completion", json={"prompt": "a", "stream": True, "repeat_penalty": 1.1, "seed": -1}
    )
    events = sse(response.text)
    assert "".join(e["content"] for e in events) == "You said: a"
    assert [e["stop"] for e in events] == [False] * (len(events) - 1) + [True]  # pieces may arrive together
    assert events[-1]["tokens_predicted"] == 3 and "[DONE]" not in events


def test_completion_accepts_llama_cpp_logit_bias_pairs_and_json_schema(client: TestClient) -> None:
    ok = client.post(
        "/completion", json={"prompt": "a", "logit_bias": [[15, -1.0], [16, False]], "n_predict": 1}
    )
    assert ok.status_code == 200, ok.text


@pytest.mark.parametrize(
    ("path", "body", "words"),
    [
        ("/completion", {}, "prompt"),
        ("/completion", {"prompt": "a", "n_predict": -2}, "n_predict"),
        ("/completion", {"prompt": "a", "grammar": "root ::= x"}, "grammar"),
        ("/completion", {"prompt": "a", "logit_bias": [["hello", 1.0]]}, "logit_bias"),
        ("/completion", {"prompt": "a", "model": "nope"}, "does not exist"),
        ("/completion", {"prompt": [1, 2]}, "vocabulary"),
        ("/infill", {"input_prefix": "a", "input_suffix": "b"}, "fill-in-the-middle"),
        ("/infill", {"input_extra": [{"filename": "x"}]}, "input_extra"),
        ("/infill", {"input_extra": "nope"}, "input_extra"),
    ],
)
def test_bad_llama_input_is_a_llama_cpp_error(
    client: TestClient, path: str, body: dict[str, Any], words: str
) -> None:
    response = client.post(path, json=body)
    llama_error(response, 404 if "exist" in words else 400, words)


def test_llama_routes_check_api_key_and_json(app_client: Any) -> None:
    client = app_client(api_key="k")
    llama_error(client.post("/completion", json={"prompt": "a"}), 401, "")
    response = client.post(
        "/infill", content=b"x", headers={"authorization": "Bearer k", "content-type": "text/plain"}
    )
    assert response.status_code == 415


# ---------------------------------------------------------------------------------------------- editor flow


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/infill", {"input_prefix": "a", "input_suffix": "b", "n_predict": 400}),
        ("/completion", {"prompt": "a", "n_predict": 400}),
        ("/v1/completions", {"model": "fake", "prompt": "a", "max_tokens": 400}),
        ("/v1/completions", {"model": "fake", "prompt": "a", "max_tokens": 400, "stream": True}),
    ],
)
def test_a_cancelled_completion_frees_its_slot_at_once(
    fim_fake: None, live_server: Any, path: str, body: dict[str, Any]
) -> None:
    live = live_server([SLOW])
    assert wait_for(lambda: httpx.get(f"{live.url}/health/ready").status_code == 200)
    engine = live.app.state.registry.entries["fake-chat"].engine
    if body.get("stream"):
        with (
            httpx.Client(base_url=live.url, timeout=10) as client,
            client.stream("POST", path, json=body) as r,
        ):
            next(r.iter_lines())
    else:
        with pytest.raises(httpx.ReadTimeout), httpx.Client(base_url=live.url, timeout=0.4) as impatient:
            impatient.post(path, json=body)  # the next keystroke: the editor gives up on this one
    assert wait_for(lambda: engine.cancelled == 1 and engine.active == 0, timeout=2)


# ---------------------------------------------------------------------------------------------- real model

SIGNATURE = "import math\n\n\ndef circle_area(radius: float) -> float:\n    "
RETURN_LINE = "\n    return area\n"
GEOMETRY = "def square_area(side):\n    return side * side\n"


@pytest.fixture(scope="module")
def sdk(default_server: str) -> Iterator[openai.OpenAI]:
    """The official openai SDK pointed at the real default model."""
    yield openai.OpenAI(base_url=f"{default_server}/v1", api_key="unused", max_retries=0, timeout=600)


@pytest.mark.slow
def test_real_fim_middle_is_plausible_code_and_ends_by_itself(sdk: openai.OpenAI) -> None:
    done = sdk.completions.create(
        model="default", prompt=SIGNATURE, suffix=RETURN_LINE, max_tokens=48, temperature=0
    )
    middle = done.choices[0].text
    assert done.choices[0].finish_reason == "stop", middle  # <|endoftext|> ended it, not max_tokens
    assert "area" in middle and "radius" in middle, middle
    ast.parse(SIGNATURE + middle + RETURN_LINE)  # the filled function is valid Python
    streamed = sdk.completions.create(
        model="default", prompt=SIGNATURE, suffix=RETURN_LINE, max_tokens=48, temperature=0, stream=True
    )
    assert "".join(chunk.choices[0].text for chunk in streamed if chunk.choices) == middle


@pytest.mark.slow
def test_real_echo_logprobs_cover_prompt_and_completion(sdk: openai.OpenAI) -> None:
    done = sdk.completions.create(
        model="default", prompt="def add(a, b):", max_tokens=4, temperature=0, echo=True, logprobs=2
    )
    choice = done.choices[0]
    assert choice.logprobs is not None
    tokens, offsets = choice.logprobs.tokens or [], choice.logprobs.text_offset or []
    assert "".join(tokens) == choice.text and choice.text.startswith("def add(a, b):")
    assert offsets == [sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
    prompt_count = done.usage.prompt_tokens if done.usage else 0
    scores = choice.logprobs.token_logprobs or []
    assert scores[:prompt_count] == [None] * prompt_count
    assert all(s is not None and s <= 0 for s in scores[prompt_count:]) and len(scores) == prompt_count + 4
    tops = choice.logprobs.top_logprobs or []
    assert all(len(top) <= 2 for top in tops[prompt_count:] if top)


@pytest.mark.slow
def test_real_infill_over_raw_http(default_server: str) -> None:
    prefix = "from geometry import square_area\n\n\ndef floor_area(width: float) -> float:\n    "
    suffix = "\n    return area\n"
    response = httpx.post(
        f"{default_server}/infill",
        json={
            "input_prefix": prefix,
            "input_suffix": suffix,
            "input_extra": [{"filename": "geometry.py", "text": GEOMETRY}],
            "n_predict": 32,
            "temperature": 0,
        },
        timeout=600,
    )
    body = response.json()
    assert response.status_code == 200, body
    # The 0.5B instruct model fills the body, then may carry on with more functions until n_predict: its
    # first line must be code that uses the parameter and completes the function.
    first_line = body["content"].split("\n")[0]
    assert "width" in first_line and body["tokens_predicted"] <= 32, body
    ast.parse(prefix + first_line + suffix)
