"""Tests for the tiny offline chat-model builder in tests/tiny_models.py."""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable
from typing import Any

import pytest
import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    BatchEncoding,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from tests.tiny_models import ARCHS, build_tiny_model, family_special_tokens, load_chat_template

CLASS_NAMES = {"qwen3": "Qwen3ForCausalLM", "llama": "LlamaForCausalLM", "mistral": "MistralForCausalLM"}
SPECIAL = {
    "qwen3": {"bos": None, "eos": "<|im_end|>", "pad": "<|endoftext|>"},
    "llama": {"bos": "<|begin_of_text|>", "eos": "<|eot_id|>", "pad": None},
    "mistral": {"bos": "<s>", "eos": "</s>", "pad": None},
}
SYSTEM_USER = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hello there"},
]
# What each family's real template renders for SYSTEM_USER with add_generation_prompt=True.
EXPECTED_PROMPT = {
    "qwen3": "<|im_start|>system\nYou are terse.<|im_end|>\n<|im_start|>user\nHello there<|im_end|>\n"
    "<|im_start|>assistant\n",
    "llama": "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
    "Cutting Knowledge Date: December 2023\nToday Date: 26 Jul 2024\n\nYou are terse.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nHello there<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n",
    "mistral": "<s>[INST] You are terse.\n\nHello there[/INST]",
}
WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city name"}},
            "required": ["city"],
        },
    },
}
TOOL_QUESTION = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "What is the weather in Paris?"},
]

Loaded = tuple[PreTrainedTokenizerBase, PreTrainedModel]


@pytest.fixture(scope="module")
def model_dir(tiny_model: Callable[[str], pathlib.Path]) -> Callable[[str], pathlib.Path]:
    """Each arch's folder, built once per test run (conftest's tiny_model)."""
    return tiny_model


@pytest.fixture(scope="module")
def loaded(model_dir: Callable[[str], pathlib.Path]) -> Callable[[str], Loaded]:
    """Reload each built arch through the Auto classes, once per module."""
    cache: dict[str, Loaded] = {}

    def get(arch: str) -> Loaded:
        if arch not in cache:
            path = model_dir(arch)
            cache[arch] = (AutoTokenizer.from_pretrained(path), AutoModelForCausalLM.from_pretrained(path))
        return cache[arch]

    return get


def render(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]], **kwargs: Any) -> str:
    """Render a conversation to prompt text with the tokenizer's chat template."""
    text = tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
    assert isinstance(text, str)
    return text


def encode(
    tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, Any]], **kwargs: Any
) -> BatchEncoding:
    """Tokenize a conversation with the chat template, returning input_ids and attention_mask."""
    encoding = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_dict=True, **kwargs)
    assert isinstance(encoding, BatchEncoding)
    return encoding


def test_unknown_arch_is_rejected(tmp_path: pathlib.Path) -> None:
    """An arch outside ARCHS raises a ValueError naming the known ones."""
    with pytest.raises(ValueError, match="qwen3"):
        build_tiny_model("gpt2", tmp_path)


@pytest.mark.parametrize("arch", ARCHS)
def test_saved_files(arch: str, model_dir: Callable[[str], pathlib.Path]) -> None:
    """The directory holds safetensors weights, config, generation config and tokenizer files."""
    path = model_dir(arch)
    names = {p.name for p in path.iterdir()}
    assert {"config.json", "generation_config.json", "model.safetensors", "tokenizer.json"} <= names
    assert {"tokenizer_config.json"} <= names
    assert not any(name.endswith((".bin", ".pt")) for name in names)
    config = json.loads((path / "config.json").read_text())
    assert config["architectures"] == [CLASS_NAMES[arch]]
    assert config["hidden_size"] == 64 and config["num_hidden_layers"] == 2
    assert config["num_attention_heads"] == 4 and config["num_key_value_heads"] == 2
    assert config["intermediate_size"] == 128 and config["max_position_embeddings"] == 2048


