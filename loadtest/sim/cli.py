"""`kvgate sim`: run one or many simulated vLLM replicas in this process until interrupted."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import signal
import sys
import time
from typing import Any

import httpx
import orjson
import uvloop

from gateway.profiles import PROFILE_NAMES
from loadtest.sim.config import KV_EVENTS_ENCODINGS, ConfigError, FaultSettings, SimConfig
from loadtest.sim.fleet import SimFleet

DEFAULTS = SimConfig()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    fleet = parser.add_argument_group("fleet")
    fleet.add_argument("--replicas", type=int, default=1, help="replicas to run (default 1)")
    fleet.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    fleet.add_argument(
        "--port", type=int, default=18000, help="replica i listens on PORT+i (default 18000; 0: free)"
    )
    fleet.add_argument(
        "--model", default=DEFAULTS.model, help=f"served model name (default {DEFAULTS.model})"
    )
    fleet.add_argument(
        "--time-scale",
        type=float,
        default=DEFAULTS.time_scale,
        help="simulated seconds per real second (default 1)",
    )
    fleet.add_argument(
        "--sample-request",
        action="store_true",
        help="send one sample chat request twice to replica 0, print both results and exit",
    )
    fleet.add_argument("--log-level", default="warning", choices=("debug", "info", "warning", "error"))

    engine = parser.add_argument_group("engine")
    engine.add_argument(
        "--profile",
        default=DEFAULTS.profile,
        choices=PROFILE_NAMES,
        help=f"latency profile (default {DEFAULTS.profile})",
    )
    engine.add_argument(
        "--tensor-parallel",
        type=int,
        default=None,
        help="GPUs per replica: divides step times, multiplies HBM (default: the smallest power "
        "of two that holds the weights and one max-model-len sequence)",
    )
    engine.add_argument(
        "--max-model-len",
        type=int,
        default=DEFAULTS.max_model_len,
        help=f"context length (default {DEFAULTS.max_model_len})",
    )
    engine.add_argument(
        "--block-size", type=int, default=DEFAULTS.block_size, help="tokens per KV block (default 16)"
    )
    engine.add_argument(
        "--gpu-memory-utilization",
        type=float,
        default=DEFAULTS.gpu_memory_utilization,
        help="share of each 80 GB H100 the engine may use (default 0.9)",
    )
    engine.add_argument(
        "--max-num-seqs",
        type=int,
        default=DEFAULTS.max_num_seqs,
        help="most requests running at once (default 256)",
    )
    engine.add_argument(
        "--max-num-batched-tokens",
        type=int,
        default=DEFAULTS.max_num_batched_tokens,
        help="token budget of one scheduler step (default 8192)",
    )
    engine.add_argument(
        "--stream-interval",
        type=int,
        default=DEFAULTS.stream_interval,
        help="output tokens per streamed chunk after the first, as vLLM's --stream-interval (default 1); "
        "fewer chunks for long load tests on a small machine",
    )
    engine.add_argument("--tokenizer", default=None, help="a Hugging Face tokenizer.json (default: built-in)")
    engine.add_argument(
        "--no-prompt-tokens-details",
        dest="prompt_tokens_details",
        action="store_false",
        help="omit usage.prompt_tokens_details, as vLLM does by default",
    )
    engine.add_argument(
        "--default-max-tokens",
        type=int,
        default=DEFAULTS.default_max_tokens,
        help="output tokens of a chat request that sets no limit (default 256; the simulator "
        "has no end-of-sequence token)",
    )
    engine.add_argument(
        "--hash-seed",
        type=int,
        default=None,
        help="seed of the block hash chain (default: random per replica, as vLLM without PYTHONHASHSEED)",
    )
    engine.add_argument("--vllm-version", default=DEFAULTS.vllm_version, help="what /version reports")

    tiers = parser.add_argument_group(
        "KV cache tiers (blocks, or GiB of KV at the profile's bytes per token)"
    )
    for tier, default_help in (
        ("hbm", "derived from the GPU memory"),
        ("dram", "0: none"),
        ("storage", "0: none"),
    ):
        group = tiers.add_mutually_exclusive_group()
        group.add_argument(
            f"--{tier}-blocks", type=int, default=None, help=f"{tier.upper()} capacity ({default_help})"
        )
        group.add_argument(f"--{tier}-gib", type=float, default=None, help=f"{tier.upper()} capacity in GiB")

    events = parser.add_argument_group("KV cache events")
    events.add_argument(
        "--kv-events-port",
        type=int,
        default=None,
        help="replica i publishes on PORT+i (ZMQ PUB; off when not given; 0: free ports)",
    )
    events.add_argument(
        "--kv-events-replay-port",
        type=int,
        default=None,
        help="replica i answers replay requests on PORT+i (ZMQ ROUTER)",
    )
    events.add_argument(
        "--kv-events-encoding",
        choices=KV_EVENTS_ENCODINGS,
        default=DEFAULTS.kv_events_encoding,
        help="array: tagged arrays (vLLM <= 0.23); map: tagged maps (>= 0.24; default)",
    )
    events.add_argument(
        "--kv-events-topic", default=DEFAULTS.kv_events_topic, help="ZMQ topic (default empty)"
    )
    events.add_argument(
        "--kv-events-bytes-hashes",
        action="store_true",
        help="block hashes as 8 raw bytes instead of unsigned 64-bit integers",
    )
    events.add_argument(
        "--kv-events-replay-topic",
        action=argparse.BooleanOptionalAction,
        default=DEFAULTS.kv_events_replay_topic,
        help="replay replies carry the topic frame, as vLLM >= 0.29 (default on)",
    )
    events.add_argument(
        "--kv-events-buffer-steps",
        type=int,
        default=DEFAULTS.kv_events_buffer_steps,
        help="batches kept for replay (default 10000)",
    )
    events.add_argument(
        "--data-parallel-rank",
        type=int,
        default=None,
        help="data_parallel_rank in every event batch (left out when not given)",
    )

    faults = parser.add_argument_group("faults (see docs/simulator.md)")
    faults.add_argument(
        "--fault-replicas",
        default=None,
        help="comma-separated replica indexes the fault flags apply to (default: all)",
    )
    faults.add_argument("--error-rate", type=float, default=0.0, help="share of requests answered 500")
    faults.add_argument(
        "--added-latency",
        type=float,
        default=0.0,
        help="simulated seconds added before each request reaches the engine",
    )
    faults.add_argument("--slowdown", type=float, default=1.0, help="factor on every step time")
    faults.add_argument(
        "--die-after-tokens",
        type=int,
        default=None,
        help="die (reset connections, refuse new ones) once a response has N tokens",
    )
    faults.add_argument(
        "--restart-after",
        type=float,
        default=None,
        help="a dead replica comes back, empty, after this many simulated seconds",
    )
    faults.add_argument(
        "--stream-error-after-tokens",
        type=int,
        default=None,
        help="end responses with an error event after N tokens",
    )
    faults.add_argument("--draining", action="store_true", help="503 on new requests and /health")


def config_from_args(args: argparse.Namespace) -> SimConfig:
    config = SimConfig(
        model=args.model,
        profile=args.profile,
        tensor_parallel=args.tensor_parallel,
        max_model_len=args.max_model_len,
        block_size=args.block_size,
        gpu_memory_utilization=args.gpu_memory_utilization,
        max_num_seqs=args.max_num_seqs,
        max_num_batched_tokens=args.max_num_batched_tokens,
        time_scale=args.time_scale,
        tokenizer=args.tokenizer,
        enable_prompt_tokens_details=args.prompt_tokens_details,
        default_max_tokens=args.default_max_tokens,
        stream_interval=args.stream_interval,
        hash_seed=args.hash_seed,
        vllm_version=args.vllm_version,
        kv_events_port=args.kv_events_port,
        kv_events_replay_port=args.kv_events_replay_port,
        kv_events_encoding=args.kv_events_encoding,
        kv_events_topic=args.kv_events_topic,
        kv_events_bytes_hashes=args.kv_events_bytes_hashes,
        kv_events_replay_topic=args.kv_events_replay_topic,
        kv_events_buffer_steps=args.kv_events_buffer_steps,
        data_parallel_rank=args.data_parallel_rank,
    )
    for tier in ("hbm", "dram", "storage"):
        blocks = getattr(args, f"{tier}_blocks")
        gib = getattr(args, f"{tier}_gib")
        if gib is not None:
            blocks = config.blocks_for_gib(gib)
        if blocks is not None:
            setattr(config, f"{tier}_blocks", blocks)
    return config


def faults_from_args(args: argparse.Namespace) -> FaultSettings:
    return FaultSettings(
        error_rate=args.error_rate,
        added_latency=args.added_latency,
        slowdown=args.slowdown,
        die_after_tokens=args.die_after_tokens,
        restart_after=args.restart_after,
        stream_error_after_tokens=args.stream_error_after_tokens,
        draining=args.draining,
    )


def fault_replicas(args: argparse.Namespace, replicas: int) -> list[int]:
    if args.fault_replicas is None:
        return list(range(replicas))
    indexes = [int(part) for part in args.fault_replicas.split(",") if part.strip()]
    for index in indexes:
        if not 0 <= index < replicas:
            raise ConfigError(f"--fault-replicas: no replica {index}")
    return indexes


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = config_from_args(args)
        faults = faults_from_args(args)
        faults.validate()
        config.validate()
        if args.replicas < 1:
            raise ConfigError("--replicas must be >= 1")
        faulty = fault_replicas(args, args.replicas)
    except (ConfigError, ValueError) as error:
        print(f"kvgate sim: {error}", file=sys.stderr)
        return 2
    return uvloop.run(_serve(args, config, faults, faulty))


async def _serve(
    args: argparse.Namespace, config: SimConfig, faults: FaultSettings, faulty: list[int]
) -> int:
    fleet = SimFleet(config, replicas=args.replicas, host=args.host, port=args.port)
    for index in faulty:
        fleet.replicas[index].set_faults(**dataclasses.asdict(faults))
    try:
        await fleet.start()
    except OSError as error:
        print(f"kvgate sim: cannot listen: {error}", file=sys.stderr)
        return 1
    try:
        print(_banner(fleet), flush=True)
        if args.sample_request:
            return await _sample_request(fleet)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, stop.set)
        await stop.wait()
        return 0
    finally:
        await fleet.stop()


def _banner(fleet: SimFleet) -> str:
    config = fleet.config
    replica = fleet.replicas[0]
    lines = [
        f"kvgate sim: {len(fleet)} replica(s) serving {config.model!r}, profile {config.profile} "
        f"(tensor parallel {config.effective_tensor_parallel()}), {replica.engine.cache.capacity} HBM blocks "
        f"of {config.block_size} tokens, time scale {config.time_scale:g}"
    ]
    for replica in fleet.replicas:
        line = f"  replica {replica.index}: {replica.url}"
        if replica.kv_events_endpoint:
            line += f"  kv-events {replica.kv_events_endpoint}"
        if replica.kv_events_replay_endpoint:
            line += f"  replay {replica.kv_events_replay_endpoint}"
        lines.append(line)
    return "\n".join(lines)


SAMPLE_SYSTEM_PROMPT = (
    "You are a coding agent working in a Python repository. Read files before editing them, keep changes "
    "small, run the tests after every change and report what you did. "
) * 40


async def _sample_request(fleet: SimFleet) -> int:
    replica = fleet.replicas[0]
    body = {
        "model": fleet.config.model,
        "messages": [
            {"role": "system", "content": SAMPLE_SYSTEM_PROMPT},
            {"role": "user", "content": "The test test_parse_config fails. Find the cause and fix it."},
        ],
        "max_tokens": 24,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    print(f"sample chat request, sent twice to replica 0 ({replica.url}/v1/chat/completions):")
    async with httpx.AsyncClient(timeout=60.0) as client:
        for attempt in ("first ", "second"):
            result = await _stream_once(client, replica.url, body)
            record = replica.engine.records.get(result["id"])
            sim_ttft = record.ttft if record else None
            usage = result["usage"] or {}
            cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
            print(
                f"  {attempt}: TTFT {sim_ttft:.3f} s simulated ({result['real_ttft'] * 1000:.0f} ms real), "
                f"prompt_tokens {usage.get('prompt_tokens')}, cached_tokens {cached}, "
                f"completion_tokens {usage.get('completion_tokens')}: {result['text'][:48]!r}..."
            )
    return 0


async def _stream_once(client: httpx.AsyncClient, url: str, body: dict[str, Any]) -> dict[str, Any]:
    started = time.perf_counter()
    real_ttft = None
    text: list[str] = []
    result: dict[str, Any] = {"id": None, "usage": None}
    async with client.stream("POST", url + "/v1/chat/completions", json=body) as response:
        response.raise_for_status()
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = orjson.loads(line[6:])
            result["id"] = chunk["id"]
            for choice in chunk["choices"]:
                content = choice["delta"].get("content")
                if content:
                    if real_ttft is None:
                        real_ttft = time.perf_counter() - started
                    text.append(content)
            if chunk.get("usage"):
                result["usage"] = chunk["usage"]
    result["text"] = "".join(text)
    result["real_ttft"] = real_ttft or 0.0
    return result
