"""Grammars for constrained decoding: bounded JSON numbers and strings, bounded parallel tool calls.

Each grammar is run through llguidance with a real (tiny, byte-level) tokenizer: a text is accepted, a prefix
of an accepted text, or rejected at some token. Recorded runaway outputs of Qwen2.5-Coder-0.5B (issue 22)
must be cut where the bound says, and ordinary answers must still be accepted whole.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from ai_stack.errors import InvalidRequest
from ai_stack.protocol import ChatCompletionRequest, ResponseFormat, Tool
from ai_stack.serving.constraints import (
    MAX_FRACTION_DIGITS,
    MAX_INTEGER_DIGITS,
    MAX_STRING_LENGTH,
    bounded_schema,
    json_grammar,
    tool_grammar,
)
from tests.conftest import wait_ready

Check = Callable[[str, str], str]


@pytest.fixture(scope="module")
def tokenizer(tiny_model: Callable[[str], Path]) -> Any:
    """The tiny Qwen3 tokenizer (byte-level BPE with <tool_call> tokens), as llguidance sees it."""
    import llguidance.hf
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(tiny_model("qwen3"))
    return hf, llguidance.hf.from_tokenizer(hf)


@pytest.fixture(scope="module")
def check(tokenizer: Any) -> Check:
    """check(grammar, text): "accept" (a whole answer), "prefix" (it may go on) or "reject"."""
    import llguidance

    _, lltok = tokenizer

    def run(grammar: str, text: str) -> str:
        matcher = llguidance.LLMatcher(lltok, grammar)
        assert not matcher.is_error(), matcher.get_error()
        ids = lltok.tokenize_str(text)
        if matcher.validate_tokens(ids) < len(ids):
            return "reject"
        assert matcher.consume_tokens(ids)
        return "accept" if matcher.is_accepting() else "prefix"

    return run


@pytest.fixture(scope="module")
def token_id(tokenizer: Any) -> Callable[[str], int | None]:
    """The tiny tokenizer's id of a special-token text, as engines give it to tool_grammar."""
    hf, _ = tokenizer

    def get(text: str) -> int | None:
        ident = hf.convert_tokens_to_ids(text)
        return ident if isinstance(ident, int) and ident != hf.unk_token_id else None

    return get


def schema_format(schema: dict[str, Any]) -> ResponseFormat:
    return ResponseFormat.model_validate(
        {"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}}
    )


def grammar_for(schema: dict[str, Any]) -> str:
    grammar = json_grammar(schema_format(schema))
    assert grammar is not None
    return grammar


COUNTRY = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "population_millions": {"type": "number"}},
    "required": ["name", "population_millions"],
    "additionalProperties": False,
}


def test_runaway_float_is_cut_at_the_digit_bound(check: Check) -> None:
    """The recorded chat.completions.parse answer (600000000000… until max_tokens) can no longer run on."""
    grammar = grammar_for(COUNTRY)
    head = '{"name": "France", "population_millions": '
    assert check(grammar, head + "6" + "0" * (MAX_INTEGER_DIGITS - 1)) == "prefix"
    assert check(grammar, head + "6" + "0" * MAX_INTEGER_DIGITS) == "reject"
    assert check(grammar, head + "6" + "0" * 40) == "reject"  # as recorded
    assert check(grammar, head + "68.17}") == "accept"
    assert check(grammar, head + "-0.5}") == "accept"
    assert check(grammar, head + "0." + "3" * MAX_FRACTION_DIGITS + "}") == "accept"
    assert check(grammar, head + "0." + "3" * (MAX_FRACTION_DIGITS + 1)) == "reject"


def test_integers_and_nested_numbers_are_bounded(check: Check) -> None:
    """Integers, numbers in arrays and in $defs get the same bound."""
    schema = {
        "$defs": {"Point": {"type": "object", "properties": {"x": {"type": "integer"}}, "required": ["x"]}},
        "type": "object",
        "properties": {
            "points": {"type": "array", "items": {"$ref": "#/$defs/Point"}},
            "scores": {"type": "array", "items": {"type": ["number", "null"]}},
        },
        "required": ["points", "scores"],
        "additionalProperties": False,
    }
    grammar = grammar_for(schema)
    assert check(grammar, '{"points": [{"x": 12}], "scores": [1.5, null]}') == "accept"
    assert check(grammar, '{"points": [{"x": 1' + "0" * MAX_INTEGER_DIGITS) == "reject"
    assert check(grammar, '{"points": [], "scores": [1' + "0" * MAX_INTEGER_DIGITS) == "reject"


