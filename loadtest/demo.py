"""`kvgate demo`: what KV-cache-aware routing buys, in about a minute, on this machine.

Starts simulated vLLM replicas (8 by default, each with a bounded HBM cache and a DRAM tier), puts the
gateway in front of them, and drives a swarm of coding agents through it, first with `round_robin`
routing (what a plain Kubernetes Service does) and then with `affinity`, each on a fresh fleet with
the same seeded workload. Prints the two runs side by side and where their reports and plots are.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

TIME_SCALE = 5.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--replicas", type=int, default=8, help="simulated replicas (default 8)")
    parser.add_argument("--users", type=int, default=32, help="concurrent agent users (default 32)")
    parser.add_argument(
        "--seconds", type=float, default=30.0, help="wall-clock seconds of load per policy (default 30)"
    )
    parser.add_argument(
        "--policies", default="round_robin,affinity", help="comma-separated kvgate policies to compare"
    )
    parser.add_argument("--output", default="kvgate-demo", help="directory for reports and plots")
    parser.add_argument("--seed", type=int, default=7)


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_demo(args))


async def _demo(args: argparse.Namespace) -> int:
    from rich.console import Console

    from loadtest.experiment import BOUNDED_FLEET, kvgate, run_contender
    from loadtest.swarm import SwarmConfig, comparison_markdown, comparison_table, run_swarm

    console = Console()
    output = Path(args.output)

    async def swarm(endpoint: str, label: str):
        config = SwarmConfig(
            endpoint=endpoint,
            workload="agents",
            users=args.users,
            duration_s=args.seconds * TIME_SCALE,
            time_scale=TIME_SCALE,
            seed=args.seed,
            output_dir=str(output / label.replace(" ", "-")),
            label=label,
            quiet=not sys.stdout.isatty(),
        )
        return await run_swarm(config)

    outcomes = []
    for policy in [p.strip() for p in args.policies.split(",") if p.strip()]:
        console.print(
            f"[bold]{policy}[/]: {args.replicas} simulated replicas, {args.users} agents, {args.seconds:g} s"
        )
        sim_args = ["--time-scale", str(TIME_SCALE), *BOUNDED_FLEET]
        outcomes.append(await run_contender(kvgate(policy), args.replicas, sim_args, swarm))

    summaries = [outcome.summary for outcome in outcomes]
    console.print(comparison_table(summaries, title=f"kvgate demo: {args.replicas} simulated replicas"))
    spread = ", ".join(f"{o.label} {o.busiest_share:.2f}x" for o in outcomes)
    console.print(f"busiest replica's request share over the mean: {spread}")
    report = output / "comparison.md"
    report.write_text(comparison_markdown(summaries) + f"\nBusiest replica's share over the mean: {spread}\n")
    console.print(f"reports: {report}, " + ", ".join(str(o.output_dir) for o in outcomes))
    return 0
