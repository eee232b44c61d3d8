"""Runs side by side: a table (rich or Markdown) and plots, from their summaries and records."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rich.table import Table

from loadtest.swarm.client import OK
from loadtest.swarm.runner import RunResult


def _get(path: str) -> Callable[[dict[str, Any]], Any]:
    keys = path.split(".")

    def read(summary: dict[str, Any]) -> Any:
        value: Any = summary
        for key in keys:
            if not isinstance(value, dict):
                return None
            value = value.get(key)
        return value

    return read


def _seconds(value: Any) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def _share(value: Any) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _number(digits: int = 0) -> Callable[[Any], str]:
    return lambda value: "-" if value is None else f"{value:,.{digits}f}"


def _ratio(value: Any) -> str:
    return "-" if value is None else f"{value:.2f}"


ROWS: tuple[tuple[str, str, Callable[[Any], str]], ...] = (
    ("requests ok", "requests.ok", _number()),
    ("requests failed", "requests.failed", _number()),
    ("requests/s", "throughput.requests_per_s", _number(2)),
    ("output tokens/s", "throughput.output_tokens_per_s", _number()),
    ("TTFT p50", "latency_s.ttft.p50", _seconds),
    ("TTFT p90", "latency_s.ttft.p90", _seconds),
    ("TTFT p95", "latency_s.ttft.p95", _seconds),
    ("TTFT p99", "latency_s.ttft.p99", _seconds),
    ("ITL p50", "latency_s.itl.p50", _seconds),
    ("ITL p95", "latency_s.itl.p95", _seconds),
    ("E2E p50", "latency_s.e2e.p50", _seconds),
    ("E2E p95", "latency_s.e2e.p95", _seconds),
    ("hit rate (measured)", "cache.hit_rate", _share),
    ("hit rate ceiling", "cache.ceiling_hit_rate", _share),
    ("measured / ceiling", "cache.measured_over_ceiling", _ratio),
    ("goodput requests/s", "goodput.requests_per_s", _number(2)),
    ("goodput share", "goodput.fraction", _share),
    ("users (max)", "users.max", _number()),
    ("adaptive: users held", "adaptive.users", _number()),
    ("generator CPU (one core)", "generator.cpu_share_of_one_core", _share),
)


def _summaries(results: Sequence[RunResult | dict[str, Any]]) -> list[dict[str, Any]]:
    return [result.summary if isinstance(result, RunResult) else result for result in results]


def _label(summary: dict[str, Any], index: int) -> str:
    return str(summary.get("label") or f"run {index + 1}")


def comparison_rows(results: Sequence[RunResult | dict[str, Any]]) -> list[tuple[str, list[str]]]:
    summaries = _summaries(results)
    rows = []
    for name, path, render in ROWS:
        values = [_get(path)(summary) for summary in summaries]
        if all(value is None for value in values) and path.startswith("adaptive"):
            continue
        rows.append((name, [render(value) for value in values]))
    return rows


def comparison_table(
    results: Sequence[RunResult | dict[str, Any]], title: str = "kvgate swarm runs"
) -> Table:
    """A rich table with one column per run (RunResults or their summary dicts)."""
    summaries = _summaries(results)
    table = Table(title=title)
    table.add_column("metric", style="bold")
    for index, summary in enumerate(summaries):
        table.add_column(_label(summary, index), justify="right")
    for name, values in comparison_rows(summaries):
        table.add_row(name, *values)
    return table


def comparison_markdown(results: Sequence[RunResult | dict[str, Any]]) -> str:
    summaries = _summaries(results)
    labels = [_label(summary, index) for index, summary in enumerate(summaries)]
    lines = ["| metric | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
    lines += [f"| {name} | " + " | ".join(values) + " |" for name, values in comparison_rows(summaries)]
    return "\n".join(lines) + "\n"


def comparison_plots(results: Sequence[RunResult], directory: Path) -> dict[str, Path]:
    """TTFT CDFs of every run on one chart, and bars of TTFT, hit rate and goodput."""
    from loadtest.swarm.plots import _save, plt, ttft_cdf

    directory.mkdir(parents=True, exist_ok=True)
    series = {}
    for result in results:
        records = result.records()
        series[result.label] = [r.ttft_s for r in records if r.outcome == OK and r.ttft_s is not None]
    paths = {"plot_ttft_cdf": ttft_cdf(series, directory / "compare_ttft_cdf.png", "TTFT by run")}
    labels = [result.label for result in results]
    figure, axes = plt.subplots(1, 3, figsize=(13, 4))
    positions = range(len(results))
    for offset, percentile in ((-0.2, "p50"), (0.2, "p95")):
        axes[0].bar(
            [p + offset for p in positions],
            [_get(f"latency_s.ttft.{percentile}")(r.summary) or 0 for r in results],
            width=0.4,
            label=f"TTFT {percentile}",
        )
    axes[0].set_ylabel("seconds")
    axes[0].legend()
    for offset, (path, name) in (
        (-0.2, ("cache.hit_rate", "measured")),
        (0.2, ("cache.ceiling_hit_rate", "ceiling")),
    ):
        axes[1].bar(
            [p + offset for p in positions],
            [_get(path)(r.summary) or 0 for r in results],
            width=0.4,
            label=name,
        )
    axes[1].set_ylim(0, 1)
    axes[1].set_ylabel("hit rate")
    axes[1].legend()
    axes[2].bar(list(positions), [_get("goodput.requests_per_s")(r.summary) or 0 for r in results])
    axes[2].set_ylabel("goodput (requests/s)")
    for axis in axes:
        axis.set_xticks(list(positions), labels, rotation=15)
        axis.grid(alpha=0.3, axis="y")
    paths["plot_comparison"] = _save(figure, directory / "compare_bars.png")
    return paths
