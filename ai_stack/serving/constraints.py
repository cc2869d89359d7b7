"""Grammars for constrained decoding (llguidance): JSON output and forced tool calls per template family.

Every JSON schema is bounded before it is compiled, so that constrained output always closes: a small model
left free inside a number or a string can write digits or letters until ``max_tokens``. A number the schema
does not bound gets at most ``MAX_INTEGER_DIGITS`` integer and ``MAX_FRACTION_DIGITS`` fraction digits (and
no exponent); a string without ``maxLength`` at most ``MAX_STRING_LENGTH`` characters; a value the schema
leaves open (``{}``, an object's extra properties, an array's items) is any JSON value within those bounds.
The schema's own ``minimum``/``maximum``/``multipleOf``/``maxLength`` apply where it gives them. A forced
tool call grammar allows at most ``max_calls`` parallel calls.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from ai_stack.errors import InvalidRequest
from ai_stack.protocol import ResponseFormat, Tool

# JSON the way models write it (json.dumps style) and no free whitespace: with flexible whitespace a small
# model can pad forever inside a forced object.
JSON_STYLE: dict[str, Any] = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}

MAX_INTEGER_DIGITS = 15  # every integer this long is exact in a double
MAX_FRACTION_DIGITS = 6
MAX_STRING_LENGTH = 4096

_BOUND = 10**MAX_INTEGER_DIGITS - 1
_STEP = 10.0**-MAX_FRACTION_DIGITS
_ANY = "ai_stack_json_value"  # the name of the bounded any-value schema in the root's $defs
_ANY_REF = f"#/$defs/{_ANY}"
# Keywords that only describe: a schema with nothing else accepts any value.
_ANNOTATIONS = frozenset(
    {"title", "description", "default", "examples", "$comment", "deprecated", "readOnly", "writeOnly"}
)
# Keywords whose subschemas constrain the value itself (not negated, not conditional).
_ONE = ("additionalProperties", "items", "additionalItems", "unevaluatedProperties", "unevaluatedItems")
_MANY = ("anyOf", "oneOf", "allOf", "prefixItems")
_NAMED = ("properties", "patternProperties", "dependentSchemas", "$defs", "definitions")


def _any_value() -> dict[str, Any]:
    """Any JSON value with bounded numbers and strings, nesting through the root's $defs."""
    ref = {"$ref": _ANY_REF}
    return {
        "anyOf": [
            {"type": "null"},
            {"type": "boolean"},
            {"type": "number", "minimum": -_BOUND, "maximum": _BOUND, "multipleOf": _STEP},
            {"type": "string", "maxLength": MAX_STRING_LENGTH},
            {"type": "array", "items": ref},
            {"type": "object", "additionalProperties": ref},
        ]
    }


def _types(node: dict[str, Any]) -> set[str]:
    kind = node.get("type")
    if isinstance(kind, str):
        return {kind}
    return {k for k in kind if isinstance(k, str)} if isinstance(kind, list) else set()


def _is_open(node: object) -> bool:
    """Whether a subschema accepts any value at all (``true``, ``{}`` or annotations only)."""
    return node is True or (isinstance(node, dict) and set(node) <= _ANNOTATIONS)


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _bound_number(node: dict[str, Any], fraction: bool) -> None:
    """Bound a number's digits on each side the schema leaves open."""
    lows = [node[k] for k in ("minimum", "exclusiveMinimum") if _is_number(node.get(k))]
    highs = [node[k] for k in ("maximum", "exclusiveMaximum") if _is_number(node.get(k))]
    if not highs and all(low <= _BOUND for low in lows):
        node["maximum"] = _BOUND
    if not lows and all(high >= -_BOUND for high in highs):
        node["minimum"] = -_BOUND
    if fraction and "multipleOf" not in node:
        node["multipleOf"] = _STEP


def _pointer_part(name: str) -> str:
    return name.replace("~", "~0").replace("/", "~1")


