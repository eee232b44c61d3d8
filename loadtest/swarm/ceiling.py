"""The run's own hit-rate ceiling: which prompt blocks had been sent before.

A prefix cache can serve a request's blocks up to the first block it has never seen, so a request's
ceiling is its longest prefix of blocks that the run sent earlier (in any request, to any replica),
times the block size, capped at the prompt's length. Since block keys are chained (a key stands for the
whole prefix up to it), this equals the per-block count of `kvgate analyze`.

The tracker logs each block's first use in this process (request, position, key). `kvgate report
merge` uses the logs of all shards to find blocks that one shard saw first but another had sent
earlier, so the merged ceiling equals that of one process sending everything.
"""

from __future__ import annotations

from array import array
from collections.abc import Sequence
from pathlib import Path

import numpy as np

FIRST_USE_DTYPE = np.dtype([("request_id", "<i8"), ("position", "<i8"), ("key", "<u8")])


class CeilingTracker:
    __slots__ = ("_keys", "_positions", "_requests", "_seen")

    def __init__(self) -> None:
        self._seen: set[int] = set()
        self._requests = array("q")
        self._positions = array("q")
        self._keys = array("Q")

    def observe(self, request_id: int, keys: Sequence[int], known_sent: int = 0) -> int:
        """Record a request's blocks as sent; return how many leading blocks had been sent before.

        `known_sent` leading blocks are known to have been sent already (by the same session), so they
        are not looked up again.
        """
        seen = self._seen
        count = len(keys)
        position = min(max(0, known_sent), count)
        while position < count and keys[position] in seen:
            position += 1
        prefix = position
        for position in range(prefix, count):
            key = keys[position]
            if key not in seen:
                seen.add(key)
                self._requests.append(request_id)
                self._positions.append(position)
                self._keys.append(key)
        return prefix

    @property
    def distinct_blocks(self) -> int:
        return len(self._seen)

    def first_uses(self) -> np.ndarray:
        table = np.empty(len(self._keys), dtype=FIRST_USE_DTYPE)
        table["request_id"] = np.frombuffer(self._requests, dtype=np.int64) if self._requests else []
        table["position"] = np.frombuffer(self._positions, dtype=np.int64) if self._positions else []
        table["key"] = np.frombuffer(self._keys, dtype=np.uint64) if self._keys else []
        return table

    def save(self, path: Path) -> None:
        np.save(path, self.first_uses(), allow_pickle=False)


def ceiling_tokens(prefix_blocks: int, block_tokens: int, prompt_tokens: int) -> int:
    return min(prefix_blocks * block_tokens, prompt_tokens)


def load_first_uses(path: Path) -> np.ndarray:
    table = np.load(path, allow_pickle=False)
    if table.dtype != FIRST_USE_DTYPE:
        raise ValueError(f"{path}: not a first-use log")
    return table
