"""The default policy: lowest estimated time to first token, with a load guard.

Each candidate's TTFT is estimated by the cost model from the prefix it holds per tier and the work
queued on it. Each is scored by that estimate plus `work_weight` times the prefill it would add to the
replica (that work delays every request queued behind it, which a per-request TTFT does not see), and
the lowest score wins, except that a replica carrying more than `guard_factor` times
the pool's mean outstanding requests (and at least `guard_min_outstanding`), or whose KV cache is nearly
full, is passed over while another replica is not: so a hot prefix spreads to a second replica instead
of piling onto one, and the replica that takes it becomes a holder too. The outstanding-requests guard
spares a replica holding `guard_keep_tokens` more of the prompt than any unguarded one: that much is a
conversation's own history, not a prefix other conversations pile on, and leaving it means computing
it again (a 100k-token conversation moved off its replica for a queue of eight requests).

Estimates within `tie_tolerance` of the best are ties: the replica holding more of the prompt wins them
(leaving a conversation's cache for a gain lost in the estimate's noise only wastes the cache), then
the one sent fewer requests lately (so new conversations spread by the conversations each replica
carries, which its momentary queue does not show while they wait between turns), then the one with
fewer outstanding, then rendezvous hashing on the prompt so that independent gateway replicas agree.

Reasons: `affinity` (the winner holds part of the prompt and is the cheapest), `load_guard` (the
cheapest was passed over), `cold` (no candidate holds any of the prompt).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from gateway.policies.base import Estimate, Ranking, RouteContext, rendezvous_order
from gateway.policies.cost import CostModel
from gateway.profiles import Profile
from gateway.replicas import Replica


@dataclass(frozen=True, slots=True)
class AffinitySettings:
    guard_factor: float = 1.5
    guard_min_outstanding: float = 8.0
    guard_kv_usage: float = 0.98
    tie_tolerance: float = 0.05
    work_weight: float = 0.5
    guard_keep_tokens: float = 32768
    engine_token_budget: int = 8192


class AffinityPolicy:
    name = "affinity"

    def __init__(self, profile: Profile, settings: AffinitySettings | None = None) -> None:
        self.settings = settings or AffinitySettings()
        self.cost = CostModel(profile, self.settings.engine_token_budget)

    def rank(self, context: RouteContext) -> Ranking:
        settings = self.settings
        now = time.monotonic()
        candidates = context.candidates
        estimates = {
            r.name: self.cost.estimate(r, context.match_of(r), context.blocks, now) for r in candidates
        }
        work_weight = settings.work_weight * self.cost.pool_scale
        for estimate in estimates.values():
            # the prefill a choice adds delays whatever queues behind it there: a holder with a short
            # queue beats a cold replica whose TTFT is only a little lower
            estimate.score_s = estimate.ttft_s + work_weight * estimate.prefill_s
        self._guard(candidates, estimates)
        ordered = self._cheapest_first(
            [r for r in candidates if not estimates[r.name].guarded], estimates, context, now
        )
        ordered += self._cheapest_first(
            [r for r in candidates if estimates[r.name].guarded], estimates, context, now
        )

        best = ordered[0]
        cheapest = min(estimates.values(), key=lambda e: e.score_s)
        chosen = estimates[best.name]
        if cheapest.guarded and cheapest.score_s < chosen.score_s * (1 - settings.tie_tolerance):
            reason = "load_guard"
        elif chosen.cached_tokens > 0:
            reason = "affinity"
        else:
            reason = "cold"
        self.cost.note_routed(chosen, context.blocks)
        return Ranking(ordered, reason, chosen.cached_tokens, [estimates[r.name] for r in ordered])

    def _guard(self, candidates: list[Replica], estimates: dict[str, Estimate]) -> None:
        """Mark the replicas the load guard passes over: those whose KV cache is nearly full, and those
        crowded with outstanding requests unless they hold `guard_keep_tokens` more of the prompt than
        any replica the request could go to instead (that much is a conversation's own history, which
        piles nothing else onto them, and leaving it would compute it again). None if all would be."""
        settings = self.settings
        outstanding = {r.name: r.outstanding() for r in candidates}
        mean = sum(outstanding.values()) / len(candidates)
        full = {r.name for r in candidates if r.scraped.kv_usage >= settings.guard_kv_usage}
        crowded = {
            name
            for name, load in outstanding.items()
            if load >= settings.guard_min_outstanding and load > settings.guard_factor * mean
        }
        for name, estimate in estimates.items():
            estimate.guarded = name in full or name in crowded
        open_cached = [e.cached_tokens for e in estimates.values() if not e.guarded]
        if not open_cached:
            for estimate in estimates.values():
                estimate.guarded = False
            return
        others = max(open_cached)
        for name in crowded - full:
            if estimates[name].cached_tokens - others >= settings.guard_keep_tokens:
                estimates[name].guarded = False

    def _cheapest_first(
        self, replicas: list[Replica], estimates: dict[str, Estimate], context: RouteContext, now: float
    ) -> list[Replica]:
        """By estimate. Those within the tie tolerance of the best come first: the ones holding the most of
        the prompt, then the least busy lately, then the least loaded now, then in rendezvous order (so
        gateway replicas agree)."""
        if not replicas:
            return []
        by_cost = sorted(replicas, key=lambda r: estimates[r.name].score_s)
        limit = estimates[by_cost[0].name].score_s * (1 + self.settings.tie_tolerance)
        tied = [r for r in by_cost if estimates[r.name].score_s <= limit]
        if len(tied) > 1:
            tied = rendezvous_order(tied, context.prefix_key)
            tied.sort(
                key=lambda r: (
                    -estimates[r.name].cached_tokens,
                    r.load.recent_requests(now),
                    r.outstanding(),
                )
            )
        rest = [r for r in by_cost if estimates[r.name].score_s > limit]
        return tied + rest
