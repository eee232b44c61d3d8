"""Property-based fuzzing of the gateway's HTTP API: no input makes it answer with a server error.

Schemathesis generates requests from the gateway's own OpenAPI schema (every documented endpoint), and
Hypothesis throws arbitrary JSON, odd Unicode and broken bytes at the inference endpoints. The gateway
runs on loopback in front of simulated replicas; every answer must be below 500 and OpenAI-shaped when
it is an error.
"""

import asyncio
import json
import re
import sys

import aiohttp
import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loadtest.sim.config import SimConfig
from loadtest.sim.fleet import SimFleet
from tests.gateway_server import running_gateway

SIM = SimConfig(time_scale=1000.0, hbm_blocks=4000, max_model_len=8192, default_max_tokens=8)


async def test_schemathesis_finds_no_server_error(tmp_path):
    async with SimFleet(SIM, replicas=2) as fleet, running_gateway(fleet.urls, admin_token="t") as (url, _):
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "schemathesis.cli", "run", url + "/openapi.json",
            "--checks", "not_a_server_error", "--phases", "examples,coverage,fuzzing",
            "--max-examples", "40", "--workers", "1", "--max-time", "25", "--seed", "1",
            "--request-timeout", "10", "--header", "authorization: Bearer t",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=tmp_path,
        )  # fmt: skip
        output, _ = await asyncio.wait_for(process.communicate(), 180)
    text = output.decode(errors="replace")
    assert process.returncode == 0, text[-4000:]
    cases = sum(int(n) for n in re.findall(r"(\d+) generated", text)) or len(re.findall(r"\bPASSED\b", text))
    print(f"schemathesis: {cases} cases\n{text[-1500:]}")


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=12,
)
MESSAGES = st.lists(
    st.fixed_dictionaries(
        {"role": st.sampled_from(["system", "user", "assistant", "tool", "🙂"]) | st.text(max_size=5)},
        optional={"content": st.text() | JSON_VALUES, "tool_calls": JSON_VALUES, "tool_call_id": JSON_VALUES},
    ),
    max_size=4,
)
BODIES = st.fixed_dictionaries(
    {},
    optional={
        "model": st.sampled_from(["sim-llama3-8b", "", "other"]) | JSON_VALUES,
        "messages": MESSAGES | JSON_VALUES,
        "prompt": st.text() | st.lists(st.integers(-5, 2**33), max_size=8) | JSON_VALUES,
        "stream": st.booleans() | JSON_VALUES,
        "stream_options": st.fixed_dictionaries({}, optional={"include_usage": JSON_VALUES}) | JSON_VALUES,
        "max_tokens": st.integers(-3, 40) | JSON_VALUES,
        "cache_salt": st.text(max_size=140) | JSON_VALUES,
        "tools": JSON_VALUES,
    },
)
RAW = st.binary(max_size=300) | st.text().map(lambda t: t.encode("utf-8", "surrogatepass"))


async def test_arbitrary_bodies_and_bytes_never_get_a_server_error():
    async with SimFleet(SIM, replicas=2) as fleet, running_gateway(fleet.urls) as (url, _):
        loop = asyncio.get_running_loop()
        seen: dict[int, int] = {}

        async def post(path: str, data: bytes) -> None:
            async with aiohttp.ClientSession() as session, session.post(url + path, data=data) as response:
                body = await response.read()
                seen[response.status] = seen.get(response.status, 0) + 1
                assert response.status < 500, body[:500]
                if response.status >= 400:
                    assert set(orjson.loads(body)["error"]) >= {"message", "type", "code"}

        @settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @given(body=BODIES, raw=RAW, path=st.sampled_from(["/v1/chat/completions", "/v1/completions"]))
        def check(body, raw, path):
            data = json.dumps(body, ensure_ascii=False).encode("utf-8", "surrogatepass")
            for payload in (data, raw):
                asyncio.run_coroutine_threadsafe(post(path, payload), loop).result(30)

        await asyncio.to_thread(check)
        print(f"status codes seen: {dict(sorted(seen.items()))}")
        assert sum(seen.values()) == 500
