"""Waiting in async tests for something that happens in the background, with a bound."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def eventually(condition: Callable[[], object], limit_s: float = 10.0, what: str = "") -> None:
    deadline = asyncio.get_running_loop().time() + limit_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what or condition}"
        await asyncio.sleep(0.02)
