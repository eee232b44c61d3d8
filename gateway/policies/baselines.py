"""Baseline policies that ignore the cache (round robin, random, least loaded) or hash a key to a replica."""

from __future__ import annotations

import random
from collections import defaultdict

import xxhash

from gateway.policies.base import Ranking, RouteContext, predicted_cached_tokens, rendezvous_order


def _ranking(context: RouteContext, order, reason: str) -> Ranking:
    return Ranking(order, reason, predicted_cached_tokens(context, order[0]))


class RoundRobinPolicy:
    name = "round_robin"

    def __init__(self) -> None:
        self._next: dict[str, int] = defaultdict(int)

    def rank(self, context: RouteContext) -> Ranking:
        candidates = context.candidates
        start = self._next[context.model] % len(candidates)
        self._next[context.model] = start + 1
        return _ranking(context, candidates[start:] + candidates[:start], "rotation")


class RandomPolicy:
    name = "random"

    def __init__(self, seed: int | None = None) -> None:
        self._rng = random.Random(seed)

    def rank(self, context: RouteContext) -> Ranking:
        order = list(context.candidates)
        self._rng.shuffle(order)
        return _ranking(context, order, "random")


class LeastLoadedPolicy:
    """Fewest requests outstanding (the gateway's count or the replica's own, whichever is larger)."""

    name = "least_loaded"

    def __init__(self, seed: int | None = None) -> None:
        self._rng = random.Random(seed)

    def rank(self, context: RouteContext) -> Ranking:
        order = list(context.candidates)
        self._rng.shuffle(order)  # ties go to a random replica, not always the first
        order.sort(key=lambda r: (r.outstanding(), r.load.queued_prefill_seconds))
        return _ranking(context, order, "least_loaded")


class ConsistentHashPolicy:
    """The session id (header `x-session-id`, body `session_id` or `user`), else the first block, hashed."""

    name = "consistent_hash"

    def rank(self, context: RouteContext) -> Ranking:
        if context.session_id:
            key = xxhash.xxh3_64_intdigest(context.session_id.encode())
        elif context.blocks.hashes:
            key = context.blocks.hashes[0]
        else:
            key = context.prefix_key
        return _ranking(context, rendezvous_order(context.candidates, key), "hash")
