"""The gateway end to end: the real openai client -> the gateway on loopback -> simulated vLLM replicas."""

import asyncio

import aiohttp
import openai
import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from loadtest.sim.config import SimConfig
from loadtest.sim.fleet import SimFleet
from tests.gateway_server import running_gateway

MODEL = "sim-llama3-8b"
SYSTEM = "You are a careful coding agent working in a large repository. " * 20


def fast_sim(**changes) -> SimConfig:
    base = {"time_scale": 200.0, "hbm_blocks": 6000, "max_model_len": 16384}
    return SimConfig(**{**base, **changes})


def conversation(tag: int, turns: int) -> list[dict]:
    messages = [
        {"role": "system", "content": SYSTEM},
        # long enough that each conversation owns blocks past the shared system prompt from its first turn
        {"role": "user", "content": f"task {tag}: fix bug {tag}\n" + f"traceback line {tag}\n" * 60},
    ]
    for turn in range(turns):
        messages += [
            {"role": "assistant", "content": f"reading file {tag}-{turn}"},
            {"role": "user", "content": f"contents of file {tag}-{turn}: " + f"x{turn} = {tag}\n" * 200},
        ]
    return messages


def metric_samples(text: str, name: str) -> list:
    return [s for family in text_string_to_metric_families(text) for s in family.samples if s.name == name]


async def get_text(url: str) -> str:
    async with aiohttp.ClientSession() as session, session.get(url) as response:
        return await response.text()


async def post_raw(url: str, body: bytes | dict, headers: dict | None = None) -> tuple[int, bytes]:
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    async with aiohttp.ClientSession() as session, session.post(url, data=data, headers=headers) as response:
        return response.status, await response.read()


async def test_chat_and_completions_streaming_and_not_through_the_openai_client():
    async with SimFleet(fast_sim(), replicas=2) as fleet, running_gateway(fleet.urls) as (url, _):
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused")
        messages = conversation(1, 1)
        first = await client.chat.completions.create(model=MODEL, messages=messages, max_tokens=5)
        assert first.choices[0].message.content and first.usage.completion_tokens == 5
        again = await client.chat.completions.create(model=MODEL, messages=messages, max_tokens=5)
        assert again.usage.prompt_tokens_details.cached_tokens >= again.usage.prompt_tokens - 16

        # the gateway asks for usage to learn cached_tokens, and strips it when the client did not
        chunks = [c async for c in await client.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=5, stream=True)]  # fmt: skip
        assert all(chunk.choices for chunk in chunks) and all(chunk.usage is None for chunk in chunks)
        assert "".join(c.choices[0].delta.content or "" for c in chunks) == again.choices[0].message.content
        usage_stream = await client.chat.completions.create(
            model=MODEL, messages=messages, max_tokens=5, stream=True, stream_options={"include_usage": True}
        )
        with_usage = [chunk async for chunk in usage_stream]
        assert with_usage[-1].choices == [] and with_usage[-1].usage.prompt_tokens_details.cached_tokens > 0

        completion = await client.completions.create(model=MODEL, prompt="def main():" * 50, max_tokens=4)
        assert completion.usage.completion_tokens == 4
        streamed = [c async for c in await client.completions.create(
            model=MODEL, prompt="def main():" * 50, max_tokens=4, stream=True)]  # fmt: skip
        assert sum(len(c.choices) for c in streamed) == 4
        models = await client.models.list()
        assert [m.id for m in models.data] == [MODEL]


