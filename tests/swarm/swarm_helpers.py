"""Where the public traces are, for the swarm, analyze and report tests.

The traces are not part of the repository: they are found at $KVGATE_TRACES, else `shared/traces` in the
checkout, else `/work/shared/traces`. Tests that need them are skipped, saying so, when none exists.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

_CANDIDATES = [
    Path(os.environ["KVGATE_TRACES"]) if os.environ.get("KVGATE_TRACES") else None,
    Path(__file__).resolve().parents[2] / "shared" / "traces",
    Path("/work/shared/traces"),
]
TRACES = next(
    (path for path in _CANDIDATES if path is not None and path.is_dir()), Path("/work/shared/traces")
)
WEKA_DIR = TRACES / "weka-claude-code"
MOONCAKE_CONVERSATION = TRACES / "mooncake" / "conversation_trace.jsonl"
MOONCAKE_SYNTHETIC = TRACES / "mooncake" / "synthetic_trace.jsonl"
WEKA_WITH_SUBAGENTS = WEKA_DIR / "trace_0279.json.gz"
WEKA_LONG = WEKA_DIR / "trace_0001.json.gz"

needs_traces = pytest.mark.skipif(
    not (WEKA_DIR.is_dir() and MOONCAKE_CONVERSATION.is_file()),
    reason=f"the public traces are not at {TRACES} (set KVGATE_TRACES)",
)
