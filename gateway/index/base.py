"""What every prefix index answers: for a chain of block hashes, how far each replica holds it."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

from gateway.profiles import Tier

CACHE_TIERS = (Tier.HBM, Tier.DRAM, Tier.STORAGE)
"""The tiers a replica holds itself; Tier.SHARED belongs to the cluster, not to one replica."""


@dataclass(frozen=True, slots=True)
class TierCapacity:
    """How many blocks (in the index's unit) each of a replica's tiers holds; 0 means no such tier."""

    hbm: int
    dram: int = 0
    storage: int = 0

    def of(self, tier: Tier) -> int:
        return (self.hbm, self.dram, self.storage)[tier]


@dataclass(frozen=True, slots=True)
class PrefixMatch:
    """A replica's run of leading blocks of a prompt, counted per tier where each block is found."""

    hbm: int = 0
    dram: int = 0
    storage: int = 0
    shared: int = 0

    @property
    def blocks(self) -> int:
        return self.hbm + self.dram + self.storage + self.shared

    def by_tier(self) -> dict[Tier, int]:
        return {
            Tier.HBM: self.hbm,
            Tier.DRAM: self.dram,
            Tier.STORAGE: self.storage,
            Tier.SHARED: self.shared,
        }


NO_MATCH = PrefixMatch()


class PrefixIndex(Protocol):
    async def match(
        self, model: str, hashes: Sequence[int], replicas: Iterable[str]
    ) -> dict[str, PrefixMatch]:
        """Each replica's leading run of `hashes` (replicas that hold none of it may be left out)."""
        ...

    def record(self, model: str, replica: str, hashes: Sequence[int]) -> None:
        """`replica` was sent a prompt with these blocks: it will hold them in HBM, most recently used.

        Never waits (a shared index queues its writes): the gateway calls it once the request is on
        its way to the replica, while the replica computes."""
        ...

    async def forget_replica(self, replica: str) -> None:
        """Drop everything known about a replica (it left, or cleared its cache)."""
        ...

    def set_capacity(self, replica: str, capacity: TierCapacity) -> None: ...

    def block_counts(self) -> dict[str, dict[Tier, int]]:
        """Blocks held per replica and tier, for metrics and debugging."""
        ...

    async def close(self) -> None: ...
