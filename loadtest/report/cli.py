"""`kvgate report compare DIR...` and `kvgate report merge DIR... --output DIR`."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="report_command", required=True)
    compare = commands.add_parser("compare", help="lay runs side by side")
    compare.add_argument("runs", nargs="+", help="swarm output directories")
    compare.add_argument("--output", help="write comparison.md and comparison plots here")
    compare.add_argument("--markdown", action="store_true", help="print Markdown instead of a table")
    compare.add_argument("--no-plots", dest="plots", action="store_false", help="skip the plots")
    merge = commands.add_parser("merge", help="combine the shards of one run exactly")
    merge.add_argument("shards", nargs="+", help="output directories of the shards (--shard i/N runs)")
    merge.add_argument("--output", required=True, help="directory for the merged results")
    merge.add_argument("--no-plots", dest="plots", action="store_false", help="skip the plots")


def run(args: argparse.Namespace) -> int:
    from loadtest.report.compare import comparison_markdown, comparison_plots, comparison_table
    from loadtest.report.merge import MergeError, merge_runs
    from loadtest.swarm.progress import summary_table
    from loadtest.swarm.runner import RunResult

    console = Console()
    if args.report_command == "compare":
        try:
            results = [RunResult.load(path) for path in args.runs]
        except (FileNotFoundError, ValueError) as error:
            Console(stderr=True).print(f"kvgate report compare: {error}")
            return 2
        if args.markdown:
            print(comparison_markdown(results), end="")
        else:
            console.print(comparison_table(results))
        if args.output:
            directory = Path(args.output)
            directory.mkdir(parents=True, exist_ok=True)
            (directory / "comparison.md").write_text(comparison_markdown(results))
            if args.plots:
                comparison_plots(results, directory)
            print(f"comparison: {directory}")
        return 0
    try:
        merged = merge_runs(args.shards, args.output, plots=args.plots)
    except (FileNotFoundError, MergeError) as error:
        Console(stderr=True).print(f"kvgate report merge: {error}")
        return 2
    console.print(summary_table(merged.summary))
    print(f"merged: {merged.output_dir}")
    return 0
