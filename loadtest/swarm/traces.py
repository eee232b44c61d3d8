"""Readers for the two public trace formats the swarm replays and `kvgate analyze` measures.

WEKA (callanjfox/kv-cache-tester `traces/`): one JSON document per conversation, `.json` or `.json.gz`,
64-token blocks, `hash_id_scope: local` (ids are unique within one conversation only). `requests[]`
holds top-level requests (`t` in seconds from the conversation start) and sub-agent entries
(`type: subagent`) with their own `requests[]`, whose `t` is relative to the sub-agent's start at the
entry's `t`. Each request lists the ids of its full blocks only (`floor(in / 64)` ids).

Mooncake (kvcache-ai/Mooncake FAST'25): JSON lines with `timestamp` (ms), `input_length`,
`output_length` and `hash_ids`, one id per 512-token block, the last one partial (`ceil(in / 512)`
ids), ids global across the file. Runs recorded with `kvgate swarm --record-trace` use the same fields
plus `block_size` on each line, so they read as Mooncake-style traces.
"""

from __future__ import annotations

import gzip
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import orjson

WEKA_BLOCK_TOKENS = 64
MOONCAKE_BLOCK_TOKENS = 512

TraceFormat = Literal["weka", "mooncake"]


class TraceError(ValueError):
    """A trace file that cannot be read as the format it claims to be."""


@dataclass(frozen=True, slots=True)
class TraceRequest:
    """One recorded model call of a WEKA conversation or sub-agent."""

    t: float
    input_tokens: int
    output_tokens: int
    hash_ids: list[int]
    think_s: float
    """Client-side delay before this request: the trace's `think_time`, or when it is missing the gap
    between the previous request's end (`t + api_time`) and this request's `t`."""
    model: str | None = None


@dataclass(frozen=True, slots=True)
class SubAgent:
    """A sub-agent spawned by its parent at `t`; its requests' `t` are relative to that start."""

    t: float
    agent_id: str
    agent_type: str
    system_tokens: int
    tool_tokens: int
    requests: list[TraceRequest]


@dataclass(frozen=True, slots=True)
class Conversation:
    """One WEKA conversation: top-level requests and sub-agents, in recorded order."""

    id: str
    block_tokens: int
    hash_id_scope: str
    system_tokens: int
    tool_tokens: int
    entries: list[TraceRequest | SubAgent]
    source: str

    @property
    def top_level_requests(self) -> list[TraceRequest]:
        return [entry for entry in self.entries if isinstance(entry, TraceRequest)]

    @property
    def subagents(self) -> list[SubAgent]:
        return [entry for entry in self.entries if isinstance(entry, SubAgent)]


