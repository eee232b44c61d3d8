"""Keeping the replica set true: active health checks, passive failure counting, and metrics scraping.

Active: every `interval_s` each replica's `/health` is asked; a replica that answers 200 is routable,
one that does not is taken out. A replica whose models are not configured has them read from its
`/v1/models`. Passive: `failure_threshold` consecutive failed attempts take a replica out at once and
for at least `cooldown_s`, until its `/health` answers again. Every `scrape_interval_s` each replica's
`/metrics` is read for its queue, KV usage and cache geometry (vLLM's gauges, old and new spellings).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiohttp
import orjson
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import HealthConfig
from gateway.replicas import Replica, ReplicaSet
from gateway.upstream import Upstream

log = logging.getLogger("kvgate.health")

WAITING = ("vllm:num_requests_waiting",)
RUNNING = ("vllm:num_requests_running",)
KV_USAGE = ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")
CACHE_CONFIG = ("vllm:cache_config_info",)
_SCRAPED_PREFIXES = tuple(name.encode() for name in WAITING + RUNNING + KV_USAGE + CACHE_CONFIG)


@dataclass(frozen=True, slots=True)
class CacheGeometry:
    """What `vllm:cache_config_info` tells: the engine's block size and its GPU and CPU block counts."""

    block_size: int
    gpu_blocks: int
    cpu_blocks: int = 0


@dataclass(slots=True)
class ScrapeResult:
    waiting: float
    running: float
    kv_usage: float
    geometry: CacheGeometry | None


def parse_vllm_metrics(text: bytes) -> ScrapeResult:
    """The few vLLM figures routing needs, summed over engines (data-parallel ranks)."""
    wanted = b"\n".join(line for line in text.splitlines() if line.startswith(_SCRAPED_PREFIXES))
    waiting = running = 0.0
    usages: list[float] = []
    geometry = None
    for family in text_string_to_metric_families(wanted.decode(errors="replace")):
        for sample in family.samples:
            if sample.name in WAITING:
                waiting += sample.value
            elif sample.name in RUNNING:
                running += sample.value
            elif sample.name in KV_USAGE:
                usages.append(sample.value)
            elif sample.name in CACHE_CONFIG and geometry is None:
                geometry = _geometry(sample.labels)
    kv_usage = max(usages) if usages else 0.0
    return ScrapeResult(waiting, running, kv_usage, geometry)


def _geometry(labels: dict[str, str]) -> CacheGeometry | None:
    def number(name: str) -> int:
        value = labels.get(name)
        try:
            return int(float(value)) if value not in (None, "", "None") else 0
        except ValueError:
            return 0

    block_size, gpu_blocks = number("block_size"), number("num_gpu_blocks")
    if block_size <= 0 or gpu_blocks <= 0:
        return None
    return CacheGeometry(block_size, gpu_blocks, number("num_cpu_blocks"))


class ReplicaMonitor:
    def __init__(
        self,
        replicas: ReplicaSet,
        upstream: Upstream,
        settings: HealthConfig,
        on_geometry: Callable[[Replica, CacheGeometry], None] | None = None,
        on_out: Callable[[Replica], None] | None = None,
    ) -> None:
        self.replicas = replicas
        self.upstream = upstream
        self.settings = settings
        self.on_geometry = on_geometry
        self.on_out = on_out
        """Called when a replica is taken out: its cache is not to be trusted when it returns."""
        self._geometry: dict[str, CacheGeometry] = {}
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        await self.check_all()
        self._tasks = [
            asyncio.create_task(self._every(self.settings.interval_s, self.check_all), name="kvgate-health"),
            asyncio.create_task(
                self._every(self.settings.scrape_interval_s, self.scrape_all), name="kvgate-scrape"
            ),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks = []

    async def _every(self, period: float, job: Callable[[], object]) -> None:
        while True:
            await asyncio.sleep(period)
            try:
                await job()
            except Exception:  # a monitoring round must never end the loop
                log.exception("replica monitoring round failed")

    async def check_all(self) -> None:
        await asyncio.gather(*(self.check(replica) for replica in self.replicas))

    async def scrape_all(self) -> None:
        await asyncio.gather(*(self.scrape(replica) for replica in self.replicas if replica.healthy))

    async def _get(self, replica: Replica, path: str) -> tuple[int, bytes]:
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout_s)
        async with self.upstream.session.get(replica.url + path, timeout=timeout) as response:
            return response.status, await response.read()

    async def check(self, replica: Replica) -> None:
        try:
            status, _ = await self._get(replica, "/health")
            ok = status == 200
            if ok and not replica.models:
                replica.model_cards = await self._model_cards(replica)
                replica.models = set(replica.model_cards)
                ok = bool(replica.models)
        except (aiohttp.ClientError, TimeoutError, ValueError):
            ok = False
        if ok and not replica.healthy and time.monotonic() >= replica.cooldown_until:
            log.info("replica %s is healthy again", replica.name)
            replica.healthy = True
            replica.consecutive_failures = 0
        elif not ok and replica.healthy:
            log.warning("replica %s failed its health check; taking it out", replica.name)
            self._take_out(replica)

    async def _model_cards(self, replica: Replica) -> dict[str, dict]:
        status, body = await self._get(replica, "/v1/models")
        if status != 200:
            return {}
        data = orjson.loads(body).get("data", [])
        return {
            item["id"]: item for item in data if isinstance(item, dict) and isinstance(item.get("id"), str)
        }

    async def scrape(self, replica: Replica) -> None:
        try:
            status, body = await self._get(replica, "/metrics")
        except (aiohttp.ClientError, TimeoutError):
            return
        if status != 200:
            return
        result = parse_vllm_metrics(body)
        scraped = replica.scraped
        scraped.waiting, scraped.running, scraped.kv_usage = result.waiting, result.running, result.kv_usage
        scraped.at = time.monotonic()
        if result.geometry and self._geometry.get(replica.name) != result.geometry:
            self._geometry[replica.name] = result.geometry
            if self.on_geometry:
                self.on_geometry(replica, result.geometry)

    def report_failure(self, replica: Replica, kind: str) -> None:
        replica.consecutive_failures += 1
        if replica.consecutive_failures >= self.settings.failure_threshold and replica.healthy:
            log.warning(
                "replica %s failed %d times in a row (%s); taking it out",
                replica.name,
                replica.consecutive_failures,
                kind,
            )
            self._take_out(replica)
            replica.cooldown_until = time.monotonic() + self.settings.cooldown_s

    def _take_out(self, replica: Replica) -> None:
        replica.healthy = False
        if self.on_out:
            self.on_out(replica)

    def report_success(self, replica: Replica) -> None:
        replica.consecutive_failures = 0

    def geometry(self, replica: Replica) -> CacheGeometry | None:
        return self._geometry.get(replica.name)
