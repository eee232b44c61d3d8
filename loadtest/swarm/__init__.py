"""The agent swarm load generator: synthetic agents, trace replay and sweeps against an OpenAI endpoint.

Library use (see docs/loadtest.md, "Library"):

    from loadtest.swarm import RunResult, SwarmConfig, comparison_table, run_swarm

    result = await run_swarm(SwarmConfig(endpoint="http://127.0.0.1:8000", users=16, duration_s=60))
    print(result.summary["cache"]["hit_rate"])
    rich.print(comparison_table([result_a, result_b]))
"""

from __future__ import annotations

from typing import Any

__all__ = ["RunResult", "SwarmConfig", "comparison_markdown", "comparison_table", "run_swarm"]


def __getattr__(name: str) -> Any:
    # Imported on first use: the CLI dispatcher and the report package import submodules of this
    # package, and none of them should pay for (or cycle through) the whole swarm.
    if name in ("RunResult", "run_swarm"):
        from loadtest.swarm import runner

        return getattr(runner, name)
    if name == "SwarmConfig":
        from loadtest.swarm.config import SwarmConfig

        return SwarmConfig
    if name in ("comparison_table", "comparison_markdown"):
        from loadtest.report import compare

        return getattr(compare, name)
    raise AttributeError(f"module 'loadtest.swarm' has no attribute {name!r}")
