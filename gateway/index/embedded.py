"""The default index: one bounded cache model per replica, in the gateway's own process.

Hashes are seeded by the model, so one model per replica serves all the models a replica serves, as
one engine's cache does.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from gateway.index.base import PrefixMatch, TierCapacity
from gateway.index.replica_cache import ReplicaCacheModel
from gateway.profiles import Tier


class EmbeddedIndex:
    def __init__(self, default_capacity: TierCapacity) -> None:
        self.default_capacity = default_capacity
        self._replicas: dict[str, ReplicaCacheModel] = {}

    def _model(self, replica: str) -> ReplicaCacheModel:
        model = self._replicas.get(replica)
        if model is None:
            model = self._replicas[replica] = ReplicaCacheModel(self.default_capacity)
        return model

    async def match(
        self, model: str, hashes: Sequence[int], replicas: Iterable[str]
    ) -> dict[str, PrefixMatch]:
        found: dict[str, PrefixMatch] = {}
        for replica in replicas:
            model = self._replicas.get(replica)
            if model is not None:
                match = model.match(hashes)
                if match.blocks:
                    found[replica] = match
        return found

    def record(self, model: str, replica: str, hashes: Sequence[int]) -> None:
        self._model(replica).touch(hashes)

    async def forget_replica(self, replica: str) -> None:
        self._replicas.pop(replica, None)

    def set_capacity(self, replica: str, capacity: TierCapacity) -> None:
        self._model(replica).set_capacity(capacity)

    def block_counts(self) -> dict[str, dict[Tier, int]]:
        return {replica: model.counts() for replica, model in self._replicas.items()}

    def evictions(self) -> dict[str, list[int]]:
        return {replica: list(model.evicted) for replica, model in self._replicas.items()}

    async def close(self) -> None:
        self._replicas.clear()
