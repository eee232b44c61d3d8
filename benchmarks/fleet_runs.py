"""What the index benchmarks share: several gateway processes, per-replica request counts, and the
side-by-side table of swarm summaries."""

from __future__ import annotations

import contextlib
import glob
import gzip
import json
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import psutil
from prometheus_client.parser import text_string_to_metric_families

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from loadtest.experiment import busiest_share, fleet_figures
from loadtest.process import GatewayProcess
from loadtest.swarm import SwarmConfig, run_swarm


def conversations_within(directory: str, max_prompt_tokens: int) -> list[str]:
    """The WEKA trace files whose every request, sub-agents' included, fits in `max_prompt_tokens`: a
    replay against a model with a shorter context than the recorded one would see the rest refused."""

    def longest(requests: list[dict]) -> int:
        sizes = (longest(r["requests"]) if "requests" in r else r.get("in", 0) for r in requests)
        return max(sizes, default=0)

    chosen = []
    for path in sorted(glob.glob(os.path.join(directory, "*.json*"))):
        with gzip.open(path) if path.endswith(".gz") else open(path, "rb") as file:
            if longest(json.load(file)["requests"]) <= max_prompt_tokens:
                chosen.append(path)
    return chosen


WEKA_TRACE = Path(__file__).resolve().parents[2] / "shared" / "traces" / "weka-claude-code"
"""The WEKA Claude Code conversations, beside the checkout (not part of the repository)."""


@contextlib.contextmanager
def gateways(
    count: int, replica_urls: Sequence[str], extra_args: Sequence[str] = ()
) -> Iterator[list[GatewayProcess]]:
    """`count` gateway processes in front of the same replicas."""
    args = ["--replicas", ",".join(replica_urls), "--log-level", "warning", *extra_args]
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(GatewayProcess(extra_args=args)) for _ in range(count)]


def cpu_seconds(pids: Sequence[int]) -> float:
    """User and system CPU seconds the processes have used so far."""
    return sum(sum(psutil.Process(pid).cpu_times()[:2]) for pid in pids)


def gateway_counters(urls: Sequence[str]) -> dict[str, float]:
    """Summed over the gateways' /metrics: decisions by reason, predicted and reported cached tokens,
    lookups answered without Redis."""
    totals: dict[str, float] = {}
    with httpx.Client(timeout=5.0) as client:
        for url in urls:
            for family in text_string_to_metric_families(client.get(url + "/metrics").text):
                for sample in family.samples:
                    if sample.name == "kvgate_requests_total":
                        key = "reason:" + sample.labels["reason"]
                    elif sample.name in ("kvgate_predicted_cached_tokens_total", "kvgate_cached_tokens_total",
                                         "kvgate_index_redis_fallbacks_total"):  # fmt: skip
                        key = sample.name.removeprefix("kvgate_").removesuffix("_total")
                    else:
                        continue
                    totals[key] = totals.get(key, 0.0) + sample.value
    return totals


def decision_figures(counters: dict[str, float]) -> dict[str, float]:
    """Shares of decisions by reason, predicted over reported cached tokens, Redis fallbacks."""
    decisions = sum(v for k, v in counters.items() if k.startswith("reason:")) or float("nan")
    reported = counters.get("cached_tokens") or float("nan")
    return {
        "affinity": counters.get("reason:affinity", 0.0) / decisions,
        "load_guard": counters.get("reason:load_guard", 0.0) / decisions,
        "predicted": counters.get("predicted_cached_tokens", 0.0) / reported,
        "fallbacks": counters.get("index_redis_fallbacks", 0.0),
    }


def print_decisions(rows: dict[str, dict[str, float]]) -> None:
    """Per contender: share of affinity and load-guard decisions, predicted / reported cached tokens,
    lookups answered without Redis."""
    width = max(len(label) for label in rows) + 2
    print(f"{'':{width}}{'affinity':>10}{'load guard':>12}{'predicted/reported':>20}{'Redis fallbacks':>17}")
    for label, row in rows.items():
        print(f"{label:{width}}{row['affinity']:>10.1%}{row['load_guard']:>12.1%}{row['predicted']:>20.2f}"
              f"{row['fallbacks']:>17.0f}")  # fmt: skip


Row = dict[str, float]


def run_rounds(labels: Sequence[str], rounds: int, run: Callable[[str, int], Row]) -> dict[str, list[Row]]:
    """`run(label, round)` for every label in turn, `rounds` times, printing each run's figures."""
    runs: dict[str, list[Row]] = {label: [] for label in labels}
    for round_ in range(rounds):
        for label in labels:
            row = run(label, round_)
            runs[label].append(row)
            print(f"  round {round_ + 1} {label}: hit {row['hit']:.1f}% (ceiling {row['ceiling']:.1f}%), "
                  f"TTFT p50 {row['p50']:.2f} s p90 {row['p90']:.2f} s, {row['ok']:.0f} ok "
                  f"{row['failed']:.0f} failed", flush=True)  # fmt: skip
    return runs


def medians(runs: dict[str, list[Row]]) -> dict[str, Row]:
    """Per label, the median of each figure over its rounds."""
    return {
        label: {key: statistics.median(r[key] for r in rows) for key in rows[0]}
        for label, rows in runs.items()
    }


def failed_requests(runs: dict[str, list[Row]]) -> float:
    return sum(row["failed"] for rows in runs.values() for row in rows)


def figures(summary: dict[str, Any]) -> dict[str, float]:
    cache = summary["cache"]
    ttft = summary["latency_s"]["ttft"]
    return {
        "ok": summary["requests"]["ok"],
        "failed": summary["requests"]["failed"],
        "hit": (cache["hit_rate"] or 0.0) * 100,
        "ceiling": (cache["ceiling_hit_rate"] or 0.0) * 100,
        "p50": ttft["p50"] or float("nan"),
        "p90": ttft["p90"] or float("nan"),
    }


async def swarm_row(
    config: SwarmConfig, processes: Sequence[GatewayProcess], replica_urls: Sequence[str]
) -> dict[str, float]:
    """Run the swarm through the gateways: its figures, the gateways' CPU share of one core over the run,
    their routing decisions, and the busiest replica's request share."""
    pids = [process.pid for process in processes]
    cpu, wall = cpu_seconds(pids), time.perf_counter()
    result = await run_swarm(config)
    cpu = (cpu_seconds(pids) - cpu) / (time.perf_counter() - wall)
    decisions = decision_figures(gateway_counters([process.url for process in processes]))
    row = figures(result.summary) | {"cpu": cpu} | decisions
    row["busiest"] = busiest_share(fleet_figures(replica_urls).requests_per_replica)
    return row


def print_table(rows: dict[str, dict[str, float]]) -> None:
    """One line per contender: requests, hit rate and ceiling (%), TTFT p50/p90 (s), busiest replica, the
    gateway processes' CPU (share of one core, all of them together)."""
    width = max(len(label) for label in rows) + 2
    print(f"{'':{width}}{'ok':>7}{'failed':>8}{'hit rate':>10}{'ceiling':>9}{'TTFT p50':>10}{'p90':>9}"
          f"{'busiest':>9}{'gw CPU':>8}")  # fmt: skip
    for label, row in rows.items():
        print(f"{label:{width}}{row['ok']:>7.0f}{row['failed']:>8.0f}{row['hit']:>9.1f}%{row['ceiling']:>8.1f}%"
              f"{row['p50']:>9.2f}s{row['p90']:>8.2f}s{row.get('busiest', float('nan')):>9.2f}"
              f"{row.get('cpu', float('nan')):>7.0%}")  # fmt: skip
