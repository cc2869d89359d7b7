"""Tiny random-weight chat models of real architectures, carrying their families' genuine chat templates.

Everything is built locally (no network): a byte-level BPE tokenizer trained on a small built-in corpus,
the family's special tokens and chat template, and a 2-layer model of the real architecture class.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import (
    GenerationConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MistralConfig,
    MistralForCausalLM,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    Qwen3Config,
    Qwen3ForCausalLM,
)

TEMPLATES_DIR = pathlib.Path(__file__).resolve().parent / "fixtures" / "chat_templates"
ARCHS: tuple[str, ...] = ("qwen3", "llama", "mistral")
VOCAB_SIZE = 1000
SEED = 0

_CORPUS = """\
The quick brown fox jumps over the lazy dog while the farmer watches from the old wooden gate.
A language model reads a sequence of tokens and predicts the next one, one step at a time.
You are a helpful assistant. Answer the question briefly and politely, and say when you do not know.
Hello! How are you today? I am fine, thank you. What would you like to talk about this morning?
The weather in Paris is sunny and warm, with a light breeze coming from the river in the afternoon.
Please call the function get_weather with the argument city set to Paris and the unit set to celsius.
The server listens on a local port, accepts chat completion requests, and streams the answer back.
Each message has a role, such as system, user, assistant or tool, and some content written as text.
Numbers like one, two, three, four, five, six, seven, eight, nine and ten appear in many sentences.
She opened the window, looked at the garden, and decided that the roses needed water before noon.
Scientists measure temperature, pressure and humidity to understand how storms form over the ocean.
The library keeps thousands of books about history, music, mathematics, cooking and computer science.
When the train arrived at the station, the passengers picked up their bags and walked to the exit.
Good software is tested carefully: every function has a clear purpose, a name, and simple arguments.
Think step by step. First read the problem, then plan an answer, then check the result twice.
The children played football in the park until the sun went down behind the tall green hills.
Coffee, tea, juice and water were served at the meeting, together with bread, cheese and fruit.
A short story begins with a character who wants something and an obstacle that stands in the way.
Mountains, rivers, forests and deserts cover the land, and every region has its own wild animals.
The answer is forty two. The capital of France is Paris. The capital of Italy is Rome.
Write a poem about the sea, the moon and the quiet sound of waves breaking on the sandy shore.
Yesterday our neighbour repaired his bicycle, painted the fence yellow and baked chocolate cookies.
Astronomers photographed a distant galaxy whose spiral arms glow with millions of young stars.
Engineers designed a bridge strong enough to survive earthquakes, floods and heavy winter snow.
Doctors recommend walking, swimming, sleeping well and eating vegetables for a healthy heart.
The orchestra rehearsed quietly; violins, trumpets, drums and a piano filled the empty theatre.
Merchants traded silk, spices, silver and porcelain along ancient routes across vast kingdoms.
{"name": "get_weather", "arguments": {"city": "Paris", "unit": "celsius"}}
"""


@dataclass(frozen=True)
class _Family:
    """What makes a tiny model look like its real family: tokens, template and config class."""

    template: str
    config_cls: Callable[..., PretrainedConfig]
    model_cls: Callable[..., PreTrainedModel]
    leading_special: tuple[str, ...]  # ids 0.. (before the BPE vocabulary), as in Mistral
    trailing_special: tuple[str, ...]  # appended after the BPE vocabulary, as in Qwen3 and Llama 3
    trailing_plain: tuple[str, ...]  # added but not special: survive skip_special_tokens, as in Qwen3
    bos: str | None
    eos: str
    pad: str | None
    unk: str | None
    add_bos: bool  # the tokenizer's post-processor prepends bos, as the real tokenizer.json does
    config_bos: str | None
    config_eos: tuple[str, ...]
    generation_eos: tuple[str, ...]
    config_extra: tuple[tuple[str, Any], ...] = ()


_FAMILIES: dict[str, _Family] = {
    "qwen3": _Family(
        template="qwen3.jinja",
        config_cls=Qwen3Config,
        model_cls=Qwen3ForCausalLM,
        leading_special=(),
        trailing_special=("<|endoftext|>", "<|im_start|>", "<|im_end|>"),
        trailing_plain=(
            "<tool_call>",
            "</tool_call>",
            "<tool_response>",
            "</tool_response>",
            "<think>",
            "</think>",
        ),
        bos=None,
        eos="<|im_end|>",
        pad="<|endoftext|>",
        unk=None,
        add_bos=False,
        config_bos="<|endoftext|>",
        config_eos=("<|im_end|>",),
        generation_eos=("<|im_end|>", "<|endoftext|>"),
        config_extra=(("rope_parameters", {"rope_type": "default", "rope_theta": 1000000.0}),),
    ),
    "llama": _Family(
        template="llama3.1.jinja",
        config_cls=LlamaConfig,
        model_cls=LlamaForCausalLM,
        leading_special=(),
        trailing_special=(
            "<|begin_of_text|>",
            "<|end_of_text|>",
            "<|start_header_id|>",
            "<|end_header_id|>",
            "<|eom_id|>",
            "<|eot_id|>",
            "<|python_tag|>",
        ),
        trailing_plain=(),
        bos="<|begin_of_text|>",
        eos="<|eot_id|>",
        pad=None,
        unk=None,
        add_bos=True,
        config_bos="<|begin_of_text|>",
        config_eos=("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"),
        generation_eos=("<|end_of_text|>", "<|eom_id|>", "<|eot_id|>"),
        config_extra=(("rope_parameters", {"rope_type": "default", "rope_theta": 500000.0}),),
    ),
    "mistral": _Family(
        template="mistral.jinja",
        config_cls=MistralConfig,
        model_cls=MistralForCausalLM,
        leading_special=(
            "<unk>",
            "<s>",
            "</s>",
            "[INST]",
            "[/INST]",
            "[TOOL_CALLS]",
            "[AVAILABLE_TOOLS]",
            "[/AVAILABLE_TOOLS]",
            "[TOOL_RESULTS]",
            "[/TOOL_RESULTS]",
        ),
        trailing_special=(),
        trailing_plain=(),
        bos="<s>",
        eos="</s>",
        pad=None,
        unk="<unk>",
        add_bos=True,
        config_bos="<s>",
        config_eos=("</s>",),
        generation_eos=("</s>",),
        config_extra=(
            ("rope_parameters", {"rope_type": "default", "rope_theta": 1000000.0}),
            ("sliding_window", None),
        ),
    ),
}


def load_chat_template(arch: str) -> str:
    """Return the family's genuine chat template, without the fixture's leading source comment."""
    text = (TEMPLATES_DIR / _family(arch).template).read_text(encoding="utf-8")
    first, _, rest = text.partition("\n")
    return rest if first.startswith("{#") else text


def family_special_tokens(arch: str) -> tuple[str, ...]:
    """Return every special or added token the tiny tokenizer of `arch` carries."""
    fam = _family(arch)
    return fam.leading_special + fam.trailing_special + fam.trailing_plain


def build_tiny_model(arch: str, dest: pathlib.Path) -> pathlib.Path:
    """Build a tiny deterministic `arch` chat model; save weights, tokenizer, generation config in `dest`."""
    fam = _family(arch)
    dest = pathlib.Path(dest)
    dest.mkdir(parents=True, exist_ok=True)

    tokenizer = _build_tokenizer(arch, fam)
    ids = {tok: _token_id(tokenizer, tok) for tok in family_special_tokens(arch)}

    config = fam.config_cls(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        max_position_embeddings=2048,
        bos_token_id=ids[fam.config_bos] if fam.config_bos else None,
        eos_token_id=_one_or_list([ids[t] for t in fam.config_eos]),
        pad_token_id=ids[fam.pad] if fam.pad else None,
        tie_word_embeddings=False,
        **dict(fam.config_extra),
    )
    torch.manual_seed(SEED)
    model = fam.model_cls(config)
    model.generation_config = GenerationConfig(
        bos_token_id=config.bos_token_id,
        eos_token_id=_one_or_list([ids[t] for t in fam.generation_eos]),
        pad_token_id=config.pad_token_id,
    )
    model.save_pretrained(dest, safe_serialization=True)
    tokenizer.save_pretrained(dest)
    return dest


def _family(arch: str) -> _Family:
    """Look up a family, naming the known ones when `arch` is not one of them."""
    try:
        return _FAMILIES[arch]
    except KeyError:
        raise ValueError(f"unknown arch {arch!r}; expected one of {', '.join(ARCHS)}") from None


def _token_id(tokenizer: PreTrainedTokenizerFast, token: str) -> int:
    """Return the single id of `token`."""
    token_id = tokenizer.convert_tokens_to_ids(token)
    assert isinstance(token_id, int), token
    return token_id


def _one_or_list(ids: list[int]) -> int | list[int]:
    """Collapse a single id to an int, as the real configs write it."""
    return ids[0] if len(ids) == 1 else ids


def _build_tokenizer(arch: str, fam: _Family) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE on the built-in corpus and wrap it with the family's tokens and template."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE - len(fam.trailing_special) - len(fam.trailing_plain),
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in fam.leading_special],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_CORPUS.splitlines(), trainer=trainer)
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in fam.trailing_special])
    backend.add_tokens([AddedToken(t, special=False, normalized=False) for t in fam.trailing_plain])
    if fam.add_bos and fam.bos:
        bos_id = backend.token_to_id(fam.bos)
        backend.post_processor = processors.TemplateProcessing(
            single=f"{fam.bos} $A",
            pair=f"{fam.bos} $A {fam.bos} $B:1",
            special_tokens=[(fam.bos, bos_id)],
        )
    else:
        backend.post_processor = processors.ByteLevel(trim_offsets=False)

    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=fam.bos,
        eos_token=fam.eos,
        pad_token=fam.pad,
        unk_token=fam.unk,
        chat_template=load_chat_template(arch),
        model_max_length=2048,
        clean_up_tokenization_spaces=False,
    )