def test_schema_limits_still_apply_and_may_exceed_the_defaults(check: Check) -> None:
    """maximum, minimum, multipleOf and maxLength the schema gives are the ones enforced."""
    schema = {
        "type": "object",
        "properties": {
            "big": {"type": "integer", "minimum": 0, "maximum": 10**17},
            "pct": {"type": "number", "minimum": 0, "maximum": 100},
            "tag": {"type": "string", "maxLength": 3},
        },
        "required": ["big", "pct", "tag"],
        "additionalProperties": False,
    }
    grammar = grammar_for(schema)
    assert check(grammar, '{"big": ' + "9" * 17 + ', "pct": 99.5, "tag": "abc"}') == "accept"
    assert check(grammar, '{"big": -1') == "reject"
    assert check(grammar, '{"big": 1, "pct": 101') == "reject"
    assert check(grammar, '{"big": 1, "pct": 1, "tag": "abcd') == "reject"


def test_strings_are_bounded_where_the_schema_gives_no_length(check: Check) -> None:
    """A string may run to MAX_STRING_LENGTH characters and no further."""
    grammar = grammar_for(COUNTRY)
    head = '{"name": "'
    assert check(grammar, head + "a" * MAX_STRING_LENGTH + '", "population_millions": 1}') == "accept"
    assert check(grammar, head + "a" * (MAX_STRING_LENGTH + 1)) == "reject"


def test_json_object_mode_is_bounded_at_every_depth(check: Check) -> None:
    """json_object: any object, but numbers and strings inside it are bounded too, however deep."""
    grammar = json_grammar(ResponseFormat(type="json_object"))
    assert grammar is not None
    value = {"a": [1, 2.5, {"b": None, "c": True, "d": "x"}], "e": {}, "f": []}
    assert check(grammar, json.dumps(value)) == "accept"
    assert check(grammar, "[1]") == "reject"  # an object, not any JSON
    assert check(grammar, '{"a": 1' + "0" * MAX_INTEGER_DIGITS) == "reject"
    assert check(grammar, '{"a": [{"b": 0.' + "1" * (MAX_FRACTION_DIGITS + 1)) == "reject"
    assert check(grammar, '{"a": "' + "z" * (MAX_STRING_LENGTH + 1)) == "reject"


def test_bounded_schema_keeps_the_schema_meaning() -> None:
    """Bounds go only where the schema is open; enums, consts and its own limits are untouched."""
    schema = {
        "type": "object",
        "properties": {
            "kind": {"type": "string", "enum": ["a", "b"]},
            "far": {"type": "number", "minimum": 10**18},
            "low": {"type": "integer", "maximum": -(10**18)},
            "step": {"type": "number", "multipleOf": 0.5},
            "long": {"type": "string", "minLength": MAX_STRING_LENGTH + 1},
            "free": {"description": "anything"},
        },
        "additionalProperties": False,
    }
    out = bounded_schema(schema)["properties"]
    assert out["kind"] == schema["properties"]["kind"]  # type: ignore[index]
    assert out["far"] == {"type": "number", "minimum": 10**18, "multipleOf": 10.0**-MAX_FRACTION_DIGITS}
    assert out["low"] == {"type": "integer", "maximum": -(10**18)}
    assert out["step"]["multipleOf"] == 0.5
    assert "maxLength" not in out["long"]
    assert out["free"] == {"description": "anything", "$ref": "#/$defs/ai_stack_json_value"}
    assert schema["properties"]["kind"] == {"type": "string", "enum": ["a", "b"]}  # type: ignore[index]
    assert "maxLength" not in json.dumps(schema)  # the request's own schema is not changed


def tool(name: str, parameters: dict[str, Any] | None = None) -> Tool:
    return Tool.model_validate({"type": "function", "function": {"name": name, "parameters": parameters}})


CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}


def hermes_call(city: str) -> str:
    arguments = json.dumps({"city": city})
    return f'<tool_call>\n{{"name": "get_weather", "arguments": {arguments}}}\n</tool_call>'


