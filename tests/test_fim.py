"""Fill-in-the-middle prompts per model family, context files, and the tokens that end a middle."""

from __future__ import annotations

from typing import Any, cast

import pytest

from ai_stack.engines.base import ChatEngine, Prompt, SamplingParams
from ai_stack.errors import InvalidRequest
from ai_stack.serving.fim import (
    SNIPPET_SEPARATOR,
    fim_family,
    fim_prompt,
    fim_stop_ids,
    fim_stops,
    stop_at_fim_ends,
    suffix_stop,
)
from ai_stack.serving.generation import PreparedChat

QWEN = [
    "<|endoftext|>",
    "<|im_end|>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
]
STARCODER2 = [
    "<|endoftext|>",
    "<fim_prefix>",
    "<fim_middle>",
    "<fim_suffix>",
    "<fim_pad>",
    "<repo_name>",
    "<file_sep>",
]
CODELLAMA_HF = ["</s>", "▁<PRE>", "▁<SUF>", "▁<MID>", "▁<EOT>"]
CODELLAMA_GGUF = ["</s>", "<PRE>", "<SUF>", "<MID>", "<EOT>"]
CODESTRAL = ["</s>", "[PREFIX]", "[SUFFIX]", "[MIDDLE]"]


class VocabEngine:
    """An engine that only knows which special tokens its vocabulary has (ids from 1000 up)."""

    def __init__(self, tokens: list[str]) -> None:
        self.ids = {token: 1000 + number for number, token in enumerate(tokens)}

    def token_id(self, text: str) -> int | None:
        """The id of a known special token."""
        return self.ids.get(text)


def engine(tokens: list[str]) -> ChatEngine:
    """A VocabEngine typed as the ChatEngine fim.py takes."""
    return cast(ChatEngine, VocabEngine(tokens))


def test_qwen_prompt_is_prefix_suffix_middle() -> None:
    prompt = fim_prompt(engine(QWEN), "def f(x):\n    ", "\n    return y\n")
    assert prompt == "<|fim_prefix|>def f(x):\n    <|fim_suffix|>\n    return y\n<|fim_middle|>"


def test_qwen_repository_context_names_each_file() -> None:
    prompt = fim_prompt(
        engine(QWEN),
        "a = ",
        "\n",
        [("util.py", "def helper(): ..."), ("b.py", "B = 2")],
        "myrepo",
        path="m.py",
    )
    assert prompt == (
        "<|repo_name|>myrepo\n<|file_sep|>util.py\ndef helper(): ...\n<|file_sep|>b.py\nB = 2\n"
        "<|file_sep|>m.py\n<|fim_prefix|>a = <|fim_suffix|>\n<|fim_middle|>"
    )


def test_context_without_repo_or_path_uses_llama_cpp_file_name() -> None:
    prompt = fim_prompt(engine(QWEN), "p", "s", [("x.py", "X")])
    assert prompt == "<|file_sep|>x.py\nX\n<|file_sep|>filename\n<|fim_prefix|>p<|fim_suffix|>s<|fim_middle|>"


def test_starcoder2_tokens() -> None:
    assert fim_prompt(engine(STARCODER2), "p", "s") == "<fim_prefix>p<fim_suffix>s<fim_middle>"
    assert fim_stops(engine(STARCODER2)) == [
        "<|endoftext|>",
        "<fim_pad>",
        "<file_sep>",
        "<fim_prefix>",
        "<fim_suffix>",
    ]


def test_codellama_spacing_in_both_spellings() -> None:
    assert fim_prompt(engine(CODELLAMA_GGUF), "p", "s") == "<PRE> p <SUF>s <MID>"
    assert fim_prompt(engine(CODELLAMA_HF), "p", "s") == "▁<PRE> p▁<SUF>s▁<MID>"
    assert fim_stops(engine(CODELLAMA_HF)) == ["▁<EOT>"]


def test_codestral_puts_the_suffix_first_and_snippets_before() -> None:
    assert fim_prompt(engine(CODESTRAL), "p", "s") == "[SUFFIX]s[PREFIX]p"
    prompt = fim_prompt(engine(CODESTRAL), "p", "s", [("a.py", "A")])
    assert prompt == f"{SNIPPET_SEPARATOR}A{SNIPPET_SEPARATOR}[SUFFIX]s[PREFIX]p"


def test_model_without_fim_tokens_is_a_400_naming_the_parameter() -> None:
    plain = engine(["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    assert fim_family(plain) is None
    with pytest.raises(InvalidRequest) as raised:
        fim_prompt(plain, "p", "s")
    assert raised.value.param == "suffix" and raised.value.status == 400
    with pytest.raises(InvalidRequest) as raised:
        fim_prompt(plain, "p", "s", param="input_suffix")
    assert raised.value.param == "input_suffix"
    assert fim_stops(plain) == [] and fim_stop_ids(plain) == frozenset()


def test_partial_family_is_not_detected() -> None:
    assert fim_family(engine(["<|fim_prefix|>", "<|fim_suffix|>"])) is None  # no middle token


def test_qwen_stops_are_the_tokens_the_vocabulary_has() -> None:
    qwen = engine(QWEN)
    assert fim_stops(qwen) == [
        "<|endoftext|>",
        "<|fim_pad|>",
        "<|file_sep|>",
        "<|repo_name|>",
        "<|fim_prefix|>",
        "<|fim_suffix|>",
        "<|fim_middle|>",
        "<|im_end|>",
    ]
    assert fim_stop_ids(qwen) == {VocabEngine(QWEN).ids[token] for token in fim_stops(qwen)}


def test_stop_at_fim_ends_adds_ids_to_the_sampling_params() -> None:
    qwen = engine(QWEN)
    params = SamplingParams(max_tokens=8, stop_token_ids=frozenset({7}))
    chat = PreparedChat("m", qwen, Prompt([1, 2]), params, [])
    stop_at_fim_ends(chat)
    assert chat.params.stop_token_ids == fim_stop_ids(qwen) | {7}
    assert chat.params.max_tokens == 8
    plain: Any = PreparedChat("m", engine([]), Prompt([1]), params, [])
    assert stop_at_fim_ends(plain).params is params


@pytest.mark.parametrize(
    ("suffix", "stop"),
    [
        ("\n    return area\n", "\n    return area"),
        ("  \n\n}\n", "\n}"),
        (")\n    return x\n", None),  # the cursor is inside a line
        ("\n\n  \n", None),
        ("", None),
    ],
)
def test_suffix_stop_is_the_next_full_line(suffix: str, stop: str | None) -> None:
    assert suffix_stop(suffix) == stop
