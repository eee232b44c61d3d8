"""How close does each router come to the best any routing could do? Hit rate, TTFT and load spread.

    python benchmarks/routing.py                              # agents and WEKA replay, every contender
    python benchmarks/routing.py --workloads agents --contenders round_robin,affinity,oracle
    python benchmarks/routing.py --peers-venv /tmp/peers-venv  # where sglang-router / vllm-router live
    python benchmarks/routing.py --rounds 3                    # each contender three times, in turn
    KVGATE_ROUTING__GUARD_MIN_OUTSTANDING=4 python benchmarks/routing.py --contenders affinity
                                                              # kvgate's settings from its environment

For each workload, every contender routes the same seeded swarm over its own freshly started fleet of
simulated replicas (8 by default, bounded HBM and a DRAM tier), one after the other in one run:

- `round_robin`, `affinity`: kvgate with that policy (embedded index);
- `oracle`: one simulated replica with eight times the cache and the compute (`--slowdown 1/8`), the hit
  rate no routing over eight replicas can beat (the pooled oracle);
- `sglang-cache_aware`, `vllm-consistent_hash`, `vllm-cache_aware`: the peers from PyPI (sglang-router,
  vllm-router), started from the virtualenv `--peers-venv`, skipped with a note when it lacks them.

It prints, per workload, the side-by-side table and the checks: affinity's hit rate at least 95% of the
oracle's, its TTFT p90 at least 5x lower than round-robin's, the busiest replica's request share at most
1.5x the mean, and a higher hit rate and lower TTFT p90 than every peer that ran. With `--rounds N`,
every contender runs N times (round after round, so that each round sees the machine at much the same
moment), a table per round, and the checks take each figure's median over the rounds: on a shared
machine one run's TTFT p90 and busiest share move by a third from run to run. Beside affinity's busiest
share it prints the share that keeping every session on one replica allows: sessions spread evenly by
count in random arrival orders (a router cannot know how many requests a session will bring), and with
hindsight. Exit status 0 when all hold. Reports and plots go under `--output`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import random
import statistics
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.fleet_runs import WEKA_TRACE, conversations_within, gateway_counters
from loadtest.experiment import (
    BOUNDED_FLEET,
    MAX_MODEL_LEN,
    Contender,
    Outcome,
    busiest_share,
    kvgate,
    pooled_oracle,
    run_contender,
)
from loadtest.process import free_port, stop_process
from loadtest.swarm import SwarmConfig, comparison_markdown, comparison_table, run_swarm
from loadtest.swarm.records import iter_records

MODEL = "sim-llama3-8b"


def wait_until_serving(url: str, process: subprocess.Popen, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"router exited with status {process.returncode}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url + "/v1/models", timeout=2.0).status_code == 200:
                return
        time.sleep(0.5)
    raise TimeoutError(f"router at {url} did not serve /v1/models within {timeout_s:.0f} s")


def peer(label: str, executable: Path, command: list[str], policy: str) -> Contender:
    """A peer router started as `executable command... --worker-urls URLS --policy policy`."""

    @contextlib.contextmanager
    def start(urls: list[str]) -> Iterator[str]:
        port = free_port()
        argv = [str(executable), *command, "--host", "127.0.0.1", "--port", str(port)]
        argv += ["--worker-urls", *urls, "--policy", policy]
        log = open(os.devnull, "wb")  # noqa: SIM115
        process = subprocess.Popen(argv, stdout=log, stderr=log)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_until_serving(url, process)
            yield url
        finally:
            stop_process(process)
            log.close()

    return Contender(label, start)


def sim_args(args: argparse.Namespace) -> list[str]:
    return ["--time-scale", str(args.time_scale), *BOUNDED_FLEET, *args.sim_arg]


def contenders(names: list[str], replicas: int, peers_venv: Path, fleet: list[str]) -> list[Contender]:
    sglang = peers_venv / "bin" / "sglang-router"
    vllm = peers_venv / "bin" / "vllm-router"
    known: dict[str, tuple[Path | None, Any]] = {
        "round_robin": (None, lambda: kvgate("round_robin")),
        "affinity": (None, lambda: kvgate("affinity")),
        "oracle": (None, lambda: pooled_oracle(replicas, fleet)),
        "sglang-cache_aware": (
            sglang,
            lambda: peer("sglang-router cache_aware", sglang, ["launch"], "cache_aware"),
        ),
        "vllm-consistent_hash": (
            vllm,
            lambda: peer("vllm-router consistent_hash", vllm, [], "consistent_hash"),
        ),
        "vllm-cache_aware": (vllm, lambda: peer("vllm-router cache_aware", vllm, [], "cache_aware")),
    }
    chosen = []
    for name in names:
        if name not in known:
            raise SystemExit(f"unknown contender {name!r}; known: {', '.join(known)}")
        needs, make = known[name]
        if needs is not None and not needs.exists():
            print(
                f"skipped {name}: {needs} not found (pip install sglang-router vllm-router in --peers-venv)"
            )
            continue
        chosen.append(make())
    return chosen


def decision_reasons(label: str, endpoint: str) -> dict[str, float]:
    """kvgate's routing decisions by reason, from its /metrics (none for a peer or a replica)."""
    if not label.startswith("kvgate"):
        return {}
    counters = gateway_counters([endpoint])
    return {
        key.removeprefix("reason:"): value for key, value in counters.items() if key.startswith("reason:")
    }


