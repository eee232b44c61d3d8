"""The routing cost model: a request's time to first token on each candidate replica.

    ttft = scale(replica) * (queue + fetch + prefill + decode interference)

- prefill: the profile's time to compute the tokens the replica does not hold, on top of those it does;
- fetch: the matched blocks held in DRAM, storage or a cluster-shared tier, at that tier's bandwidth
  (an HBM hit costs nothing);
- queue: the prefill work the gateway has already sent there and not seen start streaming, plus the
  replica's own waiting requests beyond ours at the typical prefill time, each at its per-token cost
  (the engine batches waiting prefills into one pass per step, paying the pass's fixed cost once);
- decode interference: each chunked-prefill step of the request also carries the replica's running
  decodes, so a busy replica prefills slower;
- scale: observed TTFT over predicted. The pool's scale (smoothed over every request, in log space)
  sets the level: replicas that all run faster or slower than the profile (other GPUs, a simulator at
  a time scale). Each replica's own factor, relative to the pool, prices a replica that runs slower
  than its peers (a hot spot, a failing GPU) as it really runs; it is shrunk towards 1 until enough
  requests back it, ignored inside a dead band (TTFT is noisy, and noise must not move conversations
  away from their caches), and forgotten as it ages, so a recovered replica gets traffic again.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

from gateway.blocks import PromptBlocks
from gateway.index.base import PrefixMatch
from gateway.policies.base import Estimate
from gateway.profiles import Profile, Tier
from gateway.replicas import Replica

POOL_SMOOTHING = 0.05
REPLICA_SMOOTHING = 0.1
REPLICA_EVIDENCE = 10.0
"""Observations at which a replica's own factor counts half: fewer are mostly noise."""
DEAD_BAND = math.log(1.3)
"""A replica within 30% of the pool is priced as the pool."""
SCALE_MEMORY_S = 30.0
RATIO_LIMITS = (1e-4, 1e4)
TYPICAL_SMOOTHING = 0.05


@dataclass(slots=True)
class _Relative:
    log_factor: float
    observations: int
    observed_at: float


class CostModel:
    def __init__(self, profile: Profile, engine_token_budget: int = 8192) -> None:
        self.profile = profile
        self.engine_token_budget = engine_token_budget
        self._log_pool = 0.0
        self._observed_any = False
        self._relative: dict[str, _Relative] = {}
        self.typical_prefill_s = 0.0
        self.typical_prompt_tokens = 0.0

    @property
    def pool_scale(self) -> float:
        return math.exp(self._log_pool)

    def relative(self, replica: str, now: float | None = None) -> float:
        """The replica's factor over the pool's scale: 1 unless it is clearly and lately off."""
        own = self._relative.get(replica)
        if own is None:
            return 1.0
        age = (time.monotonic() if now is None else now) - own.observed_at
        trust = own.observations / (own.observations + REPLICA_EVIDENCE) * math.exp(-age / SCALE_MEMORY_S)
        log_factor = own.log_factor * trust
        if abs(log_factor) < DEAD_BAND:
            return 1.0
        return math.exp(log_factor)

    def scale(self, replica: str, now: float | None = None) -> float:
        return self.pool_scale * self.relative(replica, now)

    def estimate(self, replica: Replica, match: PrefixMatch, blocks: PromptBlocks, now: float) -> Estimate:
        profile = self.profile
        prompt = blocks.prompt_tokens
        per_block = blocks.tokens_per_block
        held = match.blocks
        cached = min(held * per_block, prompt - 1.0)
        fetch = 0.0
        if held != match.hbm:  # some of it is in a lower tier
            trim = cached / (held * per_block)
            fetch = (
                profile.fetch_seconds(match.dram * per_block * trim, Tier.DRAM)
                + profile.fetch_seconds(match.storage * per_block * trim, Tier.STORAGE)
                + profile.fetch_seconds(match.shared * per_block * trim, Tier.SHARED)
            )
        new = prompt - cached
        prefill = profile.prefill.seconds(new, cached)

        load = replica.load
        others_waiting = max(0.0, replica.scraped.waiting - load.prefilling)
        queue = load.queued_prefill_seconds + others_waiting * self.typical_prefill_s
        running = max(float(load.inflight - load.prefilling), replica.scraped.running)
        steps = math.ceil(new / self.engine_token_budget)
        interference = (
            steps * profile.decode.step_seconds(running * self.typical_prompt_tokens) if running else 0.0
        )
        unscaled = queue + fetch + prefill + interference
        return Estimate(
            replica.name, cached, prefill, fetch, queue, unscaled, unscaled * self.scale(replica.name, now)
        )

    def note_routed(self, estimate: Estimate, blocks: PromptBlocks) -> None:
        """Keep the typical request's size, used to price requests the gateway did not send itself."""
        if self.typical_prompt_tokens == 0.0:
            self.typical_prompt_tokens = float(blocks.prompt_tokens)
            self.typical_prefill_s = estimate.prefill_s - self.profile.prefill.fixed
            return
        a = TYPICAL_SMOOTHING
        self.typical_prompt_tokens += a * (blocks.prompt_tokens - self.typical_prompt_tokens)
        self.typical_prefill_s += a * (
            estimate.prefill_s - self.profile.prefill.fixed - self.typical_prefill_s
        )

    def observe(self, replica: str, predicted_unscaled_s: float, observed_s: float, now: float) -> None:
        """Learn from a request's TTFT: its ratio to the unscaled prediction, pool-wide and per replica."""
        if predicted_unscaled_s <= 0.0 or observed_s <= 0.0:
            return
        low, high = RATIO_LIMITS
        log_ratio = math.log(min(max(observed_s / predicted_unscaled_s, low), high))
        if not self._observed_any:
            self._observed_any = True
            self._log_pool = log_ratio
        else:
            self._log_pool += POOL_SMOOTHING * (log_ratio - self._log_pool)
        offset = log_ratio - self._log_pool
        own = self._relative.get(replica)
        if own is None:
            self._relative[replica] = _Relative(offset, 1, now)
        else:
            own.log_factor += REPLICA_SMOOTHING * (offset - own.log_factor)
            own.observations += 1
            own.observed_at = now

    def forget(self, replica: str) -> None:
        self._relative.pop(replica, None)
