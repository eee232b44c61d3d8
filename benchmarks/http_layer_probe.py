"""What the HTTP layer alone costs per streamed chunk: the measurement behind the simulator's choice of a lean
ASGI app on uvicorn (httptools, uvloop) over FastAPI.

Each variant serves 8 ports from one process and streams 64 canned chat chunks per request, written one per
send or several per send; the client (this process, aiohttp) runs 128 closed-loop streams for a few seconds.

    python benchmarks/http_layer_probe.py
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time

import aiohttp
import psutil
from fastapi import FastAPI, Request
from fastapi.responses import StreamingResponse

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from loadtest.sim.fleet import free_port_range

CHUNK = (
    b'data: {"id":"chatcmpl-x","object":"chat.completion.chunk","created":1,"model":"m","choices":'
    b'[{"index":0,"delta":{"content":"word"},"logprobs":null,"finish_reason":null}]}\n\n'
)
DONE = b"data: [DONE]\n\n"


def serve(variant: str, base_port: int, per_send: int) -> None:
    import uvicorn
    import uvloop

    async def raw_app(scope, receive, send):  # type: ignore[no-untyped-def]
        while (await receive()).get("more_body"):
            pass
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/event-stream")],
            }
        )
        for _ in range(0, 64, per_send):
            await asyncio.sleep(0)
            await send({"type": "http.response.body", "body": CHUNK * per_send, "more_body": True})
        await send({"type": "http.response.body", "body": DONE})

    def fastapi_app():  # type: ignore[no-untyped-def]
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> StreamingResponse:
            await request.json()

            async def chunks():  # type: ignore[no-untyped-def]
                for _ in range(0, 64, per_send):
                    await asyncio.sleep(0)
                    yield CHUNK * per_send
                yield DONE

            return StreamingResponse(chunks(), media_type="text/event-stream")

        return app

    app = raw_app if variant == "raw-asgi" else fastapi_app()

    async def main() -> None:
        servers = [
            uvicorn.Server(
                uvicorn.Config(
                    app,
                    host="127.0.0.1",
                    port=base_port + i,
                    http="httptools",
                    lifespan="off",
                    log_level="error",
                    access_log=False,
                )
            )
            for i in range(8)
        ]
        await asyncio.gather(*(server.serve() for server in servers))

    uvloop.run(main())


async def drive(base_port: int, streams: int, seconds: float) -> tuple[int, int, float]:
    body = b'{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"max_tokens":64}'
    done = [0, 0]

    async def worker(session: aiohttp.ClientSession, port: int, stop_at: float) -> None:
        while time.monotonic() < stop_at:
            async with session.post(
                f"http://127.0.0.1:{port}/v1/chat/completions",
                data=body,
                headers={"content-type": "application/json"},
            ) as response:
                payload = await response.read()
            done[0] += 1
            done[1] += payload.count(b'"delta":{"content":')

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        started = time.monotonic()
        await asyncio.gather(*(worker(session, base_port + n % 8, started + seconds) for n in range(streams)))
        elapsed = time.monotonic() - started
    return done[0], done[1], elapsed


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--serve", nargs=3, metavar=("VARIANT", "PORT", "PER_SEND"), help=argparse.SUPPRESS)
    parser.add_argument("--streams", type=int, default=128)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]), int(args.serve[2]))
        return 0
    for variant in ("raw-asgi", "fastapi"):
        for per_send in (1, 8):
            port = free_port_range(8)
            server = subprocess.Popen(
                [sys.executable, __file__, "--serve", variant, str(port), str(per_send)]
            )
            try:
                time.sleep(3.0)
                process = psutil.Process(server.pid)
                cpu0 = sum(process.cpu_times()[:2])
                count, chunk_count, elapsed = asyncio.run(drive(port, args.streams, args.seconds))
                if chunk_count != 64 * count:
                    raise RuntimeError(f"{variant} did not stream 64 chunks per request")
                requests, chunks = count / elapsed, chunk_count / elapsed
                cpu = (sum(process.cpu_times()[:2]) - cpu0) / args.seconds
            finally:
                server.terminate()
                server.wait(10)
            print(f"{variant:9s} {per_send} chunk(s)/send: {requests:6.0f} requests/s {chunks:7.0f} chunks/s "
                  f"server CPU {cpu:4.0%}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
