"""Voice blend specs such as 'jf_alpha(2)+jm_kumo(1)' (ai_stack/engines/voices.py)."""

from __future__ import annotations

import pytest

from ai_stack.engines.voices import parse_voice_blend


def test_parse_voice_blend() -> None:
    """Names with optional positive weights joined by '+'; a bare name weighs 1."""
    assert parse_voice_blend("jf_alpha") == [("jf_alpha", 1.0)]
    assert parse_voice_blend("jf_alpha(2)+jm_kumo(1)") == [("jf_alpha", 2.0), ("jm_kumo", 1.0)]
    assert parse_voice_blend(" jf_alpha ( 0.5 ) + jm_kumo ") == [("jf_alpha", 0.5), ("jm_kumo", 1.0)]


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("", "voice is empty"),
        ("jf_alpha+", "bad voice term ''"),
        ("jf_alpha(2", "bad voice term 'jf_alpha\\(2'"),
        ("jf_alpha(2))", "bad voice term"),
        ("jf alpha", "bad voice term 'jf alpha'"),
        ("jf_alpha(x)", "bad weight 'x' for voice 'jf_alpha'"),
        ("jf_alpha()", "bad weight '' for voice 'jf_alpha'"),
        ("jf_alpha(0)", "must be a positive number"),
        ("jf_alpha(-1)+jm_kumo", "must be a positive number"),
        ("jf_alpha(inf)", "must be a positive number"),
    ],
)
def test_parse_voice_blend_errors(spec: str, message: str) -> None:
    """Bad blends say what is wrong."""
    with pytest.raises(ValueError, match=message):
        parse_voice_blend(spec)
