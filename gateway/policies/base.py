"""What a routing policy sees and what it decides."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import xxhash

from gateway.blocks import PromptBlocks
from gateway.index.base import NO_MATCH, PrefixMatch
from gateway.replicas import Replica

_hash = xxhash.xxh3_64_intdigest


@dataclass(slots=True)
class RouteContext:
    model: str
    blocks: PromptBlocks
    candidates: list[Replica]
    """Routable replicas serving the model, in a stable order."""
    matches: dict[str, PrefixMatch]
    """Each candidate's cached run of the prompt's leading blocks, by replica name."""
    session_id: str | None = None
    prefix_key: int = 0
    """A hash of the whole hashed prompt: the rendezvous key that lets gateway replicas agree on ties."""

    def match_of(self, replica: Replica) -> PrefixMatch:
        return self.matches.get(replica.name, NO_MATCH)


@dataclass(slots=True)
class Estimate:
    """The affinity policy's view of one candidate, kept for `/debug/route` and for learning."""

    replica: str
    cached_tokens: float
    prefill_s: float
    fetch_s: float
    queue_s: float
    unscaled_s: float
    """queue + fetch + prefill + decode interference, as the profile prices them."""
    ttft_s: float
    """`unscaled_s` times the replica's learned scale."""
    score_s: float = 0.0
    """What the policy compares: `ttft_s` plus the weighted prefill work the choice adds to the replica."""
    guarded: bool = False


@dataclass(slots=True)
class Ranking:
    """Candidates best first (retries walk down the list), why the first won, and what it should hit."""

    replicas: list[Replica]
    reason: str
    predicted_cached_tokens: float = 0.0
    estimates: list[Estimate] = field(default_factory=list)


class Policy(Protocol):
    name: str

    def rank(self, context: RouteContext) -> Ranking: ...


def rendezvous_order(replicas: list[Replica], key: int) -> list[Replica]:
    """Highest-random-weight order: every gateway with the same replicas and key gets the same order."""
    return sorted(replicas, key=lambda r: _hash(r.name.encode(), key & 0xFFFFFFFFFFFFFFFF), reverse=True)


def predicted_cached_tokens(context: RouteContext, replica: Replica) -> float:
    blocks = context.blocks
    cached = context.match_of(replica).blocks * blocks.tokens_per_block
    return max(0.0, min(cached, blocks.prompt_tokens - 1))
