"""`--record-trace`: the run's requests as a Mooncake-style trace, for `kvgate analyze` and replay.

One JSON line per request sent, in send order: `timestamp` (workload ms since the start),
`input_length` (the prompt's tokens as built), `output_length` (max_tokens), `hash_ids` (the prompt's
block keys renumbered 0, 1, 2... in order of first appearance; equal id = equal prefix up to that
block), `block_size` (tokens per block), and the request's `session` and `kind`. Written gzipped
(level 1) as the run goes; it costs the generator some CPU, so it is off by default.
"""

from __future__ import annotations

import gzip
from collections.abc import Sequence
from pathlib import Path

import orjson


class TraceRecorder:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = gzip.open(path, "wb", compresslevel=1)  # noqa: SIM115 (open for the whole run)
        self._ids: dict[int, int] = {}

    def write(
        self,
        start_s: float,
        keys: Sequence[int],
        block_tokens: int,
        input_tokens: int,
        output_tokens: int,
        session: str,
        kind: str,
    ) -> None:
        ids = self._ids
        dense = [ids.setdefault(key, len(ids)) for key in keys]
        line = {
            "timestamp": round(start_s * 1000.0, 3),
            "input_length": input_tokens,
            "output_length": output_tokens,
            "hash_ids": dense,
            "block_size": block_tokens,
            "session": session,
            "kind": kind,
        }
        self._file.write(orjson.dumps(line) + b"\n")

    def close(self) -> None:
        self._file.close()
