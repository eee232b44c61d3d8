"""Which Redis client should the shared index use? Gateway CPU and latency per lookup, measured.

    python benchmarks/redis_client_choice.py            # 8 replicas, 32k-token prompt, 5 rounds

A fresh redis-server holds 8 replicas' entries for a 32k-token prompt (2,049 blocks, 128 stored
hashes each, as the index writes them). Each variant makes the index's own lookup
(`RedisPrefixStore.lookup`: one `EVALSHA` of the lookup script with a key per replica) through one of
the two `RedisCommands` implementations, so only the client differs:

- `RespLink`: the gateway's pipelined connection (hiredis packs and parses, replies matched in order);
- `redis-py`: redis-py's asyncio client (`RedisPyCommands`, what the gateway keeps for Redis Cluster)
  with the hiredis parser and the index's 1 s socket timeout, as the gateway used it before.

Sequential: calls one after the other, blocks of 200 alternating between the variants; CPU time of this
process per call (`time.process_time`) and the latency of each call. Concurrent: 16 callers at once for
a fixed count, as concurrent requests share the gateway's connection(s); calls per second. All under
uvloop, as `kvgate serve` runs.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import numpy as np
import uvloop
from redis.asyncio import Redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gateway.config import RedisConfig
from gateway.index.redis_connect import SOCKET_TIMEOUT_S, RedisPyCommands, make_redis_commands
from gateway.index.redis_store import RedisPrefixStore
from loadtest.redis_process import redis_server

MODEL = "sim-llama3-8b"
STRIDE = 16


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


async def seeded_stores(url: str, replicas: int, blocks: int) -> tuple[dict[str, RedisPrefixStore], bytes]:
    stores = {
        "RespLink": RedisPrefixStore(make_redis_commands(RedisConfig(url=url)), stride=STRIDE),
        "redis-py": RedisPrefixStore(
            RedisPyCommands(Redis.from_url(url, socket_connect_timeout=1.0, socket_timeout=SOCKET_TIMEOUT_S)),
            stride=STRIDE,
        ),
    }
    chain = np.random.default_rng(0).integers(0, 2**63, blocks, dtype=np.uint64)
    packed = chain[STRIDE - 1 :: STRIDE].astype("<u8").tobytes()
    entries = len(packed) // 8
    # replica i holds the first (i + 1) / replicas of the chain: each lookup searches a different depth
    records = [
        (MODEL, f"replica-{i}", packed[: 8 * max(1, entries * (i + 1) // replicas)], 10 * blocks)
        for i in range(replicas)
    ]
    await stores["RespLink"].record_many(records)
    return stores, packed


async def timed_block(lookup: Callable[[], Awaitable[object]], calls: int) -> tuple[float, list[float]]:
    """(CPU seconds, per-call latencies in seconds) for `calls` sequential lookups."""
    latencies = []
    cpu = time.process_time()
    for _ in range(calls):
        started = time.perf_counter()
        await lookup()
        latencies.append(time.perf_counter() - started)
    return time.process_time() - cpu, latencies


async def concurrent_rate(lookup: Callable[[], Awaitable[object]], callers: int, calls: int) -> float:
    async def caller() -> None:
        for _ in range(calls // callers):
            await lookup()

    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(callers)))
    return calls // callers * callers / (time.perf_counter() - started)


async def run(args: argparse.Namespace, url: str) -> None:
    blocks = args.prompt_tokens // 16 + 1
    stores, packed = await seeded_stores(url, args.replicas, blocks)
    names = [f"replica-{i}" for i in range(args.replicas)]
    capacities = [(4 * blocks, 4 * blocks)] * args.replicas
    lookups = {
        name: (lambda store=store: store.lookup(MODEL, packed, names, capacities))
        for name, store in stores.items()
    }
    answers = [await lookup() for lookup in lookups.values()]
    assert all(answer == answers[0] for answer in answers), "the clients disagree"
    for lookup in lookups.values():  # warm-up
        await timed_block(lookup, 200)

    cpu: dict[str, list[float]] = {name: [] for name in lookups}
    latency: dict[str, list[float]] = {name: [] for name in lookups}
    rate: dict[str, list[float]] = {name: [] for name in lookups}
    for _ in range(args.rounds):
        for _ in range(args.calls // 200):
            for name, lookup in lookups.items():
                seconds, latencies = await timed_block(lookup, 200)
                cpu[name].append(seconds / 200)
                latency[name].extend(latencies)
        for name, lookup in lookups.items():
            rate[name].append(await concurrent_rate(lookup, args.callers, args.calls))

    print(f"redis client choice: the index's lookup for {args.replicas} replicas, "
          f"a {args.prompt_tokens}-token prompt ({blocks} blocks, {len(packed) // 8} stored hashes), "
          f"{args.rounds} rounds of {args.calls} sequential calls (blocks of 200, alternating) "
          f"and {args.calls} calls from {args.callers} concurrent callers")  # fmt: skip
    cpu_us = {name: statistics.median(values) * 1e6 for name, values in cpu.items()}
    p50 = {name: percentile(values, 0.5) * 1e3 for name, values in latency.items()}
    p99 = {name: percentile(values, 0.99) * 1e3 for name, values in latency.items()}
    calls_s = {name: statistics.median(values) for name, values in rate.items()}
    print(f"{'':10} {'CPU per call':>13} {'latency p50':>12} {'p99':>9} {'concurrent':>13}")
    for name in lookups:
        print(f"{name:10} {cpu_us[name]:>10.1f} us {p50[name]:>9.3f} ms {p99[name]:>6.3f} ms "
              f"{calls_s[name]:>8.0f} /s")  # fmt: skip
    new, base = "RespLink", "redis-py"
    print(f"{new} / {base}: CPU per call {cpu_us[new] / cpu_us[base]:.2f}x, "
          f"latency p50 {p50[new] / p50[base]:.2f}x, p99 {p99[new] / p99[base]:.2f}x, "
          f"concurrent calls/s {calls_s[new] / calls_s[base]:.2f}x")  # fmt: skip
    for store in stores.values():
        await store.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--replicas", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=32768)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=2000, help="per variant and round, in each mode")
    parser.add_argument("--callers", type=int, default=16)
    args = parser.parse_args()
    with redis_server() as redis:
        uvloop.run(run(args, redis.url))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
