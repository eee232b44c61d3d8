"""The chains of recently hashed chat prompts, so that a conversation's next turn hashes only what it added.

It is for the Python loop, and on by default only there (`blocks.default_memo_blocks`): where the C
extension (`gateway._chainhash`) hashes the chain it saved a 32k-token next turn 0.04-0.05 ms at the
median and cost an unseen prompt more (docs/benchmarks.md).

An agent's next prompt is its previous prompt plus a few messages. Hashing is sequential (each block's
hash seeds the next) and costs about 0.2 us per 64-byte block in Python, 0.4 ms for a 32k-token prompt
and 1.6 ms at the 8192-block cap, on every request. The memo keeps, per recently hashed prompt, its
chain up to the end of its last message, under a key that stands for those exact bytes: xxh3-64 of the
rendered messages, chained message by message from the prompt's seed (one call per message over its
bytes, tens of microseconds for a whole 128 KB prompt). A new prompt's message boundaries are looked up
from its last backwards; the longest one found gives the leading blocks, and only the blocks after it
are hashed. The result is exactly the chain that hashing the whole prompt gives.

Bounded by the blocks it holds, the least recently stored first out (a prompt sent again counts as
stored again). Chains are kept as lists of Python ints,
about 48 bytes per block: a compact `array('Q')` costs 8, but converting a 2,000-block chain to one
and back took 70 and 60 us, a third of what the memo saves.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import xxhash

_hash = xxhash.xxh3_64_intdigest

MemoKey = tuple[int, int]
"""(the chained hash of the prompt's bytes up to a message boundary, that boundary's offset)"""


def boundary_keys(data: bytes, boundaries: Sequence[int], seed: int) -> list[MemoKey]:
    """One key per message boundary of `data`, each standing for all the bytes before it."""
    view = memoryview(data)
    keys: list[MemoKey] = []
    parent = seed
    start = 0
    for end in boundaries:
        parent = _hash(view[start:end], parent)
        keys.append((parent, end))
        start = end
    return keys


class ChainMemo:
    def __init__(self, max_blocks: int) -> None:
        self.max_blocks = max_blocks
        self.blocks = 0
        self._chains: OrderedDict[MemoKey, list[int]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._chains)

    def longest(self, keys: Sequence[MemoKey]) -> list[int]:
        """The chain of the longest prefix, among the boundaries `keys`, that the memo holds; [] if none.

        A hit does not count as a use: the prompt that found it is stored next, and its chain holds this
        one, so the shorter ages out first."""
        chains = self._chains
        for key in reversed(keys):
            chain = chains.get(key)
            if chain is not None:
                return list(chain)
        return []

    def store(self, key: MemoKey, chain: list[int]) -> None:
        """Keep `chain` (the list itself: the caller must not change it) as the prompt's up to `key`."""
        if key in self._chains:
            self._chains.move_to_end(key)
            return
        if not chain or len(chain) > self.max_blocks:
            return
        self._chains[key] = chain
        self.blocks += len(chain)
        while self.blocks > self.max_blocks:
            _, evicted = self._chains.popitem(last=False)
            self.blocks -= len(evicted)