def test_required_parallel_calls_are_bounded(check: Check, token_id: Callable[[str], int | None]) -> None:
    """tool_choice required with parallel calls: up to max_calls calls, then the answer must end."""
    grammar = tool_grammar([tool("get_weather", CITY)], "hermes", True, token_id, max_calls=2)
    # Recorded: asked for Tokyo, the 0.5B model added London, then listed cities until max_tokens.
    assert check(grammar, hermes_call("Tokyo")) == "accept"
    assert check(grammar, hermes_call("Tokyo") + "\n" + hermes_call("London")) == "accept"
    assert check(grammar, "\n".join(hermes_call(c) for c in ("Tokyo", "London", "Paris"))) == "reject"
    single = tool_grammar([tool("get_weather", CITY)], "hermes", False, token_id, max_calls=2)
    assert check(single, hermes_call("Tokyo") + "\n" + hermes_call("London")) == "reject"


def test_mistral_call_array_is_bounded(check: Check, token_id: Callable[[str], int | None]) -> None:
    """Mistral's call array holds at most max_calls items."""
    grammar = tool_grammar([tool("f", {"type": "object", "properties": {}})], "mistral", True, token_id, 3)
    call = '{"name": "f", "arguments": {}}'
    assert check(grammar, "[TOOL_CALLS][" + ", ".join([call] * 3) + "]") == "accept"
    assert check(grammar, "[TOOL_CALLS][" + ", ".join([call] * 4) + "]") == "reject"


def test_forced_call_arguments_are_bounded(check: Check, token_id: Callable[[str], int | None]) -> None:
    """Numbers in forced tool arguments cannot run away either."""
    params = {"type": "object", "properties": {"n": {"type": "number"}}, "required": ["n"]}
    grammar = tool_grammar([tool("f", params)], "llama3_json", False, token_id)
    assert check(grammar, '{"name": "f", "parameters": {"n": 2.5}}') == "accept"
    assert check(grammar, '{"name": "f", "parameters": {"n": 1' + "0" * MAX_INTEGER_DIGITS) == "reject"


def test_tool_parameters_with_defs_and_recursion(check: Check, token_id: Callable[[str], int | None]) -> None:
    """Pydantic-style $defs and a recursive "#" in a tool's parameters work inside the call grammar."""
    location = {
        "$defs": {
            "Place": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
        },
        "type": "object",
        "properties": {"place": {"$ref": "#/$defs/Place"}},
        "required": ["place"],
        "additionalProperties": False,
    }
    tree = {
        "type": "object",
        "properties": {"label": {"type": "string"}, "children": {"type": "array", "items": {"$ref": "#"}}},
        "required": ["label", "children"],
        "additionalProperties": False,
    }
    grammar = tool_grammar([tool("locate", location), tool("tree", tree)], "hermes", True, token_id)
    ok = '<tool_call>\n{"name": "locate", "arguments": {"place": {"city": "Paris"}}}\n</tool_call>'
    assert check(grammar, ok) == "accept"
    nested = {"label": "a", "children": [{"label": "b", "children": []}]}
    ok_tree = f'<tool_call>\n{{"name": "tree", "arguments": {json.dumps(nested)}}}\n</tool_call>'
    assert check(grammar, ok_tree) == "accept"
    assert check(grammar, '<tool_call>\n{"name": "locate", "arguments": {"place": {"town"') == "reject"


def test_invalid_schema_is_still_a_400() -> None:
    """Bounding does not hide a schema error."""
    with pytest.raises(InvalidRequest) as info:
        json_grammar(schema_format({"type": "object", "properties": {"a": {"type": "nope"}}}))
    assert info.value.param == "response_format.json_schema.schema"
    with pytest.raises(InvalidRequest) as info:
        json_grammar(schema_format({"type": "integer", "maximum": 10**400}))
    assert info.value.param == "response_format.json_schema.schema"  # not a 500


def test_server_setting_bounds_forced_parallel_calls(
    app_client: Any, tiny_model: Callable[[str], Path], check: Check
) -> None:
    """max_parallel_tool_calls reaches the grammar a required tool_choice gets through the chat pipeline."""
    client = app_client(
        [{"id": "q", "source": str(tiny_model("qwen3")), "dtype": "float32"}], max_parallel_tool_calls=2
    )
    wait_ready(client, "q", timeout=60)
    request = ChatCompletionRequest.model_validate(
        {
            "model": "q",
            "messages": [{"role": "user", "content": "Weather in Tokyo?"}],
            "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": CITY}}],
            "tool_choice": "required",
        }
    )
    prepared = client.portal.call(client.app.state.chat.prepare, request)
    grammar = prepared.params.grammar
    assert check(grammar, hermes_call("Tokyo") + "\n" + hermes_call("London")) == "accept"
    assert check(grammar, "\n".join(hermes_call(c) for c in ("Tokyo", "London", "Paris"))) == "reject"
