"""The precise index: what each replica's engine says it holds, from its KV cache events.

The gateway never reproduces engine hashes (their seed and algorithm vary by version and setting).
It re-hashes the token ids each `BlockStored` carries with its own chain, the same chain it computes
for requests (`gateway.blocks.chain_hashes` over 4-byte token ids, seeded by model and cache salt),
and keeps per engine the map from engine hash to own hash, so that `BlockRemoved`, which carries engine
hashes only, can be applied. Placeholder events (a hash and nothing else, from offloading connectors)
add a tier to a block already known by its engine hash. Blocks in a cluster-shared tier count for
every replica.

Routing writes speculative entries (the prompt's blocks in HBM of the chosen replica) that expire after
`speculative_ttl_s`: the engine's events confirm them long before, and back-to-back turns of a
conversation route right in the meantime.

A replica with data-parallel ranks has one engine per rank; its match is its best rank's.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from itertools import repeat

from gateway.blocks import chain_hashes, chain_seed
from gateway.index.base import PrefixMatch, TierCapacity
from gateway.kv_events.decode import AllBlocksCleared, BlockRemoved, BlockStored, EngineHash, Event
from gateway.profiles import Tier
from gateway.tokenizer import token_bytes

TIER_BIT = {tier: 1 << tier for tier in Tier}
BYTES_PER_TOKEN = 4


@dataclass(slots=True)
class EngineBlocks:
    """One engine's (replica and data-parallel rank's) cache as its events describe it."""

    held: dict[int, int] = field(default_factory=dict)
    """own hash -> bitmask of tiers holding it"""
    own_of: dict[EngineHash, int] = field(default_factory=dict)


@dataclass(slots=True)
class EventStats:
    applied: int = 0
    orphans: int = 0
    """BlockStored whose parent the index never saw (after a gap without replay): skipped."""
    unknown_placeholders: int = 0
    block_size_mismatches: int = 0


class PreciseIndex:
    def __init__(
        self,
        model_of: Callable[[str], str],
        block_size: int,
        speculative_ttl_s: float = 2.0,
        max_blocks_per_engine: int = 4_000_000,
    ) -> None:
        self.model_of = model_of
        """replica name -> the model its engine serves (its events do not say)"""
        self.block_size = block_size
        self.speculative_ttl_s = speculative_ttl_s
        self.max_blocks_per_engine = max_blocks_per_engine
        self.stats = EventStats()
        self._engines: dict[str, dict[int | None, EngineBlocks]] = {}
        self._speculative: dict[str, dict[int, float]] = {}
        self._shared: dict[int, int] = {}
        """own hash -> tier bit of the cluster-shared tier, for every replica"""

    # -- events ---------------------------------------------------------------------------------------

    def apply(self, replica: str, rank: int | None, events: Iterable[Event]) -> None:
        engine = self._engines.setdefault(replica, {}).setdefault(rank, EngineBlocks())
        for event in events:
            if isinstance(event, BlockStored):
                self._stored(replica, engine, event)
            elif isinstance(event, BlockRemoved):
                self._removed(engine, event)
            elif isinstance(event, AllBlocksCleared):
                engine.held.clear()
                engine.own_of.clear()
            self.stats.applied += 1
        if len(engine.held) > self.max_blocks_per_engine:  # missed removals: start over rather than grow
            engine.held.clear()
            engine.own_of.clear()

    def _stored(self, replica: str, engine: EngineBlocks, event: BlockStored) -> None:
        bit = TIER_BIT[event.tier]
        target = self._shared if event.tier is Tier.SHARED else engine.held
        if event.is_placeholder:
            for engine_hash in event.block_hashes:
                own = engine.own_of.get(engine_hash)
                if own is None:
                    self.stats.unknown_placeholders += 1
                else:
                    target[own] = target.get(own, 0) | bit
            return
        if event.block_size != self.block_size:
            self.stats.block_size_mismatches += 1
            return
        if event.parent_block_hash is None:
            parent = chain_seed(self.model_of(replica), _salt(event.extra_keys), "")
        else:
            parent = engine.own_of.get(event.parent_block_hash)
            if parent is None:
                self.stats.orphans += 1
                return
        data = token_bytes(event.token_ids)
        own_hashes = chain_hashes(data, self.block_size * BYTES_PER_TOKEN, parent, len(event.block_hashes))
        for engine_hash, own in zip(event.block_hashes, own_hashes, strict=False):
            engine.own_of[engine_hash] = own
            target[own] = target.get(own, 0) | bit

    def _removed(self, engine: EngineBlocks, event: BlockRemoved) -> None:
        bit = TIER_BIT[event.tier]
        target = self._shared if event.tier is Tier.SHARED else engine.held
        for engine_hash in event.block_hashes:
            own = engine.own_of.get(engine_hash)
            if own is None:
                continue
            remaining = target.get(own, 0) & ~bit
            if remaining:
                target[own] = remaining
            else:
                target.pop(own, None)
                if own not in engine.held:
                    del engine.own_of[engine_hash]

    def clear_replica(self, replica: str, rank: int | None = None) -> None:
        engines = self._engines.get(replica, {})
        for key in [rank] if rank is not None else list(engines):
            engines.pop(key, None)

    # -- the PrefixIndex interface -------------------------------------------------------------------

    async def match(
        self, model: str, hashes: Sequence[int], replicas: Iterable[str]
    ) -> dict[str, PrefixMatch]:
        now = time.monotonic()
        found: dict[str, PrefixMatch] = {}
        for replica in replicas:
            speculative = self._speculative.get(replica, {})
            best = PrefixMatch()
            for engine in self._engines.get(replica, {}).values() or [EngineBlocks()]:
                match = _match(hashes, engine.held, speculative, self._shared, now)
                if match.blocks > best.blocks:
                    best = match
            if best.blocks:
                found[replica] = best
        return found

    def record(self, model: str, replica: str, hashes: Sequence[int]) -> None:
        speculative = self._speculative.setdefault(replica, {})
        expiry = time.monotonic() + self.speculative_ttl_s
        speculative.update(zip(hashes, repeat(expiry)))
        if len(speculative) > self.max_blocks_per_engine // 4:
            now = time.monotonic()
            self._speculative[replica] = {h: t for h, t in speculative.items() if t > now}

    async def forget_replica(self, replica: str) -> None:
        self._engines.pop(replica, None)
        self._speculative.pop(replica, None)

    def set_capacity(self, replica: str, capacity: TierCapacity) -> None:
        """The engine reports its own evictions: capacities are not modelled here."""

    def block_counts(self) -> dict[str, dict[Tier, int]]:
        counts: dict[str, dict[Tier, int]] = {}
        for replica, engines in self._engines.items():
            per_tier = dict.fromkeys((Tier.HBM, Tier.DRAM, Tier.STORAGE), 0)
            for engine in engines.values():
                for bits in engine.held.values():
                    for tier in per_tier:
                        if bits & TIER_BIT[tier]:
                            per_tier[tier] += 1
            counts[replica] = per_tier
        return counts

    async def close(self) -> None:
        self._engines.clear()
        self._speculative.clear()


def _salt(extra_keys: list | None) -> str | None:
    """vLLM puts the request's cache_salt among the first block's extra keys."""
    if not extra_keys:
        return None
    first = extra_keys[0]
    keys = first if isinstance(first, list | tuple) else [first]
    return next((key for key in keys if isinstance(key, str)), None)


_HBM, _DRAM, _STORAGE, _SHARED = (TIER_BIT[t] for t in (Tier.HBM, Tier.DRAM, Tier.STORAGE, Tier.SHARED))


def _match(
    hashes: Sequence[int],
    held: dict[int, int],
    speculative: dict[int, float],
    shared: dict[int, int],
    now: float,
) -> PrefixMatch:
    """Walk the prompt's blocks while the engine (or the shared tier) holds them, counting by fastest tier."""
    counts = [0, 0, 0, 0]
    for block in hashes:
        bits = held.get(block, 0)
        if bits & _HBM or speculative.get(block, 0.0) > now:
            counts[0] += 1
        elif bits & _DRAM:
            counts[1] += 1
        elif bits & _STORAGE:
            counts[2] += 1
        elif shared.get(block):
            counts[3] += 1
        else:
            break
    return PrefixMatch(*counts)
