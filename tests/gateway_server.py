"""The gateway on a loopback port, in the test's own event loop, for end-to-end tests."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import uvicorn

from gateway.app import create_app
from gateway.config import load_config
from gateway.service import GatewayService


@contextlib.asynccontextmanager
async def running_gateway(
    replica_urls: list[str], **overrides: Any
) -> AsyncIterator[tuple[str, GatewayService]]:
    """Yields the gateway's base URL and its service; `overrides` are dotted config keys."""
    settings = {"replicas": replica_urls, "host": "127.0.0.1", "port": 0, "health.interval_s": 0.2,
                "health.scrape_interval_s": 0.2, **overrides}  # fmt: skip
    config = load_config(overrides=settings, environ={})
    service = GatewayService(config)
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(config, service), host="127.0.0.1", port=0, log_level="warning", lifespan="on"
        )
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}", service
    finally:
        server.should_exit = True
        await task