@pytest.mark.parametrize("arch", ARCHS)
def test_reload_architecture_and_tokens(arch: str, loaded: Callable[[str], Loaded]) -> None:
    """Auto classes give the real architecture, and the family's tokens are single ids."""
    tokenizer, model = loaded(arch)
    assert type(model).__name__ == CLASS_NAMES[arch]
    assert model.config.vocab_size == len(tokenizer) == 1000
    assert tokenizer.bos_token == SPECIAL[arch]["bos"]
    assert tokenizer.eos_token == SPECIAL[arch]["eos"]
    assert tokenizer.pad_token == SPECIAL[arch]["pad"]
    for token in family_special_tokens(arch):
        assert tokenizer.encode(token, add_special_tokens=False) == [tokenizer.convert_tokens_to_ids(token)]
    eos_ids = model.generation_config.eos_token_id
    eos_ids = eos_ids if isinstance(eos_ids, list) else [eos_ids]
    assert tokenizer.eos_token_id in eos_ids


def test_qwen3_reasoning_tokens_are_not_special(loaded: Callable[[str], Loaded]) -> None:
    """As in real Qwen3, <think> and <tool_call> survive skip_special_tokens while <|im_end|> does not."""
    tokenizer, _ = loaded("qwen3")
    ids = tokenizer.encode(
        "<think>\nhmm\n</think>\n\n<tool_call>{}</tool_call><|im_end|>", add_special_tokens=False
    )
    text = tokenizer.decode(ids, skip_special_tokens=True)
    assert text == "<think>\nhmm\n</think>\n\n<tool_call>{}</tool_call>"


@pytest.mark.parametrize("arch", ARCHS)
def test_chat_template_is_the_genuine_one(arch: str, loaded: Callable[[str], Loaded]) -> None:
    """The saved template is the fixture file minus its source comment line."""
    tokenizer, _ = loaded(arch)
    assert tokenizer.chat_template == load_chat_template(arch)
    assert "Source:" not in tokenizer.chat_template


@pytest.mark.parametrize("arch", ARCHS)
def test_generation_prompt(arch: str, loaded: Callable[[str], Loaded]) -> None:
    """A system + user conversation renders exactly as the real family's template does."""
    tokenizer, _ = loaded(arch)
    prompt = render(tokenizer, SYSTEM_USER, add_generation_prompt=True)
    assert prompt == EXPECTED_PROMPT[arch]


@pytest.mark.parametrize("arch", ARCHS)
def test_tokenized_prompt_has_one_bos(arch: str, loaded: Callable[[str], Loaded]) -> None:
    """Tokenizing through the chat template does not double the bos the template writes."""
    tokenizer, _ = loaded(arch)
    ids: list[int] = encode(tokenizer, SYSTEM_USER)["input_ids"]
    assert tokenizer.decode(ids) == EXPECTED_PROMPT[arch]
    if tokenizer.bos_token_id is not None:
        assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id


def test_qwen3_enable_thinking(loaded: Callable[[str], Loaded]) -> None:
    """enable_thinking=False closes an empty think block; the default leaves thinking to the model."""
    tokenizer, _ = loaded("qwen3")
    off = render(tokenizer, SYSTEM_USER, add_generation_prompt=True, enable_thinking=False)
    assert off == EXPECTED_PROMPT["qwen3"] + "<think>\n\n</think>\n\n"
    on = render(tokenizer, SYSTEM_USER, add_generation_prompt=True, enable_thinking=True)
    assert on == render(tokenizer, SYSTEM_USER, add_generation_prompt=True) == EXPECTED_PROMPT["qwen3"]


