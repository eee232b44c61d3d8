"""`kvgate report merge`: the shards of one run put back together, exactly.

Each shard's raw request records are placed on one time axis (shard start times come from the wall
clock, so pods need synchronised clocks, as NTP gives), and every figure is computed again from the
union, never by averaging percentiles. The hit-rate ceiling needs one more step: a shard only knew the
blocks it sent itself, so a block it sent first may have been sent earlier by another shard. Each
shard logged the first use of every block (`first_use.npy`); across the logs, each block's earliest use
stays a first use and every later one becomes a repeat, which extends the requests' seen prefixes. The
result equals the ceiling of one process sending every request in the same order.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from loadtest.swarm.ceiling import ceiling_tokens, load_first_uses
from loadtest.swarm.controller import SloTargets
from loadtest.swarm.records import RequestRecord, write_records
from loadtest.swarm.runner import RunResult, write_outputs
from loadtest.swarm.summary import PHASE_FIGURES, RunData, read_csv


class MergeError(ValueError):
    pass


def _shifted(records: list[RequestRecord], offset_s: float) -> list[RequestRecord]:
    for record in records:
        record.start_s += offset_s
        record.end_s += offset_s
    return records


def merged_ceilings(
    shard_records: Sequence[list[RequestRecord]], first_uses: Sequence[np.ndarray], offsets_s: Sequence[float]
) -> None:
    """Set every record's `ceiling_tokens` to what one process sending all shards' requests would see.

    `shard_records[i]` are shard i's records (times already on the common axis), `first_uses[i]` its
    first-use log, `offsets_s[i]` its start on the common axis (prewarm requests, logged with negative
    request ids, happened just before it).
    """
    starts: list[dict[int, float]] = [
        {record.request_id: record.start_s for record in records} for records in shard_records
    ]
    shard_column, request_column, position_column, key_column, time_column = [], [], [], [], []
    for index, table in enumerate(first_uses):
        times = np.array(
            [starts[index].get(int(rid), offsets_s[index] - 1e-9) for rid in table["request_id"]],
            dtype=np.float64,
        )
        shard_column.append(np.full(len(table), index, dtype=np.int64))
        request_column.append(table["request_id"].astype(np.int64))
        position_column.append(table["position"].astype(np.int64))
        key_column.append(table["key"])
        time_column.append(times)
    if not key_column:
        return
    shards = np.concatenate(shard_column)
    requests = np.concatenate(request_column)
    positions = np.concatenate(position_column)
    keys = np.concatenate(key_column)
    times = np.concatenate(time_column)
    order = np.lexsort((positions, requests, shards, times, keys))
    sorted_keys = keys[order]
    repeat = np.zeros(len(order), dtype=bool)
    repeat[1:] = sorted_keys[1:] == sorted_keys[:-1]
    # A request's prefix ends at its first block that nobody had sent before it.
    first_new: dict[tuple[int, int], int] = {}
    for shard, request, position in zip(
        shards[order][~repeat].tolist(),
        requests[order][~repeat].tolist(),
        positions[order][~repeat].tolist(),
        strict=True,
    ):
        key = (shard, request)
        if position < first_new.get(key, 1 << 62):
            first_new[key] = position
    for index, records in enumerate(shard_records):
        for record in records:
            prefix = first_new.get((index, record.request_id), record.blocks)
            record.ceiling_tokens = ceiling_tokens(prefix, record.block_tokens, record.expected_prompt_tokens)


def _timeline(directory: Path, offset_s: float) -> list[dict[str, Any]]:
    path = directory / "timeline.csv"
    if not path.is_file():
        return []
    return [{**row, "t_s": float(row["t_s"]) + offset_s} for row in read_csv(path)]


def merge_runs(directories: Sequence[str | Path], output: str | Path, plots: bool = True) -> RunResult:
    if len(directories) < 2:
        raise MergeError("merge needs the output directories of at least two shards")
    runs = [RunResult.load(directory) for directory in directories]
    shards = [shard for run in runs for shard in run.summary.get("shards", [run.summary.get("shard")])]
    if len(set(shards)) != len(shards):
        raise MergeError(f"the same shard appears twice: {shards}")
    counts = {str(shard).split("/")[-1] for shard in shards}
    if len(counts) != 1:
        raise MergeError(f"these runs were split differently: {shards}")
    scales = {run.summary.get("time_scale", 1.0) for run in runs}
    if len(scales) != 1:
        raise MergeError("the shards ran at different time scales")
    (time_scale,) = scales
    base = min(run.summary["started_unix"] for run in runs)
    offsets = [(run.summary["started_unix"] - base) * time_scale for run in runs]
    shard_records = [_shifted(run.records(), offset) for run, offset in zip(runs, offsets, strict=True)]
    first_uses = []
    for run in runs:
        path = run.output_dir / "first_use.npy"
        if not path.is_file():
            raise MergeError(f"{run.output_dir}: no first_use.npy, so the ceiling cannot be merged")
        first_uses.append(load_first_uses(path))
    merged_ceilings(shard_records, first_uses, offsets)
    records = sorted(
        (record for records in shard_records for record in records),
        key=lambda r: (r.start_s, r.shard, r.request_id),
    )
    first = runs[0].summary
    span = max(offset + run.summary["span_s"] for run, offset in zip(runs, offsets, strict=True))
    meta = {
        key: first.get(key)
        for key in ("endpoint", "model", "api", "workload", "load", "time_scale")
        if key in first
    }
    meta.update(
        {
            "label": Path(output).name,
            "started_unix": base,
            "shards": shards,
            "shard": "merged",
            "stop_reason": "; ".join(sorted({str(run.summary.get("stop_reason")) for run in runs})),
            "wall_s": max(run.summary.get("wall_s", 0.0) for run in runs),
            "requests_sent": sum(run.summary.get("requests_sent", 0) for run in runs),
            "merged_from": [str(run.output_dir) for run in runs],
        }
    )
    generators = [run.summary.get("generator", {}) for run in runs]
    generator = {
        "cpu_seconds": sum(g.get("cpu_seconds") or 0.0 for g in generators),
        "per_shard": generators,
    }
    control = []
    for run, offset, shard in zip(runs, offsets, shards, strict=True):
        path = run.output_dir / "control.csv"
        if path.is_file():
            control += [{**row, "t_s": float(row["t_s"]) + offset, "shard": shard} for row in read_csv(path)]
    phases = [
        {**phase, "start_s": phase["start_s"] + offsets[0], "end_s": phase.get("end_s", span) + offsets[0]}
        for phase in first.get("phases", [])
    ]
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    write_records(output / "requests.csv", records)
    data = RunData(
        records=records,
        span_s=span,
        slo=SloTargets(**first["slo"]),
        period_s=float(first.get("load", {}).get("period_s") or 30.0),
        meta=meta,
        timelines=[_timeline(run.output_dir, offset) for run, offset in zip(runs, offsets, strict=True)],
        control=control,
        phases=[{key: value for key, value in phase.items() if key not in PHASE_FIGURES} for phase in phases],
        generator=generator,
    )
    summary, paths = write_outputs(output, data, plots)
    return RunResult(summary, output, paths)
