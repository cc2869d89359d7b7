"""Reading a JSON request body from any client: bounded nesting, no NaN, no huge numbers, clean text."""

from __future__ import annotations

import json
import re
from typing import Any

from ai_stack.errors import InvalidRequest

DEFAULT_MAX_DEPTH = 64  # nesting levels of a request body: deep enough for real JSON schemas
_SURROGATE = re.compile("[\ud800-\udfff]")


def _refuse_constant(name: str) -> Any:
    raise InvalidRequest(f"We could not parse the JSON body of your request: {name} is not a JSON number")


def load_json(raw: bytes, max_depth: int = DEFAULT_MAX_DEPTH) -> Any:
    """Parse a body; every problem is a 400, and lone UTF-16 surrogates in strings become U+FFFD.

    A surrogate escape without its pair (`"\\ud800"`) is valid JSON but not text: models, tokenizers and UTF-8
    encoders fail on it, so it is replaced, as a UTF-8 decoder does with a broken byte.
    """
    try:
        data = json.loads(raw, parse_constant=_refuse_constant)
    except (json.JSONDecodeError, UnicodeDecodeError):
        message = "We could not parse the JSON body of your request: it is not valid JSON"
        raise InvalidRequest(message) from None
    except RecursionError:
        raise InvalidRequest(f"The JSON body nests deeper than {max_depth} levels") from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        raise InvalidRequest(f"We could not parse the JSON body of your request: {exc}") from None
    return _clean(data, max_depth)


def _clean(data: Any, max_depth: int) -> Any:
    """Check the nesting depth and replace lone surrogates, without recursion."""
    root = [data]
    stack: list[tuple[list[Any] | dict[str, Any], int]] = [(root, 0)]
    while stack:
        container, depth = stack.pop()
        if depth > max_depth:
            raise InvalidRequest(f"The JSON body nests deeper than {max_depth} levels")
        if isinstance(container, dict):
            for key in list(container):
                value = container[key]
                if isinstance(key, str) and _SURROGATE.search(key):
                    del container[key]
                    key = _SURROGATE.sub("\ufffd", key)
                container[key] = _fix(value, stack, depth)
        else:
            for index, value in enumerate(container):
                container[index] = _fix(value, stack, depth)
    return root[0]


def _fix(value: Any, stack: list[tuple[list[Any] | dict[str, Any], int]], depth: int) -> Any:
    if isinstance(value, str):
        return _SURROGATE.sub("\ufffd", value) if _SURROGATE.search(value) else value
    if isinstance(value, list | dict):
        stack.append((value, depth + 1))
    return value
