"""The routing cost model: a request's time to first token on each candidate replica.

    ttft = scale(replica) * (queue + fetch + prefill + decode interference)

- prefill: the profile's time to compute the tokens the replica does not hold, on top of those it does;
- fetch: the matched blocks held in DRAM, storage or a cluster-shared tier, at that tier's bandwidth
  (an HBM hit costs nothing);
- queue: the prefill work the gateway has already sent there and not seen start streaming, plus the
  replica's own waiting requests beyond ours at the typical prefill time;
- decode interference: each chunked-prefill step of the request also carries the replica's running
  decodes, so a busy replica prefills slower;
- scale: observed TTFT over predicted, smoothed per replica, so a replica that runs slower than its
  profile (a hot spot, a worse GPU, a simulator at a time scale) is priced as it really runs. A replica
  not observed lately drifts back to the pool's scale, so a recovered replica gets traffic again.
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

SCALE_SMOOTHING = 0.2
SCALE_MEMORY_S = 30.0
SCALE_LIMITS = (1e-4, 1e4)
TYPICAL_SMOOTHING = 0.05


@dataclass(slots=True)
class _Scale:
    value: float
    observed_at: float


class CostModel:
    def __init__(self, profile: Profile, engine_token_budget: int = 8192) -> None:
        self.profile = profile
        self.engine_token_budget = engine_token_budget
        self.pool_scale = 1.0
        self._scales: dict[str, _Scale] = {}
        self._observed_any = False
        self.typical_prefill_s = 0.0
        self.typical_prompt_tokens = 0.0

    def scale(self, replica: str, now: float | None = None) -> float:
        own = self._scales.get(replica)
        if own is None:
            return self.pool_scale
        age = (time.monotonic() if now is None else now) - own.observed_at
        weight = math.exp(-age / SCALE_MEMORY_S)
        return own.value * weight + self.pool_scale * (1.0 - weight)

    def estimate(self, replica: Replica, match: PrefixMatch, blocks: PromptBlocks, now: float) -> Estimate:
        profile = self.profile
        prompt = blocks.prompt_tokens
        per_block = blocks.tokens_per_block
        cached = min(match.blocks * per_block, prompt - 1.0)
        trim = cached / (match.blocks * per_block) if match.blocks else 0.0
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
            self.typical_prefill_s = estimate.prefill_s
            return
        a = TYPICAL_SMOOTHING
        self.typical_prompt_tokens += a * (blocks.prompt_tokens - self.typical_prompt_tokens)
        self.typical_prefill_s += a * (estimate.prefill_s - self.typical_prefill_s)

    def observe(self, replica: str, predicted_unscaled_s: float, observed_s: float, now: float) -> None:
        """Learn from a request's TTFT: the ratio to the unscaled prediction, per replica and pool-wide."""
        if predicted_unscaled_s <= 0.0 or observed_s <= 0.0:
            return
        low, high = SCALE_LIMITS
        ratio = min(max(observed_s / predicted_unscaled_s, low), high)
        if not self._observed_any:
            self._observed_any = True
            self.pool_scale = ratio
        else:
            self.pool_scale *= (ratio / self.pool_scale) ** (SCALE_SMOOTHING / 4)
        own = self._scales.get(replica)
        if own is None:
            self._scales[replica] = _Scale(ratio, now)
        else:
            own.value = self.scale(replica, now) * (ratio / self.scale(replica, now)) ** SCALE_SMOOTHING
            own.observed_at = now

    def forget(self, replica: str) -> None:
        self._scales.pop(replica, None)
