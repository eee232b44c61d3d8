"""The library entry point: `await run_swarm(SwarmConfig(...))` runs a swarm and writes its results.

    from loadtest.swarm import SwarmConfig, run_swarm, comparison_table

    result = await run_swarm(SwarmConfig(endpoint="http://127.0.0.1:8000", users=32, duration_s=120,
                                         output_dir="results/affinity", label="affinity"))
    result.summary["cache"]["hit_rate"], result.paths["requests"]

The output directory gets `summary.json`, `requests.csv`, `periods.csv`, `timeline.csv`,
`control.csv` (adaptive mode), `first_use.npy` (for `kvgate report merge`), `config.json`, the PNG
plots, and with `record_trace` a `trace.jsonl.gz` for `kvgate analyze`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console

from loadtest.analyze.events import RECORDED_TRACE_NAME
from loadtest.swarm.client import StreamingClient
from loadtest.swarm.clock import WorkloadClock
from loadtest.swarm.config import SwarmConfig, build_load_settings, build_workload
from loadtest.swarm.driver import DriverReport, LoadSettings, SwarmDriver
from loadtest.swarm.plots import run_plots
from loadtest.swarm.progress import ProgressDisplay
from loadtest.swarm.prometheus import SwarmMetrics
from loadtest.swarm.records import RecordWriter, RequestRecord, read_records
from loadtest.swarm.stats import period_rows
from loadtest.swarm.summary import (
    RunData,
    build_summary,
    rows_of,
    users_at_function,
    write_json,
    write_tables,
)
from loadtest.swarm.trace_record import TraceRecorder
from loadtest.swarm.workloads.base import Workload


class SwarmError(RuntimeError):
    """A run that could not start (no endpoint, no model...)."""


@dataclass(slots=True)
class RunResult:
    summary: dict[str, Any]
    output_dir: Path
    paths: dict[str, Path]

    @property
    def label(self) -> str:
        return str(self.summary.get("label") or self.output_dir.name)

    def records(self) -> list[RequestRecord]:
        return read_records(self.paths.get("requests", self.output_dir / "requests.csv"))

    @classmethod
    def load(cls, directory: str | Path) -> RunResult:
        """A finished run (or merge) read back from its output directory."""
        directory = Path(directory)
        summary_path = directory / "summary.json"
        if not summary_path.is_file():
            raise FileNotFoundError(f"{directory}: no summary.json (not a swarm output directory)")
        summary = orjson.loads(summary_path.read_bytes())
        paths = {name: Path(path) for name, path in summary.get("outputs", {}).items()}
        paths = {name: path if path.is_absolute() else directory / path for name, path in paths.items()}
        paths.setdefault("requests", directory / "requests.csv")
        return cls(summary, directory, paths)


@contextlib.contextmanager
def _few_gc_pauses() -> Iterator[None]:
    """Raise the cyclic GC's thresholds for the run (and put back the caller's after it).

    A swarm holds hundreds of thousands of long-lived objects (histories, records), and with the default
    thresholds a full collection walks all of them every few seconds: pauses of 100-200 ms, measured,
    that land on clients' TTFT. Its objects are acyclic, so reference counting frees them anyway.
    """
    thresholds = gc.get_threshold()
    gc.freeze()
    gc.set_threshold(50_000, 50, 100)
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)
        gc.unfreeze()


def default_output_dir() -> Path:
    return Path("kvgate-results") / time.strftime("swarm-%Y%m%d-%H%M%S", time.gmtime())


async def _model(client: StreamingClient, endpoint: str) -> str:
    try:
        model = await client.discover_model()
    except Exception as error:
        raise SwarmError(
            f"cannot list the models at {client.base}/models ({error}); is {endpoint} up? or pass --model"
        ) from error
    if not model:
        raise SwarmError(f"{client.base}/models lists no model; pass --model")
    return model


def _meta(
    config: SwarmConfig,
    settings: LoadSettings,
    workload: Workload,
    report: DriverReport,
    model: str,
    output: Path,
) -> dict[str, Any]:
    ramp = settings.ramp
    return {
        "label": config.label or output.name,
        "started_unix": report.started_unix,
        "endpoint": config.endpoint,
        "endpoints": config.endpoints,
        "model": model,
        "api": config.api,
        "shard": config.shard,
        "shards": [config.shard],
        "time_scale": config.time_scale,
        "stop_reason": report.stop_reason,
        "wall_s": report.wall_s,
        "workload": workload.describe(),
        "load": {
            "mode": settings.mode,
            "users": settings.users if settings.mode in ("fixed", "adaptive") else None,
            "ramp": (
                {"start": ramp.start, "step": ramp.step, "interval_s": ramp.interval_s, "max": ramp.max_users}
                if ramp
                else None
            ),
            "rate": settings.rate,
            "arrival": settings.arrival if settings.mode == "rate" else None,
            "period_s": settings.period_s,
            "duration_s": settings.duration_s,
            "max_requests": settings.max_requests,
            "think_scale": settings.think_scale,
            "max_think_s": settings.max_think_s,
            "start_spread_s": settings.start_spread_s,
            "seed": settings.seed,
        },
        "requests_sent": report.sent,
        "prewarm": {"requests": report.prewarm_requests, "failed": report.prewarm_failed},
        "open_loop": {
            "arrivals_without_user": report.arrivals_without_user,
            "max_schedule_lag_s": report.max_schedule_lag_s,
        },
    }


def _generator(report: DriverReport) -> dict[str, Any]:
    cores = os.cpu_count() or 1
    share = report.cpu_seconds / report.wall_s if report.wall_s > 0 else None
    return {
        "cpu_seconds": report.cpu_seconds,
        "wall_s": report.wall_s,
        "cpu_share_of_one_core": share,
        "cpu_share_of_machine": share / cores if share is not None else None,
        "cores": cores,
        "peak_cpu_share_of_one_core": max((p.generator_cpu for p in report.timeline), default=None),
        "max_loop_lag_s": report.max_loop_lag_s,
    }


def write_outputs(output: Path, data: RunData, plots: bool) -> tuple[dict[str, Any], dict[str, Path]]:
    """summary.json, the CSV tables and the plots of a run or merge whose requests.csv is written."""
    summary = build_summary(data)
    paths: dict[str, Path] = {"requests": output / "requests.csv", **write_tables(output, data)}
    if plots:
        periods = period_rows(
            data.records, data.period_s, data.span_s, data.slo, users_at_function(data.timelines)
        )
        timeline = sorted((p for t in data.timelines for p in t), key=lambda p: float(p["t_s"]))
        paths.update(run_plots(output, data.records, periods, timeline))
    for name in ("first_use", "config", "trace"):
        candidate = (
            output
            / {"first_use": "first_use.npy", "config": "config.json", "trace": RECORDED_TRACE_NAME}[name]
        )
        if candidate.is_file():
            paths[name] = candidate
    paths["summary"] = output / "summary.json"
    summary["outputs"] = {name: path.name for name, path in sorted(paths.items())}
    write_json(paths["summary"], summary)
    return summary, paths


async def run_swarm(config: SwarmConfig) -> RunResult:
    """Run one swarm (or one shard of it) and write its results; returns the summary and file paths."""
    workload = build_workload(config)
    settings = build_load_settings(config, workload)
    shard = config.parsed_shard
    output = Path(config.output_dir) if config.output_dir else default_output_dir()
    clock = WorkloadClock(config.time_scale)
    metrics: SwarmMetrics | None = None
    display: asyncio.Task | None = None
    writer: RecordWriter | None = None
    recorder: TraceRecorder | None = None
    try:
        async with StreamingClient(
            config.endpoints,
            config.model,
            config.api_key,
            request_timeout_s=clock.wall(config.request_timeout_s),
            max_connections=config.max_connections,
            ignore_eos=config.ignore_eos,
            extra_body=config.extra_body,
            spread=config.endpoint_spread,
        ) as client:
            model = config.model or await _model(client, config.endpoint)
            client.model = model
            output.mkdir(parents=True, exist_ok=True)
            write_json(output / "config.json", config.model_dump(mode="json", exclude={"api_key", "agents"}))
            writer = RecordWriter(output / "requests.csv")
            recorder = TraceRecorder(output / RECORDED_TRACE_NAME) if config.record_trace else None
            driver = SwarmDriver(settings, workload, client, clock, shard, writer, recorder)
            if config.metrics_port is not None:
                metrics = SwarmMetrics(driver.live)
                driver.on_record = metrics.observe
                metrics.serve(config.metrics_host, config.metrics_port)
            if not config.quiet and sys.stdout.isatty():
                title = f"kvgate swarm -> {config.endpoint} ({workload.name}, {settings.mode})"
                display = asyncio.get_running_loop().create_task(
                    ProgressDisplay(driver, title, Console()).run()
                )
            try:
                with _few_gc_pauses():
                    report = await driver.run()
            finally:
                if display is not None:
                    display.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await display
    finally:
        if writer is not None:
            writer.close()
        if recorder is not None:
            recorder.close()
        if metrics is not None:
            metrics.stop()
    driver.tracker.save(output / "first_use.npy")
    timeline = [{**row, "shard": shard.index} for row in rows_of(report.timeline)]
    control = [{**row, "shard": shard.index} for row in rows_of(report.control)]
    data = RunData(
        records=driver.records,
        span_s=report.span_s,
        slo=config.slo,
        period_s=config.period_s,
        meta=_meta(config, settings, workload, report, model, output),
        timelines=[timeline],
        control=control,
        phases=report.phases,
        generator=_generator(report),
    )
    summary, paths = write_outputs(output, data, config.plots)
    return RunResult(summary, output, paths)
