"""Latency profiles of an inference replica, fitted to GPU calibration figures.

One profile answers three questions that both the simulator and the gateway's routing cost model ask:
how long a prefill of `new` tokens takes on top of `cached` tokens already in HBM, how long a batch's
decode step takes, and how long it takes to bring cached KV blocks back from DRAM or storage.

The raw figures were measured on one H100 80GB with Llama-3-shaped decoders (bf16, random weights,
SDPA attention, batch 1 prefill); the 70B profile is the 1-GPU equivalent (8 of 80 layers measured,
times scaled by 10). The prefill model is

    seconds = fixed + per_token * new + per_token_context * new * cached + per_token_pair * new**2 / 2

(the projections and MLP grow with the new tokens, attention with new x context), fitted by weighted
least squares (weights 1/sqrt(seconds), so neither the short nor the long prefills dominate). Decode
figures came from an eager loop 3-4x slower than a tuned engine, so they set the shape (growth with the
KV read per step) and `DECODE_ENGINE_SPEEDUP` sets the level.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from functools import cache

import numpy as np

DECODE_ENGINE_SPEEDUP = 3.5
"""Eager-loop decode steps over tuned-engine steps (CUDA graphs, paged attention): 3-4x, take the middle."""

H2D_PINNED_BYTES_PER_S = 55.0e9
"""Measured host-to-device copy of pinned memory: the DRAM tier's fetch bandwidth."""

STORAGE_BYTES_PER_S = 8.0e9
"""Not measured: a local NVMe array or a fast parallel file system read into HBM. Override per replica."""


class Tier(IntEnum):
    """Where a cached block lives, fastest first. The order is used: a lower value is a cheaper hit."""

    HBM = 0
    DRAM = 1
    STORAGE = 2
    SHARED = 3  # a cluster-wide KV store every replica can load from

    @classmethod
    def parse(cls, name: str | None) -> Tier:
        """vLLM's `medium` field: GPU / CPU / STORAGE in any case; missing means GPU."""
        key = (name or "GPU").strip().upper()
        tier = _MEDIUM_TO_TIER.get(key)
        return cls[key] if tier is None else tier


_MEDIUM_TO_TIER = {"GPU": Tier.HBM, "CPU": Tier.DRAM, "DISK": Tier.STORAGE, "REMOTE": Tier.SHARED}


@dataclass(frozen=True, slots=True)
class PrefillModel:
    fixed: float
    per_token: float
    per_token_context: float
    per_token_pair: float

    def seconds(self, new_tokens: float, cached_tokens: float = 0.0) -> float:
        """Time to prefill `new_tokens` in one pass when `cached_tokens` of context are already in HBM."""
        if new_tokens <= 0:
            return 0.0
        return self.fixed + self.chunk_seconds(new_tokens, cached_tokens)

    def chunk_seconds(self, new_tokens: float, cached_tokens: float, computed_tokens: float = 0.0) -> float:
        """A chunk of a chunked prefill, without the per-pass fixed cost (a scheduler step pays that once).

        `cached_tokens` were cached before the request arrived; `computed_tokens` were prefilled by the
        request's earlier chunks. Attention over the latter costs what it would have cost in a single
        pass, so a prompt prefilled in chunks costs what the calibration measured for one pass.
        """
        return new_tokens * (
            self.per_token
            + self.per_token_context * cached_tokens
            + self.per_token_pair * (computed_tokens + new_tokens / 2.0)
        )


