"""Deterministic splitting of a swarm over processes (`--shard i/N`, e.g. a Kubernetes Indexed Job).

Shard `i` of `N` owns every item whose index is `i` modulo `N`: users (global user ids), replayed
conversations, trace records and working-set sessions alike. The shards of one run therefore partition
the work exactly, and `kvgate report merge` puts their raw records back together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Shard:
    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if self.count < 1 or not 0 <= self.index < self.count:
            raise ValueError(f"shard {self.index}/{self.count}: need 0 <= i < N and N >= 1")

    @classmethod
    def parse(cls, text: str) -> Shard:
        """`"i/N"`, with `i` counted from 0 (a Kubernetes Indexed Job's JOB_COMPLETION_INDEX)."""
        try:
            index, count = (int(part) for part in text.split("/"))
        except ValueError:
            raise ValueError(f"a shard is written i/N, e.g. 0/4, not {text!r}") from None
        return cls(index, count)

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def owns(self, item_index: int) -> bool:
        return item_index % self.count == self.index

    def select(self, items: Sequence[T]) -> list[T]:
        return list(items[self.index :: self.count])

    def global_user(self, local_index: int) -> int:
        """The run-wide id of this shard's `local_index`-th user."""
        return self.index + local_index * self.count

    def local_share(self, total: int) -> int:
        """How many of `total` run-wide users (ids 0..total-1) this shard runs."""
        return len(range(self.index, total, self.count))
