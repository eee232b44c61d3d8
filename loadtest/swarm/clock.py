"""Workload time: wall-clock time multiplied by the run's time scale.

With `--time-scale K` every think time, inter-arrival time, period and duration is a workload duration
that passes K times faster than the wall clock (the generator waits `seconds / K`), and every latency
the client measures is multiplied by K. Against a simulator running at time scale K (which serves
requests K times faster than the hardware it models), every figure the swarm reports is therefore in
simulated seconds, as if the run had taken K times longer on real hardware. With K = 1 (the default,
and the only sensible value against a real endpoint) workload time is wall time.
"""

from __future__ import annotations

import asyncio
import time


class WorkloadClock:
    __slots__ = ("origin", "scale")

    def __init__(self, time_scale: float = 1.0) -> None:
        if time_scale <= 0:
            raise ValueError("the time scale must be positive")
        self.scale = time_scale
        self.origin = time.perf_counter()

    def start(self) -> None:
        self.origin = time.perf_counter()

    def now(self) -> float:
        """Workload seconds since the start of the run."""
        return (time.perf_counter() - self.origin) * self.scale

    def at(self, perf_counter: float) -> float:
        """Workload seconds since the start of the run of a `time.perf_counter()` reading."""
        return (perf_counter - self.origin) * self.scale

    def duration(self, wall_seconds: float) -> float:
        return wall_seconds * self.scale

    def wall(self, workload_seconds: float) -> float:
        return workload_seconds / self.scale

    async def sleep(self, workload_seconds: float) -> None:
        await asyncio.sleep(max(0.0, workload_seconds) / self.scale)

    async def sleep_until(self, workload_time: float) -> None:
        await asyncio.sleep(max(0.0, workload_time - self.now()) / self.scale)
