"""The shared index: Redis for what every gateway replica has routed, the embedded index for our own.

Every lookup asks both, Redis in one round trip, and takes per replica what Redis says, refined by the
local view below Redis's granularity (a stride of blocks); every routing decision goes into the
embedded index at once and into a queue that a background task writes to Redis in batches, off the
request's path. When Redis fails or is slow, a circuit breaker opens: for a
while (1 s, doubling up to 30 s) requests route from the embedded index alone, writes wait in a
bounded queue, a metric and a log line say so; then one lookup probes Redis again, and when it answers
the queue drains and the gateways agree again. A failed Redis call never fails a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Iterable, Sequence

from prometheus_client import Counter, Gauge, Histogram

from gateway.index.base import NO_MATCH, PrefixMatch, TierCapacity
from gateway.index.embedded import EmbeddedIndex
from gateway.index.redis_store import RedisPrefixStore, pack
from gateway.profiles import Tier

log = logging.getLogger("kvgate.index")

BACKOFF_FIRST_S = 1.0
BACKOFF_MAX_S = 30.0
PROBE_STALE_S = 10.0
"""A probe that neither failed nor succeeded for this long (cancelled) lets another one through."""
FLUSH_BATCH = 256
FLUSH_LINGER_S = 0.005
"""After a record wakes the writer, how long it waits for more to write in the same pipeline."""
WRITE_TIMEOUT_S = 1.0
"""A batch of records or a forget that takes longer counts as a failure (and is tried again later)."""


class CircuitBreaker:
    """Closed: every call goes to Redis. Open: none does until `open_until`; then one call at a time
    probes (half-open). Only a failed probe doubles the back-off: calls that were already in flight
    when Redis went away fail together, and count as one failure."""

    def __init__(self) -> None:
        self.open_until = 0.0
        self.backoff = BACKOFF_FIRST_S
        self.is_open = False
        self.probe_started: float | None = None

    def allows(self, now: float) -> bool:
        if not self.is_open:
            return True
        if now < self.open_until:
            return False
        if self.probe_started is not None and now - self.probe_started < PROBE_STALE_S:
            return False  # another call is probing
        self.probe_started = now
        return True

    def failed(self, now: float) -> bool:
        """Record a failure; True when this failure opened the breaker (it was closed)."""
        if not self.is_open:
            self.is_open = True
            self.backoff = BACKOFF_FIRST_S
            self.open_until = now + self.backoff
            return True
        if self.probe_started is not None:  # the probe (or a call beside it) failed: wait longer
            self.probe_started = None
            self.backoff = min(self.backoff * 2, BACKOFF_MAX_S)
            self.open_until = now + self.backoff
        return False

    def succeeded(self) -> bool:
        """Record a success; True when this success closed the breaker."""
        closed = self.is_open
        self.is_open = False
        self.probe_started = None
        self.backoff = BACKOFF_FIRST_S
        return closed


class _RedisMetrics:
    def __init__(self, registry) -> None:
        self.up = Gauge("kvgate_index_redis_up", "1 while the shared Redis index answers.", registry=registry)
        self.latency = Histogram(
            "kvgate_index_redis_latency_seconds",
            "Round trips to the shared Redis index.",
            ["op"],
            buckets=(0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
            registry=registry,
        )
        self.fallbacks = Counter(
            "kvgate_index_redis_fallbacks",
            "Lookups answered from the local index alone because Redis was down or slow.",
            registry=registry,
        )
        self.pending = Gauge(
            "kvgate_index_redis_pending_writes",
            "Routing records waiting to be written to Redis.",
            registry=registry,
        )
        self.dropped = Counter(
            "kvgate_index_redis_dropped_writes",
            "Routing records dropped because the write queue was full while Redis was down.",
            registry=registry,
        )
        self.up.set(1)


class SharedIndex:
    def __init__(
        self,
        store: RedisPrefixStore,
        default_capacity: TierCapacity,
        registry,
        lookup_timeout_s: float = 0.05,
        max_pending: int = 10_000,
    ) -> None:
        self.store = store
        self.local = EmbeddedIndex(default_capacity)
        self.lookup_timeout_s = lookup_timeout_s
        self.breaker = CircuitBreaker()
        self.metrics = _RedisMetrics(registry)
        self._capacities: dict[str, TierCapacity] = {}
        self._models_of: dict[str, set[str]] = {}
        self._pending: deque[tuple[str, str, bytes, int]] = deque(maxlen=max_pending)
        self._writing = 0
        """Records of the batch being written now (taken off the queue, not yet in Redis)."""
        self._wake = asyncio.Event()
        self._flusher: asyncio.Task | None = None

    def _capacity(self, replica: str) -> TierCapacity:
        return self._capacities.get(replica, self.local.default_capacity)

    async def match(
        self, model: str, hashes: Sequence[int], replicas: Iterable[str]
    ) -> dict[str, PrefixMatch]:
        names = list(replicas)
        local = await self.local.match(model, hashes, names)
        now = time.monotonic()
        packed = pack(hashes, self.store.stride)
        if not packed or not self.breaker.allows(now):
            if packed:
                self.metrics.fallbacks.inc()
            return local
        capacities = [(self._capacity(r).hbm, self._capacity(r).dram) for r in names]
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.lookup_timeout_s):  # no extra task, unlike wait_for
                shared = await self.store.lookup(model, packed, names, capacities)
        except Exception as exc:
            self._failed("lookup", exc)
            self.metrics.fallbacks.inc()
            return local
        self.metrics.latency.labels("lookup").observe(time.perf_counter() - started)
        self._succeeded()
        return self._merge(names, local, shared)

    def _merge(
        self, names: list[str], local: dict[str, PrefixMatch], shared: dict[str, PrefixMatch]
    ) -> dict[str, PrefixMatch]:
        """Redis holds every gateway's records, so its LRU model has seen the prompts that pushed a prefix
        out; the local model has seen this gateway's share only and remembers blocks long gone. Where
        Redis answered, the local view only adds what Redis cannot tell: the tail past its last stored
        (every stride-th) hash."""
        merged: dict[str, PrefixMatch] = {}
        stride = self.store.stride
        for replica in names:
            remote = shared.get(replica, NO_MATCH)
            mine = local.get(replica, NO_MATCH)
            best = mine if remote.blocks <= mine.blocks < remote.blocks + stride else remote
            if best.blocks:
                merged[replica] = best
        return merged

    def record(self, model: str, replica: str, hashes: Sequence[int]) -> None:
        self.local.record(model, replica, hashes)
        packed = pack(hashes, self.store.stride)
        if not packed:
            return
        self._models_of.setdefault(replica, set()).add(model)
        if len(self._pending) == self._pending.maxlen:
            self.metrics.dropped.inc()
        self._pending.append((model, replica, packed, self._total(replica)))
        self.metrics.pending.set(len(self._pending))
        self._wake.set()
        if self._flusher is None:
            self._flusher = asyncio.create_task(self._flush_forever(), name="kvgate-redis-flush")

    def _total(self, replica: str) -> int:
        capacity = self._capacity(replica)
        return capacity.hbm + capacity.dram + capacity.storage

    async def _flush_forever(self) -> None:
        while True:
            await self._wake.wait()
            await asyncio.sleep(FLUSH_LINGER_S)
            self._wake.clear()
            while self._pending:
                now = time.monotonic()
                if not self.breaker.allows(now):  # open, or another call is probing
                    await asyncio.sleep(max(self.breaker.open_until - now, 0.05))
                    continue
                batch = [self._pending.popleft() for _ in range(min(FLUSH_BATCH, len(self._pending)))]
                started = time.perf_counter()
                self._writing = len(batch)
                try:
                    async with asyncio.timeout(WRITE_TIMEOUT_S):
                        await self.store.record_many(batch)
                except Exception as exc:
                    self._pending.extendleft(reversed(batch))
                    self._failed("record", exc)
                    continue
                finally:
                    self._writing = 0
                self.metrics.latency.labels("record").observe(time.perf_counter() - started)
                self.metrics.pending.set(len(self._pending))
                self._succeeded()

    async def flush(self, timeout_s: float = 5.0) -> None:
        """Wait until every queued record is in Redis, the batch being written included (for tests and
        shutdown)."""
        deadline = time.monotonic() + timeout_s
        while (self._pending or self._writing) and time.monotonic() < deadline:
            self._wake.set()
            await asyncio.sleep(0.005)

    def _failed(self, op: str, exc: Exception) -> None:
        if self.breaker.failed(time.monotonic()):
            self.metrics.up.set(0)
            reason = f"{type(exc).__name__}: {exc}"
            log.warning(
                "shared Redis index %s failed (%s); routing from the local index until it answers", op, reason
            )
        self.metrics.pending.set(len(self._pending))

    def _succeeded(self) -> None:
        if self.breaker.succeeded():
            self.metrics.up.set(1)
            log.warning(
                "shared Redis index is answering again; %d queued records to write", len(self._pending)
            )
            self._wake.set()

    async def forget_replica(self, replica: str) -> None:
        await self.local.forget_replica(replica)
        models = sorted(self._models_of.pop(replica, set()))
        if models and self.breaker.allows(time.monotonic()):
            try:
                async with asyncio.timeout(WRITE_TIMEOUT_S):
                    await self.store.forget(models, replica)
            except Exception as exc:
                self._failed("forget", exc)

    def set_capacity(self, replica: str, capacity: TierCapacity) -> None:
        self._capacities[replica] = capacity
        self.local.set_capacity(replica, capacity)

    def block_counts(self) -> dict[str, dict[Tier, int]]:
        return self.local.block_counts()

    def evictions(self) -> dict[str, list[int]]:
        return self.local.evictions()

    async def close(self) -> None:
        if self._flusher is not None:
            await self.flush(timeout_s=2.0)
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        await self.store.close()
        await self.local.close()
