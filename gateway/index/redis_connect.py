"""The shared index's connection to Redis from its configuration: plain, TLS, Sentinel or Cluster.

A single Redis, plain or TLS, and the master behind Sentinel are reached through `RespLink`, one
pipelined connection; Redis Cluster through redis-py's cluster client, which routes each call to the
node of its hash slot.
"""

from __future__ import annotations

import ssl
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import parse_url
from redis.asyncio.sentinel import Sentinel

from gateway.config import RedisConfig
from gateway.index.resp_link import Address, Command, RespLink

CONNECT_TIMEOUT_S = 1.0
SOCKET_TIMEOUT_S = 1.0
"""redis-py's per-call timeout (Sentinel queries, Cluster calls); and how long `RespLink` waits for a
reply before it counts the connection as dead."""


class RedisCommands(Protocol):
    async def execute(self, *command: str | bytes | int | float) -> Any: ...

    async def execute_many(self, commands: Sequence[Command]) -> list[Any]: ...

    async def aclose(self) -> None: ...


class RedisPyCommands:
    """The same calls through a redis-py client. For Redis Cluster each call goes to the node that holds
    its keys' slot, so a batch is sent call by call (its calls may belong to different models, hence
    slots)."""

    def __init__(self, client: Redis | RedisCluster) -> None:
        self.client = client

    async def execute(self, *command: str | bytes | int | float) -> Any:
        if command[:2] == ("SCRIPT", "LOAD"):  # to every primary, as one name for redis-py's routing
            return await self.client.script_load(command[2])
        return await self.client.execute_command(*command)

    async def execute_many(self, commands: Sequence[Command]) -> list[Any]:
        return [await self.execute(*command) for command in commands]

    async def aclose(self) -> None:
        await self.client.aclose()


def _password(config: RedisConfig) -> str | None:
    return Path(config.password_file).read_text().strip() if config.password_file else None


def _uses_tls(config: RedisConfig) -> bool:
    return config.url.startswith("rediss://") or bool(config.tls_ca_file or config.tls_cert_file)


def _tls(config: RedisConfig) -> dict[str, Any]:
    """TLS options in redis-py's terms (Sentinel, Cluster)."""
    if not _uses_tls(config):
        return {}
    options: dict[str, Any] = {"ssl": True, "ssl_ca_certs": config.tls_ca_file}
    if config.tls_cert_file:
        options |= {"ssl_certfile": config.tls_cert_file, "ssl_keyfile": config.tls_key_file}
    return options


def _ssl_context(config: RedisConfig) -> ssl.SSLContext | None:
    if not _uses_tls(config):
        return None
    context = ssl.create_default_context(cafile=config.tls_ca_file)
    if config.tls_cert_file:
        context.load_cert_chain(config.tls_cert_file, config.tls_key_file)
    return context


def make_redis_commands(config: RedisConfig) -> RedisCommands:
    timeouts = {"socket_connect_timeout": CONNECT_TIMEOUT_S, "socket_timeout": SOCKET_TIMEOUT_S}
    password = _password(config)
    if config.cluster:
        options = timeouts | _tls(config) | ({"password": password} if password else {})
        return RedisPyCommands(RedisCluster.from_url(config.url, **options))
    url = parse_url(config.url)
    if config.sentinels:
        hosts = []
        for entry in config.sentinels:
            host, _, port = entry.rpartition(":")
            hosts.append((host, int(port)))
        sentinel_options = timeouts | {"password": password} | _tls(config)
        sentinel = Sentinel(hosts, sentinel_kwargs=sentinel_options)
        service = config.sentinel_service

        async def resolve() -> Address:
            return await sentinel.discover_master(service)

    else:
        address: Address = url.get("path") or (url.get("host", "localhost"), url.get("port", 6379))

        async def resolve() -> Address:
            return address

    return RespLink(
        resolve,
        ssl_context=_ssl_context(config),
        username=url.get("username"),
        password=password or url.get("password"),
        db=int(url.get("db", 0)),
        connect_timeout_s=CONNECT_TIMEOUT_S,
        stall_s=SOCKET_TIMEOUT_S,
    )