def shared_prefix_block_count(system_tokens: int, tool_tokens: int, block_tokens: int) -> int:
    """Blocks that hold the system prompt and tool schema: `ceil((system + tools) / block)`."""
    return -(-(system_tokens + tool_tokens) // block_tokens)


def shared_prefix_ids(
    requests: Sequence[TraceRequest], system_tokens: int, tool_tokens: int, block_tokens: int
) -> list[int]:
    """The ids of the system/tool prefix: the first blocks of the first request of a conversation."""
    if not requests:
        return []
    count = shared_prefix_block_count(system_tokens, tool_tokens, block_tokens)
    return requests[0].hash_ids[:count]


def shared_prefix_length(hash_ids: Sequence[int], prefix_ids: Sequence[int]) -> int:
    """How many leading ids of a request are the conversation's system/tool prefix.

    A request that compacted or rewrote its context starts differently, so only the leading run of ids
    equal to the prefix, position by position, counts as the shared prefix.
    """
    length = 0
    for own, shared in zip(hash_ids, prefix_ids, strict=False):
        if own != shared:
            break
        length += 1
    return length


@dataclass(frozen=True, slots=True)
class TimedRequest:
    """One request of a Mooncake-style trace, sent open-loop at `timestamp_s`."""

    timestamp_s: float
    input_tokens: int
    output_tokens: int
    hash_ids: list[int]
    block_tokens: int = MOONCAKE_BLOCK_TOKENS
    scope: str = ""
    """The file the request came from: Mooncake ids are global within one file only."""


TRACE_SUFFIXES = (".json", ".json.gz", ".jsonl", ".jsonl.gz")


def _read_bytes(path: Path) -> bytes:
    data = path.read_bytes()
    return gzip.decompress(data) if path.name.endswith(".gz") else data


def detect_format(path: Path) -> TraceFormat:
    name = path.name
    if name.endswith((".jsonl", ".jsonl.gz")):
        return "mooncake"
    if name.endswith((".json", ".json.gz")):
        return "weka"
    raise TraceError(f"{path}: cannot tell the trace format from the name (expected one of {TRACE_SUFFIXES})")


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files named directly, plus the trace files inside named directories, sorted by name."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.name.endswith(TRACE_SUFFIXES))
            if not found:
                raise TraceError(f"{path}: no trace files ({', '.join(TRACE_SUFFIXES)}) in this directory")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise TraceError(f"{path}: no such file or directory")
    return files


def _think_times(raw_requests: Sequence[dict]) -> list[float]:
    thinks: list[float] = []
    previous: dict | None = None
    for raw in raw_requests:
        if raw.get("think_time") is not None:
            think = float(raw["think_time"])
        elif previous is None:
            think = 0.0
        else:
            previous_end = float(previous["t"]) + float(previous.get("api_time") or 0.0)
            think = float(raw["t"]) - previous_end
        thinks.append(max(0.0, think))
        previous = raw
    return thinks


def _weka_requests(raw_requests: Sequence[dict], where: str) -> list[TraceRequest]:
    requests = []
    for index, (raw, think) in enumerate(zip(raw_requests, _think_times(raw_requests), strict=True)):
        try:
            requests.append(
                TraceRequest(
                    t=float(raw["t"]),
                    input_tokens=int(raw["in"]),
                    output_tokens=int(raw["out"]),
                    hash_ids=list(raw["hash_ids"]),
                    think_s=think,
                    model=raw.get("model"),
                )
            )
        except (KeyError, TypeError, ValueError) as error:
            raise TraceError(f"{where}: request {index}: {error!r}") from error
    return requests


def load_weka_conversation(path: str | Path) -> Conversation:
    path = Path(path)
    try:
        document = orjson.loads(_read_bytes(path))
    except (orjson.JSONDecodeError, OSError, gzip.BadGzipFile) as error:
        raise TraceError(f"{path}: not a readable WEKA trace: {error}") from error
    if not isinstance(document, dict) or not isinstance(document.get("requests"), list):
        raise TraceError(f"{path}: a WEKA trace is a JSON object with a `requests` list")
    entries: list[TraceRequest | SubAgent] = []
    top_level_raw = [raw for raw in document["requests"] if raw.get("type") != "subagent"]
    top_level = iter(_weka_requests(top_level_raw, str(path)))
    for index, raw in enumerate(document["requests"]):
        if raw.get("type") != "subagent":
            entries.append(next(top_level))
            continue
        entries.append(
            SubAgent(
                t=float(raw["t"]),
                agent_id=str(raw.get("agent_id", f"subagent_{index}")),
                agent_type=str(raw.get("subagent_type", "subagent")),
                system_tokens=int(raw.get("system_tokens") or 0),
                tool_tokens=int(raw.get("tool_tokens") or 0),
                requests=_weka_requests(raw.get("requests") or [], f"{path}: sub-agent {index}"),
            )
        )
    return Conversation(
        id=str(document.get("id", path.name.split(".")[0])),
        block_tokens=int(document.get("block_size", WEKA_BLOCK_TOKENS)),
        hash_id_scope=str(document.get("hash_id_scope", "local")),
        system_tokens=int(document.get("system_tokens") or 0),
        tool_tokens=int(document.get("tool_tokens") or 0),
        entries=entries,
        source=str(path),
    )


def iter_mooncake(path: str | Path) -> Iterator[TimedRequest]:
    path = Path(path)
    for number, line in enumerate(_read_bytes(path).splitlines(), start=1):
        if not line.strip():
            continue
        try:
            raw = orjson.loads(line)
            yield TimedRequest(
                timestamp_s=float(raw["timestamp"]) / 1000.0,
                input_tokens=int(raw["input_length"]),
                output_tokens=int(raw["output_length"]),
                hash_ids=list(raw["hash_ids"]),
                block_tokens=int(raw.get("block_size", MOONCAKE_BLOCK_TOKENS)),
                scope=path.name,
            )
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError) as error:
            raise TraceError(f"{path}:{number}: not a Mooncake trace line: {error!r}") from error


def load_mooncake(path: str | Path) -> list[TimedRequest]:
    return list(iter_mooncake(path))


@dataclass(frozen=True, slots=True)
class LoadedTrace:
    """The files of one trace format: WEKA conversations or Mooncake-style timed requests."""

    format: TraceFormat
    conversations: list[Conversation]
    timed_requests: list[TimedRequest]
    files: list[Path]


def load_trace(
    paths: Iterable[str | Path], trace_format: TraceFormat | Literal["auto"] = "auto"
) -> LoadedTrace:
    """Read trace files and directories of one format (told, or recognised by the file names)."""
    files = expand_paths(paths)
    if not files:
        raise TraceError("no trace files given")
    formats = {detect_format(path) if trace_format == "auto" else trace_format for path in files}
    if len(formats) > 1:
        raise TraceError(
            "the trace files mix WEKA (.json) and Mooncake (.jsonl) formats; replay one at a time"
        )
    (resolved,) = formats
    if resolved == "weka":
        return LoadedTrace("weka", [load_weka_conversation(path) for path in files], [], files)
    timed: list[TimedRequest] = []
    for path in files:
        timed.extend(iter_mooncake(path))
    timed.sort(key=lambda request: request.timestamp_s)
    return LoadedTrace("mooncake", [], timed, files)
