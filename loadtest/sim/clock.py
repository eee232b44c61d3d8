"""Simulated time: a clock that runs `time_scale` times faster than real time.

Simulated seconds start at 0 when the clock is made. `wall()` maps them onto Unix time (the real time at
start plus simulated seconds since), which is what responses (`created`) and KV event batches (`ts`) carry.
"""

from __future__ import annotations

import asyncio
import time


class SimClock:
    def __init__(self, time_scale: float = 1.0) -> None:
        if time_scale <= 0:
            raise ValueError("time_scale must be > 0")
        self.time_scale = float(time_scale)
        self._real_origin = time.monotonic()
        self._wall_origin = time.time()

    def now(self) -> float:
        """Simulated seconds since the clock started."""
        return (time.monotonic() - self._real_origin) * self.time_scale

    def wall(self, sim_time: float | None = None) -> float:
        """Unix time of a simulated instant (now by default)."""
        return self._wall_origin + (self.now() if sim_time is None else sim_time)

    def real_seconds(self, sim_seconds: float) -> float:
        return sim_seconds / self.time_scale

    def real_delay_until(self, sim_time: float) -> float:
        """Real seconds until the simulated instant; negative when it has passed."""
        return (sim_time - self.now()) / self.time_scale

    async def sleep_until(self, sim_time: float) -> None:
        delay = self.real_delay_until(sim_time)
        if delay > 0:
            await asyncio.sleep(delay)

    async def sleep(self, sim_seconds: float) -> None:
        if sim_seconds > 0:
            await asyncio.sleep(sim_seconds / self.time_scale)