@dataclass(frozen=True, slots=True)
class DecodeModel:
    fixed: float
    per_context_token: float

    def step_seconds(self, batch_context_tokens: float) -> float:
        """One decode step for a batch whose sequences hold `batch_context_tokens` of KV in total."""
        return self.fixed + self.per_context_token * batch_context_tokens


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    kv_bytes_per_token: int
    prefill: PrefillModel
    decode: DecodeModel
    dram_bytes_per_s: float = H2D_PINNED_BYTES_PER_S
    storage_bytes_per_s: float = STORAGE_BYTES_PER_S
    shared_bytes_per_s: float = STORAGE_BYTES_PER_S

    def fetch_seconds(self, tokens: float, tier: Tier) -> float:
        """Time to bring `tokens` of cached KV into HBM from `tier` (an HBM hit costs no copy)."""
        if tier is Tier.HBM or tokens <= 0:
            return 0.0
        bandwidth = {
            Tier.DRAM: self.dram_bytes_per_s,
            Tier.STORAGE: self.storage_bytes_per_s,
            Tier.SHARED: self.shared_bytes_per_s,
        }[tier]
        return tokens * self.kv_bytes_per_token / bandwidth

    def scaled(self, tensor_parallel: int) -> Profile:
        """First approximation of a replica sharded over `tensor_parallel` GPUs: every time divided."""
        if tensor_parallel <= 1:
            return self
        k = 1.0 / tensor_parallel
        p, d = self.prefill, self.decode
        return Profile(
            name=f"{self.name}-tp{tensor_parallel}",
            kv_bytes_per_token=self.kv_bytes_per_token,
            prefill=PrefillModel(p.fixed * k, p.per_token * k, p.per_token_context * k, p.per_token_pair * k),
            decode=DecodeModel(d.fixed * k, d.per_context_token * k),
            dram_bytes_per_s=self.dram_bytes_per_s,
            storage_bytes_per_s=self.storage_bytes_per_s,
            shared_bytes_per_s=self.shared_bytes_per_s,
        )


# (new tokens, cached tokens, seconds) for prefill; (batch, context per sequence, seconds) for decode.
# Cold prefills shorter than 1k tokens are left out: they measure launch overhead, not the model.
CALIBRATION: dict[str, dict] = {
    "h100-llama3-8b": {
        "kv_bytes_per_token": 131072,
        "prefill": [
            (1024, 0, 0.03702),
            (4096, 0, 0.12572),
            (16384, 0, 0.59553),
            (32768, 0, 1.39067),
            (256, 4096, 0.04109),
            (512, 16384, 0.04866),
            (1024, 32768, 0.11598),
        ],
        "decode": [(1, 4096, 0.03194), (16, 4096, 0.04245)],
    },
    "h100-llama3-70b": {
        "kv_bytes_per_token": 327680,
        "prefill": [
            (1024, 0, 0.2628),
            (4096, 0, 1.02386),
            (16384, 0, 4.47895),
            (65536, 0, 25.03691),
            (512, 16384, 0.25774),
            (1024, 65536, 1.04112),
        ],
        "decode": [(1, 4096, 0.08306), (16, 4096, 0.15639)],
    },
}


def _fit_prefill(points: list[tuple[int, int, float]]) -> PrefillModel:
    rows = np.array([[1.0, n, n * c, n * n / 2.0] for n, c, _ in points])
    seconds = np.array([s for _, _, s in points])
    # Between absolute error (long prefills dominate) and relative error (short ones do).
    weights = 1.0 / np.sqrt(seconds)
    coef, *_ = np.linalg.lstsq(rows * weights[:, None], seconds * weights, rcond=None)
    coef = np.maximum(coef, 0.0)
    return PrefillModel(*(float(x) for x in coef))


def _fit_decode(points: list[tuple[int, int, float]]) -> DecodeModel:
    (b1, c1, s1), (b2, c2, s2) = points
    per_context_token = (s2 - s1) / (b2 * c2 - b1 * c1)
    fixed = s1 - per_context_token * b1 * c1
    return DecodeModel(fixed / DECODE_ENGINE_SPEEDUP, per_context_token / DECODE_ENGINE_SPEEDUP)


PROFILE_NAMES = tuple(CALIBRATION)
DEFAULT_PROFILE = "h100-llama3-8b"


@cache
def get_profile(name: str = DEFAULT_PROFILE) -> Profile:
    try:
        figures = CALIBRATION[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; known: {', '.join(PROFILE_NAMES)}") from None
    return Profile(
        name=name,
        kv_bytes_per_token=figures["kv_bytes_per_token"],
        prefill=_fit_prefill(figures["prefill"]),
        decode=_fit_decode(figures["decode"]),
    )
