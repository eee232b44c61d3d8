"""The replicas the gateway routes to: identity, health, and load as the gateway sees it."""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from gateway.index.base import TierCapacity


@dataclass(slots=True)
class ScrapedLoad:
    """The replica's own figures from its `/metrics` (vLLM gauges), as of `at` (monotonic seconds)."""

    waiting: float = 0.0
    running: float = 0.0
    kv_usage: float = 0.0
    at: float = 0.0


RECENT_HALF_LIFE_S = 60.0


@dataclass(slots=True)
class Load:
    """The gateway's own view: requests it has in flight on the replica and the prefill work queued."""

    inflight: int = 0
    prefilling: int = 0
    queued_prefill_tokens: float = 0.0
    queued_prefill_seconds: float = 0.0
    _recent: float = 0.0
    _recent_at: float = 0.0

    def note_request(self, now: float) -> None:
        self._recent = self.recent_requests(now) + 1.0
        self._recent_at = now

    def recent_requests(self, now: float) -> float:
        """Requests sent here lately, each counting half after `RECENT_HALF_LIFE_S`: the conversations the
        replica carries, which its queue does not show while they wait between turns."""
        return self._recent * 0.5 ** ((now - self._recent_at) / RECENT_HALF_LIFE_S)


@dataclass(eq=False, slots=True)
class Replica:
    url: str
    name: str = ""
    models: set[str] = field(default_factory=set)
    model_cards: dict[str, dict] = field(default_factory=dict)
    """The replica's own `/v1/models` entries, when it was asked."""
    capacity: TierCapacity | None = None
    """Configured tier capacities in engine tokens' blocks; None means learn them from the replica."""
    kv_events_endpoint: str | None = None
    kv_events_replay_endpoint: str | None = None
    healthy: bool = True
    draining: bool = False
    consecutive_failures: int = 0
    cooldown_until: float = 0.0
    load: Load = field(default_factory=Load)
    scraped: ScrapedLoad = field(default_factory=ScrapedLoad)

    def __post_init__(self) -> None:
        self.url = self.url.rstrip("/")
        if not self.name:
            self.name = urlsplit(self.url).netloc or self.url

    @property
    def routable(self) -> bool:
        return self.healthy and not self.draining and time.monotonic() >= self.cooldown_until

    def outstanding(self) -> float:
        """Requests queued or running on the replica: the larger of our count and its own report."""
        return max(float(self.load.inflight), self.scraped.waiting + self.scraped.running)


class ReplicaSet:
    """All known replicas by name, and the routable ones per served model."""

    def __init__(self, replicas: Iterable[Replica] = ()) -> None:
        self._by_name: dict[str, Replica] = {}
        for replica in replicas:
            self.add(replica)

    def __iter__(self) -> Iterator[Replica]:
        return iter(list(self._by_name.values()))

    def __len__(self) -> int:
        return len(self._by_name)

    def get(self, name: str) -> Replica | None:
        return self._by_name.get(name)

    def add(self, replica: Replica) -> Replica:
        existing = self._by_name.get(replica.name)
        if existing is not None:
            existing.draining = False
            return existing
        self._by_name[replica.name] = replica
        return replica

    def remove(self, name: str) -> Replica | None:
        return self._by_name.pop(name, None)

    def models(self) -> set[str]:
        served: set[str] = set()
        for replica in self._by_name.values():
            served |= replica.models
        return served

    def serving(self, model: str) -> list[Replica]:
        """Replicas that serve `model`, routable or not, in a stable order."""
        return [r for r in self._by_name.values() if model in r.models]

    def routable(self, model: str) -> list[Replica]:
        return [r for r in self._by_name.values() if model in r.models and r.routable]
