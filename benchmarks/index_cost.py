"""What the shared Redis index costs against the embedded one: decision latency, throughput, memory.

1. Routing decision, in process: `Router.route` (render the prompt, hash its blocks, look the chain up
   in the index for every replica, rank them with the affinity policy), the call the gateway makes for
   every request, for a 32k-token chat prompt over 8 replicas that each hold part of it. Gateway
   services built from the same configuration: embedded, Redis, Redis with the chain memo on (off by
   default where the C extension hashes; on where the Python loop does, and then this row is Redis
   with it off), and Redis with the block chain hashed by the Python loop instead of the C extension
   and the memo on (as a gateway built without it runs by default). Two kinds of prompt: one the
   gateway has not hashed before, and a conversation's next turn (the memo's case). Calls rotate
   through every service and kind. Then the chain alone, in C and in Python.
2. Throughput: two gateway processes (`kvgate serve`, one per index) in front of the same simulated
   replicas at a high time scale, each driven by its own closed loop of streamed requests from this
   process, both at once so that they share the same moment of the machine; requests/s per window,
   medians.
3. Memory per entry: a fresh redis-server, the index's own record script writing many chains, INFO
   memory before and after, and MEMORY USAGE of each key.

    python benchmarks/index_cost.py           # about 1 minute
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext

import aiohttp
import numpy as np
import orjson
import uvloop
from redis.asyncio import Redis

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from gateway import blocks as block_hashing
from gateway.blocks import PYTHON_HASHING_MEMO_BLOCKS, ByteBlockHasher
from gateway.config import RedisConfig, load_config
from gateway.index.redis_connect import make_redis_commands
from gateway.index.redis_store import RedisPrefixStore
from gateway.request import parse_request
from gateway.service import GatewayService
from loadtest.process import GatewayProcess
from loadtest.redis_process import redis_server
from loadtest.sim import SimProcess

MODEL = "sim-llama3-8b"


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def chat(conversation: int, tokens: int) -> dict:
    """A chat body of about `tokens` tokens (4 bytes each): a shared system prompt, then its own text."""
    system = "You are a coding agent working in a large repository. " * 80
    unit = f" c{conversation:05d} data"
    words = unit * ((tokens * 4 - len(system)) // len(unit))
    return {"model": MODEL, "messages": [{"role": "system", "content": system},
                                         {"role": "user", "content": words}]}  # fmt: skip


CONVERSATIONS = 50
"""Conversations the next-turn case cycles through: each comes back one turn longer every 50 calls."""


def unseen(base: dict, call: int) -> dict:
    """The probe conversation with a question of its own at the end: a prompt no call hashed before."""
    question = {"role": "user", "content": f"question {call}: " + "why does it fail " * 16}
    return base | {"messages": [*base["messages"], question]}


def next_turn(base: dict, conversation: int, turn: int) -> dict:
    """Conversation `conversation` of the probe at `turn`: each turn adds an answer and a tool result."""
    messages = list(base["messages"])
    for step in range(turn + 1):
        messages.append({"role": "assistant", "content": f"c{conversation} step {step}: " + "reading " * 16})
        messages.append({"role": "tool", "tool_call_id": f"{step}", "content": "line of output " * 24})
    return base | {"messages": messages}


def service(backend: str, replicas: int, redis_url: str, memo_blocks: int | None = None) -> GatewayService:
    urls = [{"url": f"http://127.0.0.1:{20000 + i}", "models": [MODEL]} for i in range(replicas)]
    overrides = {"replicas": urls, "index.backend": backend, "index.redis.url": redis_url}
    if memo_blocks is not None:
        overrides["routing.hash_memo_blocks"] = memo_blocks
    return GatewayService(load_config(overrides=overrides, environ={}))


MEMO_ON = "redis, memo on"
MEMO_OFF = "redis, no memo"
PYTHON_HASHING = "redis, Python hashing"


@contextmanager
def python_hashing() -> Iterator[None]:
    """Hash the chain with the Python loop for the duration, as a gateway built without the extension."""
    native = block_hashing._extend_chain_native
    block_hashing._extend_chain_native = None
    try:
        yield
    finally:
        block_hashing._extend_chain_native = native


def hashing_alone(data: bytes, block_size: int, calls: int) -> tuple[float, float]:
    """Median ms to hash the chain of `data` in C and in Python, calls alternating."""
    blocks = len(data) // block_size
    in_c: list[float] = []
    in_python: list[float] = []
    for _ in range(calls):
        started = time.perf_counter()
        block_hashing.chain_hashes(data, block_size, 0, blocks)
        in_c.append((time.perf_counter() - started) * 1e3)
        started = time.perf_counter()
        block_hashing.python_chain_hashes(data, block_size, 0, blocks, [])
        in_python.append((time.perf_counter() - started) * 1e3)
    return statistics.median(in_c), statistics.median(in_python)


async def decision_latency(args: argparse.Namespace, redis_url: str) -> None:
    native = block_hashing.NATIVE_CHAIN_HASHING
    services = {backend: service(backend, args.replicas, redis_url) for backend in ("embedded", "redis")}
    # the other setting of the chain memo than the default's
    other_memo = MEMO_ON if native else MEMO_OFF
    other_memo_blocks = PYTHON_HASHING_MEMO_BLOCKS if native else 0
    services[other_memo] = service("redis", args.replicas, redis_url, other_memo_blocks)
    if native:
        services[PYTHON_HASHING] = service("redis", args.replicas, redis_url, PYTHON_HASHING_MEMO_BLOCKS)
    probe = orjson.dumps(chat(0, args.prompt_tokens))
    # every replica holds a different share of the probe's chain, and some other conversations, as if
    # another gateway had routed them: hashed apart, so that no gateway's chain memo knows them
    hasher = ByteBlockHasher()
    for gateway in services.values():
        names = [replica.name for replica in gateway.replicas]
        hashes = (await hasher.blocks(parse_request("chat", probe), MODEL)).hashes
        for i, name in enumerate(names):
            for other in range(args.other_prompts):
                body = orjson.dumps(chat(1 + i * args.other_prompts + other, args.prompt_tokens // 4))
                other_hashes = (await hasher.blocks(parse_request("chat", body), MODEL)).hashes
                gateway.index.record(MODEL, name, other_hashes)
            gateway.index.record(MODEL, name, hashes[: len(hashes) * (i + 1) // (len(names) + 1)])
        flush = getattr(gateway.index, "flush", None)
        if flush is not None:
            await flush(timeout_s=30.0)
    blocks = len(hashes)
    base = orjson.loads(probe)
    cases = ("unseen", "next turn")
    rows = [(backend, case) for backend in services for case in cases]
    times: dict[tuple[str, str], list[float]] = {row: [] for row in rows}
    lookups: dict[tuple[str, str], list[float]] = {row: [] for row in rows}
    pings: list[float] = []
    ping = Redis.from_url(redis_url)
    for iteration in range(args.warmup + args.decisions):
        started = time.perf_counter()
        await ping.ping()
        if iteration >= args.warmup:
            pings.append((time.perf_counter() - started) * 1e3)
        bodies = {
            "unseen": orjson.dumps(unseen(base, iteration)),
            "next turn": orjson.dumps(next_turn(base, iteration % CONVERSATIONS, iteration // CONVERSATIONS)),
        }
        shift = iteration % len(rows)  # each row takes each place in the order in turn
        for backend, case in rows[shift:] + rows[:shift]:
            gateway, body = services[backend], bodies[case]
            request = parse_request("chat", body)
            with python_hashing() if backend == PYTHON_HASHING else nullcontext():
                started = time.perf_counter()
                decision = await gateway.router.route(request, MODEL)
                elapsed = time.perf_counter() - started
            names = [replica.name for replica in gateway.replicas]
            started = time.perf_counter()
            await gateway.index.match(MODEL, decision.blocks.hashes, names)
            lookup = time.perf_counter() - started
            if iteration >= args.warmup:
                times[backend, case].append(elapsed * 1e3)
                lookups[backend, case].append(lookup * 1e3)
            assert decision.ranking.reason == "affinity", decision.ranking.reason
    hashed_by = "in C (gateway._chainhash)" if native else "in Python: the C extension is not built"
    print(f"\n1. routing decision (Router.route), {args.prompt_tokens}-token chat prompt = {blocks} blocks, "
          f"{args.replicas} replicas, {args.decisions} calls each, alternating;\n   unseen: a prompt this "
          "gateway has not hashed before, its prefix in the index (routed by another gateway); next turn: "
          f"one turn more of a conversation this gateway routed {CONVERSATIONS} calls earlier;\n   block "
          f"chain hashed {hashed_by}")  # fmt: skip
    print(f"{'':40}{'route p50':>11}{'p99':>9}{'max':>9}{'  index lookup p50':>19}{'p99':>9}")
    for backend, case in rows:
        t, m = times[backend, case], lookups[backend, case]
        label = f"{backend}, {case}"
        print(f"{label:40}{percentile(t, 0.5):>9.3f}ms{percentile(t, 0.99):>7.3f}ms{max(t):>7.3f}ms"
              f"{percentile(m, 0.5):>17.3f}ms{percentile(m, 0.99):>7.3f}ms")  # fmt: skip
    print(f"{'PING':40}{'':29}{percentile(pings, 0.5):>17.3f}ms{percentile(pings, 0.99):>7.3f}ms"
          "  (one bare round trip: this machine's floor)")  # fmt: skip
    await ping.aclose()
    for case in cases:
        added = {
            q: percentile(times["redis", case], q) - percentile(times["embedded", case], q)
            for q in (0.5, 0.99)
        }
        print(f"redis - embedded, {case}: p50 {added[0.5]:+.3f} ms, p99 {added[0.99]:+.3f} ms")
    memo_off, memo_on = ("redis", MEMO_ON) if native else (MEMO_OFF, "redis")
    comparisons = [("the chain memo saves", memo_off, memo_on)]
    if native:
        comparisons.append(("hashing in C saves", PYTHON_HASHING, "redis"))
        in_c, in_python = hashing_alone(parse_request("chat", probe).prompt_bytes(), hasher.block_bytes, 500)
        print(f"the probe's chain alone ({blocks} blocks), median of 500: in C {in_c:.3f} ms, "
              f"in Python {in_python:.3f} ms ({in_python / in_c:.1f}x)")  # fmt: skip
    for title, slower, faster in comparisons:
        for case in cases:
            saved = {q: percentile(times[slower, case], q) - percentile(times[faster, case], q)
                     for q in (0.5, 0.99)}  # fmt: skip
            print(f"{title}, {case}: p50 {saved[0.5]:+.3f} ms, p99 {saved[0.99]:+.3f} ms")
    for gateway in services.values():
        await gateway.index.close()


async def closed_loop(session: aiohttp.ClientSession, url: str, bodies: list[bytes], seconds: float) -> int:
    """Streams from `len(bodies)` concurrent clients for `seconds`; requests completed."""
    done = 0
    stop = time.perf_counter() + seconds

    async def client(body: bytes) -> None:
        nonlocal done
        while time.perf_counter() < stop:
            async with session.post(url + "/v1/chat/completions", data=body) as response:
                await response.read()
                if response.status != 200:
                    raise RuntimeError(f"{url} answered {response.status}")
            done += 1

    await asyncio.gather(*(client(body) for body in bodies))
    return done


async def throughput(args: argparse.Namespace, gateway_urls: dict[str, str]) -> None:
    bodies = [
        orjson.dumps(chat(c, args.throughput_prompt_tokens) | {"max_tokens": 8, "stream": True})
        for c in range(args.concurrency)
    ]
    rates: dict[str, list[float]] = {backend: [] for backend in gateway_urls}
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30)) as session:
        for url in gateway_urls.values():  # warm-up: connections, the index, the replicas' caches
            await closed_loop(session, url, bodies, 1.0)
        for _ in range(args.windows):  # both gateways at once, each with its own closed loop
            started = time.perf_counter()
            counts = await asyncio.gather(
                *(closed_loop(session, url, bodies, args.window) for url in gateway_urls.values())
            )
            for backend, done in zip(gateway_urls, counts, strict=True):
                rates[backend].append(done / (time.perf_counter() - started))
    print(f"\n2. gateway throughput: {args.concurrency} closed-loop streams of "
          f"{args.throughput_prompt_tokens}-token prompts per gateway, both gateways at once, "
          f"{args.windows} windows of {args.window:g} s")  # fmt: skip
    for backend, values in rates.items():
        print(f"{backend:10}{statistics.median(values):>8.0f} requests/s (median; "
              f"{min(values):.0f}-{max(values):.0f})")  # fmt: skip
    ratio = statistics.median(rates["redis"]) / statistics.median(rates["embedded"])
    print(f"redis / embedded: {ratio:.0%}")


async def memory_per_entry(args: argparse.Namespace, redis_url: str) -> None:
    client = Redis.from_url(redis_url)
    store = RedisPrefixStore(make_redis_commands(RedisConfig(url=redis_url)), stride=16)
    rng = np.random.default_rng(0)
    print("\n3. memory per entry (used_memory delta / entries; MEMORY USAGE / ZCARD)")
    for label, keys, per_key in (("large ZSETs", args.memory_keys, args.memory_entries),
                                 ("small ZSETs", args.memory_keys * 100, 100)):  # fmt: skip
        await client.flushall()
        before = (await client.info("memory"))["used_memory"]
        chunk = 2000
        for key in range(keys):
            records = []
            for start in range(0, per_key, chunk):
                packed = rng.integers(0, 2**63, min(chunk, per_key - start), dtype=np.uint64).tobytes()
                records.append((f"model-{label[0]}", f"replica-{key}", packed, per_key * 16))
            await store.record_many(records)
        after = (await client.info("memory"))["used_memory"]
        entries = keys * per_key
        sample = store.replica_key(f"model-{label[0]}", "replica-0")
        usage = await client.memory_usage(sample, samples=0)
        encoding = (await client.object("encoding", sample)).decode()
        print(f"{label:12} {keys} keys x {per_key} entries ({encoding}): {(after - before) / entries:.1f} B "
              f"per entry by used_memory, {usage / per_key:.1f} B by MEMORY USAGE")  # fmt: skip
    await client.flushall()
    await client.aclose()
    await store.close()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--replicas", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=32768)
    parser.add_argument("--other-prompts", type=int, default=8, help="other conversations per replica")
    parser.add_argument("--decisions", type=int, default=1000)
    parser.add_argument("--warmup", type=int, default=CONVERSATIONS, help=f"at least {CONVERSATIONS}")
    parser.add_argument("--concurrency", type=int, default=16, help="streams per gateway")
    parser.add_argument("--throughput-prompt-tokens", type=int, default=4096)
    parser.add_argument("--windows", type=int, default=5)
    parser.add_argument("--window", type=float, default=3.0, help="seconds")
    parser.add_argument("--time-scale", type=float, default=1000.0)
    parser.add_argument("--memory-keys", type=int, default=8)
    parser.add_argument("--memory-entries", type=int, default=100_000, help="per key")
    parser.add_argument("--skip", nargs="*", default=[], choices=("latency", "throughput", "memory"))
    args = parser.parse_args()

    with redis_server() as redis:
        if "latency" not in args.skip:
            uvloop.run(decision_latency(args, redis.url))  # the event loop `kvgate serve` runs on
        if "throughput" not in args.skip:
            sim_args = [
                "--time-scale",
                str(args.time_scale),
                "--max-model-len",
                "16384",
                "--hbm-blocks",
                "40000",
            ]
            with SimProcess(replicas=4, extra_args=sim_args) as sim:
                common = ["--replicas", ",".join(sim.urls), "--log-level", "warning"]
                with (
                    GatewayProcess(extra_args=common) as embedded,
                    GatewayProcess(extra_args=[*common, "--index", redis.url]) as shared,
                ):
                    asyncio.run(throughput(args, {"embedded": embedded.url, "redis": shared.url}))
        if "memory" not in args.skip:
            asyncio.run(memory_per_entry(args, redis.url))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
