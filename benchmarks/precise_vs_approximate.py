"""Precise mode (the engines' KV cache events) against approximate mode (the gateway's own guesses).

Each mode gets a freshly started fleet of simulated replicas that publish KV cache events over ZMQ,
with caches small enough that blocks are evicted while their conversations are still going, and the
same seeded replay of the WEKA Claude Code traces (system and tool prefix shared by every conversation,
as in reality). The gateway routes with the affinity policy:

    approximate  the embedded index: 64-byte text blocks, an LRU model of each replica's cache
    precise      `precise.enabled`: the builtin tokenizer's 16-token blocks, the engines' own events,
                 speculative entries until an event confirms them

Prints hit rate (measured from the replicas' `cached_tokens`, and the ceiling), TTFT p50/p90 in
simulated seconds, the busiest replica's share of requests and the gateway's CPU.

    python benchmarks/precise_vs_approximate.py     # 4 replicas, 16 users, 900 simulated s each
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile

import yaml

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from benchmarks.fleet_runs import (
    WEKA_TRACE,
    conversations_within,
    failed_requests,
    medians,
    print_decisions,
    print_table,
    run_rounds,
    swarm_row,
)
from loadtest.process import GatewayProcess
from loadtest.sim import SimProcess, free_port_range
from loadtest.swarm import SwarmConfig

MODES = ("approximate", "precise")


def write_yaml(path: str, document: dict) -> str:
    with open(path, "w") as file:
        yaml.safe_dump(document, file)
    return path


async def run_one(
    mode: str, args: argparse.Namespace, traces: list[str], output: str, scratch: str
) -> dict[str, float]:
    events, replay = free_port_range(args.replicas), free_port_range(args.replicas)
    sim_args = ["--time-scale", str(args.time_scale), "--hbm-blocks", str(args.hbm_blocks),
                "--max-model-len", str(args.max_model_len),
                "--kv-events-port", str(events), "--kv-events-replay-port", str(replay)]  # fmt: skip
    async with SimProcess(replicas=args.replicas, extra_args=sim_args) as sim:
        replicas = [
            {"url": url, "kv_events": f"tcp://127.0.0.1:{events + i}",
             "kv_events_replay": f"tcp://127.0.0.1:{replay + i}"}
            for i, url in enumerate(sim.urls)
        ]  # fmt: skip
        # the gateway's clocks run in simulated time too: a 1 s scrape, a 2 s speculative entry
        config = {"replicas": replicas, "log_level": "warning",
                  "health": {"scrape_interval_s": 1.0 / args.time_scale}}  # fmt: skip
        if mode == "precise":
            config["precise"] = {"enabled": True, "tokenizer": "builtin", "block_size": 16,
                                 "speculative_ttl_s": 2.0 / args.time_scale}  # fmt: skip
        path = write_yaml(os.path.join(scratch, f"{mode}.yaml"), config)
        async with GatewayProcess(extra_args=["--config", path]) as gateway:
            return await swarm_row(
                SwarmConfig(
                    endpoint=gateway.url,
                    workload="replay",
                    trace=traces,
                    shared_prefix=True,
                    recycle=True,
                    users=args.users,
                    duration_s=args.duration,
                    max_requests=args.max_requests,
                    max_output_tokens=args.max_output_tokens,
                    time_scale=args.time_scale,
                    think_scale=args.think_scale,
                    max_think_s=args.max_think,
                    seed=args.seed,
                    label=mode,
                    output_dir=os.path.join(output, mode),
                    plots=False,
                ),
                [gateway],
                sim.urls,
            )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trace", default=str(WEKA_TRACE), help="directory of WEKA conversations")
    parser.add_argument("--max-prompt-tokens", type=int, default=100_000,
                        help="replay the conversations whose requests all fit in this")  # fmt: skip
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--users", type=int, default=16)
    parser.add_argument("--duration", type=float, default=900.0, help="simulated seconds per run")
    parser.add_argument("--max-requests", type=int, default=5000, help="per run, at most")
    parser.add_argument("--max-output-tokens", type=int, default=512)
    parser.add_argument("--time-scale", type=float, default=10.0)
    parser.add_argument("--think-scale", type=float, default=0.5)
    parser.add_argument("--max-think", type=float, default=60.0, help="simulated seconds, at most")
    parser.add_argument("--hbm-blocks", type=int, default=12000, help="per replica, 16-token blocks")
    parser.add_argument("--max-model-len", type=int, default=131072)
    parser.add_argument("--rounds", type=int, default=1, help="both modes run in turn, this many times")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--output", default=None, help="swarm results (default: a temporary directory)")
    args = parser.parse_args()

    print(f"precise vs approximate: {args.replicas} simulated replicas ({args.hbm_blocks} HBM blocks each) "
          f"publishing KV events, WEKA replay with the shared prefix, {args.users} users, "
          f"{args.duration:g} simulated s per run at time scale {args.time_scale:g}, "
          f"seed {args.seed}")  # fmt: skip
    traces = conversations_within(args.trace, args.max_prompt_tokens)
    print(f"{len(traces)} conversations with every prompt at most {args.max_prompt_tokens} tokens")
    with tempfile.TemporaryDirectory(prefix="kvgate-precise-") as scratch:
        output = args.output or scratch
        runs = run_rounds(
            MODES,
            args.rounds,
            lambda mode, round_: asyncio.run(
                run_one(mode, args, traces, os.path.join(output, f"round{round_}"), scratch)
            ),
        )
    by_mode = medians(runs)
    print(f"\nmedians over {args.rounds} round(s); TTFT in simulated seconds")
    print_table(by_mode)
    print("\nrouting decisions: share by reason, cached tokens predicted / reported by the replicas")
    print_decisions(by_mode)
    approximate, precise = by_mode["approximate"], by_mode["precise"]
    print(
        f"\nprecise - approximate: hit rate {precise['hit'] - approximate['hit']:+.1f} points, "
        f"TTFT p50 x{precise['p50'] / approximate['p50']:.2f}, "
        f"p90 x{precise['p90'] / approximate['p90']:.2f}"
    )
    return 1 if failed_requests(runs) else 0


if __name__ == "__main__":
    raise SystemExit(main())
