"""vLLM's Prometheus metrics for one replica: names, labels and bucket boundaries as vLLM exposes them.

The engine updates plain counters and bucket arrays, and a collector turns them into metric families when
`/metrics` is scraped, so the hot path takes no locks; the gauges (running, waiting, KV usage) are read from
the engine at scrape time. Each replica has its own registry.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from loadtest.sim.config import SimConfig
from loadtest.sim.request import FINISH_REASONS

TTFT_BUCKETS = (
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0,
    80.0, 160.0, 640.0, 2560.0,
)  # fmt: skip
INTER_TOKEN_BUCKETS = (
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
REQUEST_LATENCY_BUCKETS = (
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0,
    960.0, 1920.0, 7680.0,
)  # fmt: skip
ITERATION_TOKEN_BUCKETS = (1, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096, 8192, 16384)

PROMPT_TOKEN_SOURCES = ("local_compute", "local_cache_hit", "external_kv_transfer")


def build_1_2_5_buckets(max_value: int) -> tuple[int, ...]:
    """1, 2, 5, 10, 20, 50, ... up to `max_value`, as vLLM sizes its token-count histograms."""
    buckets: list[int] = []
    exponent = 0
    while True:
        for mantissa in (1, 2, 5):
            value = mantissa * 10**exponent
            if value > max_value:
                return tuple(buckets)
            buckets.append(value)
        exponent += 1


class Histogram:
    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.sum = 0.0

    def observe(self, value: float, count: int = 1) -> None:
        self.counts[bisect_left(self.bounds, value)] += count
        self.sum += value * count

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative_buckets(self) -> list[tuple[str, float]]:
        buckets: list[tuple[str, float]] = []
        total = 0
        for bound, count in zip(self.bounds, self.counts, strict=False):
            total += count
            buckets.append((floatToGoString(bound), total))
        buckets.append(("+Inf", total + self.counts[-1]))
        return buckets


class ReplicaMetrics:
    """The counters a replica keeps, and the registry that exposes them."""

    def __init__(self, config: SimConfig, num_gpu_blocks: int, engine_index: int = 0) -> None:
        self.model_name = config.model
        self.engine = str(engine_index)
        self.cache_config_labels = cache_config_info_labels(config, num_gpu_blocks, self.engine)
        self.gauge_source: Callable[[], tuple[int, int, float]] = lambda: (0, 0, 0.0)
        self.prefix_cache_queries = 0
        self.prefix_cache_hits = 0
        self.external_prefix_cache_queries = 0
        self.external_prefix_cache_hits = 0
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.prompt_tokens_by_source = dict.fromkeys(PROMPT_TOKEN_SOURCES, 0)
        self.num_preemptions = 0
        self.request_success = dict.fromkeys(FINISH_REASONS, 0)
        token_buckets = build_1_2_5_buckets(config.max_model_len)
        self.time_to_first_token = Histogram(TTFT_BUCKETS)
        self.inter_token_latency = Histogram(INTER_TOKEN_BUCKETS)
        self.e2e_request_latency = Histogram(REQUEST_LATENCY_BUCKETS)
        self.request_queue_time = Histogram(REQUEST_LATENCY_BUCKETS)
        self.request_inference_time = Histogram(REQUEST_LATENCY_BUCKETS)
        self.request_prefill_time = Histogram(REQUEST_LATENCY_BUCKETS)
        self.request_decode_time = Histogram(REQUEST_LATENCY_BUCKETS)
        self.request_prompt_tokens = Histogram(token_buckets)
        self.request_generation_tokens = Histogram(token_buckets)
        self.request_params_max_tokens = Histogram(token_buckets)
        self.iteration_tokens = Histogram(ITERATION_TOKEN_BUCKETS)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_Collector(self))

    @property
    def num_requests_running(self) -> int:
        return self.gauge_source()[0]

    @property
    def num_requests_waiting(self) -> int:
        return self.gauge_source()[1]

    @property
    def kv_cache_usage_perc(self) -> float:
        return self.gauge_source()[2]

    def render(self) -> bytes:
        return generate_latest(self.registry)


def cache_config_info_labels(config: SimConfig, num_gpu_blocks: int, engine: str) -> dict[str, str]:
    """The labels of `vllm:cache_config_info`: vLLM's CacheConfig fields as strings, plus `engine`."""
    offload_gib = config.dram_blocks * config.block_bytes() / 2**30 if config.dram_blocks else None
    return {
        "block_size": str(config.block_size),
        "cache_dtype": "auto",
        "enable_prefix_caching": "True",
        "engine": engine,
        "gpu_memory_utilization": str(config.gpu_memory_utilization),
        "is_attention_free": "False",
        "kv_cache_memory_bytes": "None",
        "kv_offloading_backend": "native",
        "kv_offloading_size": str(offload_gib),
        "kv_sharing_fast_prefill": "False",
        "mamba_cache_dtype": "auto",
        "mamba_page_size_padded": "None",
        "mamba_ssm_cache_dtype": "auto",
        "num_cpu_blocks": str(config.dram_blocks) if config.dram_blocks else "None",
        "num_gpu_blocks": str(num_gpu_blocks),
        "num_gpu_blocks_override": str(config.hbm_blocks),
        "prefix_caching_hash_algo": "xxhash",
        "sliding_window": "None",
    }


