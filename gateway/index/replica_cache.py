"""A bounded model of one replica's tiered prefix cache, learned from what the gateway sent it.

Each tier (HBM, DRAM, storage) maps block hash -> recency stamp. Sending a prompt stamps its blocks
into HBM, the first block most recent, as vLLM frees a finished request's blocks tail first: so a
block's parent is always more recent than the block itself, eviction takes tails before prefixes, and
what the model holds of any chain is a prefix, with its HBM part first, then DRAM, then storage. That
is what makes `match` a few binary searches instead of a walk over the prompt.

When a tier grows past its capacity, its least recent blocks move down a tier (HBM -> DRAM ->
storage) or are forgotten, in batches of 1/16 of the capacity so the cost per block stays constant.
Memory is bounded by the capacities whatever the workload.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import numpy as np

from gateway.index.base import CACHE_TIERS, PrefixMatch, TierCapacity
from gateway.profiles import Tier

EVICTION_BATCH_FRACTION = 1 / 16


class ReplicaCacheModel:
    def __init__(self, capacity: TierCapacity) -> None:
        self.capacity = capacity
        self._tiers: list[dict[int, int]] = [{} for _ in CACHE_TIERS]
        self._clock = 0
        self.evicted = [0 for _ in CACHE_TIERS]
        """Blocks that left each tier (moved down or forgotten), for metrics."""

    def __len__(self) -> int:
        return sum(len(tier) for tier in self._tiers)

    def counts(self) -> dict[Tier, int]:
        return {tier: len(blocks) for tier, blocks in zip(CACHE_TIERS, self._tiers, strict=True)}

    def tier_of(self, block: int) -> Tier | None:
        for tier, blocks in zip(CACHE_TIERS, self._tiers, strict=True):
            if block in blocks:
                return tier
        return None

    def touch(self, hashes: Sequence[int]) -> None:
        if not hashes:
            return
        hbm, *lower = self._tiers
        for blocks in lower:
            if blocks:
                for block in blocks.keys() & hashes:
                    del blocks[block]  # a hit in a lower tier is loaded back into HBM
        count = len(hashes)
        base = self._clock
        self._clock += count
        hbm.update(zip(hashes, range(base + count, base, -1), strict=True))
        self._enforce(0)

    def set_capacity(self, capacity: TierCapacity) -> None:
        self.capacity = capacity
        for level in range(len(CACHE_TIERS)):
            self._enforce(level)

    def clear(self) -> None:
        for blocks in self._tiers:
            blocks.clear()

    def match(self, hashes: Sequence[int]) -> PrefixMatch:
        hbm, dram, storage = self._tiers
        if not hashes or (hashes[0] not in hbm and hashes[0] not in dram and hashes[0] not in storage):
            return PrefixMatch()
        held = _leading_run(hashes, 0, len(hashes), lambda h: h in hbm or h in dram or h in storage)
        in_hbm = _leading_run(hashes, 0, held, hbm.__contains__)
        in_dram = _leading_run(hashes, in_hbm, held, dram.__contains__) - in_hbm
        return PrefixMatch(hbm=in_hbm, dram=in_dram, storage=held - in_hbm - in_dram)

    def _enforce(self, level: int) -> None:
        blocks = self._tiers[level]
        limit = self.capacity.of(CACHE_TIERS[level])
        if len(blocks) <= limit:
            return
        target = limit - int(limit * EVICTION_BATCH_FRACTION)
        excess = len(blocks) - max(target, 0)
        stamps = np.fromiter(blocks.values(), dtype=np.int64, count=len(blocks))
        cutoff = int(np.partition(stamps, excess - 1)[excess - 1])
        leaving = {block: stamp for block, stamp in blocks.items() if stamp <= cutoff}
        self._tiers[level] = {block: stamp for block, stamp in blocks.items() if stamp > cutoff}
        self.evicted[level] += len(leaving)
        below = level + 1
        if below < len(CACHE_TIERS) and self.capacity.of(CACHE_TIERS[below]) > 0:
            self._tiers[below].update(leaving)
            self._enforce(below)


def _leading_run(hashes: Sequence[int], start: int, end: int, held) -> int:
    """The end of the run of held blocks from `start`: held blocks of a chain always form a prefix."""
    return bisect.bisect_left(range(end), True, lo=start, key=lambda i: not held(hashes[i]))
