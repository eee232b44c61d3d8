"""Which HTTP client should the swarm stream with? Client CPU per streamed request, measured.

    python benchmarks/swarm_client_choice.py            # 64 concurrent streams of 32 tokens, 3 rounds

A fresh `kvgate sim` (8 replicas, in its own process) serves every variant the same chat request (a
1,000-token prompt, 32 output tokens, each token its own SSE chunk, as vLLM sends them). Each variant
reads the streams with the swarm's SSE reader (`loadtest.swarm.client.StreamReader`), so only the HTTP
layer differs:

- `swarm client`: `loadtest.swarm.client.StreamingClient`, raw asyncio protocols whose `data_received`
  feeds the reader directly (`loadtest/swarm/http.py`);
- `aiohttp`: one `ClientSession`, `response.content.iter_any()` into the reader;
- `httpx`: one `AsyncClient`, `response.aiter_raw()` into the reader.

It prints the client process's CPU time per request (`time.process_time`) and the request rate. All run
under uvloop, as the swarm's CLI does.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiohttp
import httpx
import uvloop

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from loadtest.sim import SimProcess
from loadtest.swarm.client import Exchange, StreamingClient, StreamReader
from loadtest.swarm.plan import PlannedRequest

MODEL = "sim-llama3-8b"
HEADERS = {"Content-Type": "application/json", "Accept": "text/event-stream"}


def planned(tokens: int, prompt_words: int) -> PlannedRequest:
    return PlannedRequest(
        api="chat",
        payload={"messages": [{"role": "user", "content": " cat" * prompt_words}]},
        max_tokens=tokens,
        prompt_tokens=0,
        block_keys=[],
        block_tokens=16,
    )


async def measure(
    send: Callable[[int], Awaitable[None]], concurrency: int, total: int
) -> tuple[float, float]:
    issued = 0

    async def worker(index: int, limit: int) -> None:
        nonlocal issued
        while issued < limit:
            issued += 1
            await send(index)

    await asyncio.gather(*(worker(i, concurrency) for i in range(concurrency)))  # connections warm
    issued = 0
    cpu, wall = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(i, total) for i in range(concurrency)))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    return 1e6 * cpu / total, total / wall


def checked(exchange: Exchange, tokens: int) -> None:
    if exchange.outcome != "ok" or exchange.content_chunks != tokens:
        raise RuntimeError(f"a stream did not come back whole: {exchange}")


async def swarm_client(
    urls: list[str], request: PlannedRequest, concurrency: int, total: int
) -> tuple[float, float]:
    async with StreamingClient(urls, model=MODEL) as client:

        async def send(index: int) -> None:
            checked(await client.send(request, None, index), request.max_tokens)

        return await measure(send, concurrency, total)


async def aiohttp_client(
    urls: list[str], request: PlannedRequest, concurrency: int, total: int
) -> tuple[float, float]:
    body = StreamingClient(urls, model=MODEL).body(request)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def send(index: int) -> None:
            exchange = Exchange(started=time.perf_counter())
            reader = StreamReader(exchange)
            url = f"{urls[index % len(urls)]}/v1/chat/completions"
            async with session.post(url, data=body, headers=HEADERS) as response:
                async for data in response.content.iter_any():
                    reader.feed(data, time.perf_counter())
            reader.finish(time.perf_counter())
            checked(exchange, request.max_tokens)

        return await measure(send, concurrency, total)


async def httpx_client(
    urls: list[str], request: PlannedRequest, concurrency: int, total: int
) -> tuple[float, float]:
    body = StreamingClient(urls, model=MODEL).body(request)
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    async with httpx.AsyncClient(limits=limits, timeout=60.0) as client:

        async def send(index: int) -> None:
            exchange = Exchange(started=time.perf_counter())
            reader = StreamReader(exchange)
            url = f"{urls[index % len(urls)]}/v1/chat/completions"
            async with client.stream("POST", url, content=body, headers=HEADERS) as response:
                async for data in response.aiter_raw():
                    reader.feed(data, time.perf_counter())
            reader.finish(time.perf_counter())
            checked(exchange, request.max_tokens)

        return await measure(send, concurrency, total)


VARIANTS = {"swarm client": swarm_client, "aiohttp": aiohttp_client, "httpx": httpx_client}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--requests", type=int, default=2000, help="requests per round")
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    request = planned(args.tokens, 1000)
    print(
        f"{args.concurrency} concurrent streams of {args.tokens} tokens, {args.requests} requests per round"
    )
    print("client | round | client CPU per request (us) | requests/s")
    with SimProcess(replicas=8) as sim:
        for round_index in range(args.rounds):  # variants take turns, so drifting machine load hits all alike
            for name, variant in VARIANTS.items():
                with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
                    cpu, rate = runner.run(variant(sim.urls, request, args.concurrency, args.requests))
                print(f"{name} | {round_index} | {cpu:,.0f} | {rate:,.0f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
