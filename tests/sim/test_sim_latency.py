"""Timing in simulated seconds, through real HTTP and the openai client: the calibrated TTFT of cold and
cached prompts, tier hits, and queueing. TTFTs are read from the engine's per-request records."""

import asyncio

import pytest

from tests.sim.simtools import client_for, numbered_text, stream_chat

PREFIX_TOKENS = 32768


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


async def test_cold_32k_prompt_and_its_cached_extension_match_the_calibration(start_fleet):
    fleet = await start_fleet(time_scale=1000, max_model_len=40000)
    client = client_for(fleet.urls[0])
    prefix = numbered_text(PREFIX_TOKENS)

    cold = await stream_chat(client, user(prefix), max_tokens=4)
    warm = await stream_chat(client, user(prefix + numbered_text(1024, start=10**6)), max_tokens=4)

    records = fleet[0].engine.records
    assert records[cold.id].ttft == pytest.approx(1.4, rel=0.2)
    assert warm.usage.prompt_tokens_details.cached_tokens == PREFIX_TOKENS
    assert records[warm.id].ttft == pytest.approx(0.12, rel=0.2)
    assert cold.usage.prompt_tokens_details.cached_tokens == 0
    histogram = fleet[0].metrics.time_to_first_token
    assert histogram.count == 2
    assert histogram.sum == pytest.approx(records[cold.id].ttft + records[warm.id].ttft)


async def test_repeated_prompt_reports_its_full_blocks_cached_and_a_lower_ttft(start_fleet):
    fleet = await start_fleet(time_scale=1000)
    client = client_for(fleet.urls[0])
    messages = user(numbered_text(3000) + "tail")
    first = await client.chat.completions.create(model="sim-llama3-8b", messages=messages, max_tokens=8)
    second = await client.chat.completions.create(model="sim-llama3-8b", messages=messages, max_tokens=8)

    prompt_tokens = first.usage.prompt_tokens
    assert prompt_tokens % 16, "the test wants a partial last block"
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    assert second.usage.prompt_tokens_details.cached_tokens == prompt_tokens // 16 * 16
    records = fleet[0].engine.records
    assert records[second.id].ttft < records[first.id].ttft / 3
    assert second.choices[0].message.content == first.choices[0].message.content


async def test_a_dram_hit_costs_more_than_an_hbm_hit_and_less_than_a_miss(start_fleet):
    fleet = await start_fleet(time_scale=1000, max_model_len=40000, hbm_blocks=2600, dram_blocks=8192)
    client = client_for(fleet.urls[0])
    records = fleet[0].engine.records
    prefix = numbered_text(PREFIX_TOKENS)

    miss = await stream_chat(client, user(prefix), max_tokens=2)
    hbm_hit = await stream_chat(client, user(prefix + numbered_text(1024, start=10**6)), max_tokens=2)
    # Another long prompt needs most of HBM: the first prefix's tail is demoted to DRAM.
    await stream_chat(client, user(numbered_text(PREFIX_TOKENS, start=2 * 10**6)), max_tokens=2)
    dram_hit = await stream_chat(client, user(prefix + numbered_text(1024, start=3 * 10**6)), max_tokens=2)

    assert records[hbm_hit.id].external_hit_tokens == 0
    assert records[dram_hit.id].external_hit_tokens > 8192
    assert dram_hit.usage.prompt_tokens_details.cached_tokens == PREFIX_TOKENS
    assert records[hbm_hit.id].ttft < records[dram_hit.id].ttft < records[miss.id].ttft
    assert fleet[0].metrics.external_prefix_cache_hits == records[dram_hit.id].external_hit_tokens


async def test_concurrent_requests_queue_and_their_ttft_rises(start_fleet):
    fleet = await start_fleet(time_scale=20)
    client = client_for(fleet.urls[0])
    records = fleet[0].engine.records
    alone = await stream_chat(client, user(numbered_text(8000)), max_tokens=2)

    prompts = [user(numbered_text(8000, start=10**5 * (n + 1))) for n in range(8)]
    results = await asyncio.gather(*(stream_chat(client, prompt, max_tokens=2) for prompt in prompts))
    ttfts = sorted(records[r.id].ttft for r in results)
    assert ttfts[-1] > 4 * records[alone.id].ttft
    assert sum(ttfts) / len(ttfts) > 2 * records[alone.id].ttft
    assert max(records[r.id].queue_time for r in results) > records[alone.id].ttft
