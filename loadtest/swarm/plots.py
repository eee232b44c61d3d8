"""PNG plots of a run: TTFT over time and its CDF, users over time, hit rate measured vs ceiling."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np

from loadtest.swarm.client import OK
from loadtest.swarm.records import RequestRecord

_MAX_POINTS = 20_000


def _save(figure: Any, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def _number(value: Any) -> float:
    return float(value) if value not in (None, "") else float("nan")


def ttft_over_time(records: Sequence[RequestRecord], periods: Sequence[dict[str, Any]], path: Path) -> Path:
    ok = [record for record in records if record.outcome == OK and record.ttft_s is not None]
    figure, axes = plt.subplots(figsize=(9, 4.5))
    if len(ok) > _MAX_POINTS:
        ok = ok[:: len(ok) // _MAX_POINTS + 1]
    axes.scatter(
        [r.end_s for r in ok], [r.ttft_s for r in ok], s=3, alpha=0.25, label="requests", color="tab:gray"
    )
    middles = [(_number(p["start_s"]) + _number(p["end_s"])) / 2 for p in periods]
    for column, color in (("ttft_p50_s", "tab:blue"), ("ttft_p95_s", "tab:red")):
        axes.plot(
            middles,
            [_number(p[column]) for p in periods],
            marker="o",
            color=color,
            label=column[:-2] + " per period",
        )
    axes.set_xlabel("time (s)")
    axes.set_ylabel("TTFT (s)")
    axes.set_title("Time to first token")
    axes.legend(loc="upper left")
    axes.grid(alpha=0.3)
    return _save(figure, path)


def ttft_cdf(series: dict[str, Sequence[float]], path: Path, title: str = "TTFT distribution") -> Path:
    figure, axes = plt.subplots(figsize=(7, 4.5))
    for label, values in series.items():
        data = np.sort(np.asarray([v for v in values if v is not None], dtype=float))
        if data.size:
            axes.plot(data, np.arange(1, data.size + 1) / data.size, label=label)
    axes.set_xscale("log")
    axes.set_xlabel("TTFT (s)")
    axes.set_ylabel("share of requests")
    axes.set_title(title)
    axes.grid(alpha=0.3, which="both")
    if len(series) > 1:
        axes.legend()
    return _save(figure, path)


def users_over_time(timeline: Sequence[dict[str, Any]], path: Path) -> Path:
    figure, axes = plt.subplots(figsize=(9, 4))
    times = [_number(point["t_s"]) for point in timeline]
    for column, label in (
        ("users", "users"),
        ("in_flight", "requests in flight"),
        ("subagents", "sub-agents"),
    ):
        axes.step(times, [_number(point[column]) for point in timeline], where="post", label=label)
    axes.set_xlabel("time (s)")
    axes.set_ylabel("count")
    axes.set_title("Users over time")
    axes.legend(loc="upper left")
    axes.grid(alpha=0.3)
    return _save(figure, path)


def hit_rate_over_time(periods: Sequence[dict[str, Any]], path: Path) -> Path:
    figure, axes = plt.subplots(figsize=(9, 4))
    middles = [(_number(p["start_s"]) + _number(p["end_s"])) / 2 for p in periods]
    axes.plot(
        middles, [_number(p["hit_rate"]) for p in periods], marker="o", label="measured (cached / prompt)"
    )
    axes.plot(
        middles,
        [_number(p["ceiling_hit_rate"]) for p in periods],
        marker="s",
        linestyle="--",
        label="ceiling",
    )
    axes.set_ylim(0, 1.02)
    axes.set_xlabel("time (s)")
    axes.set_ylabel("prefix-cache hit rate")
    axes.set_title("Hit rate: measured vs the workload's ceiling")
    axes.legend(loc="lower right")
    axes.grid(alpha=0.3)
    return _save(figure, path)


def run_plots(
    directory: Path,
    records: Sequence[RequestRecord],
    periods: Sequence[dict[str, Any]],
    timeline: Sequence[dict[str, Any]],
) -> dict[str, Path]:
    ttfts = [record.ttft_s for record in records if record.outcome == OK and record.ttft_s is not None]
    return {
        "plot_ttft_over_time": ttft_over_time(records, periods, directory / "ttft_over_time.png"),
        "plot_ttft_cdf": ttft_cdf({"TTFT": ttfts}, directory / "ttft_cdf.png"),
        "plot_users_over_time": users_over_time(timeline, directory / "users_over_time.png"),
        "plot_hit_rate": hit_rate_over_time(periods, directory / "hit_rate.png"),
    }