async def hit_rate(url: str, conversations: int, turns: int) -> tuple[float, float]:
    """Conversations side by side, a turn each at a time: the later turns' hit rate and its ceiling (the
    full blocks of each conversation's previous prompt, which the next one extends)."""
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused")
    prompt = cached = ceiling = 0
    previous = [0] * conversations
    for turn in range(turns):
        responses = await asyncio.gather(
            *(
                client.chat.completions.create(model=MODEL, messages=conversation(tag, turn), max_tokens=16)
                for tag in range(conversations)
            )
        )
        if turn:
            prompt += sum(r.usage.prompt_tokens for r in responses)
            cached += sum(r.usage.prompt_tokens_details.cached_tokens for r in responses)
            ceiling += sum(tokens // 16 * 16 for tokens in previous)
        previous = [r.usage.prompt_tokens for r in responses]
    return cached / prompt, ceiling / prompt


async def test_affinity_keeps_conversations_on_their_replicas_where_round_robin_scatters_them():
    for policy in ("affinity", "round_robin"):
        async with (
            SimFleet(fast_sim(), replicas=4) as fleet,
            running_gateway(fleet.urls, policy=policy) as (url, _),
        ):
            rate, ceiling = await hit_rate(url, conversations=6, turns=4)
            metrics = await get_text(url + "/metrics")
        served = {s.labels["replica"] for s in metric_samples(metrics, "kvgate_requests_total")}
        assert len(served) >= 3  # both spread concurrent conversations
        if policy == "affinity":
            # short prompts: moving a conversation off a busy holder costs little, and the cost model
            # sometimes does (the routing benchmark shows the figures on agent-sized prompts)
            assert rate >= 0.9 * ceiling
            reasons = {s.labels["reason"] for s in metric_samples(metrics, "kvgate_requests_total")}
            assert {"affinity", "cold"} >= reasons and "affinity" in reasons
            predicted = sum(s.value for s in metric_samples(metrics, "kvgate_predicted_cached_tokens_total"))
            actual = sum(s.value for s in metric_samples(metrics, "kvgate_cached_tokens_total"))
            assert predicted == pytest.approx(actual, rel=0.05)
        else:
            assert rate < 0.8 * ceiling  # the shared system prompt, and turns landing where they were before


@pytest.mark.parametrize("policy", ["random", "least_loaded", "consistent_hash"])
async def test_baseline_policies_serve_and_consistent_hash_keeps_a_session(policy):
    async with (
        SimFleet(fast_sim(), replicas=3) as fleet,
        running_gateway(fleet.urls, policy=policy) as (url, _),
    ):
        client = openai.AsyncOpenAI(
            base_url=url + "/v1", api_key="unused", default_headers={"x-session-id": "s-1"}
        )
        for turn in range(6):
            await client.chat.completions.create(model=MODEL, messages=conversation(turn, 0), max_tokens=2)
        served = {
            s.labels["replica"]
            for s in metric_samples(await get_text(url + "/metrics"), "kvgate_requests_total")
        }
        assert len(served) == 1 if policy == "consistent_hash" else len(served) >= 1


async def test_a_failure_before_the_first_byte_is_retried_on_another_replica():
    async with (
        SimFleet(fast_sim(), replicas=3) as fleet,
        running_gateway(fleet.urls, policy="round_robin", **{"health.failure_threshold": 100}) as (url, _),
    ):
        fleet[0].set_faults(error_rate=1.0)
        fleet[1].set_faults(error_rate=1.0)
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        for tag in range(8):
            response = await client.chat.completions.create(
                model=MODEL, messages=conversation(tag, 0), max_tokens=3
            )
            assert response.usage.completion_tokens == 3
        metrics = await get_text(url + "/metrics")
        retries = sum(
            s.value for s in metric_samples(metrics, "kvgate_requests_total") if s.labels["reason"] == "retry"
        )
        errors = {s.labels["kind"] for s in metric_samples(metrics, "kvgate_upstream_errors_total")}
        assert retries > 0 and "status_500" in errors


async def eventually(condition, limit_s: float = 5.0) -> bool:
    for _ in range(int(limit_s / 0.05)):
        if condition():
            return True
        await asyncio.sleep(0.05)
    return condition()


async def test_a_dead_replica_is_retried_around_leaves_the_pool_and_the_index_and_returns():
    async with (
        SimFleet(fast_sim(), replicas=3) as fleet,
        running_gateway(fleet.urls, **{"health.cooldown_s": 0.5}) as (url, service),
    ):
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        for tag in range(6):
            await client.chat.completions.create(model=MODEL, messages=conversation(tag, 1), max_tokens=2)
        held = {name: sum(counts.values()) for name, counts in service.index.block_counts().items()}
        name = max(held, key=held.get)  # kill the replica the index knows most about
        assert held[name] > 0
        dead = next(sim for sim in fleet.replicas if sim.url.endswith(name))
        replica = service.replicas.get(name)
        dead.die()
        for tag in range(12):  # every request succeeds, whichever replica it was meant for
            response = await client.chat.completions.create(
                model=MODEL, messages=conversation(tag, 1), max_tokens=2
            )
            assert response.usage.completion_tokens == 2
        assert await eventually(
            lambda: not replica.routable and not any(service.index.block_counts().get(name, {}).values())
        )
        await dead.restart()
        assert await eventually(lambda: replica.routable)


async def read_sse(url: str, body: dict) -> list[bytes]:
    async with aiohttp.ClientSession() as session, session.post(url, data=orjson.dumps(body)) as response:
        assert response.status == 200
        return [line async for line in response.content if line.strip()]


async def test_a_replica_failing_mid_stream_ends_the_stream_with_an_sse_error_event():
    async with SimFleet(fast_sim(), replicas=1) as fleet, running_gateway(fleet.urls) as (url, _):
        fleet[0].set_faults(die_after_tokens=3)
        body = {"model": MODEL, "messages": conversation(1, 0), "max_tokens": 50, "stream": True}
        lines = await read_sse(url + "/v1/chat/completions", body)
        assert lines[-1] == b"data: [DONE]\n"
        error = orjson.loads(lines[-2].removeprefix(b"data: "))["error"]
        assert error["code"] == 502 and "failed" in error["message"]
        assert sum(b'"content"' in line for line in lines) >= 1


async def test_a_client_that_disconnects_cancels_the_upstream_request():
    async with (
        SimFleet(fast_sim(time_scale=1.0), replicas=1) as fleet,
        running_gateway(fleet.urls) as (url, _),
    ):
        body = {"model": MODEL, "messages": conversation(1, 0), "max_tokens": 4000, "stream": True}
        async with aiohttp.ClientSession() as session:
            response = await session.post(url + "/v1/chat/completions", data=orjson.dumps(body))
            await response.content.readline()
            assert fleet[0].engine.scheduler.running
            response.close()
        for _ in range(100):
            if not fleet[0].engine.scheduler.running:
                break
            await asyncio.sleep(0.02)
        assert not fleet[0].engine.scheduler.running


HI = [{"role": "user", "content": "hi"}]


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"{not json", 400),
        (b"[]", 400),
        ({"model": MODEL}, 400),
        ({"model": "no-such-model", "messages": HI}, 404),
        ({"model": MODEL, "messages": HI, "cache_salt": "a/b"}, 400),
        ({"model": MODEL, "messages": HI, "stream_options": {"include_usage": True}}, 400),
        ({"model": MODEL, "messages": HI, "max_tokens": "many"}, 400),
        ({"model": MODEL, "messages": [{"role": "user", "content": "x" * 200_000}]}, 413),
        ({"model": MODEL, "messages": [{"role": "user", "content": "x" * 90_000}]}, 400),  # > max_model_len
    ],
)
async def test_bad_input_gets_an_openai_shaped_error_with_the_right_status(body, status):
    async with (
        SimFleet(fast_sim(), replicas=1) as fleet,
        running_gateway(fleet.urls, **{"upstream.max_body_bytes": 150_000}) as (url, _),
    ):
        code, raw = await post_raw(url + "/v1/chat/completions", body)
        assert code == status
        error = orjson.loads(raw)["error"]
        assert set(error) >= {"message", "type", "param", "code"} and error["code"] == status
        assert b"Traceback" not in raw


