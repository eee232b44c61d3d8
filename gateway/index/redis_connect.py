"""A Redis client for the shared index from its configuration: plain, TLS, Sentinel or Cluster."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.sentinel import Sentinel

from gateway.config import RedisConfig

CONNECT_TIMEOUT_S = 1.0
SOCKET_TIMEOUT_S = 1.0


def _tls(config: RedisConfig) -> dict[str, Any]:
    if not (config.url.startswith("rediss://") or config.tls_ca_file or config.tls_cert_file):
        return {}
    options: dict[str, Any] = {"ssl_ca_certs": config.tls_ca_file}
    if config.tls_cert_file:
        options |= {"ssl_certfile": config.tls_cert_file, "ssl_keyfile": config.tls_key_file}
    return options


def make_redis_client(config: RedisConfig) -> Redis | RedisCluster:
    options: dict[str, Any] = {
        "socket_connect_timeout": CONNECT_TIMEOUT_S,
        "socket_timeout": SOCKET_TIMEOUT_S,
    }
    if config.password_file:
        options["password"] = Path(config.password_file).read_text().strip()
    if config.sentinels:
        hosts = []
        for entry in config.sentinels:
            host, _, port = entry.rpartition(":")
            hosts.append((host, int(port)))
        sentinel_options = {"password": options.get("password")} | _tls(config)
        sentinel = Sentinel(hosts, sentinel_kwargs=sentinel_options, **options, **_tls(config))
        return sentinel.master_for(config.sentinel_service)
    if config.cluster:
        return RedisCluster.from_url(config.url, **options, **_tls(config))
    return Redis.from_url(config.url, **options, **_tls(config))