class _Bounder:
    """Rewrites schema documents with bounded values into one root whose $defs hold every definition."""

    def __init__(self) -> None:
        self.defs: dict[str, Any] = {}
        self.uses_any = False
        self.used: set[str] = set()  # the rewritten $ref targets met

    def walk(self, node: Any, refs: dict[str, str]) -> Any:
        """A bounded copy of `node`; `refs` maps the document's own pointers to where they now are."""
        if _is_open(node):
            self.uses_any = True
            return {**(node if isinstance(node, dict) else {}), "$ref": _ANY_REF}
        if not isinstance(node, dict):
            return node
        out = dict(node)
        if isinstance(out.get("$ref"), str):
            out["$ref"] = self._ref(out["$ref"], refs)
        for key in _ONE:
            if isinstance(out.get(key), (dict, bool)) and out[key] is not False:
                out[key] = self.walk(out[key], refs)
        for key in (*_MANY, "items"):
            if isinstance(out.get(key), list):
                out[key] = [self.walk(item, refs) for item in out[key]]
        for key in _NAMED:
            if isinstance(out.get(key), dict):
                out[key] = {name: self.walk(sub, refs) for name, sub in out[key].items()}
        if "enum" in out or "const" in out:
            return out
        types = _types(out)
        if types & {"number", "integer"}:
            _bound_number(out, "number" in types)
        minimum = out.get("minLength", 0)
        if (
            "string" in types
            and "maxLength" not in out
            and _is_number(minimum)
            and minimum <= MAX_STRING_LENGTH
        ):
            out["maxLength"] = MAX_STRING_LENGTH
        for kind, key in (("object", "additionalProperties"), ("array", "items")):
            if kind in types and key not in out:
                self.uses_any = True
                out[key] = {"$ref": _ANY_REF}
        return out

    def _ref(self, ref: str, refs: dict[str, str]) -> str:
        for old, new in refs.items():
            if ref == old or (old != "#" and ref.startswith(old + "/")):
                self.used.add(new)
                return new + ref[len(old) :]
        return ref

    def document(self, schema: dict[str, Any], prefix: str) -> dict[str, Any]:
        """Bound one document; with a `prefix` it will sit inside another, so its $defs move to the root.

        Its definitions are renamed `prefix` + name, and ``#`` (a recursive schema) points at a copy of it.
        """
        if not prefix:
            whole: dict[str, Any] = self.walk(schema, {})
            return whole
        refs: dict[str, str] = {"#": f"#/$defs/{prefix}root"}
        local: dict[str, Any] = {}
        for key in ("$defs", "definitions"):
            if isinstance(schema.get(key), dict):
                for name, sub in schema[key].items():
                    refs[f"#/{key}/{_pointer_part(name)}"] = f"#/$defs/{_pointer_part(prefix + name)}"
                    local[prefix + name] = sub
        # $schema only means something at the root of a document.
        own = {k: v for k, v in schema.items() if k not in ("$defs", "definitions", "$schema")}
        body: dict[str, Any] = self.walk(own, refs)
        for name, sub in local.items():
            self.defs[name] = self.walk(sub, refs)
        if refs["#"] in self.used:
            self.defs[f"{prefix}root"] = body
        return body

    def root(self, body: dict[str, Any]) -> dict[str, Any]:
        """The finished root: `body` with the collected definitions (and the bounded any-value)."""
        own = body.get("$defs")
        defs = {**(own if isinstance(own, dict) else {}), **self.defs}
        if self.uses_any:
            defs[_ANY] = _any_value()
        return {**body, "$defs": defs} if defs else body


