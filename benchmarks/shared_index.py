"""Several gateway replicas behind a load balancer: one shared Redis index against one index per process.

Each contender gets a freshly started fleet of simulated replicas with bounded caches and the same
seeded agent swarm:

    1 gateway            one `kvgate serve` process (the affinity policy, embedded index)
    3 gateways, Redis    three processes sharing one real redis-server (`--index redis://...`)
    3 gateways, embedded three processes, each with its own embedded index

Against several gateways the swarm sends every request to the next one in turn
(`--endpoint-spread request`), as a Kubernetes Service does, so the turns of one conversation reach
different gateways. Prints hit rate (measured from the replicas' `cached_tokens`, and the ceiling the
workload allows), TTFT p50/p90 in simulated seconds, and the busiest replica's share of requests.

    python benchmarks/shared_index.py          # 6 replicas, 24 agents, 600 simulated s each (about 3 min)
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.fleet_runs import (
    failed_requests,
    gateways,
    medians,
    print_decisions,
    print_table,
    run_rounds,
    swarm_row,
)
from loadtest.process import GatewayProcess
from loadtest.redis_process import redis_server
from loadtest.sim import SimProcess
from loadtest.swarm import SwarmConfig

CONTENDERS = ("1 gateway", "3 gateways, Redis", "3 gateways, embedded")


@contextlib.contextmanager
def contender(
    label: str, replica_urls: list[str], count: int, time_scale: float
) -> Iterator[list[GatewayProcess]]:
    # the gateways' clocks run in simulated time too: a 1 s scrape of the replicas' load
    scrape = ["--set", f"health.scrape_interval_s={1.0 / time_scale}"]
    if label == CONTENDERS[0]:
        with gateways(1, replica_urls, scrape) as processes:
            yield processes
    elif label == CONTENDERS[1]:
        with (
            redis_server() as redis,
            gateways(count, replica_urls, [*scrape, "--index", redis.url]) as processes,
        ):
            yield processes
    else:
        with gateways(count, replica_urls, scrape) as processes:
            yield processes


async def run_one(label: str, args: argparse.Namespace, output: str) -> dict[str, float]:
    sim_args = ["--time-scale", str(args.time_scale), "--hbm-blocks", str(args.hbm_blocks)]
    async with SimProcess(replicas=args.replicas, extra_args=sim_args) as sim:
        with contender(label, sim.urls, args.gateways, args.time_scale) as processes:
            config = SwarmConfig(
                endpoint=",".join(process.url for process in processes),
                endpoint_spread="request",
                users=args.users,
                duration_s=args.duration,
                max_requests=args.max_requests,
                time_scale=args.time_scale,
                think_scale=args.think_scale,
                seed=args.seed,
                label=label,
                output_dir=os.path.join(output, label.replace(" ", "").replace(",", "-")),
                plots=False,
            )
            return await swarm_row(config, processes, sim.urls)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--replicas", type=int, default=6)
    parser.add_argument("--gateways", type=int, default=3)
    parser.add_argument("--users", type=int, default=24)
    parser.add_argument("--duration", type=float, default=600.0, help="simulated seconds per run")
    parser.add_argument("--max-requests", type=int, default=5000, help="per run, at most")
    parser.add_argument("--time-scale", type=float, default=10.0)
    parser.add_argument("--think-scale", type=float, default=0.5)
    parser.add_argument("--hbm-blocks", type=int, default=9000, help="per replica, 16-token blocks (>= 8192)")
    parser.add_argument("--rounds", type=int, default=1, help="contenders run in turn, this many times")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--output", default=None, help="swarm results (default: a temporary directory)")
    args = parser.parse_args()

    print(f"shared index: {args.replicas} simulated replicas ({args.hbm_blocks} HBM blocks each), "
          f"{args.users} agents, {args.duration:g} simulated s per run at time scale {args.time_scale:g}, "
          f"seed {args.seed}, {args.gateways} gateways fed per request in turn")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="kvgate-shared-index-") as scratch:
        output = args.output or scratch
        runs = run_rounds(
            CONTENDERS,
            args.rounds,
            lambda label, round_: asyncio.run(run_one(label, args, os.path.join(output, f"round{round_}"))),
        )
    by_label = medians(runs)
    print(
        f"\nmedians over {args.rounds} round(s); TTFT in simulated seconds; busiest: requests of the "
        "busiest replica over the mean"
    )
    print_table(by_label)
    print("\nrouting decisions summed over the gateways: share by reason, cached tokens predicted / reported")
    print_decisions(by_label)
    one, shared, embedded = (by_label[label] for label in CONTENDERS)
    print(
        f"\nhit rate vs 1 gateway: Redis {shared['hit'] - one['hit']:+.1f} points, "
        f"embedded {embedded['hit'] - one['hit']:+.1f} points"
    )
    print(
        f"TTFT p90 vs 1 gateway: Redis x{shared['p90'] / one['p90']:.2f}, "
        f"embedded x{embedded['p90'] / one['p90']:.2f}"
    )
    return 1 if failed_requests(runs) else 0


if __name__ == "__main__":
    raise SystemExit(main())
