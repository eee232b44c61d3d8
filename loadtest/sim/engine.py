"""The engine of one replica: scheduler, KV cache and latency model driven by the simulated clock.

The loop plans a step at simulated time `start` (the end of the previous step, or the first arrival when
idle), prices it with the latency profile, sleeps until real time catches up with the step's simulated end,
then emits each sequence's token, finishes requests, records metrics and publishes the step's KV events.
When the process falls behind, steps run back to back on the simulated timeline: every reported time stays
consistent in simulated seconds, and the responses get several steps' tokens at once. A request that has
arrived (in simulated time) after a step started waits for the next step.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import OrderedDict
from dataclasses import dataclass

import xxhash

from gateway.profiles import Profile
from loadtest.sim.clock import SimClock
from loadtest.sim.config import SimConfig
from loadtest.sim.events import KVEventPublisher
from loadtest.sim.kv_cache import TieredKVCache
from loadtest.sim.metrics import ReplicaMetrics
from loadtest.sim.request import FINISH_ABORT, FINISH_ERROR, FINISH_LENGTH, RequestState, SimRequest
from loadtest.sim.scheduler import Scheduler, StepPlan
from loadtest.sim.vocabulary import OutputVocabulary

BURST_REAL_SECONDS = 0.002
"""How long the loop may run steps back to back (when behind) before it lets the HTTP side run."""

RECORDS_KEPT = 10_000


@dataclass(slots=True, frozen=True)
class RequestRecord:
    """The simulated timeline of a finished request, kept for tests and benchmarks."""

    request_id: str
    arrival_time: float
    prompt_tokens: int
    output_tokens: int
    cached_tokens: int
    local_hit_tokens: int
    external_hit_tokens: int
    finish_reason: str
    num_preemptions: int
    ttft: float | None
    queue_time: float | None
    e2e_latency: float


class Engine:
    def __init__(
        self,
        config: SimConfig,
        clock: SimClock,
        vocabulary: OutputVocabulary,
        metrics: ReplicaMetrics | None = None,
        publisher: KVEventPublisher | None = None,
        profile: Profile | None = None,
        hbm_blocks: int | None = None,
    ) -> None:
        self.config = config
        self.clock = clock
        self.vocabulary = vocabulary
        self.profile = profile or config.latency_profile()
        self.block_size = config.block_size
        capacity = hbm_blocks if hbm_blocks is not None else config.hbm_block_count()
        self.cache = TieredKVCache(capacity, config.block_size, config.dram_blocks, config.storage_blocks)
        self.scheduler = Scheduler(
            self.cache, self.profile, config.max_num_seqs, config.max_num_batched_tokens
        )
        self.metrics = metrics or ReplicaMetrics(config, capacity)
        self.metrics.gauge_source = self._gauges
        self.publisher = publisher
        self.slowdown = 1.0
        if config.hash_seed is None:
            self.root_hash = random.getrandbits(64)
        else:
            self.root_hash = xxhash.xxh3_64_intdigest(b"kvgate-sim-root", config.hash_seed)
        self.time = clock.now()
        self.steps = 0
        self.records: OrderedDict[str, RequestRecord] = OrderedDict()
        self._wakeup = asyncio.Event()
        self._aborts: list[tuple[SimRequest, str]] = []
        self._task: asyncio.Task[None] | None = None

    # --- lifecycle -------------------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self.time = max(self.time, self.clock.now())
            self._task = asyncio.create_task(self._run(), name="sim-engine")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    # --- requests --------------------------------------------------------------------------------------

    def submit(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        max_tokens: int,
        cache_salt: str | None = None,
        fail_after_tokens: int | None = None,
    ) -> SimRequest:
        """Queue a request. With `fail_after_tokens` the engine fails it (finish reason "error") once it has
        generated that many tokens, as vLLM fails a request whose KV load broke."""
        request = SimRequest(
            request_id,
            prompt_token_ids,
            max_tokens,
            self.block_size,
            self.root_hash,
            self.clock.now(),
            cache_salt,
        )
        request.fail_after_tokens = fail_after_tokens
        self.scheduler.add(request)
        self._wakeup.set()
        return request

    def abort(self, request: SimRequest, reason: str = FINISH_ABORT) -> None:
        """End a request at the next step boundary: a client that went away (abort) or a failure (error)."""
        if not request.finished:
            self._aborts.append((request, reason))
            self._wakeup.set()

    def abort_all(self, reason: str = FINISH_ABORT) -> None:
        """End every request now (the replica is going away); their handlers wake and finish."""
        scheduler = self.scheduler
        for request in [*scheduler.running, *scheduler.waiting]:
            scheduler.remove(request)
            self._finish(request, reason, self.time)
        self._aborts.clear()

    def reset_prefix_cache(self) -> bool:
        """Drop every cached block (refused while requests hold blocks, as in vLLM)."""
        if not self.cache.reset():
            return False
        self._publish(self.time)
        return True

    # --- the loop --------------------------------------------------------------------------------------

    async def _run(self) -> None:
        scheduler = self.scheduler
        clock = self.clock
        burst_start = time.monotonic()
        while True:
            if self._aborts:
                self._apply_aborts()
            if not scheduler.has_work:
                self._wakeup.clear()
                await self._wakeup.wait()
                burst_start = time.monotonic()
                continue
            start = self.time
            if not scheduler.running:
                arrival = scheduler.next_arrival()
                if arrival is not None and arrival > start:
                    start = arrival
            plan = scheduler.schedule(start)
            if plan.empty:
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            end = start + plan.seconds(self.profile, self.slowdown)
            delay = clock.real_delay_until(end)
            if delay > 0:
                await asyncio.sleep(delay)
                burst_start = time.monotonic()
            elif time.monotonic() - burst_start > BURST_REAL_SECONDS:
                await asyncio.sleep(0)
                burst_start = time.monotonic()
            self.time = end
            self._complete(plan, end)

    def _complete(self, plan: StepPlan, end: float) -> None:
        self.steps += 1
        metrics = self.metrics
        block_size = self.block_size
        vocabulary = self.vocabulary
        finished: list[SimRequest] = []
        generated = 0
        stepped = plan.decodes + [chunk.request for chunk in plan.prefills] if plan.prefills else plan.decodes
        for request in stepped:
            if request.state is not RequestState.RUNNING:
                continue  # ended while the step ran
            if request.num_computed_tokens < request.num_tokens:
                continue  # a prefill chunk that did not reach the end of the prompt
            if (
                request.fail_after_tokens is not None
                and request.num_output_tokens >= request.fail_after_tokens
            ):
                self._finish(request, FINISH_ERROR, end)
                finished.append(request)
                continue
            token_id = vocabulary.token_at(request.output_seed, request.num_output_tokens)
            request.append_output(token_id, block_size)
            generated += 1
            if request.first_token_time is None:
                request.first_token_time = end
                metrics.time_to_first_token.observe(end - request.arrival_time)
                self._count_prompt(request)
            else:
                metrics.inter_token_latency.observe(end - request.last_token_time)
            request.last_token_time = end
            if request.num_output_tokens >= request.max_tokens:
                self._finish(request, FINISH_LENGTH, end)
                finished.append(request)
        if finished:
            self.scheduler.finish(finished)
        metrics.generation_tokens += generated
        metrics.prefix_cache_queries += plan.prefix_queries
        metrics.prefix_cache_hits += plan.prefix_hits
        metrics.external_prefix_cache_queries += plan.external_queries
        metrics.external_prefix_cache_hits += plan.external_hits
        metrics.num_preemptions += len(plan.preempted)
        metrics.iteration_tokens.observe(plan.num_tokens)
        if self.cache.events:
            self._publish(end)

    def _apply_aborts(self) -> None:
        aborts, self._aborts = self._aborts, []
        for request, reason in aborts:
            if request.finished:
                continue
            self.scheduler.remove(request)
            self._finish(request, reason, self.time)
        self._publish(self.time)

    def _count_prompt(self, request: SimRequest) -> None:
        metrics = self.metrics
        metrics.prompt_tokens += request.num_prompt_tokens
        by_source = metrics.prompt_tokens_by_source
        local = min(request.local_hit_tokens, request.num_prompt_tokens)
        external = min(request.external_hit_tokens, request.num_prompt_tokens - local)
        by_source["local_cache_hit"] += local
        by_source["external_kv_transfer"] += external
        by_source["local_compute"] += request.num_prompt_tokens - local - external

    def _finish(self, request: SimRequest, reason: str, now: float) -> None:
        request.state = RequestState.FINISHED
        request.finish_reason = reason
        request.finish_time = now
        metrics = self.metrics
        metrics.request_success[reason] += 1
        arrival = request.arrival_time
        metrics.e2e_request_latency.observe(now - arrival)
        queue_time = None
        if request.first_scheduled_time is not None:
            scheduled = request.first_scheduled_time
            queue_time = scheduled - arrival
            metrics.request_queue_time.observe(queue_time)
            if request.first_token_time is not None and request.last_token_time is not None:
                metrics.request_prefill_time.observe(request.first_token_time - scheduled)
                metrics.request_decode_time.observe(request.last_token_time - request.first_token_time)
                metrics.request_inference_time.observe(request.last_token_time - scheduled)
        metrics.request_prompt_tokens.observe(request.num_prompt_tokens)
        metrics.request_generation_tokens.observe(request.num_output_tokens)
        metrics.request_params_max_tokens.observe(request.max_tokens)
        ttft = None if request.first_token_time is None else request.first_token_time - arrival
        self.records[request.request_id] = RequestRecord(
            request_id=request.request_id,
            arrival_time=arrival,
            prompt_tokens=request.num_prompt_tokens,
            output_tokens=request.num_output_tokens,
            cached_tokens=request.num_cached_tokens or 0,
            local_hit_tokens=request.local_hit_tokens,
            external_hit_tokens=request.external_hit_tokens,
            finish_reason=reason,
            num_preemptions=request.num_preemptions,
            ttft=ttft,
            queue_time=queue_time,
            e2e_latency=now - arrival,
        )
        if len(self.records) > RECORDS_KEPT:
            self.records.popitem(last=False)
        request.wake()

    def _gauges(self) -> tuple[int, int, float]:
        """Running and waiting requests and KV cache usage now: what a step's scheduler stats would say."""
        return len(self.scheduler.running), len(self.scheduler.waiting), self.cache.usage

    def _publish(self, sim_time: float) -> None:
        events = self.cache.take_events()
        if events and self.publisher is not None:
            self.publisher.publish(self.clock.wall(sim_time), events)
