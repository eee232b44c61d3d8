"""The floor of a Python proxy hop: uvicorn (httptools, uvloop) in, one pooled client out, round robin,
the body and every chunk passed through untouched. No parsing, routing, retries, metrics or usage
stripping: what any gateway on this HTTP stack pays before doing its own work.

The client out is the gateway's own (`gateway/replica_http.py`), or with `aiohttp` one aiohttp session,
which the gateway used before: `benchmarks/gateway_overhead.py --floor` runs the first beside the
gateway, and `--floor-aiohttp` the second as well, so that the two clients are compared in one run.

    python benchmarks/passthrough_proxy.py PORT UPSTREAM_URL[,UPSTREAM_URL...] [kvgate|aiohttp]
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any, Protocol

import aiohttp
import uvicorn

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gateway.replica_http import ReplicaClient

Message = MutableMapping[str, Any]


class Forward(Protocol):
    def __call__(self, url: str, path: str, body: bytes) -> Any: ...


@asynccontextmanager
async def kvgate_client() -> AsyncIterator[Forward]:
    client = ReplicaClient(connect_timeout_s=2, read_timeout_s=60, max_connections=1024)

    @asynccontextmanager
    async def forward(url: str, path: str, body: bytes):
        response = await client.post(url, path, body, {"content-type": "application/json"})
        content_type = response.headers.get("content-type", "application/json")
        try:
            yield response.status, content_type, response.read_chunk
        finally:
            response.close()

    yield forward
    await client.aclose()


@asynccontextmanager
async def aiohttp_client() -> AsyncIterator[Forward]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        @asynccontextmanager
        async def forward(url: str, path: str, body: bytes):
            headers = {"content-type": "application/json"}
            async with session.post(url + path, data=body, headers=headers) as response:
                content_type = response.headers.get("content-type", "application/json")
                yield response.status, content_type, response.content.readany

        yield forward


CLIENTS = {"kvgate": kvgate_client, "aiohttp": aiohttp_client}


def passthrough_app(upstreams: list[str], client: str = "kvgate") -> Callable[..., Awaitable[None]]:
    next_upstream = itertools.cycle(upstreams).__next__
    forward: Forward | None = None

    async def app(scope: Message, receive: Callable[[], Awaitable[Message]], send) -> None:
        nonlocal forward
        if scope["type"] == "lifespan":
            async with CLIENTS[client]() as opened:
                while (await receive())["type"] == "lifespan.startup":
                    forward = opened
                    await send({"type": "lifespan.startup.complete"})
            await send({"type": "lifespan.shutdown.complete"})
            return
        assert forward is not None
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        async with forward(next_upstream(), scope["path"], b"".join(chunks)) as (status, content_type, read):
            start = {"status": status, "headers": [(b"content-type", content_type.encode())]}
            await send({"type": "http.response.start", **start})
            while chunk := await read():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    return app


def main() -> None:
    port, upstreams = int(sys.argv[1]), sys.argv[2].split(",")
    client = sys.argv[3] if len(sys.argv) > 3 else "kvgate"
    uvicorn.run(
        passthrough_app(upstreams, client),
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
