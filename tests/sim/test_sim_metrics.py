"""`/metrics` as vLLM exposes it: parseable Prometheus text, vLLM's names, labels and buckets."""

import asyncio

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.sim.simtools import MODEL, client_for, numbered_text

EXPECTED_SAMPLES = {
    "vllm:num_requests_running",
    "vllm:num_requests_waiting",
    "vllm:kv_cache_usage_perc",
    "vllm:cache_config_info",
    "vllm:prefix_cache_queries_total",
    "vllm:prefix_cache_hits_total",
    "vllm:external_prefix_cache_queries_total",
    "vllm:external_prefix_cache_hits_total",
    "vllm:prompt_tokens_total",
    "vllm:generation_tokens_total",
    "vllm:prompt_tokens_cached_total",
    "vllm:prompt_tokens_by_source_total",
    "vllm:num_preemptions_total",
    "vllm:request_success_total",
    "vllm:time_to_first_token_seconds_bucket",
    "vllm:inter_token_latency_seconds_bucket",
    "vllm:e2e_request_latency_seconds_bucket",
    "vllm:request_queue_time_seconds_bucket",
    "vllm:request_prefill_time_seconds_bucket",
    "vllm:request_decode_time_seconds_bucket",
    "vllm:request_inference_time_seconds_bucket",
    "vllm:request_prompt_tokens_bucket",
    "vllm:request_generation_tokens_bucket",
}

VLLM_TTFT_BUCKETS = [
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
    80.0, 160.0, 640.0, 2560.0,
]  # fmt: skip


async def scrape(url: str) -> dict[str, list]:
    async with httpx.AsyncClient() as http:
        response = await http.get(url + "/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def value(samples: dict[str, list], name: str, **labels: str) -> float:
    matching = [s for s in samples[name] if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(matching) == 1, (name, labels, matching)
    return matching[0].value


async def test_metrics_parse_and_carry_vllms_names_labels_and_buckets(start_fleet):
    fleet = await start_fleet(time_scale=1000, dram_blocks=4096, max_model_len=4096)
    client = client_for(fleet.urls[0])
    messages = [{"role": "user", "content": numbered_text(1000)}]
    first = await client.chat.completions.create(model=MODEL, messages=messages, max_tokens=5)
    second = await client.chat.completions.create(model=MODEL, messages=messages, max_tokens=5)
    samples = await scrape(fleet.urls[0])

    assert set(samples) >= EXPECTED_SAMPLES
    for sample in samples["vllm:prompt_tokens_total"]:
        assert sample.labels == {"model_name": MODEL, "engine": "0"}
    info = samples["vllm:cache_config_info"][0]
    assert info.value == 1.0
    assert info.labels["block_size"] == "16"
    assert info.labels["num_gpu_blocks"] == str(fleet[0].engine.cache.capacity)
    assert info.labels["num_cpu_blocks"] == "4096"
    assert info.labels["engine"] == "0"
    bounds = [float(s.labels["le"]) for s in samples["vllm:time_to_first_token_seconds_bucket"]]
    assert bounds == [*VLLM_TTFT_BUCKETS, float("inf")]

    prompt = first.usage.prompt_tokens
    cached = second.usage.prompt_tokens_details.cached_tokens
    assert value(samples, "vllm:prompt_tokens_total") == 2 * prompt
    assert value(samples, "vllm:generation_tokens_total") == 10
    assert value(samples, "vllm:prefix_cache_queries_total") == 2 * prompt
    assert value(samples, "vllm:prefix_cache_hits_total") == cached > 0
    assert value(samples, "vllm:prompt_tokens_cached_total") == cached
    assert value(samples, "vllm:prompt_tokens_by_source_total", source="local_compute") == 2 * prompt - cached
    assert value(samples, "vllm:external_prefix_cache_queries_total") == 2 * prompt
    assert value(samples, "vllm:request_success_total", finished_reason="length") == 2
    assert value(samples, "vllm:time_to_first_token_seconds_count") == 2
    assert value(samples, "vllm:inter_token_latency_seconds_count") == 8
    assert value(samples, "vllm:num_requests_running") == 0
    assert value(samples, "vllm:kv_cache_usage_perc") == 0.0


async def test_gauges_follow_load_and_preemptions_are_counted(start_fleet):
    # a low time scale: the requests last long enough (about half a second) for scrapes to see them
    fleet = await start_fleet(time_scale=5, hbm_blocks=40, max_model_len=640, max_num_seqs=8)
    client = client_for(fleet.urls[0])
    observed = []

    async def watch():
        while True:
            samples = await scrape(fleet.urls[0])
            observed.append(
                (value(samples, "vllm:num_requests_running"), value(samples, "vllm:kv_cache_usage_perc"))
            )
            await asyncio.sleep(0.005)

    watcher = asyncio.create_task(watch())
    prompts = [[{"role": "user", "content": numbered_text(160, start=1000 * n)}] for n in range(6)]
    await asyncio.gather(
        *(client.chat.completions.create(model=MODEL, messages=m, max_tokens=150) for m in prompts)
    )
    watcher.cancel()
    samples = await scrape(fleet.urls[0])
    assert max(running for running, _ in observed) >= 2
    assert max(usage for _, usage in observed) > 0.5
    assert value(samples, "vllm:num_preemptions_total") >= 1
    assert value(samples, "vllm:request_success_total", finished_reason="length") == 6
