"""The engine-agnostic prefix cache (ai_stack/engines/prefix_cache.py): block chains, LRU, byte budget."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ai_stack.engines.prefix_cache import PrefixCache

Payload = tuple[int, ...]


def prefix_payload(
    tokens: list[int], size: int = 10
) -> tuple[list[tuple[int, int]], Callable[[int, int], tuple[Payload, int]]]:
    """A `make` whose payload is every token up to the block's end (what its KV depends on); calls logged."""
    calls: list[tuple[int, int]] = []

    def make(start: int, end: int) -> tuple[Payload, int]:
        calls.append((start, end))
        return tuple(tokens[:end]), size

    return calls, make


def test_the_longest_chain_of_full_blocks_is_found() -> None:
    cache: PrefixCache[Payload] = PrefixCache(block_size=4, max_bytes=1000)
    tokens = list(range(10))  # two full blocks and a partial one
    calls, make = prefix_payload(tokens)
    assert cache.store(tokens, make) == 2
    assert calls == [(0, 4), (4, 8)] and len(cache) == 2 and cache.bytes == 20
    assert cache.match(tokens) == [tuple(range(4)), tuple(range(8))]
    assert cache.match([*range(8), 99]) == [tuple(range(4)), tuple(range(8))]
    assert cache.match([0, 1, 2, 3, 4, 5, 6, 99, 8]) == [tuple(range(4))]  # second block differs
    assert cache.match([0, 1, 2]) == []  # less than a block
    assert cache.match(tokens, limit=7) == [tuple(range(4))]  # no block may end past the limit
    assert cache.match(tokens, limit=0) == []


def test_a_block_matches_only_under_the_same_prefix() -> None:
    cache: PrefixCache[Payload] = PrefixCache(block_size=2, max_bytes=1000)
    first = [1, 2, 3, 4]
    cache.store(first, prefix_payload(first)[1])
    # The same second block after another first block is another prefix: not found.
    assert cache.match([9, 9, 3, 4]) == []
    other = [9, 9, 3, 4]
    cache.store(other, prefix_payload(other)[1])
    assert cache.match(other) == [(9, 9), (9, 9, 3, 4)]
    assert cache.match(first) == [(1, 2), (1, 2, 3, 4)]


def test_store_makes_only_the_missing_blocks() -> None:
    cache: PrefixCache[Payload] = PrefixCache(block_size=3, max_bytes=1000)
    prompt = [5, 6, 7, 8, 9, 10, 11]
    cache.store(prompt, prefix_payload(prompt)[1])
    longer = [*prompt, 12, 13, 14, 15, 16]  # prompt and answer: two more blocks are complete now
    calls, make = prefix_payload(longer)
    assert cache.store(longer, make) == 2
    assert calls == [(6, 9), (9, 12)]
    assert [len(p) for p in cache.match(longer)] == [3, 6, 9, 12]


def test_least_recently_used_blocks_go_first_within_the_budget() -> None:
    cache: PrefixCache[Payload] = PrefixCache(block_size=2, max_bytes=40)  # four blocks of 10 bytes
    a, b, c = [1, 1, 1, 1], [2, 2, 2, 2], [3, 3, 3, 3]
    cache.store(a, prefix_payload(a)[1])
    cache.store(b, prefix_payload(b)[1])
    assert cache.match(a) == [(1, 1), (1, 1, 1, 1)]  # a is now the most recent
    cache.store(c, prefix_payload(c)[1])
    assert cache.bytes == 40 and len(cache) == 4 and cache.evicted == 2
    assert cache.match(b) == []
    assert len(cache.match(a)) == 2 and len(cache.match(c)) == 2


def test_a_parent_is_kept_while_its_children_are_evicted_first() -> None:
    cache: PrefixCache[Payload] = PrefixCache(block_size=2, max_bytes=30)
    shared = [7, 7]
    one, two = [*shared, 1, 1], [*shared, 2, 2]
    cache.store(one, prefix_payload(one)[1])
    cache.store(two, prefix_payload(two)[1])
    three = [*shared, 3, 3]
    cache.store(three, prefix_payload(three)[1])
    # `one`'s own block was the least recently used; the shared first block was touched by every store.
    assert len(cache.match(one)) == 1 and len(cache.match(two)) == 2 and len(cache.match(three)) == 2
    assert cache.bytes == 30


def test_blocks_that_cannot_fit_are_not_stored() -> None:
    cache: PrefixCache[Payload] = PrefixCache(block_size=2, max_bytes=25)
    tokens = [1, 2, 3, 4, 5, 6]
    assert cache.store(tokens, prefix_payload(tokens)[1]) == 2
    # The third block would need the chain's own first blocks evicted: the store stops instead.
    assert cache.bytes == 20 and len(cache.match(tokens)) == 2
    big: PrefixCache[Payload] = PrefixCache(block_size=2, max_bytes=5)
    assert big.store(tokens, prefix_payload(tokens)[1]) == 0 and big.bytes == 0


def test_clear_and_bad_block_size() -> None:
    cache: PrefixCache[Payload] = PrefixCache(block_size=2, max_bytes=100)
    cache.store([1, 2, 3, 4], prefix_payload([1, 2, 3, 4])[1])
    cache.clear()
    assert len(cache) == 0 and cache.bytes == 0 and cache.match([1, 2, 3, 4]) == []
    with pytest.raises(ValueError, match="block_size"):
        PrefixCache(block_size=0, max_bytes=100)


sequences = st.lists(st.integers(0, 2), min_size=0, max_size=14)


@settings(max_examples=150, deadline=None)
@given(
    block=st.integers(1, 4),
    budget=st.integers(0, 120),
    ops=st.lists(st.tuples(st.booleans(), sequences, st.integers(1, 15)), max_size=40),
)
def test_random_use_never_returns_another_prefix_nor_exceeds_the_budget(
    block: int, budget: int, ops: list[tuple[bool, list[int], int]]
) -> None:
    """Whatever is stored and evicted, a match is exactly the query's own prefixes, within the budget."""
    cache: PrefixCache[Payload] = PrefixCache(block_size=block, max_bytes=budget)
    for is_store, tokens, size in ops:
        if is_store:
            cache.store(tokens, prefix_payload(tokens, size)[1])
        else:
            found = cache.match(tokens)
            assert found == [tuple(tokens[: (i + 1) * block]) for i in range(len(found))]
        assert cache.bytes <= budget
        blocks = list(cache._blocks.values())
        assert cache.bytes == sum(b.nbytes for b in blocks)
        stored = {id(b) for b in blocks}
        # Every block is reachable: its parent is stored and lists it.
        for b in blocks:
            assert b.parent is None or (id(b.parent) in stored and b.parent.children[b.key] is b)