class _Collector:
    def __init__(self, metrics: ReplicaMetrics) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self.metrics
        labels = ["model_name", "engine"]
        values = [m.model_name, m.engine]

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc, labels=labels)
            family.add_metric(values, value)
            return family

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(name, doc, labels=labels)
            family.add_metric(values, value)
            return family

        def histogram(name: str, doc: str, hist: Histogram) -> HistogramMetricFamily:
            family = HistogramMetricFamily(name, doc, labels=labels)
            family.add_metric(values, hist.cumulative_buckets(), hist.sum)
            return family

        yield gauge(
            "vllm:num_requests_running",
            "Number of requests in model execution batches.",
            m.num_requests_running,
        )
        yield gauge(
            "vllm:num_requests_waiting", "Number of requests waiting to be processed.", m.num_requests_waiting
        )
        yield gauge(
            "vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 percent usage.", m.kv_cache_usage_perc
        )
        info = GaugeMetricFamily(
            "vllm:cache_config_info",
            "Information of the LLMEngine CacheConfig",
            labels=list(m.cache_config_labels),
        )
        info.add_metric(list(m.cache_config_labels.values()), 1.0)
        yield info

        yield counter(
            "vllm:prefix_cache_queries",
            "Prefix cache queries, in terms of number of queried tokens.",
            m.prefix_cache_queries,
        )
        yield counter(
            "vllm:prefix_cache_hits",
            "Prefix cache hits, in terms of number of cached tokens.",
            m.prefix_cache_hits,
        )
        yield counter(
            "vllm:external_prefix_cache_queries",
            "External prefix cache queries from KV connector cross-instance cache sharing, "
            "in terms of number of queried tokens.",
            m.external_prefix_cache_queries,
        )
        yield counter(
            "vllm:external_prefix_cache_hits",
            "External prefix cache hits from KV connector cross-instance cache sharing, "
            "in terms of number of cached tokens.",
            m.external_prefix_cache_hits,
        )
        yield counter(
            "vllm:num_preemptions", "Cumulative number of preemption from the engine.", m.num_preemptions
        )
        yield counter("vllm:prompt_tokens", "Number of prefill tokens processed.", m.prompt_tokens)
        yield counter("vllm:generation_tokens", "Number of generation tokens processed.", m.generation_tokens)
        cached = (
            m.prompt_tokens_by_source["local_cache_hit"] + m.prompt_tokens_by_source["external_kv_transfer"]
        )
        yield counter(
            "vllm:prompt_tokens_cached", "Number of cached prompt tokens (local + external).", cached
        )
        by_source = CounterMetricFamily(
            "vllm:prompt_tokens_by_source", "Number of prompt tokens by source.", labels=[*labels, "source"]
        )
        for source, value in m.prompt_tokens_by_source.items():
            by_source.add_metric([*values, source], value)
        yield by_source
        success = CounterMetricFamily(
            "vllm:request_success",
            "Count of successfully processed requests.",
            labels=[*labels, "finished_reason"],
        )
        for reason, value in m.request_success.items():
            success.add_metric([*values, reason], value)
        yield success

        yield histogram(
            "vllm:request_prompt_tokens", "Number of prefill tokens processed.", m.request_prompt_tokens
        )
        yield histogram(
            "vllm:request_generation_tokens",
            "Number of generation tokens processed.",
            m.request_generation_tokens,
        )
        yield histogram(
            "vllm:request_params_max_tokens",
            "Histogram of the max_tokens request parameter.",
            m.request_params_max_tokens,
        )
        yield histogram(
            "vllm:iteration_tokens_total",
            "Histogram of number of tokens per engine_step.",
            m.iteration_tokens,
        )
        yield histogram(
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            m.time_to_first_token,
        )
        yield histogram(
            "vllm:inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            m.inter_token_latency,
        )
        yield histogram(
            "vllm:e2e_request_latency_seconds",
            "Histogram of e2e request latency in seconds.",
            m.e2e_request_latency,
        )
        yield histogram(
            "vllm:request_queue_time_seconds",
            "Histogram of time spent in WAITING phase for request.",
            m.request_queue_time,
        )
        yield histogram(
            "vllm:request_inference_time_seconds",
            "Histogram of time spent in RUNNING phase for request.",
            m.request_inference_time,
        )
        yield histogram(
            "vllm:request_prefill_time_seconds",
            "Histogram of time spent in PREFILL phase for request.",
            m.request_prefill_time,
        )
        yield histogram(
            "vllm:request_decode_time_seconds",
            "Histogram of time spent in DECODE phase for request.",
            m.request_decode_time,
        )
