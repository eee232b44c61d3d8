"""`kvgate analyze TRACE...`: hit-rate ceilings by TTL, refresh counts and working set of a trace.

TRACE: WEKA `.json`/`.json.gz` files, Mooncake `.jsonl` files, directories of them, or the output
directory of a swarm run recorded with `--record-trace`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from loadtest.analyze.ceilings import DEFAULT_TTLS, parse_ttl, ttl_label


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "traces", nargs="+", help="trace files or directories, or a swarm run with trace.jsonl.gz"
    )
    parser.add_argument("--format", default="auto", choices=("auto", "weka", "mooncake"), help="trace format")
    parser.add_argument(
        "--ttl",
        default=",".join(ttl_label(ttl) for ttl in DEFAULT_TTLS),
        help="comma-separated cache TTLs in seconds, 'inf' for none (default %(default)s)",
    )
    parser.add_argument(
        "--no-subagents", dest="subagents", action="store_false", help="WEKA: top-level requests only"
    )
    parser.add_argument(
        "--shared-prefix",
        action="store_true",
        help="WEKA: conversations share their system/tool prefix blocks (as `swarm --shared-prefix` sends)",
    )
    parser.add_argument(
        "--points", type=int, default=200, help="working-set samples over time (default %(default)s)"
    )
    parser.add_argument("--output", help="write analysis.json, working_set.csv and plots here")
    parser.add_argument("--no-plots", dest="plots", action="store_false", help="skip the plots")


def run(args: argparse.Namespace) -> int:
    from loadtest.analyze.events import WekaOptions, load_uses
    from loadtest.analyze.report import analyze, ceiling_table, write_analysis
    from loadtest.swarm.traces import TraceError

    errors = Console(stderr=True)
    try:
        ttls = tuple(parse_ttl(part) for part in args.ttl.split(",") if part.strip())
        trace, uses = load_uses(args.traces, args.format, WekaOptions(args.subagents, args.shared_prefix))
    except (TraceError, ValueError, FileNotFoundError) as error:
        errors.print(f"kvgate analyze: {error}")
        return 2
    analysis = analyze(trace, uses, ttls, args.points)
    Console().print(ceiling_table(analysis))
    if args.output:
        paths = write_analysis(analysis, Path(args.output), args.plots)
        print(f"analysis: {paths['analysis'].parent}")
    return 0
