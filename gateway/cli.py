"""The `kvgate` command line: one entry point, one module per subcommand.

A subcommand module exposes `add_arguments(parser)` and `run(args) -> int`. Modules are imported only
when their subcommand runs, so `kvgate sim` does not pay for the gateway's imports and vice versa.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from gateway import __version__

COMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("gateway.serve_cli", "run the KV-cache-aware routing gateway"),
    "demo": ("loadtest.demo", "simulated replicas + gateway + swarm: round_robin vs affinity side by side"),
    "sim": ("loadtest.sim.cli", "simulate one or many vLLM replicas (OpenAI API, metrics, KV events)"),
    "swarm": ("loadtest.swarm.cli", "drive agent swarms or replay traces against an OpenAI endpoint"),
    "analyze": ("loadtest.analyze.cli", "working set, hit-rate ceilings and refresh counts of a trace"),
    "report": ("loadtest.report.cli", "compare or merge swarm results"),
}


def _usage() -> str:
    width = max(len(name) for name in COMMANDS)
    lines = [f"usage: kvgate <command> [options]   (kvgate {__version__})", "", "commands:"]
    lines += [f"  {name:<{width}}  {summary}" for name, (_, summary) in COMMANDS.items()]
    lines += ["", "Run `kvgate <command> --help` for a command's options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(_usage())
        return 0
    if argv[0] == "--version":
        print(f"kvgate {__version__}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in COMMANDS:
        print(f"kvgate: unknown command {name!r}\n\n{_usage()}", file=sys.stderr)
        return 2
    module_name, summary = COMMANDS[name]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"kvgate {name}", description=summary)
    module.add_arguments(parser)
    args = parser.parse_args(rest)
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        return 130
