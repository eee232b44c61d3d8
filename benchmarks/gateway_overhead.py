"""What the gateway adds to time to first token, measured side by side with going direct.

Starts simulated replicas (`kvgate sim`, its own process, a high time scale so the engine itself takes
next to no time) and the gateway (`kvgate serve`, its own process), then sends an open loop of streamed
chat requests at a fixed rate from this process. Requests alternate, one by one, between a replica
directly (round robin) and the gateway, so both paths see the same moment of the same machine. TTFT is
the arrival of the first SSE event. Bounded in time; prints percentiles and their differences.

With `--floor`, a third path takes its turn: a pass-through proxy on the same HTTP stack as the gateway
(`benchmarks/passthrough_proxy.py`: uvicorn in, the gateway's replica client out, nothing else), so the
hop's own cost on this machine and what kvgate's work adds on top of it are told apart in the same run.
`--floor-aiohttp` adds the same pass-through with an aiohttp session out, the client the gateway used
before. Every path gets `--rate` requests/s (200 by default: the load at which the gateway is held to
1 ms of added TTFT at p50), so the gateway's load is the same in every mode.

    python benchmarks/gateway_overhead.py                 # 200 requests/s a path for 60 s, 4 replicas
    python benchmarks/gateway_overhead.py --floor         # and the pass-through proxy beside them
    python benchmarks/gateway_overhead.py --floor --floor-aiohttp   # and one with aiohttp out
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager

import aiohttp
import orjson
import psutil

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from loadtest.process import GatewayProcess, free_port, stop_process, wait_for_port
from loadtest.sim import SimProcess

MODEL = "sim-llama3-8b"


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def prompt(conversation: int, turn: int) -> list[dict]:
    system = {"role": "system", "content": "You are a coding agent in a large repository. " * 20}
    history = [{"role": "user", "content": f"conversation {conversation}, step {step}: " + "data " * 40}
               for step in range(turn + 1)]  # fmt: skip
    return [system, *history]


async def one_request(session: aiohttp.ClientSession, url: str, body: bytes) -> tuple[float, float] | None:
    started = time.perf_counter()
    first = 0.0
    async with session.post(url + "/v1/chat/completions", data=body) as response:
        if response.status != 200:
            await response.read()
            return None
        async for _ in response.content.iter_any():
            if not first:
                first = time.perf_counter() - started
    return first, time.perf_counter() - started


async def drive(paths: dict[str, list[str]], rate: float, seconds: float, warmup: float, tokens: int):
    """Requests take the paths in turn, each path's URLs round robin; per path, (TTFT, e2e) and failures."""
    names = list(paths)
    results: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    failures = dict.fromkeys(names, 0)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        tasks: set[asyncio.Task] = set()
        start = time.perf_counter()
        recording_from = start + warmup
        sent = 0
        while (now := time.perf_counter()) < start + warmup + seconds:
            due = start + sent / rate
            if due > now:
                await asyncio.sleep(due - now)
            turn = sent // len(names)
            path = names[sent % len(names)]
            url = paths[path][turn % len(paths[path])]
            body = orjson.dumps({"model": MODEL, "messages": prompt(turn % 64, turn // 64 % 8),
                                 "max_tokens": tokens, "stream": True})  # fmt: skip
            record = time.perf_counter() >= recording_from

            async def run(path=path, url=url, body=body, record=record) -> None:
                try:
                    outcome = await one_request(session, url, body)
                except (aiohttp.ClientError, TimeoutError):
                    outcome = None
                if record:
                    if outcome is None:
                        failures[path] += 1
                    else:
                        results[path].append(outcome)

            task = asyncio.create_task(run())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            sent += 1
        await asyncio.gather(*tasks)
    return results, failures


@contextmanager
def passthrough_proxy(upstreams: list[str], client: str):
    """benchmarks/passthrough_proxy.py in its own process; yields its URL once it accepts requests."""
    port = free_port()
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "passthrough_proxy.py")
    process = subprocess.Popen([sys.executable, script, str(port), ",".join(upstreams), client])
    try:
        wait_for_port(port, timeout=30, process=process)  # uvicorn listens once its startup is done
        yield process, f"http://127.0.0.1:{port}"
    finally:
        stop_process(process)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second through each path")
    parser.add_argument("--seconds", type=float, default=60.0, help="measured duration")
    parser.add_argument("--warmup", type=float, default=5.0)
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--time-scale", type=float, default=1000.0)
    parser.add_argument("--policy", default="affinity")
    parser.add_argument("--floor", action="store_true", help="also the pass-through proxy, as a third path")
    parser.add_argument(
        "--floor-aiohttp", action="store_true", help="also the pass-through proxy with aiohttp out"
    )
    args = parser.parse_args()

    sim_args = ["--time-scale", str(args.time_scale), "--max-model-len", "16384", "--hbm-blocks", "20000"]
    with SimProcess(replicas=args.replicas, extra_args=sim_args) as sim, ExitStack() as stack:
        gateway_args = ["--replicas", ",".join(sim.urls), "--policy", args.policy, "--log-level", "warning"]
        gateway = stack.enter_context(GatewayProcess(extra_args=gateway_args))
        paths = {"direct": sim.urls}
        processes = {"sim": psutil.Process(sim.pid), "gateway": psutil.Process(gateway.pid)}
        floors = {"floor": "kvgate"} if args.floor else {}
        if args.floor_aiohttp:
            floors["floor-aiohttp"] = "aiohttp"
        for name, client in floors.items():
            proxy, proxy_url = stack.enter_context(passthrough_proxy(sim.urls, client))
            paths[name] = [proxy_url]
            processes[name] = psutil.Process(proxy.pid)
        paths["gateway"] = [gateway.url]
        processes["client"] = psutil.Process()
        rate = args.rate * len(paths)
        before = {name: p.cpu_times() for name, p in processes.items()}
        wall = time.perf_counter()
        results, failures = asyncio.run(drive(paths, rate, args.seconds, args.warmup, args.max_tokens))
        wall = time.perf_counter() - wall
        cpu = {name: (sum(p.cpu_times()[:2]) - sum(before[name][:2])) / wall for name, p in processes.items()}

    print(
        f"gateway overhead: {args.rate:g} streamed requests/s a path ({rate:g} in all) for {args.seconds:g} s"
        f" (+{args.warmup:g} s warm-up), {args.replicas} simulated replicas"
        f" at time scale {args.time_scale:g}, {args.max_tokens} tokens each, policy {args.policy}"
    )
    columns = (
        ("requests", 10),
        ("failed", 8),
        ("TTFT p50", 12),
        ("p90", 10),
        ("p99", 10),
        ("e2e p50", 11),
        ("p99", 10),
    )
    print(" " * 14 + "".join(f"{name:>{width}}" for name, width in columns))
    rows = {}
    for path in paths:
        ttft = [r[0] * 1e3 for r in results[path]]
        e2e = [r[1] * 1e3 for r in results[path]]
        rows[path] = {q: percentile(ttft, q) for q in (0.5, 0.9, 0.99)}
        rows[path] |= {"e2e50": percentile(e2e, 0.5), "e2e99": percentile(e2e, 0.99)}
        row = rows[path]
        print(f"{path:14}{len(ttft):>10}{failures[path]:>8}{row[0.5]:>10.2f}ms{row[0.9]:>8.2f}ms{row[0.99]:>8.2f}ms"
              f"{row['e2e50']:>9.2f}ms{row['e2e99']:>8.2f}ms")  # fmt: skip

    def difference(label: str, path: str, baseline: str) -> None:
        added = {q: rows[path][q] - rows[baseline][q] for q in (0.5, 0.9, 0.99)}
        print(f"{label:32}{added[0.5]:>+10.2f}ms{added[0.9]:>+8.2f}ms{added[0.99]:>+8.2f}ms")

    difference("added (gateway - direct)", "gateway", "direct")
    if "floor-aiohttp" in paths:
        difference("hop, aiohttp out", "floor-aiohttp", "direct")
    if "floor" in paths:
        difference("the hop (floor - direct)", "floor", "direct")
        difference("kvgate's work (gw - floor)", "gateway", "floor")
    print("CPU share of one core: " + ", ".join(f"{name} {share:.0%}" for name, share in cpu.items()))
    means = {path: statistics.fmean(r[0] for r in results[path]) * 1e3 for path in paths}
    print("mean TTFT: " + ", ".join(f"{path} {mean:.2f} ms" for path, mean in means.items()))
    return 0 if not any(failures.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
