"""Routers compared side by side: each in front of a fresh simulated fleet, driven by the same swarm.

A contender is anything that, given the replicas' URLs, serves an OpenAI-compatible endpoint in front
of them: kvgate with a policy, a peer router, or one replica on its own (the pooled oracle). Every
contender gets a freshly started fleet (empty caches) and the same seeded workload, so the runs differ
only by the routing. The replicas' own `/metrics` tell how the requests spread over them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from loadtest.process import GatewayProcess
from loadtest.sim import SimProcess

Start = Callable[[list[str]], contextlib.AbstractContextManager[str]]

MAX_MODEL_LEN = 131_072
BOUNDED_FLEET = [
    "--max-model-len", str(MAX_MODEL_LEN), "--hbm-blocks", "12000", "--dram-blocks", "24000",
    "--stream-interval", "10",
]  # fmt: skip
"""`kvgate sim` arguments of the demo's and the routing benchmark's replicas: a 128k context, caches
bounded so that where a conversation lands matters (192k tokens of HBM and 384k of DRAM each), ten
tokens per streamed chunk so that long runs at a high time scale fit a small machine's CPU."""


@dataclass(frozen=True)
class Contender:
    label: str
    start: Start
    replicas: int | None = None
    """How many simulated replicas it routes over (None: the experiment's count)."""
    sim_args: tuple[str, ...] = ()
    """Extra `kvgate sim` arguments for its fleet (the oracle's bigger replica)."""


def kvgate(policy: str, extra_args: Sequence[str] = (), label: str | None = None) -> Contender:
    @contextlib.contextmanager
    def start(urls: list[str]) -> Iterator[str]:
        args = ["--replicas", ",".join(urls), "--policy", policy, "--log-level", "warning", *extra_args]
        with GatewayProcess(extra_args=args) as gateway:
            yield gateway.url

    return Contender(label or f"kvgate {policy}", start)


def pooled_oracle(replicas: int, sim_args: Sequence[str]) -> Contender:
    """One replica with `replicas` times the cache and the compute: the hit rate no routing can beat."""

    @contextlib.contextmanager
    def start(urls: list[str]) -> Iterator[str]:
        yield urls[0]

    return Contender("pooled oracle", start, replicas=1, sim_args=tuple(_pooled(sim_args, replicas)))


def _pooled(sim_args: Sequence[str], factor: int) -> list[str]:
    """The fleet's arguments for one replica `factor` times as big: tiers and batch limits multiplied,
    step times divided (`--slowdown 1/factor`)."""
    scaled = {
        "--hbm-blocks",
        "--dram-blocks",
        "--storage-blocks",
        "--max-num-seqs",
        "--max-num-batched-tokens",
    }
    args = list(sim_args)
    for position, arg in enumerate(args[:-1]):
        if arg in scaled:
            args[position + 1] = str(int(float(args[position + 1]) * factor))
    return [*args, "--slowdown", str(1 / factor)]


@dataclass
class Outcome:
    label: str
    summary: dict[str, Any]
    output_dir: Path
    requests_per_replica: list[float] = field(default_factory=list)
    replica_ttft_mean_s: float = float("nan")
    """The replicas' own mean TTFT (`vllm:time_to_first_token_seconds`), to set beside the client's: the
    difference is what the router, the loopback and a busy machine added."""

    @property
    def busiest_share(self) -> float:
        return busiest_share(self.requests_per_replica)


def busiest_share(counts: Sequence[float]) -> float:
    """The busiest replica's requests over the mean (1.0: perfectly even; NaN without requests)."""
    return max(counts) / (sum(counts) / len(counts)) if counts and sum(counts) else float("nan")


@dataclass
class FleetFigures:
    requests_per_replica: list[float]
    ttft_mean_s: float


def fleet_figures(urls: Sequence[str]) -> FleetFigures:
    """Finished requests per replica (`vllm:request_success_total`) and the fleet's mean TTFT, from the
    replicas' own /metrics."""
    counts = []
    ttft_sum = ttft_count = 0.0
    with httpx.Client(timeout=5.0) as client:
        for url in urls:
            finished = 0.0
            for family in text_string_to_metric_families(client.get(url + "/metrics").text):
                for sample in family.samples:
                    if sample.name == "vllm:request_success_total":
                        finished += sample.value
                    elif sample.name == "vllm:time_to_first_token_seconds_sum":
                        ttft_sum += sample.value
                    elif sample.name == "vllm:time_to_first_token_seconds_count":
                        ttft_count += sample.value
            counts.append(finished)
    return FleetFigures(counts, ttft_sum / ttft_count if ttft_count else float("nan"))


async def run_contender(
    contender: Contender, replicas: int, sim_args: Sequence[str], swarm: Callable[[str, str], Any]
) -> Outcome:
    """Start a fresh fleet and the contender in front of it, run `await swarm(endpoint, label)`."""
    count = contender.replicas or replicas
    args = list(contender.sim_args) or list(sim_args)
    async with SimProcess(replicas=count, extra_args=args) as sim:
        with contender.start(sim.urls) as endpoint:
            result = await swarm(endpoint, contender.label)
        fleet = fleet_figures(sim.urls)
    spread = fleet.requests_per_replica if count > 1 else []
    return Outcome(contender.label, result.summary, result.output_dir, spread, fleet.ttft_mean_s)
