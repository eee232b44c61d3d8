"""Each fault knob, through the library API and the admin HTTP endpoints."""

import asyncio
import time

import httpx
import openai
import orjson
import pytest

from tests.sim.simtools import MODEL, client_for, numbered_text, stream_chat

MESSAGES = [{"role": "user", "content": "Fix the failing test, please."}]
BODY = {"model": MODEL, "messages": MESSAGES, "max_tokens": 4}


async def test_error_rate_answers_500_before_the_first_byte(start_fleet):
    fleet = await start_fleet(time_scale=1000)
    fleet[0].set_faults(error_rate=1.0)
    async with httpx.AsyncClient(base_url=fleet.urls[0]) as http:
        for stream in (False, True):
            response = await http.post("/v1/chat/completions", json={**BODY, "stream": stream})
            assert response.status_code == 500
            assert response.json()["error"]["type"] == "InternalServerError"
    with pytest.raises(openai.InternalServerError):
        await client_for(fleet.urls[0]).chat.completions.create(model=MODEL, messages=MESSAGES)
    fleet[0].clear_faults()
    await client_for(fleet.urls[0]).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)


async def test_draining_refuses_new_work_and_fails_health_checks(start_fleet):
    fleet = await start_fleet(time_scale=1000)
    async with httpx.AsyncClient(base_url=fleet.urls[0]) as http:
        assert (await http.post("/admin/faults", json={"draining": True})).json()["draining"] is True
        assert (await http.get("/health")).status_code == 503
        response = await http.post("/v1/chat/completions", json=BODY)
        assert response.status_code == 503 and response.json()["error"]["code"] == 503
        assert (await http.delete("/admin/faults")).json()["draining"] is False
        assert (await http.get("/health")).status_code == 200


async def test_slowdown_multiplies_step_times(start_fleet):
    fleet = await start_fleet(time_scale=1000)
    client = client_for(fleet.urls[0])
    records = fleet[0].engine.records
    normal = await stream_chat(client, [{"role": "user", "content": numbered_text(4000)}], max_tokens=2)
    fleet[0].set_faults(slowdown=3.0)
    slow = await stream_chat(
        client, [{"role": "user", "content": numbered_text(4000, start=10**5)}], max_tokens=2
    )
    assert records[slow.id].ttft == pytest.approx(3 * records[normal.id].ttft, rel=0.01)


async def test_added_latency_delays_the_response_but_not_the_engine(start_fleet):
    fleet = await start_fleet(time_scale=10)
    async with httpx.AsyncClient(base_url=fleet.urls[0]) as http:
        assert (await http.post("/admin/faults", json={"added_latency": 3.0})).status_code == 200
        started = time.monotonic()
        response = await http.post("/v1/chat/completions", json=BODY)
        elapsed = time.monotonic() - started
    assert response.status_code == 200
    assert elapsed >= 0.3  # 3 simulated seconds at time scale 10
    assert fleet[0].engine.records[response.json()["id"]].ttft < 0.1


async def test_stream_error_after_tokens_ends_the_stream_with_an_error_event(start_fleet):
    fleet = await start_fleet(time_scale=1000)
    fleet[0].set_faults(stream_error_after_tokens=3)
    async with httpx.AsyncClient(base_url=fleet.urls[0]) as http:
        response = await http.post("/v1/chat/completions", json={**BODY, "max_tokens": 10, "stream": True})
        events = [e.removeprefix("data: ") for e in response.text.split("\n\n") if e]
        assert events[-1] == "[DONE]"
        error = orjson.loads(events[-2])
        assert set(error) == {"error"} and error["error"]["code"] == 500
        contents = [orjson.loads(e)["choices"][0]["delta"].get("content") for e in events[:-2]]
        assert len([c for c in contents if c]) == 3
        whole = await http.post("/v1/chat/completions", json={**BODY, "max_tokens": 10})
        assert whole.status_code == 500
    assert fleet[0].metrics.request_success["error"] == 2


