"""The gateway's figures from its Prometheus text, and its process's memory and open files over time."""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from dataclasses import dataclass, field

import aiohttp
import psutil
from prometheus_client.parser import text_string_to_metric_families


class GatewayGauges:
    """Reads `url`/metrics; `value(name, **labels)` sums the samples of `name` whose labels match."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.samples: list[tuple[str, dict[str, str], float]] = []

    async def read(self, session: aiohttp.ClientSession) -> GatewayGauges:
        async with session.get(self.url + "/metrics", timeout=aiohttp.ClientTimeout(total=5)) as response:
            text = await response.text()
        self.samples = [
            (sample.name, sample.labels, sample.value)
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        ]
        return self

    def value(self, name: str, **labels: str) -> float:
        return sum(
            value
            for sample_name, sample_labels, value in self.samples
            if sample_name == name and all(sample_labels.get(k) == v for k, v in labels.items())
        )

    def by_label(self, name: str, label: str, **labels: str) -> dict[str, float]:
        out: dict[str, float] = {}
        for sample_name, sample_labels, value in self.samples:
            if sample_name == name and all(sample_labels.get(k) == v for k, v in labels.items()):
                key = sample_labels.get(label, "")
                out[key] = out.get(key, 0.0) + value
        return out


@dataclass
class ProcessSampler:
    """Samples a process's resident memory (bytes) and open file descriptors every `interval_s`."""

    pid: int
    interval_s: float = 10.0
    samples: list[tuple[float, int, int]] = field(default_factory=list)
    """(seconds since start, RSS bytes, open fds)."""
    _task: asyncio.Task | None = None

    def sample(self, started: float) -> None:
        process = psutil.Process(self.pid)
        self.samples.append((time.monotonic() - started, process.memory_info().rss, process.num_fds()))

    async def _loop(self) -> None:
        started = time.monotonic()
        while True:
            self.sample(started)
            await asyncio.sleep(self.interval_s)

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def summary(self, column: int) -> dict[str, float]:
        """first / median / last / max of column 1 (RSS) or 2 (fds); after the first quarter of the samples
        (warm-up), their min, max and least-squares slope per minute."""
        values = [sample[column] for sample in self.samples]
        settled = self.samples[len(self.samples) // 4 :]
        return {
            "settled_min": min(sample[column] for sample in settled),
            "settled_max": max(sample[column] for sample in settled),
            "first": values[0],
            "median": statistics.median(values),
            "last": values[-1],
            "max": max(values),
            "slope_per_min": slope_per_minute([(sample[0], sample[column]) for sample in settled]),
        }


def slope_per_minute(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, value) points, per minute; 0 for fewer than two points."""
    if len(points) < 2:
        return 0.0
    times = [t for t, _ in points]
    values = [v for _, v in points]
    mean_t, mean_v = statistics.fmean(times), statistics.fmean(values)
    spread = sum((t - mean_t) ** 2 for t in times)
    if not spread:
        return 0.0
    return 60.0 * sum((t - mean_t) * (v - mean_v) for t, v in points) / spread
