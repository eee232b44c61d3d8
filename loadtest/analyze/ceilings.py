"""Hit-rate ceilings, working set and refresh counts of a stream of block uses.

Definitions (the same as `/work/shared/traces/README.md`, "Measured ceilings"):

- The ceiling is the share of block uses whose block was used before: the best hit rate any cache can
  reach. It is counted per block, over requests in order of their time (ties keep recorded order), each
  request's blocks in order.
- With a TTL, a use counts only if the block's previous use was at most TTL seconds earlier; every use
  refreshes the block, hit or not.
- A block is prefilled again each time a use misses after its first use (it expired in between). The
  refresh count is how many times, on average over distinct blocks, that happens.
- The working set at time `x` is the number of distinct blocks (and their tokens) that are live at `x`:
  used at most TTL seconds before (with an infinite TTL, every block seen so far).

Everything is computed with numpy over all uses at once: sorting the uses by block and then by order puts
each use right after its block's previous use, so a hit is "same block as the previous row and the time
gap is at most TTL".
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

INFINITE = math.inf
DEFAULT_TTLS: tuple[float, ...] = (60.0, 300.0, 3600.0, INFINITE)


@dataclass(frozen=True, slots=True)
class BlockUses:
    """Every block use of a workload, in the order a cache sees them."""

    times: np.ndarray
    """float64 seconds of the request that uses the block."""
    keys: np.ndarray
    """int64 block identities (equal key = equal block, scopes already folded in)."""
    tokens: np.ndarray
    """int64 tokens each block holds (its block size)."""
    requests: int

    def __post_init__(self) -> None:
        if not (len(self.times) == len(self.keys) == len(self.tokens)):
            raise ValueError("times, keys and tokens must have one entry per block use")

    @classmethod
    def from_requests(
        cls, times: list[float], key_lists: list[np.ndarray], block_tokens: list[int]
    ) -> BlockUses:
        """Uses of requests given in any order; sorted here by time, ties keeping the given order."""
        order = np.argsort(np.asarray(times, dtype=np.float64), kind="stable")
        lengths = np.fromiter((len(key_lists[i]) for i in order), dtype=np.int64, count=len(order))
        sorted_times = np.asarray(times, dtype=np.float64)[order]
        sorted_tokens = np.asarray(block_tokens, dtype=np.int64)[order]
        keys = (
            np.concatenate([np.asarray(key_lists[i], dtype=np.int64) for i in order])
            if len(order)
            else np.zeros(0, dtype=np.int64)
        )
        return cls(
            times=np.repeat(sorted_times, lengths),
            keys=keys,
            tokens=np.repeat(sorted_tokens, lengths),
            requests=len(order),
        )

    @property
    def size(self) -> int:
        return len(self.keys)


@dataclass(frozen=True, slots=True)
class TtlCeiling:
    ttl_s: float
    block_uses: int
    hit_blocks: int
    token_uses: int
    hit_tokens: int
    distinct_blocks: int
    prefills: int
    """Misses: first uses plus re-prefills after expiry."""

    @property
    def hit_rate(self) -> float:
        """Ceiling counted per block, the published figure."""
        return self.hit_blocks / self.block_uses if self.block_uses else 0.0

    @property
    def token_hit_rate(self) -> float:
        return self.hit_tokens / self.token_uses if self.token_uses else 0.0

    @property
    def refresh_count(self) -> float:
        """Average number of times each distinct block is prefilled again after its first prefill."""
        return (self.prefills - self.distinct_blocks) / self.distinct_blocks if self.distinct_blocks else 0.0

    def as_dict(self) -> dict[str, float | int | str]:
        return {
            "ttl_s": ttl_label(self.ttl_s),
            "block_uses": self.block_uses,
            "hit_blocks": self.hit_blocks,
            "hit_rate": self.hit_rate,
            "token_hit_rate": self.token_hit_rate,
            "distinct_blocks": self.distinct_blocks,
            "prefills": self.prefills,
            "refresh_count": self.refresh_count,
        }


def ttl_label(ttl_s: float) -> str:
    return "inf" if math.isinf(ttl_s) else f"{ttl_s:g}"


def parse_ttl(text: str) -> float:
    value = text.strip().lower()
    if value in ("inf", "infinite", "none"):
        return INFINITE
    seconds = float(value.removesuffix("s"))
    if seconds <= 0:
        raise ValueError(f"a TTL must be positive seconds or 'inf', not {text!r}")
    return seconds


@dataclass(frozen=True, slots=True)
class _ReuseGaps:
    """For each use (in by-block order): does it follow an earlier use of its block, and how long after."""

    order: np.ndarray
    repeat: np.ndarray
    gap: np.ndarray


def _reuse_gaps(uses: BlockUses) -> _ReuseGaps:
    sequence = np.arange(uses.size, dtype=np.int64)
    order = np.lexsort((sequence, uses.keys))
    keys = uses.keys[order]
    times = uses.times[order]
    repeat = np.zeros(uses.size, dtype=bool)
    gap = np.full(uses.size, np.inf)
    if uses.size > 1:
        repeat[1:] = keys[1:] == keys[:-1]
        gap[1:] = np.where(repeat[1:], times[1:] - times[:-1], np.inf)
    return _ReuseGaps(order=order, repeat=repeat, gap=gap)


def ceilings(uses: BlockUses, ttls: tuple[float, ...] = DEFAULT_TTLS) -> list[TtlCeiling]:
    """The hit-rate ceiling and refresh count for each TTL (seconds; `math.inf` for no expiry)."""
    reuse = _reuse_gaps(uses)
    tokens_by_block = uses.tokens[reuse.order]
    distinct = int(uses.size - reuse.repeat.sum())
    total_tokens = int(uses.tokens.sum())
    results = []
    for ttl in ttls:
        hit = reuse.repeat & (reuse.gap <= ttl)
        hits = int(hit.sum())
        results.append(
            TtlCeiling(
                ttl_s=ttl,
                block_uses=uses.size,
                hit_blocks=hits,
                token_uses=total_tokens,
                hit_tokens=int(tokens_by_block[hit].sum()),
                distinct_blocks=distinct,
                prefills=uses.size - hits,
            )
        )
    return results


@dataclass(frozen=True, slots=True)
class WorkingSet:
    times: np.ndarray
    blocks: dict[float, np.ndarray]
    tokens: dict[float, np.ndarray]


def working_set(uses: BlockUses, ttls: tuple[float, ...] = DEFAULT_TTLS, points: int = 200) -> WorkingSet:
    """Distinct live blocks and tokens at `points` evenly spaced times over the workload's span.

    Consecutive uses of a block at most TTL apart keep it live without a break, so each such run of uses
    is one interval, from its first use to TTL after its last; a block is counted once however often it
    is used.
    """
    if uses.size == 0:
        grid = np.zeros(1)
        return WorkingSet(grid, {t: np.zeros(1) for t in ttls}, {t: np.zeros(1) for t in ttls})
    reuse = _reuse_gaps(uses)
    times = uses.times[reuse.order]
    tokens = uses.tokens[reuse.order].astype(np.float64)
    grid = np.linspace(float(uses.times.min()), float(uses.times.max()), max(2, points))
    blocks: dict[float, np.ndarray] = {}
    token_counts: dict[float, np.ndarray] = {}
    for ttl in ttls:
        run_starts = np.flatnonzero(~reuse.repeat | (reuse.gap > ttl))
        run_last_use = times[np.append(run_starts[1:], uses.size) - 1]
        start = times[run_starts]
        end = run_last_use + ttl
        blocks[ttl] = _live_at(grid, start, end, np.ones(len(run_starts)))
        token_counts[ttl] = _live_at(grid, start, end, tokens[run_starts])
    return WorkingSet(grid, blocks, token_counts)


def _live_at(grid: np.ndarray, start: np.ndarray, end: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """Sum of the weights of the intervals [start, end) that contain each grid time."""
    start_order = np.argsort(start, kind="stable")
    end_order = np.argsort(end, kind="stable")
    started = np.concatenate(([0.0], np.cumsum(weight[start_order])))
    ended = np.concatenate(([0.0], np.cumsum(weight[end_order])))
    started_by = started[np.searchsorted(start[start_order], grid, side="right")]
    ended_by = ended[np.searchsorted(end[end_order], grid, side="right")]
    return started_by - ended_by
