"""A bounded cache of prompt prefixes' KV in fixed-size token blocks: a tree of blocks, LRU in a byte budget.

Engine-agnostic: a block's payload is whatever the engine stores for its tokens (per-layer key and value
tensors for transformers) together with its exact size in bytes. A block is found by its own tokens under its
parent block, so a block stands for every token from the start of the sequence to its end: two sequences share
a block only when they are identical up to its last token. Keys are the token tuples themselves (no hashes),
so a collision cannot hand one prompt another's KV.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

T = TypeVar("T")

_Key = tuple[int, tuple[int, ...]]  # (parent block id, 0 for the root; this block's tokens)


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    """The length of the longest common prefix of two token lists."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


@dataclass(eq=False)
class _Block(Generic[T]):
    """One cached block: its key, its parent, its payload and its size."""

    id: int
    key: _Key
    parent: _Block[T] | None
    payload: T
    nbytes: int
    children: dict[_Key, _Block[T]] = field(default_factory=dict)


class PrefixCache(Generic[T]):
    """Payloads of token blocks, found by the longest chain of full blocks that starts a sequence.

    Bounded by `max_bytes`: storing a block first evicts the least recently used blocks (with the blocks that
    continue them, which a lookup could no longer reach). A lookup or store marks its whole chain as used,
    the shorter prefixes last, so a parent is never evicted before its children. Not thread-safe: one thread
    (an engine's scheduler) uses it.
    """

    def __init__(self, block_size: int, max_bytes: int) -> None:
        if block_size < 1:
            raise ValueError("block_size must be at least 1")
        self.block_size = block_size
        self.max_bytes = max(0, max_bytes)
        self.bytes = 0  # the sum of the stored blocks' nbytes
        self.evicted = 0  # blocks evicted to make room, since creation
        self._blocks: OrderedDict[_Key, _Block[T]] = OrderedDict()  # least recently used first
        self._next_id = 1

    def __len__(self) -> int:
        return len(self._blocks)

    def _key(self, parent: _Block[T] | None, tokens: Sequence[int], index: int) -> _Key:
        start = index * self.block_size
        return (parent.id if parent is not None else 0, tuple(tokens[start : start + self.block_size]))

    def _chain(self, tokens: Sequence[int], blocks: int) -> list[_Block[T]]:
        """The cached blocks that start `tokens`, at most `blocks` of them, without touching them."""
        chain: list[_Block[T]] = []
        parent: _Block[T] | None = None
        for index in range(blocks):
            block = self._blocks.get(self._key(parent, tokens, index))
            if block is None:
                break
            chain.append(block)
            parent = block
        return chain

    def _touch(self, chain: list[_Block[T]]) -> None:
        for block in reversed(chain):  # the root-most block ends up most recent
            self._blocks.move_to_end(block.key)

    def match(self, tokens: Sequence[int], limit: int | None = None) -> list[T]:
        """The payloads of the longest cached chain of full blocks that starts `tokens`, covering at most
        `limit` tokens (default: all of them); marks them as recently used."""
        usable = len(tokens) if limit is None else max(0, min(limit, len(tokens)))
        chain = self._chain(tokens, usable // self.block_size)
        self._touch(chain)
        return [block.payload for block in chain]

    def store(self, tokens: Sequence[int], make: Callable[[int, int], tuple[T, int]]) -> int:
        """Cache every full block of `tokens` not cached yet; `make(start, end)` gives the payload of
        tokens[start:end] and its size in bytes. Stops at the first block that cannot fit in the budget
        (beside the chain itself). Returns the number of blocks added."""
        full = len(tokens) // self.block_size
        chain = self._chain(tokens, full)
        added = 0
        protected = {block.key for block in chain}
        while len(chain) < full:
            index = len(chain)
            parent = chain[-1] if chain else None
            key = self._key(parent, tokens, index)
            start = index * self.block_size
            payload, nbytes = make(start, start + self.block_size)
            if not self._make_room(nbytes, protected):
                break
            block = _Block(self._next_id, key, parent, payload, nbytes)
            self._next_id += 1
            if parent is not None:
                parent.children[key] = block
            self._blocks[key] = block
            self.bytes += nbytes
            protected.add(key)
            chain.append(block)
            added += 1
        self._touch(chain)
        return added

    def _make_room(self, nbytes: int, protected: set[_Key]) -> bool:
        """Evict least recently used blocks outside `protected` until nbytes more fit; False if they can't."""
        if nbytes > self.max_bytes:
            return False
        while self.bytes + nbytes > self.max_bytes:
            victim = next((block for key, block in self._blocks.items() if key not in protected), None)
            if victim is None:
                return False
            self.evicted += self._remove(victim)
        return True

    def _remove(self, block: _Block[T]) -> int:
        """Drop a block and every block that continues it; returns how many blocks went."""
        stack, removed = [block], 0
        while stack:
            current = stack.pop()
            stack.extend(current.children.values())
            del self._blocks[current.key]
            self.bytes -= current.nbytes
            removed += 1
        if block.parent is not None:
            del block.parent.children[block.key]
        return removed

    def clear(self) -> None:
        """Drop every block."""
        self._blocks.clear()
        self.bytes = 0
