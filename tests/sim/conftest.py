from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from loadtest.sim import SimConfig, SimFleet

FleetFactory = Callable[..., Awaitable[SimFleet]]


@pytest.fixture
async def start_fleet() -> AsyncIterator[FleetFactory]:
    """Start in-process fleets on free loopback ports; all are stopped after the test."""
    fleets: list[SimFleet] = []

    async def start(replicas: int = 1, **config: Any) -> SimFleet:
        fleet = SimFleet(SimConfig(**config), replicas=replicas)
        await fleet.start()
        fleets.append(fleet)
        return fleet

    yield start
    for fleet in fleets:
        await fleet.stop()
