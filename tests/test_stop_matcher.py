"""StopMatcher and generate_text (serving/generation.py): whole-window cuts, linear time, batched tokens."""

from __future__ import annotations

import asyncio
import threading
import time

from hypothesis import given, settings
from hypothesis import strategies as st

from ai_stack.engines.base import SamplingParams
from ai_stack.engines.catalog import FakeOptions
from ai_stack.engines.fake import FakeChatEngine
from ai_stack.serving.generation import Chunk, RunResult, StopMatcher, generate_text


class WindowSearch:
    """The reference: search the whole held-back window for every stop and every prefix on each piece."""

    def __init__(self, stops: list[str]) -> None:
        self.stops, self.buffer = stops, ""

    def feed(self, text: str) -> tuple[str, bool]:
        self.buffer += text
        hits = [i for i in (self.buffer.find(stop) for stop in self.stops) if i >= 0]
        if hits:
            out, self.buffer = self.buffer[: min(hits)], ""
            return out, True
        hold = max(
            (n for stop in self.stops for n in range(1, len(stop)) if self.buffer.endswith(stop[:n])),
            default=0,
        )
        out, self.buffer = self.buffer[: len(self.buffer) - hold], self.buffer[len(self.buffer) - hold :]
        return out, False


ALPHABET = "ab</>\n"
stops_strategy = st.lists(st.text(ALPHABET, min_size=1, max_size=6), min_size=1, max_size=4)
pieces_strategy = st.lists(st.text(ALPHABET, max_size=8), max_size=30)


@settings(max_examples=400, deadline=None)
@given(stops=stops_strategy, pieces=pieces_strategy)
def test_stop_matcher_cuts_like_a_whole_window_search(stops: list[str], pieces: list[str]) -> None:
    matcher, reference = StopMatcher(stops), WindowSearch(stops)
    for piece in pieces:
        got, want = matcher.feed(piece), reference.feed(piece)
        assert got == want
        assert len(matcher.buffer) < max(map(len, stops))  # held back: shorter than the longest stop
        if got[1]:
            assert matcher.matched in stops
            return
    assert matcher.flush() == reference.buffer
    assert matcher.matched is None


@settings(max_examples=200, deadline=None)
@given(stops=stops_strategy, pieces=pieces_strategy)
def test_the_emitted_text_does_not_depend_on_how_it_was_split(stops: list[str], pieces: list[str]) -> None:
    whole = "".join(pieces)
    one = StopMatcher(stops)
    text, stopped = one.feed(whole)
    text += "" if stopped else one.flush()
    split, emitted, reached = StopMatcher(stops), "", False
    for piece in pieces:
        out, reached = split.feed(piece)
        emitted += out
        if reached:
            break
    emitted += "" if reached else split.flush()
    # A split can only reach a stop sooner (a shorter stop ending inside a longer one that starts earlier).
    assert text.startswith(emitted) if reached else (emitted, reached) == (text, stopped)


def test_the_stop_that_ended_the_text_is_known() -> None:
    matcher = StopMatcher(["abcd", "bc", "\n\n"])
    assert matcher.feed("x ab") == ("x ", False)
    assert matcher.feed("cd") == ("", True)
    assert matcher.matched == "abcd"  # starts first, though "bc" ended first
    other = StopMatcher(["abcd", "bc"])
    assert other.feed("xab") == ("x", False) and other.feed("c") == ("a", True) and other.matched == "bc"


def _feed_all(stops: list[str], pieces: list[str]) -> float:
    matcher = StopMatcher(stops)
    started = time.perf_counter()
    for piece in pieces:
        assert not matcher.feed(piece)[1]
    return time.perf_counter() - started


def test_three_megabytes_in_small_pieces_cost_about_what_they_cost_without_stops() -> None:
    # Long stops whose beginnings the text keeps repeating: a matcher that re-checks every prefix of every
    # stop on each piece (as this one did) took >100x the no-stop time here; a linear one takes a few times.
    stops = ["a" * 511 + "!", "ab" * 200 + "?", "<|im_end|>", "\n\nUser:", *(f"STOP{i}" for i in range(12))]
    pieces = ["a", "ab", "ba", "aa", "b ", "<|", "\n"] * (3_000_000 // 11)
    baseline = min(_feed_all([], pieces) for _ in range(2))
    with_stops = _feed_all(stops, pieces)
    assert with_stops < 30 * baseline, (with_stops, baseline)


def _generate(reply: str, stops: list[str], max_tokens: int = 10**6) -> tuple[list[Chunk], RunResult]:
    """Every chunk generate_text yields for the fake engine's scripted reply, and how it ended."""
    engine = FakeChatEngine(FakeOptions(reply=reply, context_length=10**7))

    async def collect() -> tuple[list[Chunk], RunResult]:
        result = RunResult()
        prompt = engine.encode("hi")
        params = SamplingParams(max_tokens=max_tokens)
        chunks = [c async for c in generate_text(engine, prompt, params, stops, threading.Event(), result)]
        return chunks, result

    return asyncio.run(collect())


def test_a_flood_of_tokens_reaches_the_event_loop_in_a_few_batches() -> None:
    """200k tokens arrive as far fewer chunks (the loop wakes per batch), whole and in order."""
    reply = "".join(f"w{i} " for i in range(200_000))
    chunks, result = _generate(reply, ["never there"])
    assert "".join(c.text for c in chunks) == reply
    assert sum(c.tokens for c in chunks) == result.completion_tokens >= 200_000
    assert len(chunks) < 20_000, len(chunks)
    assert (result.finish_reason, result.stop_sequence) == ("stop", None)


def test_generation_stops_at_a_stop_sequence_in_the_worker_thread() -> None:
    reply = "one two three END four five " + "six " * 10_000
    chunks, result = _generate(reply, ["END", "never"])
    assert "".join(c.text for c in chunks) == "one two three "
    assert (result.finish_reason, result.stop_sequence) == ("stop", "END")
    assert result.completion_tokens < 1000  # the engine was told to stop, not run to the end
    chunks, result = _generate("a b c d", [], max_tokens=2)
    assert "".join(c.text for c in chunks) == "a b" and result.finish_reason == "length"