async def test_unknown_paths_and_methods_are_openai_shaped_too():
    async with (
        SimFleet(fast_sim(), replicas=1) as fleet,
        running_gateway(fleet.urls) as (url, _),
        aiohttp.ClientSession() as session,
    ):
        async with session.get(url + "/v1/nothing") as response:
            assert response.status == 404 and (await response.json())["error"]["code"] == 404
        async with session.get(url + "/v1/chat/completions") as response:
            assert response.status == 405 and (await response.json())["error"]["code"] == 405


async def test_debug_route_explains_a_decision_to_the_admin_only():
    async with (
        SimFleet(fast_sim(), replicas=2) as fleet,
        running_gateway(fleet.urls, admin_token="s3cret") as (url, _),
    ):
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused")
        await client.chat.completions.create(model=MODEL, messages=conversation(1, 0), max_tokens=2)
        body = {"model": MODEL, "messages": conversation(1, 0)}
        assert (await post_raw(url + "/debug/route", body))[0] == 401
        assert (await post_raw(url + "/debug/route", body, {"authorization": "Bearer wrong"}))[0] == 401
        code, raw = await post_raw(url + "/debug/route", body, {"authorization": "Bearer s3cret"})
        explained = orjson.loads(raw)
        assert code == 200 and explained["decision"]["reason"] == "affinity"
        best = explained["candidates"][0]
        assert best["matched_blocks"]["hbm"] > 0 and best["estimate"]["ttft_s"] > 0


