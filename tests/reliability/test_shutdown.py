"""SIGTERM: readiness goes false, nothing new is accepted, in-flight streams finish, then it exits."""

import asyncio
import signal

import aiohttp
import orjson

from loadtest.process import GatewayProcess
from loadtest.sim import SimProcess

MODEL = "sim-llama3-8b"


async def test_sigterm_drains_in_flight_streams_and_refuses_new_requests():
    sim_args = ["--time-scale", "1", "--max-model-len", "8192", "--hbm-blocks", "2000"]
    async with SimProcess(replicas=2, extra_args=sim_args) as sim:
        gateway = GatewayProcess(
            extra_args=["--replicas", ",".join(sim.urls), "--set", "shutdown_grace_s=20"]
        )
        async with gateway, aiohttp.ClientSession() as session:
            body = {"model": MODEL, "messages": [{"role": "user", "content": "write a long answer"}],
                    "max_tokens": 600, "stream": True}  # fmt: skip
            stream = await session.post(gateway.url + "/v1/chat/completions", data=orjson.dumps(body))
            assert stream.status == 200
            await stream.content.readline()  # started: 600 decode steps of about 9 ms, some 5 s to go

            gateway.process.send_signal(signal.SIGTERM)
            await asyncio.sleep(0.3)
            async with session.get(gateway.url + "/ready") as ready:
                assert ready.status == 503
            async with session.get(gateway.url + "/health") as alive:
                assert alive.status == 200  # still alive: not killed while it drains
            refused = await session.post(
                gateway.url + "/v1/chat/completions", data=orjson.dumps({**body, "stream": False})
            )
            assert refused.status == 503
            assert (await refused.json())["error"]["code"] == 503

            lines = [line async for line in stream.content if line.strip()]
            assert lines[-1] == b"data: [DONE]\n"
            assert sum(b'"content"' in line for line in lines) >= 590  # the whole stream came through
            exit_code = await asyncio.to_thread(gateway.process.wait, 20)
            assert exit_code == 0
