"""`kvgate swarm`: drive agent swarms, replay traces or sweep a cache against an OpenAI endpoint.

Every flag sets the `SwarmConfig` field named in its help (docs/loadtest.md lists them all); flags left
out keep the config's default.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from typing import Any

import orjson
from pydantic import ValidationError
from rich.console import Console

from loadtest.swarm.config import SwarmConfig
from loadtest.swarm.controller import TtftMetric
from loadtest.swarm.driver import MODES

_DEFAULTS = SwarmConfig.model_fields


def _default(field: str) -> str:
    info = _DEFAULTS[field]
    value = info.default_factory() if info.default_factory is not None else info.default  # type: ignore[call-arg]
    return "" if value is None else f" (default {value})"


def _floats(text: str) -> list[float]:
    return [float(part) for part in text.split(",") if part.strip()]


def _add(group: Any, flag: str, field: str, help_text: str, **kwargs: Any) -> None:
    switch = kwargs.get("action") in ("store_true", "store_false")
    text = help_text if switch else help_text + _default(field)
    group.add_argument(flag, dest=field, default=argparse.SUPPRESS, help=text, **kwargs)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    endpoint = parser.add_argument_group("endpoint")
    _add(
        endpoint,
        "--endpoint",
        "endpoint",
        "base URL of an OpenAI-compatible server, with or without /v1; several (space or comma separated) "
        "are spread over as --endpoint-spread says",
        nargs="+",
    )
    _add(
        endpoint,
        "--endpoint-spread",
        "endpoint_spread",
        "with several endpoints: user: each user sticks to one; request: each request takes the next",
        choices=("user", "request"),
    )
    _add(endpoint, "--model", "model", "model name to send; default: the first one /v1/models lists")
    _add(endpoint, "--api-key", "api_key", "bearer token (default: $OPENAI_API_KEY)")
    _add(
        endpoint,
        "--api",
        "api",
        "chat: /v1/chat/completions; completions: /v1/completions",
        choices=("chat", "completions"),
    )
    _add(
        endpoint,
        "--request-timeout",
        "request_timeout_s",
        "seconds before a request is abandoned",
        type=float,
    )
    _add(endpoint, "--max-connections", "max_connections", "pooled connections; 0: no limit", type=int)
    _add(
        endpoint,
        "--ignore-eos",
        "ignore_eos",
        "send ignore_eos so each request generates max_tokens",
        action="store_true",
    )
    _add(
        endpoint,
        "--extra-body",
        "extra_body",
        "JSON object merged into every request body",
        type=orjson.loads,
    )

    workload = parser.add_argument_group("workload")
    _add(workload, "--workload", "workload", "what to send", choices=("agents", "replay", "sweep"))
    _add(
        workload,
        "--workload-config",
        "agents_config",
        "agents: YAML file of knobs (default: the shipped agents.yaml)",
    )
    _add(
        workload,
        "--trace",
        "trace",
        "replay: WEKA .json/.json.gz or Mooncake .jsonl files or directories",
        nargs="+",
    )
    _add(
        workload,
        "--trace-format",
        "trace_format",
        "replay: trace format",
        choices=("auto", "weka", "mooncake"),
    )
    _add(
        workload, "--no-subagents", "include_subagents", "replay: skip WEKA sub-agents", action="store_false"
    )
    _add(
        workload,
        "--shared-prefix",
        "shared_prefix",
        "replay: share the WEKA system/tool prefix across conversations",
        action="store_true",
    )
    _add(
        workload,
        "--prewarm",
        "prewarm",
        "replay: send the shared prefix once before the run",
        action="store_true",
    )
    _add(
        workload,
        "--recycle",
        "recycle",
        "replay: start conversations again (as new ones) when all have started",
        action="store_true",
    )
    _add(
        workload,
        "--order",
        "order",
        "order of conversations, records or sweep prompts",
        choices=("cycle", "random"),
    )
    _add(
        workload,
        "--max-output-tokens",
        "max_output_tokens",
        "replay: clamp each request's recorded output length",
        type=int,
    )
    _add(workload, "--speedup", "speedup", "replay: divide Mooncake inter-arrival times by this", type=float)
    _add(workload, "--sweep", "sweep", "sweep: what to sweep", choices=("hit-rate", "working-set"))
    _add(workload, "--context-tokens", "context_tokens", "sweep: prompt length", type=int)
    _add(workload, "--output-tokens", "output_tokens", "sweep: max_tokens of each request", type=int)
    _add(workload, "--hit-rates", "hit_rates", "sweep hit-rate: comma-separated targets", type=_floats)
    _add(workload, "--working-set-tokens", "working_set_tokens", "sweep hit-rate: working set", type=int)
    _add(workload, "--working-set-min", "working_set_min_tokens", "sweep working-set: first size", type=int)
    _add(workload, "--working-set-max", "working_set_max_tokens", "sweep working-set: last size", type=int)
    _add(workload, "--working-set-steps", "working_set_steps", "sweep working-set: sizes", type=int)
    _add(
        workload, "--working-set-hit-rate", "working_set_hit_rate", "sweep working-set: hit rate", type=float
    )
    _add(workload, "--phase-duration", "phase_duration_s", "sweep: seconds per phase", type=float)

    load = parser.add_argument_group("load")
    _add(
        load,
        "--mode",
        "mode",
        "fixed, ramp, adaptive, rate, or trace (Mooncake timestamps); default: trace for "
        "Mooncake, fixed otherwise",
        choices=MODES,
    )
    _add(load, "--users", "users", "fixed: users; adaptive: users to start with", type=int)
    _add(load, "--ramp-start", "ramp_start", "ramp: users at the start", type=int)
    _add(load, "--ramp-step", "ramp_step", "ramp: users added per interval", type=int)
    _add(load, "--ramp-interval", "ramp_interval_s", "ramp: seconds between steps", type=float)
    _add(load, "--max-users", "max_users", "ramp/adaptive: most users; rate/trace: most concurrent", type=int)
    _add(load, "--rate", "rate", "rate: requests per second", type=float)
    _add(load, "--arrival", "arrival", "rate: arrival process", choices=("poisson", "constant"))
    metrics: tuple[TtftMetric, ...] = ("p95", "avg", "max")
    _add(load, "--slo-ttft", "slo_ttft_s", "SLO: TTFT target in seconds", type=float)
    _add(
        load, "--slo-ttft-metric", "slo_ttft_metric", "SLO: which TTFT of a period is judged", choices=metrics
    )
    _add(
        load,
        "--slo-output-tps",
        "slo_output_tokens_per_s",
        "SLO: least output tokens/s per request",
        type=float,
    )
    _add(
        load,
        "--slo-max-error-rate",
        "slo_max_error_rate",
        "SLO: largest share of failed requests",
        type=float,
    )
    _add(load, "--assessment-period", "period_s", "seconds per assessment period", type=float)
    _add(
        load,
        "--adaptive-growth",
        "adaptive_growth",
        "adaptive: growth factor while nothing failed",
        type=float,
    )
    _add(load, "--adaptive-backoff", "adaptive_backoff", "adaptive: factor after a violation", type=float)
    _add(
        load,
        "--adaptive-min-requests",
        "adaptive_min_requests",
        "adaptive: requests needed to judge a period",
        type=int,
    )
    _add(
        load,
        "--adaptive-settle-periods",
        "adaptive_settle_periods",
        "adaptive: periods skipped after a change",
        type=int,
    )
    _add(load, "--duration", "duration_s", "seconds of load (always applies)", type=float)
    _add(load, "--max-requests", "max_requests", "requests to send at most (always applies)", type=int)
    _add(
        load,
        "--drain-timeout",
        "drain_timeout_s",
        "seconds in-flight requests get after the stop",
        type=float,
    )
    _add(
        load,
        "--time-scale",
        "time_scale",
        "run K times faster than workload time and report workload time",
        type=float,
    )
    _add(load, "--think-scale", "think_scale", "multiply think times (0: no thinking)", type=float)
    _add(load, "--max-think", "max_think_s", "clamp each think time to this many seconds", type=float)
    _add(load, "--start-spread", "start_spread_s", "new users start within this many seconds", type=float)
    _add(load, "--seed", "seed", "seed of arrivals, selections and synthetic content", type=int)
    _add(load, "--shard", "shard", "run shard i of N (i from 0), e.g. $(JOB_COMPLETION_INDEX)/4")

    output = parser.add_argument_group("output")
    _add(output, "--output", "output_dir", "output directory (default: kvgate-results/swarm-<time>)")
    _add(output, "--label", "label", "name of the run in reports (default: the output directory's name)")
    parser.add_argument("--quiet", action="store_true", help="no live progress display")
    _add(output, "--no-plots", "plots", "skip the PNG plots", action="store_false")
    _add(
        output,
        "--metrics-port",
        "metrics_port",
        "serve Prometheus metrics on this port while running",
        type=int,
    )
    _add(output, "--metrics-host", "metrics_host", "address for --metrics-port")
    _add(
        output,
        "--record-trace",
        "record_trace",
        "also write trace.jsonl.gz for kvgate analyze",
        action="store_true",
    )
    parser.add_argument("--log-level", default="WARNING", help="logging level (default WARNING)")


def config_from_args(args: argparse.Namespace) -> SwarmConfig:
    values = {key: value for key, value in vars(args).items() if key not in ("quiet", "log_level")}
    if isinstance(values.get("endpoint"), list):
        values["endpoint"] = ",".join(values["endpoint"])
    values["quiet"] = bool(getattr(args, "quiet", False))
    return SwarmConfig(**values)


def _run(config: SwarmConfig) -> Any:
    from loadtest.swarm.runner import run_swarm

    try:
        import uvloop
    except ImportError:
        return asyncio.run(run_swarm(config))
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(run_swarm(config))


def run(args: argparse.Namespace) -> int:
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    console = Console(stderr=True)
    try:
        config = config_from_args(args)
    except ValidationError as error:
        for item in error.errors():
            where = ".".join(str(part) for part in item["loc"]) or "flags"
            console.print(f"kvgate swarm: {where}: {item['msg']}")
        return 2
    from loadtest.swarm.runner import SwarmError
    from loadtest.swarm.traces import TraceError
    from loadtest.swarm.workloads.agents_config import WorkloadConfigError

    try:
        result = _run(config)
    except (SwarmError, TraceError, WorkloadConfigError, ValueError) as error:
        console.print(f"kvgate swarm: {error}")
        return 2
    from loadtest.swarm.progress import summary_table

    Console().print(summary_table(result.summary))
    print(f"results: {result.output_dir}")
    return 0 if result.summary["requests"]["ok"] else 1


if __name__ == "__main__":  # pragma: no cover
    parser = argparse.ArgumentParser(prog="kvgate swarm")
    add_arguments(parser)
    sys.exit(run(parser.parse_args()))