async def test_a_replica_that_dies_mid_stream_resets_connections_and_refuses_new_ones(start_fleet):
    fleet = await start_fleet(replicas=2, time_scale=100)
    dying = fleet[0]
    dying.set_faults(die_after_tokens=5)
    with pytest.raises(openai.APIConnectionError):
        await stream_chat(client_for(dying.url), MESSAGES, max_tokens=50)
    await asyncio.sleep(0.05)
    assert not dying.alive
    async with httpx.AsyncClient() as http:
        with pytest.raises(httpx.ConnectError):
            await http.get(dying.url + "/health")
        assert (await http.get(fleet.urls[1] + "/health")).status_code == 200
        await dying.restart()
        assert (await http.get(dying.url + "/health")).status_code == 200
    assert dying.engine.cache.cached_block_count() == 0
    result = await stream_chat(client_for(dying.url), MESSAGES, max_tokens=10)
    assert result.content_chunks == 10


async def test_kill_with_restart_after_comes_back_empty_on_the_same_port(start_fleet):
    fleet = await start_fleet(time_scale=100)
    replica = fleet[0]
    url = replica.url
    await client_for(url).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)
    assert replica.engine.cache.cached_block_count() > 0
    async with httpx.AsyncClient() as http:
        assert (await http.post(url + "/admin/kill", json={"restart_after": 100})).status_code == 200
        await asyncio.sleep(0.05)
        with pytest.raises(httpx.ConnectError):
            await http.get(url + "/health")
        for _ in range(250):
            await asyncio.sleep(0.02)
            if replica.alive:
                break
        assert (await http.get(url + "/health")).status_code == 200
    assert replica.url == url and replica.engine.cache.cached_block_count() == 0


async def test_refusing_connections_for_a_while_keeps_the_cache(start_fleet):
    fleet = await start_fleet(time_scale=100)
    replica = fleet[0]
    await client_for(replica.url).chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)
    async with httpx.AsyncClient() as http:
        open_connection = await http.post(replica.url + "/admin/refuse", json={"seconds": 60})
        assert open_connection.status_code == 200
        await asyncio.sleep(0.02)
        async with httpx.AsyncClient() as fresh:
            with pytest.raises(httpx.ConnectError):
                await fresh.get(replica.url + "/health")
        # A connection opened before keeps working: only new ones are refused.
        assert (await http.get(replica.url + "/health")).status_code == 200
    for _ in range(250):
        await asyncio.sleep(0.02)
        async with httpx.AsyncClient() as fresh:
            try:
                assert (await fresh.get(replica.url + "/health")).status_code == 200
                break
            except httpx.ConnectError:
                continue
    else:
        pytest.fail("the replica did not listen again")
    again = await client_for(replica.url).chat.completions.create(
        model=MODEL, messages=MESSAGES, max_tokens=2
    )
    assert again.usage.prompt_tokens_details.cached_tokens > 0


async def test_fault_updates_are_validated(start_fleet):
    fleet = await start_fleet(time_scale=1000)
    async with httpx.AsyncClient(base_url=fleet.urls[0]) as http:
        for bad in ({"error_rate": 2}, {"slowdown": "fast"}, {"explode": True}, {"draining": 1}):
            response = await http.post("/admin/faults", json=bad)
            assert response.status_code == 400 and "error" in response.json()
        assert (await http.get("/admin/faults")).json()["error_rate"] == 0.0
        state = (await http.get("/admin/state")).json()
        assert state["alive"] is True and state["capacity_blocks"]["HBM"] == fleet[0].engine.cache.capacity


async def test_reset_prefix_cache_through_the_library_and_the_request_record_endpoint(start_fleet):
    fleet = await start_fleet(time_scale=1000)
    client = client_for(fleet.urls[0])
    first = await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)
    assert fleet[0].reset_prefix_cache()
    second = await client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)
    assert second.usage.prompt_tokens_details.cached_tokens == 0
    async with httpx.AsyncClient(base_url=fleet.urls[0]) as http:
        record = (await http.get(f"/admin/requests/{first.id}")).json()
        assert record["request_id"] == first.id and record["finish_reason"] == "length"
        assert (await http.get("/admin/requests/nope")).status_code == 404
