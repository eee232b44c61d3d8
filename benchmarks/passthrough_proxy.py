"""The floor of a Python proxy hop: uvicorn (httptools, uvloop) in, one pooled aiohttp session out,
round robin, the body and every chunk passed through untouched. No parsing, routing, retries, metrics
or usage stripping: what any gateway on this HTTP stack pays before doing its own work.

`benchmarks/gateway_overhead.py --floor` runs it beside the gateway, so the two can be told apart.

    python benchmarks/passthrough_proxy.py PORT UPSTREAM_URL[,UPSTREAM_URL...]
"""

from __future__ import annotations

import itertools
import sys
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import aiohttp
import uvicorn

Message = MutableMapping[str, Any]


def passthrough_app(upstreams: list[str]) -> Callable[..., Awaitable[None]]:
    next_upstream = itertools.cycle(upstreams).__next__
    session: aiohttp.ClientSession | None = None

    async def app(scope: Message, receive: Callable[[], Awaitable[Message]], send) -> None:
        nonlocal session
        if scope["type"] == "lifespan":
            while (message := await receive())["type"] == "lifespan.startup":
                session = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
                await send({"type": "lifespan.startup.complete"})
            if session is not None:
                await session.close()
            await send({"type": "lifespan.shutdown.complete"})
            return
        assert session is not None
        chunks = []
        while True:
            message = await receive()
            chunks.append(message.get("body", b""))
            if not message.get("more_body"):
                break
        headers = {"content-type": "application/json"}
        url = next_upstream() + scope["path"]
        async with session.request(scope["method"], url, data=b"".join(chunks), headers=headers) as upstream:
            content_type = upstream.headers.get("content-type", "application/json").encode()
            start = {"status": upstream.status, "headers": [(b"content-type", content_type)]}
            await send({"type": "http.response.start", **start})
            async for chunk in upstream.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    return app


def main() -> None:
    port, upstreams = int(sys.argv[1]), sys.argv[2].split(",")
    uvicorn.run(
        passthrough_app(upstreams),
        host="127.0.0.1",
        port=port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
