"""The gateway's HTTP clients to its replicas: keep-alive pools, opened and closed with the gateway.

Proxied requests go through `ReplicaClient` (gateway/replica_http.py), which costs half of aiohttp's
CPU per request; health checks, scrapes and tokenizer calls through one aiohttp session (aiohttp
rather than httpx: relaying a 16-event SSE stream cost 0.29-0.32 ms of client CPU per request with
aiohttp and 2.4-2.7 ms with httpx 0.28 on this project's 2-core machine).
"""

from __future__ import annotations

import aiohttp

from gateway.config import UpstreamConfig
from gateway.replica_http import ReplicaClient

_HEADERS = {"accept-encoding": "identity"}


class Upstream:
    def __init__(self, settings: UpstreamConfig) -> None:
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._proxied: ReplicaClient | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("the upstream client is not open")
        return self._session

    @property
    def proxied(self) -> ReplicaClient:
        """The client for the requests the gateway proxies."""
        if self._proxied is None:
            raise RuntimeError("the upstream client is not open")
        return self._proxied

    async def open(self) -> None:
        if self._session is None:
            settings = self.settings
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(
                    limit=settings.max_connections, limit_per_host=0, ttl_dns_cache=10
                ),
                timeout=aiohttp.ClientTimeout(
                    total=None, sock_connect=settings.connect_timeout_s, sock_read=settings.read_timeout_s
                ),
                headers=_HEADERS,
            )
            self._proxied = ReplicaClient(
                settings.connect_timeout_s,
                settings.read_timeout_s,
                settings.max_connections,
                default_headers=_HEADERS,
            )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None
        if self._proxied is not None:
            await self._proxied.aclose()
            self._proxied = None
