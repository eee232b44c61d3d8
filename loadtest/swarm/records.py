"""One row per request: what was sent, what came back, and how it measured.

Times are workload seconds: wall-clock seconds multiplied by the run's time scale (see
`loadtest.swarm.clock`). `start_s` counts from the start of the run.
"""

from __future__ import annotations

import csv
import dataclasses
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from loadtest.swarm.client import OK


@dataclass(slots=True)
class RequestRecord:
    request_id: int
    """Unique within a shard; (shard, request_id) is unique within a run."""
    shard: int
    user: int
    """Run-wide user id (-1 for requests sent at recorded times, which have no user)."""
    session: str
    kind: str
    """agent, subagent, summary, replay, sweep."""
    phase: str
    start_s: float
    end_s: float
    e2e_s: float
    ttft_s: float | None
    itl_s: float | None
    """Mean inter-token latency: (last token - first token) / (completion tokens - 1)."""
    max_token_gap_s: float | None
    output_tokens_per_s: float | None
    """Decode speed seen by the client: (completion tokens - 1) / (last token - first token)."""
    prompt_tokens: int | None
    completion_tokens: int | None
    cached_tokens: int | None
    expected_prompt_tokens: int
    max_tokens: int
    blocks: int
    block_tokens: int
    ceiling_tokens: int
    """Prompt tokens in blocks that were already sent earlier in the run: the most any cache could serve."""
    outcome: str
    http_status: int | None
    error_type: str
    error_message: str
    slo_ok: bool
    """A successful request that met the SLO targets (counts toward goodput)."""

    @property
    def ok(self) -> bool:
        return self.outcome == OK


FIELDS: tuple[str, ...] = tuple(field.name for field in dataclasses.fields(RequestRecord))
_TYPES: dict[str, str] = {field.name: str(field.type) for field in dataclasses.fields(RequestRecord)}


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, float):
        return repr(value)  # the shortest text that reads back as the same float: merges stay exact
    return value


def _parse(name: str, text: str) -> Any:
    kind = _TYPES[name]
    optional = "None" in kind
    if text == "" and optional:
        return None
    if kind.startswith("int"):
        return int(text)
    if kind.startswith("float"):
        return float(text)
    if kind == "bool":
        return text in ("1", "True", "true")
    return text


def record_row(record: RequestRecord) -> list[Any]:
    return [_cell(getattr(record, name)) for name in FIELDS]


class RecordWriter:
    """Appends records to `requests.csv` as they complete, so a killed run keeps what it measured."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: IO[str] = path.open("w", newline="")
        self._writer = csv.writer(self._file)
        self._writer.writerow(FIELDS)

    def write(self, record: RequestRecord) -> None:
        self._writer.writerow(record_row(record))

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def write_records(path: Path, records: Iterable[RequestRecord]) -> None:
    writer = RecordWriter(path)
    try:
        for record in records:
            writer.write(record)
    finally:
        writer.close()


def iter_records(path: Path) -> Iterator[RequestRecord]:
    with path.open(newline="") as file:
        reader = csv.reader(file)
        header = next(reader)
        missing = set(FIELDS) - set(header)
        if missing:
            raise ValueError(f"{path}: not a swarm requests.csv (missing {', '.join(sorted(missing))})")
        positions = [header.index(name) for name in FIELDS]
        for row in reader:
            yield RequestRecord(
                *(_parse(name, row[position]) for name, position in zip(FIELDS, positions, strict=True))
            )


def read_records(path: Path) -> list[RequestRecord]:
    return list(iter_records(path))