def test_qwen3_tools(loaded: Callable[[str], Loaded]) -> None:
    """Qwen3 lists tools as JSON lines inside <tools> in the system turn."""
    tokenizer, _ = loaded("qwen3")
    prompt = render(tokenizer, TOOL_QUESTION, tools=[WEATHER_TOOL], add_generation_prompt=True)
    assert prompt.startswith("<|im_start|>system\nYou are terse.\n\n# Tools\n\n")
    assert f"<tools>\n{json.dumps(WEATHER_TOOL)}\n</tools>" in prompt
    assert '<tool_call>\n{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>' in prompt
    assert prompt.endswith(
        "<|im_start|>user\nWhat is the weather in Paris?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_llama_tools(loaded: Callable[[str], Loaded]) -> None:
    """Llama 3.1 switches to the ipython environment and puts tools in the first user turn."""
    tokenizer, _ = loaded("llama")
    prompt = render(tokenizer, TOOL_QUESTION, tools=[WEATHER_TOOL], add_generation_prompt=True)
    assert "<|start_header_id|>system<|end_header_id|>\n\nEnvironment: ipython\n" in prompt
    user_turn = (
        "<|start_header_id|>user<|end_header_id|>\n\nGiven the following functions, please respond with "
        "a JSON for a function call with its proper arguments that best answers the given prompt.\n\n"
    )
    assert user_turn in prompt
    assert f"{json.dumps(WEATHER_TOOL, indent=4)}\n\nWhat is the weather in Paris?<|eot_id|>" in prompt


def test_mistral_tools(loaded: Callable[[str], Loaded]) -> None:
    """Mistral v0.3 puts [AVAILABLE_TOOLS] before the last user turn, which also carries the system prompt."""
    tokenizer, _ = loaded("mistral")
    prompt = render(tokenizer, TOOL_QUESTION, tools=[WEATHER_TOOL], add_generation_prompt=True)
    function = WEATHER_TOOL["function"]
    tools = (
        '[AVAILABLE_TOOLS] [{"type": "function", "function": {"name": "get_weather", '
        f'"description": "{function["description"]}", "parameters": {json.dumps(function["parameters"])}}}}}]'
        "[/AVAILABLE_TOOLS]"
    )
    assert prompt == f"<s>{tools}[INST] You are terse.\n\nWhat is the weather in Paris?[/INST]"


@pytest.mark.parametrize(
    ("arch", "expected"),
    [
        (
            "qwen3",
            '<|im_start|>assistant\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n'
            "</tool_call><|im_end|>\n<|im_start|>user\n<tool_response>\n"
            '{"temperature_c": 18}\n</tool_response><|im_end|>\n<|im_start|>assistant\n',
        ),
        (
            "llama",
            '<|start_header_id|>assistant<|end_header_id|>\n\n{"name": "get_weather", "parameters": '
            '{"city": "Paris"}}<|eot_id|><|start_header_id|>ipython<|end_header_id|>\n\n'
            '"{\\"temperature_c\\": 18}"<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n',
        ),
        (
            "mistral",
            '[TOOL_CALLS] [{"name": "get_weather", "arguments": {"city": "Paris"}, "id": "call00001"}]</s>'
            '[TOOL_RESULTS] {"content": {"temperature_c": 18}, "call_id": "call00001"}[/TOOL_RESULTS]',
        ),
    ],
)
def test_tool_round_trip(arch: str, expected: str, loaded: Callable[[str], Loaded]) -> None:
    """An assistant tool call and its result render in the family's own markup."""
    tokenizer, _ = loaded(arch)
    messages: list[dict[str, Any]] = [
        *TOOL_QUESTION,
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [
                {
                    "id": "call00001",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Paris"}},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call00001", "content": '{"temperature_c": 18}'},
    ]
    prompt = render(tokenizer, messages, tools=[WEATHER_TOOL], add_generation_prompt=True)
    assert prompt.endswith(expected)


@pytest.mark.parametrize("arch", ARCHS)
def test_greedy_generation_is_deterministic(arch: str, loaded: Callable[[str], Loaded]) -> None:
    """Greedy generation yields exactly 5 new tokens, the same ones every time."""
    tokenizer, model = loaded(arch)
    inputs = encode(tokenizer, SYSTEM_USER, return_tensors="pt")
    prompt_len = inputs["input_ids"].shape[1]
    with torch.no_grad():
        first = model.generate(**inputs, max_new_tokens=5, do_sample=False)
        second = model.generate(**inputs, max_new_tokens=5, do_sample=False)
    assert first.shape == (1, prompt_len + 5)
    assert torch.equal(first, second)


@pytest.mark.parametrize("arch", ARCHS)
def test_rebuild_is_identical(
    arch: str, tmp_path: pathlib.Path, model_dir: Callable[[str], pathlib.Path]
) -> None:
    """Building twice gives byte-identical weights and tokenizer, so outputs are stable across runs."""
    again = build_tiny_model(arch, tmp_path / arch)
    first = model_dir(arch)
    for name in ("model.safetensors", "tokenizer.json", "chat_template.jinja"):
        assert (again / name).read_bytes() == (first / name).read_bytes(), name


def test_importable_both_ways() -> None:
    """The helper imports as tests.tiny_models and, from test modules, as plain tiny_models."""
    import tiny_models as plain

    import tests.tiny_models as qualified

    assert plain.ARCHS == qualified.ARCHS