async def test_api_keys_and_tenants_that_never_share_a_cache(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("acme key-a\nglobex key-g\n")
    async with (
        SimFleet(fast_sim(), replicas=2) as fleet,
        running_gateway(fleet.urls, **{"auth.api_keys_file": str(keys)}) as (url, _),
    ):
        anonymous = openai.AsyncOpenAI(base_url=url + "/v1", api_key="nope", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            await anonymous.chat.completions.create(model=MODEL, messages=conversation(1, 0))
        with pytest.raises(openai.AuthenticationError):
            await anonymous.models.list()
        acme = openai.AsyncOpenAI(base_url=url + "/v1", api_key="key-a")
        globex = openai.AsyncOpenAI(base_url=url + "/v1", api_key="key-g")
        messages = conversation(7, 2)
        await acme.chat.completions.create(model=MODEL, messages=messages, max_tokens=2)
        again = await acme.chat.completions.create(model=MODEL, messages=messages, max_tokens=2)
        assert again.usage.prompt_tokens_details.cached_tokens > 0
        other = await globex.chat.completions.create(model=MODEL, messages=messages, max_tokens=2)
        assert other.usage.prompt_tokens_details.cached_tokens == 0  # not even on acme's replica


async def test_several_models_each_with_its_own_pool():
    async with (
        SimFleet(fast_sim(model="llama"), replicas=2) as llamas,
        SimFleet(fast_sim(model="qwen"), replicas=1) as qwens,
        running_gateway(llamas.urls + qwens.urls) as (url, _),
    ):
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused")
        assert sorted(m.id for m in (await client.models.list()).data) == ["llama", "qwen"]
        for model in ("llama", "qwen", "llama"):
            response = await client.chat.completions.create(
                model=model, messages=conversation(1, 0), max_tokens=2
            )
            assert response.model == model
        with pytest.raises(openai.BadRequestError):
            await client.chat.completions.create(
                model=None, messages=conversation(1, 0)
            )  # two models: say which


async def test_metrics_parse_and_carry_the_documented_names():
    async with SimFleet(fast_sim(), replicas=2) as fleet, running_gateway(fleet.urls) as (url, _):
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused")
        for _ in range(2):
            stream = await client.chat.completions.create(
                model=MODEL, messages=conversation(1, 0), max_tokens=4, stream=True
            )
            _ = [chunk async for chunk in stream]
        await asyncio.sleep(0.5)  # a scrape of the replicas
        families = {f.name for f in text_string_to_metric_families(await get_text(url + "/metrics"))}
        assert families >= {
            "kvgate_requests", "kvgate_responses", "kvgate_prompt_tokens", "kvgate_cached_tokens",
            "kvgate_predicted_cached_tokens", "kvgate_time_to_first_token_seconds",
            "kvgate_inter_token_latency_seconds", "kvgate_e2e_request_latency_seconds",
            "kvgate_routing_decision_seconds", "kvgate_inflight_requests", "kvgate_queued_prefill_tokens",
            "kvgate_replica_healthy", "kvgate_index_blocks", "kvgate_index_evictions",
        }  # fmt: skip