def bounded_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` with the digits of its numbers and the length of its strings bounded (see the module doc)."""
    bounder = _Bounder()
    return bounder.root(bounder.document(schema, ""))


def _lark_json(schema: dict[str, Any]) -> str:
    return "%json" + json.dumps({**schema, "x-guidance": JSON_STYLE}, ensure_ascii=False)


def _schema_grammar(schema: dict[str, Any], param: str) -> str:
    import llguidance

    # As text: llguidance refuses a dict holding an integer beyond 64 bits; it is a 400 either way.
    text = json.dumps(bounded_schema(schema), ensure_ascii=False)
    try:
        return str(llguidance.LLMatcher.grammar_from_json_schema(text, defaults=JSON_STYLE))  # type: ignore[arg-type]
    except ValueError as exc:
        message = f"Invalid schema for constrained output: {exc}"
        raise InvalidRequest(message, param=param, code="invalid_schema") from None


def check_schema(schema: dict[str, Any], param: str) -> None:
    """Refuse a JSON schema that is not valid JSON Schema, or that llguidance cannot enforce."""
    import jsonschema

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        message = f"Invalid JSON schema: {exc.message}"
        raise InvalidRequest(message, param=param, code="invalid_schema") from None
    check_grammar(_schema_grammar(schema, param), param)


def check_grammar(grammar: str, param: str) -> None:
    """A 400 naming `param` when llguidance refuses the grammar."""
    import llguidance

    error = llguidance.LLMatcher.validate_grammar(grammar)
    if error and not error.startswith("WARNING"):
        message = f"Invalid schema for constrained output: {error}"
        raise InvalidRequest(message, param=param, code="invalid_schema")


def json_grammar(response_format: ResponseFormat) -> str | None:
    """The grammar for response_format: None for text, any JSON object, or the given schema (bounded)."""
    if response_format.type == "text":
        return None
    if response_format.type == "json_object":
        return _schema_grammar({"type": "object"}, "response_format")
    assert response_format.json_schema is not None and response_format.json_schema.schema_ is not None
    schema = response_format.json_schema.schema_
    check_schema(schema, "response_format.json_schema.schema")
    return _schema_grammar(schema, "response_format.json_schema.schema")


def _call_schema(
    tools: list[Tool], arguments_key: str, wrap: Callable[[dict[str, Any]], dict[str, Any]]
) -> str:
    """The %json term for `wrap` of one call of any of `tools`; each tool's $defs move to the root."""
    bounder = _Bounder()
    options = []
    for index, tool in enumerate(tools):
        parameters = tool.function.parameters or {"type": "object", "properties": {}}
        check_schema(parameters, "tools")
        options.append(
            {
                "type": "object",
                "properties": {
                    "name": {"const": tool.function.name},
                    arguments_key: bounder.document(parameters, f"tool{index}_"),
                },
                "required": ["name", arguments_key],
                "additionalProperties": False,
            }
        )
    return _lark_json(bounder.root(wrap(options[0] if len(options) == 1 else {"anyOf": options})))


def _marker(token_id: Callable[[str], int | None], text: str) -> str:
    """A Lark term for `text`: its token when the tokenizer has it as one token, else the literal."""
    ident = token_id(text)
    return f"<[{ident}]>" if ident is not None else json.dumps(text)


def tool_grammar(
    tools: list[Tool],
    tool_format: str | None,
    parallel: bool,
    token_id: Callable[[str], int | None],
    max_calls: int = 4,
) -> str:
    """A grammar that makes the model call one of `tools` (up to `max_calls` calls if parallel) in its format.

    Small models asked for several calls invent more (or list cities until max_tokens); rather than guess
    which calls are invented, the grammar bounds how many there can be.
    """
    import llguidance

    extra = max(max_calls, 1) - 1 if parallel else 0
    if tool_format == "hermes":
        # Markers that are single tokens are written as tokens: llguidance does not match them as text.
        opening, closing = (_marker(token_id, text) for text in ("<tool_call>", "</tool_call>"))
        call = f'{opening} "\\n" {_call_schema(tools, "arguments", lambda s: s)} "\\n" {closing}'
        start = f'call ("\\n" call){{0,{extra}}}' if extra else "call"
        lark = f"start: {start}\ncall: {call}\n"
    elif tool_format == "llama3_json":
        lark = f"start: {_call_schema(tools, 'parameters', lambda s: s)}\n"
    elif tool_format == "mistral":
        array = _call_schema(
            tools, "arguments", lambda s: {"type": "array", "items": s, "minItems": 1, "maxItems": 1 + extra}
        )
        lark = f"start: {_marker(token_id, '[TOOL_CALLS]')} {array}\n"
    else:
        raise InvalidRequest(
            "This model's chat template has no tool-call format ai-stack knows (Hermes/Qwen, Llama 3.1 JSON, "
            "Mistral), so tool_choice 'required' or a named function cannot be enforced",
            param="tool_choice",
        )
    grammar = str(llguidance.LLMatcher.grammar_from_lark(lark))
    check_grammar(grammar, "tools")
    return grammar
