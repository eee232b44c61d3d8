"""How many streamed requests per second one `kvgate sim` process sustains.

Starts `python -m gateway sim` in its own process (8 replicas by default), then drives it from this process
with closed-loop aiohttp clients: each stream asks for 64 tokens and gets each decode step's token as its own
SSE chunk. Every run is bounded in time and stops by itself; the figures are medians over the runs.

    python benchmarks/sim_throughput.py            # 8 replicas, 256 streams, 5 runs of 5 s, time scale 100
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from dataclasses import dataclass

import aiohttp
import psutil

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from loadtest.sim import SimProcess

TOKEN_CHUNK = b'"delta":{"content":'
DONE = b"data: [DONE]\n\n"


@dataclass
class RunResult:
    seconds: float
    requests: int
    chunks: int
    failures: int
    sim_cpu: float
    client_cpu: float

    @property
    def requests_per_s(self) -> float:
        return self.requests / self.seconds

    @property
    def chunks_per_s(self) -> float:
        return self.chunks / self.seconds

    @property
    def requests_per_cpu_second(self) -> float:
        """Throughput per second of CPU the simulator got: what the figure would be on a core of its own."""
        return self.requests / (self.sim_cpu * self.seconds) if self.sim_cpu else 0.0


async def stream_forever(
    session: aiohttp.ClientSession, url: str, stream_id: int, tokens: int, stop_at: float, totals: list[int]
) -> None:
    prefix = f"Worker {stream_id} of a coding agent swarm. " * 8
    turn = 0
    while time.monotonic() < stop_at:
        body = {
            "model": "sim-llama3-8b",
            "messages": [{"role": "user", "content": f"{prefix} Step {turn}: read the next file."}],
            "max_tokens": tokens,
            "stream": True,
        }
        turn += 1
        try:
            async with session.post(url + "/v1/chat/completions", json=body) as response:
                payload = await response.read()
        except aiohttp.ClientError:
            totals[2] += 1
            continue
        chunks = payload.count(TOKEN_CHUNK)
        if response.status != 200 or chunks != tokens or not payload.endswith(DONE):
            totals[2] += 1
            continue
        totals[0] += 1
        totals[1] += chunks


async def one_run(
    urls: list[str], streams: int, tokens: int, seconds: float, warmup: float, sim_pid: int
) -> RunResult:
    sim = psutil.Process(sim_pid)
    me = psutil.Process()
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        totals = [0, 0, 0]
        started = time.monotonic()
        stop_at = started + warmup + seconds
        tasks = [
            asyncio.create_task(stream_forever(session, urls[n % len(urls)], n, tokens, stop_at, totals))
            for n in range(streams)
        ]
        await asyncio.sleep(warmup)
        base = list(totals)
        sim_cpu0, me_cpu0 = _cpu(sim), _cpu(me)
        measured_from = time.monotonic()
        await asyncio.sleep(seconds)
        elapsed = time.monotonic() - measured_from
        counted = [now - then for now, then in zip(totals, base, strict=True)]
        sim_cpu, me_cpu = _cpu(sim) - sim_cpu0, _cpu(me) - me_cpu0
        await asyncio.gather(*tasks)
    return RunResult(elapsed, counted[0], counted[1], counted[2], sim_cpu / elapsed, me_cpu / elapsed)


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return times.user + times.system


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--replicas", type=int, default=8)
    parser.add_argument(
        "--streams", type=int, default=256, help="concurrent closed-loop streams (default 256)"
    )
    parser.add_argument("--tokens", type=int, default=64, help="output tokens per request (default 64)")
    parser.add_argument("--time-scale", type=float, default=100.0, help="simulator time scale (default 100)")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=5.0, help="measured seconds per run (default 5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each run")
    args = parser.parse_args(argv)

    sim_args = ["--time-scale", str(args.time_scale), "--log-level", "error"]
    print(
        f"kvgate sim: {args.replicas} replicas, time scale {args.time_scale:g}; client: {args.streams} "
        f"streams of {args.tokens}-token chat completions, {args.runs} runs of {args.seconds:g} s"
    )
    results: list[RunResult] = []
    with SimProcess(replicas=args.replicas, extra_args=sim_args) as sim:
        for run in range(1, args.runs + 1):
            result = asyncio.run(
                one_run(sim.urls, args.streams, args.tokens, args.seconds, args.warmup, sim.pid)
            )
            results.append(result)
            print(
                f"  run {run}: {result.requests_per_s:7.1f} requests/s  {result.chunks_per_s:9.0f} chunks/s  "
                f"sim CPU {result.sim_cpu:4.0%} ({result.requests_per_cpu_second:5.0f} requests/CPU-s)  "
                f"client CPU {result.client_cpu:4.0%}  failures {result.failures}"
            )
    median = statistics.median
    print(
        f"median: {median(r.requests_per_s for r in results):.1f} requests/s, "
        f"{median(r.chunks_per_s for r in results):.0f} chunks/s, "
        f"sim process CPU {median(r.sim_cpu for r in results):.0%} of one core "
        f"({median(r.requests_per_cpu_second for r in results):.0f} requests per CPU-second), "
        f"client CPU {median(r.client_cpu for r in results):.0%}"
    )
    return 1 if any(r.failures for r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
