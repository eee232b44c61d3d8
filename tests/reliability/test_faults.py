"""Faults under concurrent streaming load, with the gateway (`kvgate serve`, default settings) and the
replicas in their own processes: a replica SIGKILLed and restarted, a slow replica, Redis frozen, bad
messages on the KV-events socket. No request may be lost; a stream cut mid-way must end with an SSE
error event. `benchmarks/faults.py` runs the same scenarios longer and prints their figures."""

from __future__ import annotations

import asyncio
import json
import signal
import time

import aiohttp
import zmq.asyncio

from loadtest.faults import GatewayGauges, StreamLoad, tally
from loadtest.faults.kv_relay import KvEventRelay, inject_until_done
from loadtest.process import GatewayProcess
from loadtest.redis_process import redis_server
from loadtest.sim import SimProcess, free_port_range

MODEL = "sim-llama3-8b"
SIM_ARGS = ["--max-model-len", "16384", "--hbm-blocks", "3000"]


def gateway(*args: str) -> GatewayProcess:
    return GatewayProcess(extra_args=["--log-level", "warning", *args])


async def seconds_until(url: str, condition, limit_s: float) -> float | None:
    started = time.monotonic()
    async with aiohttp.ClientSession() as session:
        while time.monotonic() - started < limit_s:
            if condition(await GatewayGauges(url).read(session)):
                return time.monotonic() - started
            await asyncio.sleep(0.05)
    return None


async def read_gauges(url: str) -> GatewayGauges:
    async with aiohttp.ClientSession() as session:
        return await GatewayGauges(url).read(session)


async def test_a_replica_killed_under_load_loses_nothing_leaves_within_5_s_and_comes_back():
    base = free_port_range(3)
    sim_args = ["--time-scale", "1", "--added-latency", "0.5", *SIM_ARGS]  # requests wait before a first byte
    sims = [SimProcess(replicas=1, port=base + i, extra_args=sim_args) for i in range(3)]
    await asyncio.gather(*(asyncio.to_thread(sim.start) for sim in sims))
    victim = f"127.0.0.1:{base}"
    try:
        async with gateway("--replicas", ",".join(s.urls[0] for s in sims)) as gw:
            load = StreamLoad(gw.url, MODEL, concurrency=9, max_tokens=96, turns=5)
            running = asyncio.create_task(load.run(14.0))
            await asyncio.sleep(4.0)
            sims[0].process.send_signal(signal.SIGKILL)
            out = await seconds_until(
                gw.url,
                lambda g: (
                    g.value("kvgate_replica_healthy", replica=victim) == 0
                    and g.value("kvgate_index_blocks", replica=victim) == 0
                ),
                5.0,
            )
            assert out is not None, "the killed replica stayed in the pool or the index for 5 s"
            await asyncio.to_thread(sims[0].stop)
            sims[0] = SimProcess(replicas=1, port=base, extra_args=sim_args)
            await asyncio.to_thread(sims[0].start)
            back = await seconds_until(
                gw.url, lambda g: g.value("kvgate_replica_healthy", replica=victim) == 1, 8.0
            )
            assert back is not None, "the restarted replica did not come back into the pool"
            # it came back empty: prompts nobody holds go to the least loaded replica, which it is
            served = (await read_gauges(gw.url)).value("kvgate_requests_total", replica=victim)
            async with aiohttp.ClientSession() as session:
                probes = [await load.cold(session, f"{n}-{time.monotonic()}") for n in range(3)]
            assert all(probe.outcome.value == "ok" for probe in probes)
            after = (await read_gauges(gw.url)).value("kvgate_requests_total", replica=victim)
            assert after > served, "the restarted replica was not routed to again"
            figures = tally(await running)
            final = await read_gauges(gw.url)
    finally:
        for sim in sims:
            await asyncio.to_thread(sim.stop)
    assert figures["lost"] == 0, figures["lost_details"]
    assert figures["ok"] > 50
    errors = final.by_label("kvgate_upstream_errors_total", "kind", replica=victim)
    assert errors, "the kill went unnoticed: the test injected no fault"
    assert figures["sse_error"] == errors.get("midstream", 0)
    before_first_byte = sum(count for kind, count in errors.items() if kind != "midstream")
    assert final.value("kvgate_requests_total", reason="retry") >= before_first_byte


