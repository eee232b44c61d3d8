"""Block uses of a WEKA or Mooncake trace, or of a run recorded with `kvgate swarm --record-trace`.

WEKA ids are local to their conversation, so each conversation gets its own key space; a sub-agent's
ids live in its parent's space and its requests happen at the parent entry's `t` plus their own `t`.
Every conversation starts at time 0, as if all its users began together. With `shared_prefix`, the
system/tool prefix blocks of every conversation (the first `ceil((system + tools) / 64)` ids, see
`loadtest.swarm.traces.shared_prefix_length`) map to one key per position shared by all conversations,
which is what the replayer sends when asked to share that prefix; sub-agents share theirs per sub-agent
type.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from loadtest.analyze.ceilings import BlockUses
from loadtest.swarm.traces import (
    Conversation,
    LoadedTrace,
    SubAgent,
    TimedRequest,
    TraceRequest,
    load_trace,
    shared_prefix_ids,
    shared_prefix_length,
)

RECORDED_TRACE_NAME = "trace.jsonl.gz"
_SCOPE_BITS = 32


@dataclass(frozen=True, slots=True)
class WekaOptions:
    include_subagents: bool = True
    shared_prefix: bool = False


def _scoped(ids: list[int], scope: int) -> np.ndarray:
    array = np.asarray(ids, dtype=np.int64)
    if array.size and (array.min() < 0 or array.max() >= 1 << _SCOPE_BITS):
        raise ValueError("WEKA hash ids must be in [0, 2**32) to be scoped per conversation")
    return array + (scope << _SCOPE_BITS)


def _share_prefix(keys: np.ndarray, request: TraceRequest, prefix: list[int], shared_scope: int) -> None:
    length = shared_prefix_length(request.hash_ids, prefix)
    # Shared keys are negative, so they never collide with a conversation's own (positive) keys.
    keys[:length] = -((shared_scope << _SCOPE_BITS) + np.arange(length, dtype=np.int64)) - 1


def weka_uses(conversations: Iterable[Conversation], options: WekaOptions = WekaOptions()) -> BlockUses:
    times: list[float] = []
    key_lists: list[np.ndarray] = []
    block_tokens: list[int] = []
    shared_scopes: dict[str, int] = {"": 0}
    for index, conversation in enumerate(conversations):
        scope = index + 1
        top_prefix = shared_prefix_ids(
            conversation.top_level_requests,
            conversation.system_tokens,
            conversation.tool_tokens,
            conversation.block_tokens,
        )
        for entry in conversation.entries:
            if isinstance(entry, TraceRequest):
                keys = _scoped(entry.hash_ids, scope)
                if options.shared_prefix:
                    _share_prefix(keys, entry, top_prefix, shared_scopes[""])
                times.append(entry.t)
                key_lists.append(keys)
                block_tokens.append(conversation.block_tokens)
            elif isinstance(entry, SubAgent) and options.include_subagents:
                sub_scope = shared_scopes.setdefault(entry.agent_type, len(shared_scopes))
                sub_prefix = shared_prefix_ids(
                    entry.requests, entry.system_tokens, entry.tool_tokens, conversation.block_tokens
                )
                for request in entry.requests:
                    keys = _scoped(request.hash_ids, scope)
                    if options.shared_prefix:
                        _share_prefix(keys, request, sub_prefix, sub_scope)
                    times.append(entry.t + request.t)
                    key_lists.append(keys)
                    block_tokens.append(conversation.block_tokens)
    return BlockUses.from_requests(times, key_lists, block_tokens)


def timed_uses(requests: Iterable[TimedRequest]) -> BlockUses:
    times: list[float] = []
    key_lists: list[np.ndarray] = []
    block_tokens: list[int] = []
    for request in requests:
        times.append(request.timestamp_s)
        key_lists.append(np.asarray(request.hash_ids, dtype=np.int64))
        block_tokens.append(request.block_tokens)
    return BlockUses.from_requests(times, key_lists, block_tokens)


def resolve_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Trace paths as given, except that a swarm output directory stands for its recorded trace."""
    resolved = []
    for raw in paths:
        path = Path(raw)
        recorded = path / RECORDED_TRACE_NAME
        if path.is_dir() and recorded.is_file():
            resolved.append(recorded)
        elif path.is_dir() and (path / "summary.json").is_file():
            raise FileNotFoundError(
                f"{path} is a swarm run without a recorded trace; run the swarm with --record-trace"
            )
        else:
            resolved.append(path)
    return resolved


def load_uses(
    paths: Iterable[str | Path], trace_format: str = "auto", weka: WekaOptions = WekaOptions()
) -> tuple[LoadedTrace, BlockUses]:
    trace = load_trace(resolve_paths(paths), trace_format)  # type: ignore[arg-type]
    if trace.format == "weka":
        return trace, weka_uses(trace.conversations, weka)
    return trace, timed_uses(trace.timed_requests)
