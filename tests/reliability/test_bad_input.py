"""Bad input the request-shape tests (tests/gateway/test_request.py, test_gateway_e2e.py) and the fuzzers
(test_fuzz.py) do not reach: a prompt of a million tokens under the default body limit, a body without
a length that never ends, a client that trickles its body, empty prompts and odd Unicode end to end.
Each gets the right status and an OpenAI-shaped error, never a 500, in bounded time, and the gateway
keeps serving everyone else meanwhile."""

from __future__ import annotations

import asyncio
import contextlib
import time

import aiohttp
import orjson
import pytest

from loadtest.sim.config import SimConfig
from loadtest.sim.fleet import SimFleet
from tests.gateway_server import running_gateway

MODEL = "sim-llama3-8b"
SIM = SimConfig(time_scale=200.0, hbm_blocks=6000, max_model_len=16384, default_max_tokens=8)


def assert_openai_error(raw: bytes, status: int) -> None:
    error = orjson.loads(raw)["error"]
    assert set(error) >= {"message", "type", "param", "code"} and error["code"] == status
    assert b"Traceback" not in raw


async def chat(session: aiohttp.ClientSession, url: str, content: str = "hi") -> int:
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 4}
    async with session.post(url + "/v1/chat/completions", json=body) as response:
        await response.read()
        return response.status


async def test_a_million_token_prompt_is_refused_in_bounded_time():
    async with (
        SimFleet(SIM, replicas=2) as fleet,
        running_gateway(fleet.urls) as (url, _),
        aiohttp.ClientSession() as session,
    ):
        prompt = "tok " * 1_000_000  # 4 MB: under the default 32 MiB body limit, 1M tokens
        body = orjson.dumps({"model": MODEL, "messages": [{"role": "user", "content": prompt}]})
        started = time.monotonic()
        async with session.post(url + "/v1/chat/completions", data=body) as response:
            raw = await response.read()
        assert response.status == 400, raw[:300]
        assert_openai_error(raw, 400)
        assert time.monotonic() - started < 10.0  # hashing stops at routing.max_blocks
        assert await chat(session, url) == 200


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"model": MODEL, "messages": []}),
        ("/v1/completions", {"model": MODEL, "prompt": ""}),
        ("/v1/completions", {"model": MODEL, "prompt": []}),
    ],
)
async def test_empty_prompts_are_400(path, body):
    async with SimFleet(SIM, replicas=1) as fleet, running_gateway(fleet.urls) as (url, _):
        async with aiohttp.ClientSession() as session, session.post(url + path, json=body) as response:
            raw = await response.read()
        assert response.status == 400, raw[:300]
        assert_openai_error(raw, 400)


ODD = [
    "emoji 🙂🧑‍💻 and flags 🇫🇷",
    "right-to-left \u202e txet and zero width \u200b\u200d\ufeff",
    "combining e\u0301\u0301\u0301 and NUL \x00 and controls \x07\x1b[31m",
    "CJK 漢字 and astral 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 " * 50,
]


async def test_odd_unicode_is_served_and_a_lone_surrogate_is_400():
    async with (
        SimFleet(SIM, replicas=1) as fleet,
        running_gateway(fleet.urls) as (url, _),
        aiohttp.ClientSession() as session,
    ):
        for content in ODD:
            assert await chat(session, url, content) == 200, content
        lone = b'{"model": "%s", "messages": [{"role": "user", "content": "\\ud800"}]}' % MODEL.encode()
        async with session.post(url + "/v1/chat/completions", data=lone) as response:
            raw = await response.read()
        assert response.status == 400, raw[:300]
        assert_openai_error(raw, 400)


async def open_raw(url: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    host, port = url.removeprefix("http://").split(":")
    return await asyncio.open_connection(host, int(port))


async def test_a_client_that_trickles_its_body_gets_408_while_others_are_served():
    async with (
        SimFleet(SIM, replicas=1) as fleet,
        running_gateway(fleet.urls, body_timeout_s=1.0) as (url, _),
        aiohttp.ClientSession() as session,
    ):
        slow = []
        for _ in range(20):  # slow clients: a declared body, one byte now and then
            reader, writer = await open_raw(url)
            writer.write(
                b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
                b"content-length: 1000\r\n\r\n{"
            )
            await writer.drain()
            slow.append((reader, writer))
        started = time.monotonic()
        served = await asyncio.gather(*(chat(session, url) for _ in range(20)))
        assert served == [200] * 20 and time.monotonic() - started < 1.0  # nobody waits on them
        for reader, writer in slow:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5.0)
            assert head.startswith(b"HTTP/1.1 408"), head
            length = int(
                next(
                    line.split(b":")[1]
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length")
                )
            )
            assert_openai_error(await reader.readexactly(length), 408)
            writer.close()
        assert time.monotonic() - started < 3.0


async def test_a_chunked_body_that_never_ends_is_cut_at_the_limit():
    async with (
        SimFleet(SIM, replicas=1) as fleet,
        running_gateway(fleet.urls, **{"upstream.max_body_bytes": 100_000}) as (url, _),
    ):
        reader, writer = await open_raw(url)
        writer.write(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"transfer-encoding: chunked\r\n\r\n"
        )
        chunk = b"x" * 8192
        sent = 0
        answer = asyncio.ensure_future(reader.read(4096))
        with contextlib.suppress(ConnectionError):
            while sent < 10_000_000 and not answer.done():  # no content-length: checked as it arrives
                writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                await writer.drain()
                sent += len(chunk)
                await asyncio.sleep(0)
        head = await asyncio.wait_for(answer, 5.0)
        assert head.startswith(b"HTTP/1.1 413"), head[:200]
        assert sent < 1_000_000
        writer.close()
