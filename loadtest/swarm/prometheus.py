"""`--metrics-port`: the swarm's client-side figures in Prometheus format while it runs.

Names carry the `kvgate_loadtest_` prefix and their unit; counters end in `_total`. Every shard serves
its own figures; sum them across pods in PromQL.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from loadtest.swarm.client import OK
from loadtest.swarm.driver import LiveState
from loadtest.swarm.records import RequestRecord

PREFIX = "kvgate_loadtest_"
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0)
ITL_BUCKETS = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0)


class SwarmMetrics:
    def __init__(self, live: LiveState) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry

        def gauge(name: str, documentation: str, read: Callable[[], float]) -> None:
            Gauge(PREFIX + name, documentation, registry=registry).set_function(read)

        gauge("users", "Users running (closed loop) or started (open loop)", lambda: live.users)
        gauge("target_users", "Users the load mode asks for", lambda: live.target_users)
        gauge("subagents", "Sub-agents running", lambda: live.subagents)
        gauge("requests_in_flight", "Requests sent and not finished", lambda: live.in_flight)
        self.requests = Counter(
            PREFIX + "requests", "Finished requests by outcome", ["outcome"], registry=registry
        )
        self.ttft = Histogram(
            PREFIX + "ttft_seconds", "Time to first token", buckets=LATENCY_BUCKETS, registry=registry
        )
        self.e2e = Histogram(
            PREFIX + "e2e_latency_seconds",
            "Request latency, end to end",
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.itl = Histogram(
            PREFIX + "inter_token_latency_seconds",
            "Mean inter-token latency per request",
            buckets=ITL_BUCKETS,
            registry=registry,
        )
        self.prompt_tokens = Counter(
            PREFIX + "prompt_tokens", "Prompt tokens the server reported", registry=registry
        )
        self.cached_tokens = Counter(
            PREFIX + "cached_tokens", "Prompt tokens the server reported as cached", registry=registry
        )
        self.expected_tokens = Counter(
            PREFIX + "expected_prompt_tokens", "Prompt tokens as the workload built them", registry=registry
        )
        self.ceiling_tokens = Counter(
            PREFIX + "ceiling_tokens",
            "Prompt tokens in blocks sent earlier in the run (the most any cache could serve)",
            registry=registry,
        )
        self.output_tokens = Counter(
            PREFIX + "output_tokens", "Completion tokens received", registry=registry
        )
        self.goodput = Counter(
            PREFIX + "goodput_requests", "Successful requests that met the SLO", registry=registry
        )
        self._prompt = 0
        self._cached = 0
        self._expected = 0
        self._ceiling = 0
        gauge(
            "hit_rate_ratio",
            "Measured prefix-cache hit rate since the start: cached / prompt tokens",
            lambda: self._cached / self._prompt if self._prompt else 0.0,
        )
        gauge(
            "hit_rate_ceiling_ratio",
            "The workload's hit-rate ceiling since the start: ceiling / prompt tokens",
            lambda: self._ceiling / self._expected if self._expected else 0.0,
        )
        self._server: Any = None

    def observe(self, record: RequestRecord) -> None:
        self.requests.labels(record.outcome).inc()
        if record.outcome != OK:
            return
        if record.ttft_s is not None:
            self.ttft.observe(record.ttft_s)
        if record.itl_s is not None:
            self.itl.observe(record.itl_s)
        self.e2e.observe(record.e2e_s)
        if record.prompt_tokens is not None:
            self.prompt_tokens.inc(record.prompt_tokens)
            self._prompt += record.prompt_tokens
        if record.cached_tokens is not None:
            self.cached_tokens.inc(record.cached_tokens)
            self._cached += record.cached_tokens
        self.expected_tokens.inc(record.expected_prompt_tokens)
        self._expected += record.expected_prompt_tokens
        self.ceiling_tokens.inc(record.ceiling_tokens)
        self._ceiling += record.ceiling_tokens
        if record.completion_tokens:
            self.output_tokens.inc(record.completion_tokens)
        if record.slo_ok:
            self.goodput.inc()

    def serve(self, host: str, port: int) -> int:
        """Serve /metrics from a background thread; returns the port (useful when `port` is 0)."""
        self._server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(self._server.server_port)

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
