"""The sentence splitter that paces speech: punctuation kept, CJK marks, short pieces joined."""

from __future__ import annotations

from ai_stack.sentences import split_sentences


def test_split_sentences_keeps_punctuation() -> None:
    """Sentences end at . ! ? ; and line breaks, punctuation and closing quotes kept; decimals stay whole."""
    text = (
        'Hello there, my friend. How are you today? I am fine! He said "stop." '
        "It cost 3.14; what a bargain\nA new line"
    )
    assert split_sentences(text) == [
        "Hello there, my friend.",
        "How are you today?",
        "I am fine!",
        'He said "stop."',
        "It cost 3.14;",
        "what a bargain",
        "A new line",
    ]


def test_split_sentences_cjk() -> None:
    """CJK full stops split without a following space."""
    # Full-width ! and ? written as escapes (ruff flags them as look-alikes of the ASCII marks).
    exclaim, question = "\uff01", "\uff1f"
    text = f"今日はいい天気ですね{exclaim}散歩に行きましょうか{question}はい、行きましょう。"
    assert split_sentences(text) == [
        f"今日はいい天気ですね{exclaim}",
        f"散歩に行きましょうか{question}",
        "はい、行きましょう。",
    ]


def test_split_sentences_merges_short_pieces_and_drops_empty() -> None:
    """Very short pieces (abbreviations, 'Hi.') join a neighbour; blank input gives no pieces."""
    assert split_sentences("Hi. My name is Joe. Mr. Smith is here. OK.") == [
        "Hi. My name is Joe.",
        "Mr. Smith is here. OK.",
    ]
    assert split_sentences("") == []
    assert split_sentences("  \n\n ") == []
    assert all(split_sentences("a.\n\n.b! ? ; c"))


def test_split_sentences_cuts_long_runs() -> None:
    """A long sentence without full stops is cut at commas so the first audio is not held back."""
    pieces = split_sentences("one two three, " * 60)
    assert len(pieces) > 1
    assert all(len(p) <= 300 for p in pieces)
    assert " ".join(pieces).split() == ("one two three, " * 60).split()
