"""Precise mode end to end: simulated replicas publish KV events, the gateway routes on them."""

import asyncio

import openai
from prometheus_client.parser import text_string_to_metric_families

from loadtest.sim.config import SimConfig
from loadtest.sim.fleet import SimFleet
from tests.gateway.test_gateway_e2e import MODEL, conversation, get_text
from tests.gateway_server import running_gateway

PREDICTION_ERROR = "kvgate_cached_tokens_prediction_error_tokens_total"


def sim_with_events(**changes) -> SimConfig:
    base = {"time_scale": 200.0, "hbm_blocks": 1200, "max_model_len": 8192}
    return SimConfig(**{**base, "kv_events_port": 0, "kv_events_replay_port": 0, **changes})


def replicas_of(fleet: SimFleet) -> list[dict]:
    return [
        {"url": r.url, "kv_events": r.kv_events_endpoint, "kv_events_replay": r.kv_events_replay_endpoint}
        for r in fleet.replicas
    ]


async def settle(service, fleet: SimFleet) -> None:
    """Wait until the gateway has applied every batch the engines have published."""
    streams = service.feeds.streams

    def behind(replica) -> bool:
        last = streams[replica.url.removeprefix("http://")].last_seq
        return replica.publisher.next_seq > 0 and last != replica.publisher.next_seq - 1

    for _ in range(300):
        if not any(behind(r) for r in fleet.replicas):
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the gateway did not catch up with the KV events")


def samples(text: str, name: str) -> list:
    return [s for family in text_string_to_metric_families(text) for s in family.samples if s.name == name]


def total(text: str, name: str) -> float:
    return sum(s.value for s in samples(text, name))


async def test_precise_mode_predicts_what_the_engines_hold_through_eviction_and_reset():
    async with (
        SimFleet(sim_with_events(), replicas=2) as fleet,
        running_gateway(replicas_of(fleet), **{"precise.enabled": True}) as (url, service),
    ):
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused")
        for turn in range(3):  # the turns of one conversation hit, and are predicted exactly
            await client.chat.completions.create(model=MODEL, messages=conversation(1, turn), max_tokens=4)
            await settle(service, fleet)
        metrics = await get_text(url + "/metrics")
        assert total(metrics, "kvgate_cached_tokens_total") > 0
        assert total(metrics, PREDICTION_ERROR) == 0
        affinity = [s for s in samples(metrics, "kvgate_requests_total") if s.labels["reason"] == "affinity"]
        holder_name = affinity[0].labels["replica"]
        holder = next(r for r in fleet.replicas if r.url.endswith(holder_name))

        # other conversations push the first out of the holder's 1200 blocks, and the events say so
        for tag in range(2, 9):
            await client.chat.completions.create(model=MODEL, messages=conversation(tag, 2), max_tokens=4)
        await settle(service, fleet)
        before = total(await get_text(url + "/metrics"), PREDICTION_ERROR)
        await client.chat.completions.create(model=MODEL, messages=conversation(1, 3), max_tokens=4)
        after = total(await get_text(url + "/metrics"), PREDICTION_ERROR)
        assert after - before <= 16  # at most a block: the engine always recomputes a prompt's last token

        # a reset of the holder's prefix cache publishes AllBlocksCleared: the index forgets it all
        assert holder.reset_prefix_cache()
        await settle(service, fleet)
        assert not any(service.index.block_counts().get(holder_name, {}).values())


async def test_a_gateway_that_joins_late_replays_what_the_publisher_buffered():
    async with SimFleet(sim_with_events(), replicas=1) as fleet:
        direct = openai.AsyncOpenAI(base_url=fleet.urls[0] + "/v1", api_key="unused")
        await direct.chat.completions.create(model=MODEL, messages=conversation(5, 2), max_tokens=4)
        async with running_gateway(replicas_of(fleet), **{"precise.enabled": True}) as (url, service):
            client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="unused")
            await client.chat.completions.create(model=MODEL, messages=conversation(6, 0), max_tokens=4)
            await settle(service, fleet)
            response = await client.chat.completions.create(
                model=MODEL, messages=conversation(5, 3), max_tokens=4
            )
            metrics = await get_text(url + "/metrics")
            predicted = total(metrics, "kvgate_predicted_cached_tokens_total")
            assert response.usage.prompt_tokens_details.cached_tokens > 0
            assert predicted >= response.usage.prompt_tokens_details.cached_tokens - 16
