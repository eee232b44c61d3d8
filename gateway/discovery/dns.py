"""Replicas from DNS, for clusters where the gateway may not read the Kubernetes API.

A headless Service's name resolves to one A or AAAA record per ready Pod. Every `interval_s` the name
is resolved again (all A and AAAA records, through the system resolver, so the Pod's search domains
apply) and each address becomes an endpoint on `discovery.port`, with its KV events publisher and replay
endpoints on `kv_events_port` and `kv_events_replay_port` when those are set. A name that does not exist
means no replicas (a headless Service with no ready Pods has no records); any other resolution failure
keeps the last endpoints until the next try.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Awaitable, Callable

from gateway.config import DiscoveryConfig
from gateway.discovery.base import Endpoint, Publish
from gateway.discovery.endpoints_of import join_host_port

log = logging.getLogger("kvgate.discovery")

Resolve = Callable[[str], Awaitable[list[str]]]
"""A name to its addresses; raises socket.gaierror as getaddrinfo does."""

_NO_SUCH_NAME = {socket.EAI_NONAME, getattr(socket, "EAI_NODATA", socket.EAI_NONAME)}


async def resolve_all(name: str) -> list[str]:
    """Every IPv4 and IPv6 address the system resolver gives for `name`, sorted, without repeats."""
    infos = await asyncio.get_running_loop().getaddrinfo(name, None, type=socket.SOCK_STREAM)
    return sorted({info[4][0] for info in infos})


class DnsDiscovery:
    def __init__(self, settings: DiscoveryConfig, resolve: Resolve = resolve_all) -> None:
        if not settings.dns_name or not settings.port:
            raise ValueError("DNS discovery needs discovery.dns_name and discovery.port")
        self.settings = settings
        self.resolve = resolve
        self._published: list[Endpoint] | None = None

    def endpoints_at(self, addresses: list[str]) -> list[Endpoint]:
        settings = self.settings
        assert settings.port is not None
        found = []
        for address in addresses:
            events, replay = settings.kv_events_port, settings.kv_events_replay_port
            found.append(
                Endpoint(
                    url=f"http://{join_host_port(address, settings.port)}",
                    name=join_host_port(address, settings.port),
                    kv_events=f"tcp://{join_host_port(address, events)}" if events else None,
                    kv_events_replay=f"tcp://{join_host_port(address, replay)}" if replay else None,
                )
            )
        return sorted(found, key=lambda endpoint: endpoint.name)

    async def run(self, publish: Publish) -> None:
        name = self.settings.dns_name
        assert name is not None
        while True:
            try:
                addresses = await self.resolve(name)
            except socket.gaierror as error:
                if error.errno in _NO_SUCH_NAME:
                    addresses = []
                else:
                    log.warning("discovery: resolving %s failed (%s); keeping the last replicas", name, error)
                    addresses = None
            if addresses is not None:
                endpoints = self.endpoints_at(addresses)
                if endpoints != self._published:
                    self._published = endpoints
                    log.info("discovery: %s resolves to %d replicas", name, len(endpoints))
                    try:
                        await publish(endpoints)
                    except Exception:  # one failed update must not end discovery
                        log.exception("discovery: applying %d endpoints failed", len(endpoints))
            await asyncio.sleep(self.settings.interval_s)
