"""Prompt text never leaves the request: not in the gateway's logs (at debug level), not in the shared
index in Redis, whatever the request (streamed, not streamed, refused)."""

from __future__ import annotations

import logging

import aiohttp
from redis.asyncio import Redis

from loadtest.sim.config import SimConfig
from loadtest.sim.fleet import SimFleet
from tests.gateway_server import running_gateway

MODEL = "sim-llama3-8b"
SIM = SimConfig(time_scale=200.0, hbm_blocks=6000, max_model_len=16384, default_max_tokens=8)
MARKER = "PRIVATE-PROMPT-7qz"


async def test_prompt_text_is_neither_logged_nor_stored(redis_url, caplog):
    caplog.set_level(logging.DEBUG)
    secret = f"{MARKER} the tenant's source code " * 200
    messages = [{"role": "system", "content": secret}, {"role": "user", "content": f"{MARKER} fix it"}]
    settings = {"index.backend": "redis", "index.redis.url": redis_url, "log_level": "debug"}
    async with (
        SimFleet(SIM, replicas=2) as fleet,
        running_gateway(fleet.urls, **settings) as (url, service),
        aiohttp.ClientSession() as session,
    ):
        bodies = [
            ("/v1/chat/completions", {"model": MODEL, "messages": messages, "stream": True}),
            ("/v1/chat/completions", {"model": MODEL, "messages": messages}),
            ("/v1/completions", {"model": MODEL, "prompt": secret, "max_tokens": 4}),
            ("/v1/chat/completions", {"model": MODEL, "messages": messages, "cache_salt": "a/b"}),  # 400
            ("/v1/chat/completions", {"model": "unknown", "messages": messages}),  # 404
        ]
        statuses = []
        for path, body in bodies:
            async with session.post(url + path, json=body) as response:
                await response.read()
                statuses.append(response.status)
        await service.index.flush()
    assert statuses == [200, 200, 200, 400, 404]
    assert caplog.records, "nothing was logged: the check would prove nothing"
    assert MARKER not in caplog.text
    redis = Redis.from_url(redis_url)
    try:
        keys = [key async for key in redis.scan_iter()]
        assert keys, "the shared index wrote nothing: the check would prove nothing"
        for key in keys:
            assert MARKER.encode() not in key
            dumped = await redis.dump(key)
            assert MARKER.encode() not in dumped
    finally:
        await redis.aclose()
