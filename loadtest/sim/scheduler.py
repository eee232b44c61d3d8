"""Continuous batching in the manner of vLLM V1's scheduler.

Every step has a budget of `max_num_batched_tokens`. Running requests come first: those decoding (one token
each), then those part-way through a chunked prefill, in the order they were admitted. When HBM cannot hold
a running request's next tokens, the most recently admitted request not yet scheduled in this step is
preempted: its blocks are freed, its progress is dropped and it goes back to the head of the waiting queue,
to be recomputed later (with whatever of its prefix is still cached). Waiting requests are then admitted
first come, first served while the budget, `max_num_seqs` and free blocks allow; a request that does not fit
waits, and so does every request behind it. A step that preempted admits no one.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from gateway.profiles import Profile
from loadtest.sim.kv_cache import TieredKVCache
from loadtest.sim.request import RequestState, SimRequest


@dataclass(slots=True)
class PrefillChunk:
    request: SimRequest
    num_new_tokens: int
    cached_tokens: int
    """Tokens the request found cached when it was admitted."""
    computed_tokens: int
    """Tokens its earlier chunks prefilled."""


@dataclass(slots=True)
class StepPlan:
    start: float
    decodes: list[SimRequest] = field(default_factory=list)
    prefills: list[PrefillChunk] = field(default_factory=list)
    admitted: list[SimRequest] = field(default_factory=list)
    preempted: list[SimRequest] = field(default_factory=list)
    decode_context_tokens: int = 0
    fetch_seconds: float = 0.0
    prefix_queries: int = 0
    prefix_hits: int = 0
    external_queries: int = 0
    external_hits: int = 0

    @property
    def empty(self) -> bool:
        return not self.decodes and not self.prefills

    @property
    def num_tokens(self) -> int:
        return len(self.decodes) + sum(chunk.num_new_tokens for chunk in self.prefills)

    def seconds(self, profile: Profile, slowdown: float = 1.0) -> float:
        """Step time: one decode pass over the decoding batch, every prefill chunk, one prefill launch
        if anything was prefilled, and the copies of cached blocks from lower tiers."""
        seconds = self.fetch_seconds
        if self.decodes:
            seconds += profile.decode.step_seconds(self.decode_context_tokens)
        if self.prefills:
            prefill = profile.prefill
            seconds += prefill.fixed
            for chunk in self.prefills:
                seconds += prefill.chunk_seconds(
                    chunk.num_new_tokens, chunk.cached_tokens, chunk.computed_tokens
                )
        return seconds * slowdown


class Scheduler:
    def __init__(
        self, cache: TieredKVCache, profile: Profile, max_num_seqs: int, max_num_batched_tokens: int
    ) -> None:
        self.cache = cache
        self.profile = profile
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[SimRequest] = deque()
        self.running: list[SimRequest] = []
        self.num_preemptions = 0

    def add(self, request: SimRequest) -> None:
        self.waiting.append(request)

    @property
    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    def next_arrival(self) -> float | None:
        return self.waiting[0].arrival_time if self.waiting else None

    def remove(self, request: SimRequest) -> None:
        """Take a request out wherever it is, freeing its blocks (an abort)."""
        if request.state is RequestState.RUNNING:
            self.running.remove(request)
            self.cache.free(request)
        elif request.state is RequestState.WAITING:
            self.waiting.remove(request)

    def finish(self, finished: list[SimRequest]) -> None:
        for request in finished:
            self.cache.free(request)
        done = set(map(id, finished))
        self.running = [request for request in self.running if id(request) not in done]

    def schedule(self, start: float) -> StepPlan:
        plan = StepPlan(start)
        budget = self.max_num_batched_tokens
        cache = self.cache
        block_size = cache.block_size
        decoding: list[tuple[SimRequest, bool]] = []
        prefilling: list[tuple[SimRequest, bool]] = []
        for request in self.running:
            num_tokens = len(request.token_ids)
            if num_tokens > request.num_prompt_tokens and request.num_computed_tokens == num_tokens - 1:
                decoding.append((request, True))
            else:
                prefilling.append((request, False))
        order = decoding + prefilling if prefilling else decoding
        position = 0
        while position < len(order) and budget > 0:
            request, is_decode = order[position]
            num_tokens = len(request.token_ids)
            num_new = min(num_tokens - request.num_computed_tokens, budget)
            computed = request.num_computed_tokens + num_new
            if computed > len(request.blocks) * block_size and not self._make_room(
                request, num_new, order, plan
            ):
                break
            position += 1
            budget -= num_new
            if is_decode:
                plan.decodes.append(request)
                plan.decode_context_tokens += num_tokens
            else:
                computed_by_chunks = request.num_computed_tokens - request.prefill_base_tokens
                plan.prefills.append(
                    PrefillChunk(request, num_new, request.prefill_base_tokens, computed_by_chunks)
                )
            request.num_computed_tokens = computed
            if computed // block_size > request.num_cached_blocks:
                cache.cache_full_blocks(request)
        if not plan.preempted:
            self._admit(plan, budget)
        return plan

    def _make_room(
        self, request: SimRequest, num_new: int, order: list[tuple[SimRequest, bool]], plan: StepPlan
    ) -> bool:
        """Allocate the request's next blocks, preempting from the end of the step's order until they fit.
        False when the request itself had to be preempted."""
        while not self.cache.allocate_slots(request, num_new):
            victim, _ = order.pop()
            self._preempt(victim, plan)
            if victim is request:
                return False
        return True

    def _admit(self, plan: StepPlan, budget: int) -> None:
        cache = self.cache
        block_size = cache.block_size
        waiting = self.waiting
        while waiting and budget > 0 and len(self.running) < self.max_num_seqs:
            request = waiting[0]
            if request.arrival_time > plan.start:
                break
            hit = cache.find_prefix(request)
            hit_tokens = hit.num_blocks * block_size
            num_new = min(request.num_tokens - hit_tokens, budget)
            if not cache.allocate_new(request, hit, num_new):
                break
            waiting.popleft()
            self.running.append(request)
            request.state = RequestState.RUNNING
            local_tokens = hit.hbm_blocks * block_size
            external_tokens = hit_tokens - local_tokens
            plan.prefix_queries += request.num_tokens
            plan.prefix_hits += local_tokens
            if cache.lower:
                plan.external_queries += request.num_tokens
                plan.external_hits += external_tokens
            for tier, blocks in hit.tier_blocks.items():
                plan.fetch_seconds += self.profile.fetch_seconds(blocks * block_size, tier)
            if request.num_cached_tokens is None:
                request.num_cached_tokens = hit_tokens
                request.local_hit_tokens = local_tokens
                request.external_hit_tokens = external_tokens
            if request.first_scheduled_time is None:
                request.first_scheduled_time = plan.start
            request.num_computed_tokens = hit_tokens
            request.prefill_base_tokens = hit_tokens
            plan.prefills.append(PrefillChunk(request, num_new, hit_tokens, 0))
            plan.admitted.append(request)
            request.num_computed_tokens += num_new
            cache.cache_full_blocks(request)
            budget -= num_new

    def _preempt(self, request: SimRequest, plan: StepPlan) -> None:
        self.running.remove(request)
        self.cache.free(request)
        request.num_computed_tokens = 0
        request.prefill_base_tokens = 0
        request.state = RequestState.WAITING
        request.num_preemptions += 1
        self.waiting.appendleft(request)
        self.num_preemptions += 1
        plan.preempted.append(request)