def swarm_config(
    workload: str, args: argparse.Namespace, endpoint: str, label: str, output: Path
) -> SwarmConfig:
    time_scale = args.time_scale
    common: dict[str, Any] = {
        "endpoint": endpoint,
        "model": MODEL,
        "users": args.users if workload == "agents" else args.replay_users,
        "duration_s": args.seconds * time_scale,
        "time_scale": time_scale,
        "seed": args.seed,
        "output_dir": str(output / workload / label.replace(" ", "-")),
        "label": label,
        "quiet": True,
    }
    if workload == "agents":
        return SwarmConfig(workload="agents", **common)
    # only the conversations that fit the simulated model's context: the rest would be refused with a 400
    fitting = conversations_within(str(args.trace), MAX_MODEL_LEN - 4096)
    return SwarmConfig(workload="replay", trace=fitting, shared_prefix=True, prewarm=True, **common)


Figures = dict[str, float]
"""A contender's hit rate, TTFT p90 (s) and busiest replica's share, or their medians over rounds."""


def figures_of(outcome: Outcome) -> Figures:
    return {
        "hit": outcome.summary["cache"]["hit_rate"],
        "p90": outcome.summary["latency_s"]["ttft"]["p90"],
        "busiest": outcome.busiest_share,
    }


def median_figures(outcomes: list[Outcome]) -> Figures:
    rounds = [figures_of(outcome) for outcome in outcomes]
    return {key: statistics.median(figures[key] for figures in rounds) for key in rounds[0]}


def checks(by_label: dict[str, Figures]) -> list[tuple[str, bool]]:
    affinity = by_label.get("kvgate affinity")
    if affinity is None:
        return []
    results = []
    if oracle := by_label.get("pooled oracle"):
        ratio = affinity["hit"] / oracle["hit"]
        results.append((f"affinity hit rate / oracle's = {ratio:.3f} (>= 0.95)", ratio >= 0.95))
    if round_robin := by_label.get("kvgate round_robin"):
        ratio = round_robin["p90"] / affinity["p90"]
        results.append((f"round_robin TTFT p90 / affinity's = {ratio:.1f}x (>= 5)", ratio >= 5))
    share = affinity["busiest"]
    results.append((f"affinity busiest replica share = {share:.2f}x the mean (<= 1.5)", share <= 1.5))
    for label, peer_figures in by_label.items():
        if label.startswith(("sglang", "vllm")):
            better = affinity["hit"] > peer_figures["hit"] and affinity["p90"] < peer_figures["p90"]
            results.append(
                (
                    f"affinity vs {label}: hit {affinity['hit']:.1%} vs {peer_figures['hit']:.1%}, "
                    f"TTFT p90 {affinity['p90']:.2f} s vs {peer_figures['p90']:.2f} s",
                    better,
                )
            )
    return results


def session_requests(outcome: Outcome) -> list[int]:
    """Requests per session (a conversation, or one of its sub-agents) in the contender's run."""
    records = iter_records(outcome.output_dir / "requests.csv")
    return list(Counter(record.session for record in records if record.request_id >= 0).values())


