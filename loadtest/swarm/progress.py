"""The live display while a swarm runs (rich), and the summary table printed at the end."""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from rich.console import Console
from rich.live import Live
from rich.table import Table

from loadtest.swarm.client import OK
from loadtest.swarm.driver import SwarmDriver

RECENT_WINDOW_S = 30.0


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def _share(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


class ProgressDisplay:
    def __init__(self, driver: SwarmDriver, title: str, console: Console | None = None) -> None:
        self.driver = driver
        self.title = title
        self.console = console or Console()

    def render(self) -> Table:
        driver = self.driver
        live = driver.live
        now = driver.clock.now()
        recent = [r for r in list(live.recent) if r.end_s >= now - RECENT_WINDOW_S and r.outcome == OK]
        ttfts = np.asarray([r.ttft_s for r in recent if r.ttft_s is not None], dtype=float)
        prompt = sum(r.prompt_tokens or 0 for r in recent)
        cached = sum(r.cached_tokens or 0 for r in recent)
        expected = sum(r.expected_prompt_tokens for r in recent)
        ceiling = sum(r.ceiling_tokens for r in recent)
        cpu = driver.timeline[-1].generator_cpu if driver.timeline else None
        table = Table(title=self.title, show_header=False, expand=False)
        table.add_column("what", style="bold")
        table.add_column("value")
        duration = driver.settings.duration_s
        table.add_row(
            "time", f"{now:,.0f} / {duration:,.0f} s" + (f"  phase {live.phase}" if live.phase else "")
        )
        table.add_row(
            "users",
            f"{live.users} running, {live.target_users} wanted, {live.subagents} sub-agents, "
            f"{live.in_flight} requests in flight",
        )
        table.add_row("requests", f"{live.sent:,} sent, {live.ok:,} ok, {live.errors:,} failed")
        # The deque keeps the last 2000 requests: at high rates they cover less than the window.
        oldest = live.recent[0].end_s if len(live.recent) == live.recent.maxlen else now - RECENT_WINDOW_S
        span = min(RECENT_WINDOW_S, now - max(0.0, oldest))
        rate = len(recent) / span if recent and span > 0 else 0.0
        table.add_row(f"last {RECENT_WINDOW_S:.0f} s", f"{rate:.1f} req/s")
        if ttfts.size:
            p50, p95 = np.percentile(ttfts, [50, 95])
            table.add_row("TTFT", f"p50 {_seconds(float(p50))}   p95 {_seconds(float(p95))}")
        table.add_row(
            "hit rate",
            f"measured {_share(cached / prompt if prompt else None)}   "
            f"ceiling {_share(ceiling / expected if expected else None)}",
        )
        if live.last_decision:
            table.add_row("controller", live.last_decision)
        table.add_row("generator CPU", "-" if cpu is None else f"{100 * cpu:.0f}% of a core")
        return table

    async def run(self) -> None:
        with Live(self.render(), console=self.console, refresh_per_second=2, transient=True) as display:
            while True:
                await asyncio.sleep(0.5)
                display.update(self.render())


def summary_table(summary: dict[str, Any]) -> Table:
    table = Table(title=f"kvgate swarm: {summary.get('label', '')}", show_header=False)
    table.add_column("what", style="bold")
    table.add_column("value")
    requests = summary["requests"]
    throughput = summary["throughput"]
    ttft = summary["latency_s"]["ttft"]
    itl = summary["latency_s"]["itl"]
    cache = summary["cache"]
    goodput = summary["goodput"]
    table.add_row("stopped", f"{summary.get('stop_reason', '')} after {summary['span_s']:,.1f} s")
    table.add_row(
        "requests",
        f"{requests['ok']:,} ok, {requests['failed']:,} failed"
        + (f" {requests['errors_by_kind']}" if requests["errors_by_kind"] else "")
        + (f", {requests['cancelled_at_stop']} cancelled at stop" if requests["cancelled_at_stop"] else ""),
    )
    table.add_row(
        "throughput",
        f"{throughput['requests_per_s'] or 0:.2f} req/s, "
        f"{throughput['output_tokens_per_s'] or 0:,.0f} output tok/s",
    )
    table.add_row(
        "TTFT",
        "  ".join(f"p{p} {_seconds(ttft[f'p{p}'])}" for p in (50, 90, 95, 99)),
    )
    table.add_row("ITL", "  ".join(f"p{p} {_seconds(itl[f'p{p}'])}" for p in (50, 90, 95, 99)))
    ratio = cache["measured_over_ceiling"]
    table.add_row(
        "hit rate",
        f"measured {_share(cache['hit_rate'])}, ceiling {_share(cache['ceiling_hit_rate'])}"
        + ("" if ratio is None else f", measured/ceiling {ratio:.2f}"),
    )
    table.add_row(
        "goodput",
        f"{goodput['requests']:,} requests inside the SLO ({_share(goodput['fraction'])}), "
        f"{goodput['requests_per_s'] or 0:.2f} req/s",
    )
    users = summary.get("users", {})
    table.add_row("users", f"max {users.get('max')}, at the end {users.get('final')}")
    adaptive = summary.get("adaptive")
    if adaptive:
        state = "converged" if adaptive["converged"] else "not converged"
        table.add_row(
            "adaptive", f"{state} at {adaptive['users']} users ({adaptive['violations']} violations)"
        )
    generator = summary.get("generator", {})
    if generator:
        table.add_row(
            "generator",
            f"{100 * (generator.get('cpu_share_of_one_core') or 0):.0f}% of one core, "
            f"max event-loop lag {_seconds(generator.get('max_loop_lag_s'))}",
        )
    for phase in summary.get("phases", []):
        table.add_row(
            f"phase {phase['name']}",
            f"{phase['requests_per_s'] or 0:.2f} req/s, TTFT p95 {_seconds(phase['ttft_p95_s'])}, "
            f"hit {_share(phase['hit_rate'])} (ceiling {_share(phase['ceiling_hit_rate'])})",
        )
    return table