async def test_a_slow_replica_loses_its_traffic_without_a_hot_spot():
    sim_args = ["--time-scale", "1", "--fault-replicas", "0", "--slowdown", "20", *SIM_ARGS]
    async with (
        SimProcess(replicas=4, extra_args=sim_args) as sim,
        gateway("--replicas", ",".join(sim.urls)) as gw,
    ):
        load = StreamLoad(gw.url, MODEL, concurrency=16, max_tokens=32, turns=4)
        figures = tally(await load.run(8.0))
        per_replica = (await read_gauges(gw.url)).by_label("kvgate_requests_total", "replica")
    assert figures["lost"] == 0 and figures["sse_error"] == 0, figures["lost_details"]
    total = sum(per_replica.values())
    shares = [per_replica.get(url.removeprefix("http://"), 0) / total for url in sim.urls]
    assert shares[0] < 0.5 / 4, shares  # the slow one: under half its fair share
    assert max(shares[1:]) <= 1.5 / 3, shares  # the other three absorb it evenly: no hot spot


async def test_redis_frozen_under_load_loses_no_request(tmp_path):
    with redis_server(tmp_path / "redis") as server:
        async with (
            SimProcess(replicas=3, extra_args=["--time-scale", "2", *SIM_ARGS]) as sim,
            gateway("--replicas", ",".join(sim.urls), "--index", server.url) as gw,
        ):
            load = StreamLoad(gw.url, MODEL, concurrency=8, max_tokens=16, turns=8)
            running = asyncio.create_task(load.run(14.0))
            await asyncio.sleep(3.0)
            server.process.send_signal(signal.SIGSTOP)  # hangs: every lookup runs into its timeout
            try:
                down = await seconds_until(gw.url, lambda g: g.value("kvgate_index_redis_up") == 0, 3.0)
                await asyncio.sleep(3.0)
            finally:
                server.process.send_signal(signal.SIGCONT)
            # the breaker probes again after 1, 2, 4 s... of failures: back within the next back-off
            up = await seconds_until(gw.url, lambda g: g.value("kvgate_index_redis_up") == 1, 8.0)
            figures = tally(await running)
            fallbacks = (await read_gauges(gw.url)).value("kvgate_index_redis_fallbacks_total")
            log = gw.stderr_text()
    assert down is not None and up is not None, log[-3000:]
    assert fallbacks > 0
    assert figures["lost"] == 0 and figures["sse_error"] == 0, figures["lost_details"]
    assert figures["ok"] > 50


async def test_bad_kv_events_under_load_are_counted_and_lose_nothing(tmp_path):
    events = free_port_range(2)
    sim_args = ["--time-scale", "2", "--kv-events-port", str(events), *SIM_ARGS]
    context = zmq.asyncio.Context()
    relays = [KvEventRelay(context, f"tcp://127.0.0.1:{events + i}", seed=i) for i in range(2)]
    config = tmp_path / "gateway.yaml"
    try:
        async with SimProcess(replicas=2, extra_args=sim_args) as sim:
            for relay in relays:
                relay.start()
            pairs = zip(sim.urls, relays, strict=True)
            replicas = [{"url": url, "kv_events": relay.endpoint} for url, relay in pairs]
            config.write_text(json.dumps({"replicas": replicas, "precise": {"enabled": True}}))
            async with gateway("--config", str(config)) as gw:
                running = asyncio.create_task(StreamLoad(gw.url, MODEL, concurrency=6, turns=8).run(8.0))
                await asyncio.sleep(1.5)
                await inject_until_done(running, relays, 0.02)
                figures = tally(await running)
                await asyncio.sleep(0.3)
                counted = (await read_gauges(gw.url)).by_label("kvgate_kv_events_total", "kind")
                assert gw.process.poll() is None
    finally:
        for relay in relays:
            await relay.close()
        context.term()
    injected = relays[0].injected + relays[1].injected
    assert figures["lost"] == 0 and figures["sse_error"] == 0, figures["lost_details"]
    assert injected["truncated"] > 10 and injected["out_of_order"] > 10
    assert counted.get("malformed") == injected["malformed"]
    assert counted.get("undecodable") == injected["undecodable"] + injected["truncated"]
    assert counted.get("out_of_order") == injected["out_of_order"]
    assert counted.get("applied", 0) > 0 and "error" not in counted
    assert figures["hit_rate"] > 0.5  # precise routing still finds the cached prefixes
