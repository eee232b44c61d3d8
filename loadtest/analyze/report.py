"""What `kvgate analyze` prints and writes: the ceiling table, analysis.json, working_set.csv, plots."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from loadtest.analyze.ceilings import BlockUses, TtlCeiling, WorkingSet, ceilings, ttl_label, working_set
from loadtest.swarm.summary import write_csv, write_json
from loadtest.swarm.traces import LoadedTrace


@dataclass(frozen=True, slots=True)
class Analysis:
    trace: LoadedTrace
    uses: BlockUses
    ceilings: list[TtlCeiling]
    working_set: WorkingSet

    def as_dict(self) -> dict[str, Any]:
        peaks = {
            ttl_label(ttl): {
                "peak_blocks": float(self.working_set.blocks[ttl].max()),
                "peak_tokens": float(self.working_set.tokens[ttl].max()),
            }
            for ttl in self.working_set.blocks
        }
        return {
            "format": self.trace.format,
            "files": [str(path) for path in self.trace.files],
            "requests": self.uses.requests,
            "block_uses": self.uses.size,
            "span_s": float(self.uses.times.max() - self.uses.times.min()) if self.uses.size else 0.0,
            "ceilings": [ceiling.as_dict() for ceiling in self.ceilings],
            "working_set": peaks,
        }


def analyze(trace: LoadedTrace, uses: BlockUses, ttls: tuple[float, ...], points: int = 200) -> Analysis:
    return Analysis(trace, uses, ceilings(uses, ttls), working_set(uses, ttls, points))


def _tokens(count: float) -> str:
    if count >= 1e6:
        return f"{count / 1e6:.1f}M"
    return f"{count / 1e3:.1f}k" if count >= 1e3 else f"{count:.0f}"


def ceiling_table(analysis: Analysis) -> Table:
    uses = analysis.uses
    table = Table(
        title=f"{analysis.trace.format} trace: {uses.requests:,} requests, {uses.size:,} block uses"
    )
    for column in ("TTL", "ceiling", "by tokens", "blocks", "prefills", "refreshes", "peak tokens"):
        table.add_column(column, justify="right")
    for ceiling in analysis.ceilings:
        peak = float(analysis.working_set.tokens[ceiling.ttl_s].max())
        table.add_row(
            "infinite" if math.isinf(ceiling.ttl_s) else f"{ceiling.ttl_s:g} s",
            f"{100 * ceiling.hit_rate:.1f}%",
            f"{100 * ceiling.token_hit_rate:.1f}%",
            f"{ceiling.distinct_blocks:,}",
            f"{ceiling.prefills:,}",
            f"{ceiling.refresh_count:.2f}",
            _tokens(peak),
        )
    return table


def write_analysis(analysis: Analysis, directory: Path, plots: bool = True) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = {"analysis": directory / "analysis.json", "working_set": directory / "working_set.csv"}
    write_json(paths["analysis"], analysis.as_dict())
    ttls = list(analysis.working_set.blocks)
    columns = (
        ["t_s"] + [f"blocks_ttl_{ttl_label(t)}" for t in ttls] + [f"tokens_ttl_{ttl_label(t)}" for t in ttls]
    )
    rows = []
    for index, t in enumerate(analysis.working_set.times):
        row: dict[str, Any] = {"t_s": float(t)}
        for ttl in ttls:
            row[f"blocks_ttl_{ttl_label(ttl)}"] = float(analysis.working_set.blocks[ttl][index])
            row[f"tokens_ttl_{ttl_label(ttl)}"] = float(analysis.working_set.tokens[ttl][index])
        rows.append(row)
    write_csv(paths["working_set"], columns, rows)
    if plots:
        paths.update(_plots(analysis, directory))
    return paths


def _plots(analysis: Analysis, directory: Path) -> dict[str, Path]:
    from loadtest.swarm.plots import _save, plt

    figure, axes = plt.subplots(figsize=(9, 4.5))
    for ttl, tokens in analysis.working_set.tokens.items():
        axes.plot(
            analysis.working_set.times,
            tokens,
            label=f"TTL {ttl_label(ttl)} s" if math.isfinite(ttl) else "no expiry",
        )
    axes.set_xlabel("time (s)")
    axes.set_ylabel("live tokens")
    axes.set_title("Working set over time")
    axes.legend()
    axes.grid(alpha=0.3)
    paths = {"plot_working_set": _save(figure, directory / "working_set.png")}
    figure, axes = plt.subplots(figsize=(7, 4))
    labels = [ttl_label(ceiling.ttl_s) for ceiling in analysis.ceilings]
    axes.bar(labels, [ceiling.hit_rate for ceiling in analysis.ceilings])
    for index, ceiling in enumerate(analysis.ceilings):
        axes.annotate(f"{100 * ceiling.hit_rate:.1f}%", (index, ceiling.hit_rate), ha="center", va="bottom")
    axes.set_ylim(0, 1.08)
    axes.set_xlabel("cache TTL (s)")
    axes.set_ylabel("hit-rate ceiling")
    axes.set_title("Best possible hit rate by TTL")
    axes.grid(alpha=0.3, axis="y")
    paths["plot_ceiling_by_ttl"] = _save(figure, directory / "ceiling_by_ttl.png")
    return paths
