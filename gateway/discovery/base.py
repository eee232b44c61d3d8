"""The contract between a discovery source and the gateway.

A source watches wherever replicas are listed and, each time the list changes, publishes the whole
current list of endpoints. The gateway (`GatewayService.apply_endpoints`) makes its replica set match:
ready endpoints join, terminating ones drain (no new requests; in-flight ones finish), and endpoints
that are gone leave the pool and the index.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Endpoint:
    url: str
    """The replica's base URL, e.g. http://10.1.2.3:8000"""
    name: str
    """A stable name for metrics and logs: the pod name where there is one, else host:port."""
    ready: bool = True
    terminating: bool = False
    kv_events: str | None = None
    """The replica's KV events publisher, tcp://10.1.2.3:5557, when it has one."""
    kv_events_replay: str | None = None


Publish = Callable[[list[Endpoint]], Awaitable[None]]


class Discovery(Protocol):
    async def run(self, publish: Publish) -> None:
        """Publish the current endpoints, then again on every change, until cancelled."""
        ...
