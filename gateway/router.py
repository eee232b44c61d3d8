"""Routing: request -> prompt blocks -> index lookup -> policy ranking, and the load it puts on replicas."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

from gateway.blocks import BlockHasher, PromptBlocks, chain_seed
from gateway.errors import APIError
from gateway.index.base import PrefixIndex
from gateway.metrics import GatewayMetrics
from gateway.policies import AffinityPolicy, Policy, Ranking, RouteContext
from gateway.policies.base import predicted_cached_tokens
from gateway.profiles import Profile
from gateway.replicas import Replica, ReplicaSet
from gateway.request import InferenceRequest

log = logging.getLogger("kvgate.router")


@dataclass(slots=True)
class Decision:
    model: str
    blocks: PromptBlocks
    context: RouteContext
    ranking: Ranking


class Dispatch:
    """One attempt on one replica: the load it adds there until its first token and until its end."""

    def __init__(
        self,
        replica: Replica,
        cached_tokens: float,
        new_tokens: float,
        prefill_s: float,
        predicted_ttft_s: float,
    ) -> None:
        self.replica = replica
        self.cached_tokens = cached_tokens
        self.new_tokens = new_tokens
        self.prefill_s = prefill_s
        self.predicted_ttft_s = predicted_ttft_s
        """The unscaled TTFT estimate at dispatch, which the observed TTFT teaches the cost model about."""
        self.started = time.monotonic()
        self._prefilling = True
        self._open = True
        load = replica.load
        load.note_request(self.started)
        load.inflight += 1
        load.prefilling += 1
        load.queued_prefill_tokens += new_tokens
        load.queued_prefill_seconds += prefill_s

    def first_token(self) -> None:
        if self._prefilling:
            self._prefilling = False
            load = self.replica.load
            load.prefilling -= 1
            load.queued_prefill_tokens = max(0.0, load.queued_prefill_tokens - self.new_tokens)
            load.queued_prefill_seconds = max(0.0, load.queued_prefill_seconds - self.prefill_s)

    def close(self) -> None:
        if self._open:
            self._open = False
            self.first_token()
            self.replica.load.inflight -= 1


class Router:
    def __init__(
        self,
        replicas: ReplicaSet,
        index: PrefixIndex,
        policy: Policy,
        hasher: BlockHasher,
        profile: Profile,
        metrics: GatewayMetrics,
    ) -> None:
        self.replicas = replicas
        self.index = index
        self.policy = policy
        self.hasher = hasher
        self.profile = profile
        self.metrics = metrics
        self._decision_time = metrics.decision.labels(policy.name)

    async def route(self, request: InferenceRequest, model: str) -> Decision:
        started = time.perf_counter()
        candidates = self.replicas.routable(model)
        if not candidates:
            raise APIError(503, f"No healthy replica is serving model '{model}' right now; retry later.")
        blocks = await self.hasher.blocks(request, model)
        try:
            matches = await self.index.match(model, blocks.hashes, [r.name for r in candidates])
        except Exception as exc:  # the index is an optimisation: route on without it
            self.metrics.index_errors.labels("match").inc()
            log.warning("index lookup failed, routing without it: %s", exc)
            matches = {}
        prefix_key = (
            blocks.hashes[-1] if blocks.hashes else chain_seed(model, request.cache_salt, request.tenant)
        )
        context = RouteContext(model, blocks, candidates, matches, request.session_id, prefix_key)
        ranking = self.policy.rank(context)
        self._decision_time.observe(time.perf_counter() - started)
        return Decision(model, blocks, context, ranking)

    def dispatch(self, decision: Decision, replica: Replica, attempt: int) -> Dispatch:
        """Account for sending the request to `replica`: the load it adds there."""
        reason = decision.ranking.reason if attempt == 0 else "retry"
        self.metrics.request_routed(decision.model, replica.name, self.policy.name, reason)
        blocks = decision.blocks
        cached = predicted_cached_tokens(decision.context, replica)
        new = max(1.0, blocks.prompt_tokens - cached)
        # what this prefill adds to the replica's queue: the engine batches prefills into one pass per
        # step, so queued work costs its per-token time, not another pass's fixed cost
        prefill_s = self.profile.prefill.chunk_seconds(new, cached)
        estimate = next((e for e in decision.ranking.estimates if e.replica == replica.name), None)
        predicted = estimate.unscaled_s if estimate else replica.load.queued_prefill_seconds + prefill_s
        return Dispatch(replica, cached, new, prefill_s, predicted)

    def record(self, decision: Decision, replica: Replica) -> None:
        """Teach the index that `replica`, just sent the request, will hold its prompt. Called once the
        request is on its way, so that a long prompt's index update (0.3 ms for 2,300 blocks) is made
        while the replica computes rather than before it starts."""
        try:
            self.index.record(decision.model, replica.name, decision.blocks.hashes)
        except Exception as exc:
            self.metrics.index_errors.labels("record").inc()
            log.warning("index update failed: %s", exc)

    def observe_first_token(self, dispatch: Dispatch, ttft_s: float) -> None:
        dispatch.first_token()
        if isinstance(self.policy, AffinityPolicy):
            self.policy.cost.observe(
                dispatch.replica.name, dispatch.predicted_ttft_s, ttft_s, time.monotonic()
            )