def sticky_shares(
    sessions: list[int], replicas: int, trials: int = 2000
) -> tuple[float, float, float, float]:
    """The busiest share a router gets when it keeps every session on one replica and spreads sessions
    evenly by count, not knowing how many requests each will bring: p10, median and p90 over random
    arrival orders; and with hindsight (longest first onto the least loaded), the best such placement."""
    draw = random.Random(0)
    shares = []
    for _ in range(trials):
        order = draw.sample(sessions, len(sessions))
        load = [0] * replicas
        for position, requests in enumerate(order):
            load[position % replicas] += requests
        shares.append(busiest_share(load))
    shares.sort()
    load = [0] * replicas
    for requests in sorted(sessions, reverse=True):
        load[load.index(min(load))] += requests
    return shares[trials // 10], shares[trials // 2], shares[trials * 9 // 10], busiest_share(load)


def print_run(workload: str, outcome: Outcome, seconds: float) -> None:
    summary = outcome.summary
    ttft = summary["latency_s"]["ttft"]
    print(
        f"  {workload} / {outcome.label}: hit {summary['cache']['hit_rate']:.1%}, "
        f"TTFT p90 {ttft['p90']:.2f} s, busiest {outcome.busiest_share:.2f}x, TTFT mean {ttft['mean']:.2f} s "
        f"(replicas' own {outcome.replica_ttft_mean_s:.2f} s) ({seconds:.0f} s)",
        flush=True,
    )


def print_round(title: str, outcomes: list[Outcome], reasons: dict[str, dict[str, float]]) -> None:
    from rich.console import Console

    Console(width=160).print(comparison_table([outcome.summary for outcome in outcomes], title=title))
    for outcome in outcomes:
        spread = " ".join(f"{count:.0f}" for count in outcome.requests_per_replica)
        decided = ", ".join(
            f"{reason} {count:.0f}" for reason, count in sorted(reasons[outcome.label].items())
        )
        print(
            f"  {outcome.label}: busiest share {outcome.busiest_share:.2f}x; "
            f"requests per replica [{spread}]" + (f"; decisions: {decided}" if decided else "")
        )
        sessions = session_requests(outcome) if outcome.label == "kvgate affinity" else []
        if sessions:
            low, median, high, hindsight = sticky_shares(sessions, len(outcome.requests_per_replica))
            print(
                f"  {len(sessions)} sessions, up to {max(sessions)} requests each: kept in place and spread "
                f"evenly by count, busiest share {median:.2f}x (p10-p90 {low:.2f}-{high:.2f}x); "
                f"with hindsight {hindsight:.2f}x"
            )


async def run_workload(workload: str, args: argparse.Namespace, chosen: list[Contender]) -> bool:
    reasons: dict[str, dict[str, float]] = {}

    async def swarm(endpoint: str, label: str, output: Path) -> Any:
        result = await run_swarm(swarm_config(workload, args, endpoint, label, output))
        reasons[label] = decision_reasons(label, endpoint)
        return result

    runs: dict[str, list[Outcome]] = {contender.label: [] for contender in chosen}
    for round_number in range(1, args.rounds + 1):
        output = Path(args.output) / (f"round-{round_number}" if args.rounds > 1 else "")
        outcomes = []
        for contender in chosen:
            started = time.monotonic()
            outcome = await run_contender(
                contender, args.replicas, sim_args(args), functools.partial(swarm, output=output)
            )
            print_run(workload, outcome, time.monotonic() - started)
            outcomes.append(outcome)
            runs[contender.label].append(outcome)
        title = f"{workload}: {args.replicas} simulated replicas"
        if args.rounds > 1:
            title += f", round {round_number} of {args.rounds}"
        print_round(title, outcomes, reasons)
        (output / workload).mkdir(parents=True, exist_ok=True)
        (output / workload / "comparison.md").write_text(
            comparison_markdown([outcome.summary for outcome in outcomes])
        )

    medians = {label: median_figures(outcomes) for label, outcomes in runs.items()}
    if args.rounds > 1:
        print(f"  medians over {args.rounds} rounds:")
        for label, figures in medians.items():
            print(
                f"  {label:32} hit {figures['hit']:.1%}, TTFT p90 {figures['p90']:.2f} s, "
                f"busiest {figures['busiest']:.2f}x"
            )
    results = checks(medians)
    for text, ok in results:
        print(f"  {'PASS' if ok else 'FAIL'}  {text}")
    return all(ok for _, ok in results)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--workloads", default="agents,replay", help="agents, replay or both (comma-separated)"
    )
    parser.add_argument(
        "--contenders",
        default="round_robin,affinity,oracle,sglang-cache_aware,vllm-consistent_hash,vllm-cache_aware",
    )
    parser.add_argument("--replicas", type=int, default=8)
    parser.add_argument("--users", type=int, default=32, help="agent users (default 32)")
    parser.add_argument(
        "--replay-users", type=int, default=32, help="replayed conversations at once (default 32)"
    )
    parser.add_argument(
        "--seconds", type=float, default=60.0, help="wall-clock seconds of load per contender"
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--rounds", type=int, default=1, help="runs of every contender; the checks take medians (default 1)"
    )
    parser.add_argument("--time-scale", type=float, default=10.0, help="simulated seconds per wall second")
    parser.add_argument(
        "--sim-arg", action="append", default=[], help="extra `kvgate sim` argument (repeatable)"
    )
    parser.add_argument("--trace", type=Path, default=WEKA_TRACE)
    parser.add_argument("--peers-venv", type=Path, default=Path("/tmp/peers-venv"))
    parser.add_argument("--output", default="kvgate-results/routing")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")

    chosen = contenders(
        [c.strip() for c in args.contenders.split(",") if c.strip()],
        args.replicas,
        args.peers_venv,
        sim_args(args),
    )
    ok = True
    for workload in [w.strip() for w in args.workloads.split(",") if w.strip()]:
        ok = asyncio.run(run_workload(workload, args, chosen)) and ok
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
