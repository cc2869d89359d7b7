"""Request bodies from any client (ai_stack/json_body.py): depth, NaN, huge numbers, lone surrogates."""

from __future__ import annotations

import json

import pytest

from ai_stack.errors import InvalidRequest
from ai_stack.json_body import load_json


@pytest.mark.parametrize(
    ("raw", "needle"),
    [
        (b"[" * 1500 + b"]" * 1500, "nests deeper than 64 levels"),
        (b'{"a": ' * 70 + b"1" + b"}" * 70, "nests deeper than 64 levels"),
        (b'{"seed": ' + b"9" * 5000 + b"}", "could not parse"),
        (b'{"temperature": NaN}', "NaN is not a JSON number"),
        (b'{"temperature": -Infinity}', "-Infinity is not a JSON number"),
        (b"\xff\xfe", "not valid JSON"),
        (b"{not json", "not valid JSON"),
    ],
)
def test_bad_bodies_are_400(raw: bytes, needle: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        load_json(raw)
    assert needle in caught.value.message and caught.value.status == 400


def test_depth_limit_is_configurable_and_exact() -> None:
    assert load_json(b"[" * 64 + b"]" * 64)  # 64 levels: allowed
    with pytest.raises(InvalidRequest):
        load_json(b"[" * 65 + b"]" * 65)
    assert load_json(b"[" * 100 + b"]" * 100, max_depth=128)


def test_lone_surrogates_become_replacement_characters() -> None:
    raw = json.dumps({"a\ud800": ["x\udfffy", {"k": "\ud83d\ude00 ok \ud83d"}]}).encode()
    assert load_json(raw) == {"a\ufffd": ["x\ufffdy", {"k": "\U0001f600 ok \ufffd"}]}
