"""The run's summary and its per-period, timeline and control tables, from raw records.

The same code serves a finished run and a merge of shards (`kvgate report merge`), so a merged
summary is computed exactly as if one process had sent every request.
"""

from __future__ import annotations

import bisect
import csv
import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from loadtest.swarm.client import CANCELLED
from loadtest.swarm.controller import SloTargets
from loadtest.swarm.records import RequestRecord
from loadtest.swarm.stats import PERIOD_COLUMNS, kind_table, period_rows, summarize

SUMMARY_FORMAT = 1
TIMELINE_COLUMNS = ("t_s", "users", "target_users", "subagents", "in_flight", "generator_cpu", "loop_lag_s")
CONTROL_COLUMNS = (
    "period",
    "t_s",
    "users",
    "verdict",
    "reason",
    "next_users",
    "ttft_s",
    "output_tokens_per_s",
    "completed",
    "converged",
)


@dataclass(slots=True)
class RunData:
    records: list[RequestRecord]
    span_s: float
    slo: SloTargets
    period_s: float
    meta: dict[str, Any]
    """Who, what and how: endpoint, model, workload, load settings, shard(s), stop reason..."""
    timelines: list[list[dict[str, Any]]] = field(default_factory=list)
    """One timeline per process (a merge has one per shard)."""
    control: list[dict[str, Any]] = field(default_factory=list)
    phases: list[dict[str, Any]] = field(default_factory=list)
    generator: dict[str, Any] = field(default_factory=dict)


def rows_of(items: Sequence[Any]) -> list[dict[str, Any]]:
    return [dataclasses.asdict(item) if dataclasses.is_dataclass(item) else dict(item) for item in items]


def users_at_function(timelines: list[list[dict[str, Any]]]) -> Callable[[float], int | None]:
    """Users running at a workload time: the sum over processes of each one's latest sample."""
    prepared = []
    for timeline in timelines:
        points = sorted((float(point["t_s"]), int(point["users"])) for point in timeline)
        prepared.append(([t for t, _ in points], [users for _, users in points]))

    def users_at(t_s: float) -> int | None:
        if not any(times for times, _ in prepared):
            return None
        total = 0
        for times, users in prepared:
            index = bisect.bisect_right(times, t_s) - 1
            if index >= 0:
                total += users[index]
            elif users:
                total += users[0]
        return total

    return users_at


PHASE_FIGURES = (
    "requests_ok",
    "requests_per_s",
    "output_tokens_per_s",
    "ttft_p50_s",
    "ttft_p95_s",
    "hit_rate",
    "ceiling_hit_rate",
    "goodput_fraction",
)


def _phase_summaries(data: RunData) -> list[dict[str, Any]]:
    phases = []
    for phase in data.phases:
        records = [record for record in data.records if record.phase == phase["name"]]
        span = float(phase.get("end_s", data.span_s)) - float(phase.get("start_s", 0.0))
        figures = summarize(records, span, data.slo)
        phases.append(
            {
                **phase,
                "requests_ok": figures["requests"]["ok"],
                "requests_per_s": figures["throughput"]["requests_per_s"],
                "output_tokens_per_s": figures["throughput"]["output_tokens_per_s"],
                "ttft_p50_s": figures["latency_s"]["ttft"]["p50"],
                "ttft_p95_s": figures["latency_s"]["ttft"]["p95"],
                "hit_rate": figures["cache"]["hit_rate"],
                "ceiling_hit_rate": figures["cache"]["ceiling_hit_rate"],
                "goodput_fraction": figures["goodput"]["fraction"],
            }
        )
    return phases


def build_summary(data: RunData) -> dict[str, Any]:
    figures = summarize(data.records, data.span_s, data.slo)
    users = [int(point["users"]) for timeline in data.timelines for point in timeline]
    users_at = users_at_function(data.timelines)
    summary: dict[str, Any] = {
        "format": SUMMARY_FORMAT,
        **data.meta,
        "slo": dataclasses.asdict(data.slo),
        "span_s": data.span_s,
        **{key: value for key, value in figures.items() if key != "span_s"},
        "by_kind": kind_table([record for record in data.records if record.outcome != CANCELLED]),
        "users": {
            "max": (max(users) if users else None)
            if len(data.timelines) <= 1
            else _max_total_users(data, users_at),
            "final": users_at(data.span_s),
        },
        "generator": data.generator,
    }
    if data.control:
        last = data.control[-1]
        summary["adaptive"] = {
            "converged": bool(last.get("converged")),
            "users": last.get("next_users"),
            "periods_judged": sum(1 for step in data.control if step["verdict"] in ("ok", "violation")),
            "violations": sum(1 for step in data.control if step["verdict"] == "violation"),
        }
    if data.phases:
        summary["phases"] = _phase_summaries(data)
    return summary


def _max_total_users(data: RunData, users_at: Callable[[float], int | None]) -> int | None:
    times = sorted({float(point["t_s"]) for timeline in data.timelines for point in timeline})
    values = [users_at(t) or 0 for t in times]
    return max(values) if values else None


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_csv(path: Path, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    with path.open("w", newline="") as file:
        writer = csv.writer(file)
        writer.writerow(columns)
        for row in rows:
            writer.writerow(
                ["" if row.get(column) is None else _plain(row.get(column)) for column in columns]
            )


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def write_json(path: Path, document: Any) -> None:
    path.write_bytes(orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY) + b"\n")


def write_tables(directory: Path, data: RunData) -> dict[str, Path]:
    """periods.csv, timeline.csv and (adaptive runs) control.csv."""
    paths = {}
    users_at = users_at_function(data.timelines)
    paths["periods"] = directory / "periods.csv"
    write_csv(
        paths["periods"],
        PERIOD_COLUMNS,
        period_rows(data.records, data.period_s, data.span_s, data.slo, users_at),
    )
    paths["timeline"] = directory / "timeline.csv"
    merged = sorted(
        (point for timeline in data.timelines for point in timeline), key=lambda point: float(point["t_s"])
    )
    write_csv(paths["timeline"], (*TIMELINE_COLUMNS, "shard"), merged)
    if data.control:
        paths["control"] = directory / "control.csv"
        write_csv(paths["control"], (*CONTROL_COLUMNS, "shard"), data.control)
    return paths
